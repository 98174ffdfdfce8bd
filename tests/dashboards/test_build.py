"""Generation: committed output matches the code, uids are stable, the CLI writes every file."""

import json

import yaml

from app.cli import main
from collector.inventory.load import load_inventory
from collector.naming import process_uid
from dashboards.build import build, build_dashboards, write
from dashboards.common import DATASOURCE_UID
from dashboards.contents import contents_markdown
from dashboards.selfmon import self_dashboard
from tests.dashboards import lint
from tests.dashboards.conftest import COMMITTED, EXAMPLE
from tests.sources.helpers import events_inventory

REBUILD = "run `fabwatch dashboards build -c examples/operator.yaml --out examples/dashboards`"


def test_committed_output_matches_the_code(inventory):
    files = build(inventory).files
    committed = {str(p.relative_to(COMMITTED)): p.read_text(encoding="utf-8")
                 for p in COMMITTED.rglob("*") if p.is_file()}
    stale = sorted(set(committed) - set(files))
    drifted = sorted(path for path, text in files.items() if committed.get(path) != text)
    assert (stale, drifted) == ([], []), REBUILD


def test_uids_are_stable_and_derived_from_the_inventory(dashboards, inventory):
    expected = {"fabwatch-overview", "fabwatch-management", "fabwatch-self",
                *(process_uid(name) for name in inventory.processes)}
    assert set(dashboards) == expected
    assert process_uid("bill_inquiry") == "fabwatch-process-bill-inquiry"


def test_long_process_names_get_short_unique_uids():
    long_a, long_b = "a" * 60, "a" * 59 + "b"
    assert len(process_uid(long_a)) <= 40
    assert process_uid(long_a) != process_uid(long_b)


def test_every_panel_links_back_or_on(dashboards, inventory):
    overview = dashboards["fabwatch-overview"]
    tiles = [p for p in overview["panels"] if p["type"] == "stat"]
    targets = {link["url"].split("?")[0] for p in tiles for link in p["fieldConfig"]["defaults"]["links"]}
    assert targets == {f"/d/{process_uid(name)}" for name in inventory.processes}


def test_processes_without_a_histogram_have_no_cycle_time_row(inventory):
    retention = inventory.processes["retention"]
    kpis = {name: kpi for name, kpi in retention.kpis.items() if kpi.kind != "duration"}
    without = inventory.model_copy(update={"processes": {
        **inventory.processes, "retention": retention.model_copy(update={"kpis": kpis})}})
    built = build_dashboards(without)
    rows = [p["title"] for p in built[process_uid("retention")]["panels"] if p["type"] == "row"]
    assert "Cycle time" not in rows
    assert "Cycle time" in [p["title"] for p in built[process_uid("order")]["panels"] if p["type"] == "row"]


def test_thresholds_come_from_the_targets(dashboards):
    problem = dashboards[process_uid("problem")]
    backlog = next(p for p in problem["panels"] if p["title"] == "Backlog" and p["type"] == "stat")
    steps = backlog["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps == [{"color": "green", "value": None}, {"color": "red", "value": 500}]


def test_provisioning_points_at_the_datasource_the_dashboards_use(inventory):
    files = build(inventory, prometheus_url="http://prometheus:9090").files
    datasources = yaml.safe_load(files["provisioning/datasources/fabwatch.yaml"])["datasources"]
    providers = yaml.safe_load(files["provisioning/dashboards/fabwatch.yaml"])["providers"]
    assert [(d["uid"], d["type"], d["url"]) for d in datasources] == [(DATASOURCE_UID, "prometheus",
                                                                       "http://prometheus:9090")]
    assert [(p["type"], p["folder"]) for p in providers] == [("file", "fabwatch")]
    overview = json.loads(files["dashboards/fabwatch-overview.json"])
    assert overview["templating"]["list"][0]["current"]["value"] == DATASOURCE_UID


def test_contents_lists_every_row_and_panel(dashboards):
    text = contents_markdown(dashboards.values())
    assert text.count("### ") == len(dashboards)
    assert "| Cycle time | Cycle time percentiles (timeseries, s); Cycle time distribution (heatmap, s) |" in text


def test_cli_build_writes_everything_and_removes_stale_dashboards(tmp_path, monkeypatch, capsys):
    for name in ("FABWATCH_LISTEN", "FABWATCH_STATE", "FABWATCH_DEMO_DSN", "FABWATCH_INTERVAL"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "dashboards").mkdir()
    (tmp_path / "dashboards" / "gone.json").write_text("{}")
    assert main(["dashboards", "build", "-c", str(EXAMPLE), "--out", str(tmp_path)]) == 0
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(str(p.relative_to(COMMITTED)) for p in COMMITTED.rglob("*") if p.is_file())
    assert written == committed
    assert "Wrote 11 dashboards" in capsys.readouterr().out


def test_cli_build_reports_inventory_problems(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: {}\nprocesses: {x: {}}\n")
    assert main(["dashboards", "build", "-c", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "processes.x" in capsys.readouterr().err


def test_write_returns_every_path(tmp_path, inventory):
    output = build(inventory)
    assert len(write(output, tmp_path)) == len(output.files)


def test_docs_show_what_each_dashboard_contains(dashboards):
    page = (COMMITTED.parents[1] / "docs" / "dashboards.md").read_text(encoding="utf-8")
    block = page.split("<!-- dashboards-contents:begin -->\n", 1)[1].split("\n<!-- dashboards-contents:end -->", 1)[0]
    assert block == contents_markdown(dashboards.values()).strip(), "copy examples/dashboards/CONTENTS.md to docs/"


def test_the_event_intake_row_comes_with_a_listener_and_marks_the_alert_threshold(inventory, tmp_path):
    def rows(model: dict) -> list[str]:
        return [p["title"] for p in model["panels"] if p["type"] == "row"]

    assert "Event intake" not in rows(self_dashboard(inventory))  # the example has no tmf_events source
    with_listener = load_inventory([events_inventory(tmp_path)], {})
    health = with_listener.alerting.health.model_copy(update={"events_refused_ratio": 0.1})
    with_listener = with_listener.model_copy(
        update={"alerting": with_listener.alerting.model_copy(update={"health": health})})
    model = self_dashboard(with_listener)
    assert rows(model) == ["Sources", "Event intake", "Scrape cost"]
    share = next(p for p in lint.panels(model) if p["title"] == "Refused share")
    assert [s["value"] for s in share["fieldConfig"]["defaults"]["thresholds"]["steps"]] == [None, 0.1]
    assert "10 %" in share["description"]


def test_cli_build_names_an_output_it_cannot_write(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FABWATCH_CONFIG", str(EXAMPLE))  # the variable, as for the other commands
    taken = tmp_path / "a-file"
    taken.write_text("not a directory")
    assert main(["dashboards", "build", "--out", str(taken)]) == 1
    assert f"fabwatch: cannot write to {taken}: File exists" in capsys.readouterr().err
