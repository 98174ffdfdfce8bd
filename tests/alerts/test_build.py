"""The generated bundle: every alert is routable and documented; the committed example does not drift."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from alerts.build import build, rule_files
from alerts.slo import burn_pairs
from alerts.writer import HEADER, dump, write
from collector.inventory.models import Inventory
from tests.alerts.conftest import COMMITTED

REQUIRED_LABELS = {"severity", "team", "process", "kpi"}
REQUIRED_ANNOTATIONS = {"summary", "description", "runbook_url", "dashboard_url"}


def all_alerts(inventory: Inventory) -> list:
    return [rule for f in rule_files(inventory).values() for rule in f.alerts()]


def test_every_alert_has_labels_and_annotations(example: Inventory) -> None:
    for rule in all_alerts(example):
        assert set(rule.labels) >= REQUIRED_LABELS, rule.alert
        assert set(rule.annotations) == REQUIRED_ANNOTATIONS, rule.alert
        assert rule.labels["severity"] in {"critical", "warning", "info"}
        assert rule.labels["team"] == example.processes[rule.labels["process"]].team


def test_summaries_are_static_sentences_and_names_camel_case(example: Inventory) -> None:
    for rule in all_alerts(example):
        assert re.fullmatch(r"Fab(?:[A-Z][a-z0-9]*)+", rule.alert or ""), rule.alert
        assert rule.annotations["summary"].endswith(".")
        assert "{{" not in rule.annotations["summary"]
        assert "$value" in rule.annotations["description"] or "absent" in rule.expr or "== 0" in rule.expr


def test_links_point_at_the_runbook_and_dashboard(example: Inventory) -> None:
    for rule in all_alerts(example):
        process = example.processes[rule.labels["process"]]
        assert rule.annotations["runbook_url"].startswith(f"{process.runbook}#fab")
        assert rule.annotations["dashboard_url"].startswith("http://127.0.0.1:3000/d/fabwatch-")


def test_every_sla_kpi_gets_burn_and_in_flight_alerts(example: Inventory) -> None:
    names = {(r.alert, r.labels["process"], r.labels["kpi"], r.labels["severity"]) for r in all_alerts(example)}
    for process_name, process in example.processes.items():
        for kpi_name, kpi in process.kpis.items():
            if kpi.kind == "sla":
                usable = {p.severity for p in burn_pairs(kpi.window, kpi.objective, example.alerting.slo) if p.usable}
                for severity in ("critical", "warning"):
                    made = ("FabSlaErrorBudgetBurn", process_name, kpi_name, severity) in names
                    assert made == (severity in usable), (process_name, kpi_name, severity)
                assert ("FabSlaAtRisk", process_name, kpi_name, "critical") in names
            if kpi.target is not None:
                assert ("FabKpiTargetMissed", process_name, kpi_name, "warning") in names


def test_unreachable_pairs_are_reported(example: Inventory) -> None:
    notes = build(example).notes
    assert any("processes.problem.kpis.resolved_in_time: the 1h/5m critical pair" in n for n in notes)


def test_pairs_burning_under_1x_fire_from_1x_and_are_reported(example: Inventory) -> None:
    """A 7d SLO's 1d and 3d pairs burn at 0.7x and 0.23x: dropping them left no ticket at all; they
    fire from 1x, where the budget would not last the window."""
    notes = [n for n in build(example).notes if "processes.interface.kpis.answered_in_20s: the 1d" in n
             or "processes.interface.kpis.answered_in_20s: the 3d" in n]
    assert [n.split(": ", 1)[1].split(" over")[0] for n in notes] == ["the 1d/2h warning pair burns at 0.7x",
                                                                      "the 3d/6h warning pair burns at 0.233x"]
    assert all(n.endswith("it fires from 1x instead") for n in notes)
    rules = build(example).documents["rules/process-interface.rules.yml"]
    burns = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "FabSlaErrorBudgetBurn"]
    assert [r["labels"]["severity"] for r in burns] == ["critical", "warning"]
    assert "ratio_rate1d{process=\"interface\", kpi=\"answered_in_20s\"} > (1 * 0.3)" in burns[1]["expr"]
    assert "ratio_rate3d{process=\"interface\", kpi=\"answered_in_20s\"} > (1 * 0.3)" in burns[1]["expr"]


@pytest.mark.slow
def test_every_file_carries_the_header(example: Inventory) -> None:
    for document in build(example).documents.values():
        assert dump(document).startswith(HEADER)


@pytest.mark.slow
def test_committed_example_output_does_not_drift(example: Inventory, tmp_path: Path) -> None:
    written = write(build(example).documents, tmp_path)
    committed = sorted(p.relative_to(COMMITTED) for p in COMMITTED.rglob("*.yml"))
    assert sorted(p.relative_to(tmp_path) for p in written) == committed, \
        "regenerate with: fabwatch alerts build -c examples/operator.yaml --out examples/alerts"
    for path in written:
        relative = path.relative_to(tmp_path)
        assert path.read_text() == (COMMITTED / relative).read_text(), \
            f"examples/alerts/{relative} drifted: fabwatch alerts build -c examples/operator.yaml --out examples/alerts"


@pytest.mark.slow
def test_write_removes_files_it_no_longer_generates(example: Inventory, tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    stale = tmp_path / "rules" / "process-gone.rules.yml"
    stale.write_text(HEADER + "groups: []\n")
    mine = tmp_path / "rules" / "mine.yml"
    mine.write_text("groups: []\n")
    write(build(example).documents, tmp_path)
    assert not stale.exists()
    assert mine.exists()


def test_cli_builds_the_example(tmp_path: Path) -> None:
    from app.cli import main

    assert main(["alerts", "build", "-c", str(COMMITTED.parent / "operator.yaml"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "alertmanager.yml").is_file()
    assert (tmp_path / "rules" / "health.rules.yml").is_file()


def test_cli_takes_the_inventory_from_the_variable_and_names_an_output_it_cannot_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from app.cli import main

    monkeypatch.setenv("FABWATCH_CONFIG", str(COMMITTED.parent / "operator.yaml"))
    taken = tmp_path / "a-file"
    taken.write_text("not a directory")
    assert main(["alerts", "build", "--out", str(taken)]) == 1
    assert f"fabwatch: cannot write to {taken}: File exists" in capsys.readouterr().err
    monkeypatch.delenv("FABWATCH_CONFIG")
    assert main(["alerts", "build", "--out", str(tmp_path / "out")]) == 2
    assert "give an inventory with -c FILE (or FABWATCH_CONFIG)" in capsys.readouterr().err
