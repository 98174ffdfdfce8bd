"""The generated rules and Alertmanager config, checked by the real promtool and amtool."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from alerts.build import build
from alerts.writer import write
from collector.inventory.load import load_inventory
from collector.inventory.models import Inventory
from tests.alerts.conftest import COMMITTED, SMALL, merged

pytestmark = pytest.mark.integration
KEEP_FIRING = re.compile(r"\n\s*keep_firing_for: \w+")


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)


def test_committed_rules_pass_promtool_check_with_lint(promtool: str) -> None:
    result = run(promtool, "check", "rules", "--lint=all", "--lint-fatal", *map(str, COMMITTED.glob("rules/*.yml")))
    assert result.returncode == 0, result.stdout + result.stderr


COMMITTED_TESTS = sorted(p.name for p in COMMITTED.glob("tests/*.yml"))


def test_the_committed_bundle_has_promtool_unit_tests() -> None:
    assert len(COMMITTED_TESTS) >= 2


@pytest.mark.parametrize("name", COMMITTED_TESTS)  # one test a file: the workers share them out
def test_committed_rules_pass_their_promtool_unit_tests(promtool: str, name: str) -> None:
    result = run(promtool, "test", "rules", str(COMMITTED / "tests" / name))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_config_passes_amtool(amtool: str) -> None:
    result = run(amtool, "check-config", str(COMMITTED / "alertmanager.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def routed(amtool: str, *labels: str) -> str:
    result = run(amtool, "config", "routes", "test", f"--config.file={COMMITTED / 'alertmanager.yml'}", *labels)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_critical_alert_of_each_team_reaches_its_page_receiver(amtool: str, example: Inventory) -> None:
    teams = {p.team for p in example.processes.values()}
    for team in sorted(teams):
        assert routed(amtool, f"team={team}", "severity=critical", "process=x", "kpi=y") == f"{team}-page"
        assert routed(amtool, f"team={team}", "severity=warning") == f"{team}-ticket"


def test_unknown_team_goes_to_the_default_receiver(amtool: str) -> None:
    assert routed(amtool, "team=nobody", "severity=critical") == "fabwatch-default"


def test_office_hours_mute_tickets_not_pages() -> None:
    config = yaml.safe_load((COMMITTED / "alertmanager.yml").read_text())
    team = next(r for r in config["route"]["routes"] if r["matchers"] == ['team="assurance-ops"'])
    page, ticket, _info = team["routes"]
    assert "active_time_intervals" not in page
    assert ticket["active_time_intervals"] == ["office_hours"]
    assert ticket["mute_time_intervals"] == ["office_hours-holidays"]


# --- low volume: the protections are what keeps these scenarios quiet -------------------------

def small_bundle(tmp_path: Path, write_inventory: Callable[[dict], Path], **slo: object) -> Path:
    inventory = load_inventory([write_inventory(merged(SMALL, {"alerting": {"slo": slo}}))], environ={})
    out = tmp_path / f"bundle-{len(list(tmp_path.glob('bundle-*')))}"
    write(build(inventory).documents, out)
    return out


def run_scenario(promtool: str, bundle: Path, scenario: str, strip_keep_firing: bool = False) -> str:
    """Run one generated test group (by name fragment) of the small inventory; return promtool's output."""
    rules = bundle / "rules" / "process-problem.rules.yml"
    if strip_keep_firing:
        rules.write_text(KEEP_FIRING.sub("", rules.read_text()))
    tests = yaml.safe_load((bundle / "tests" / "process-problem.test.yml").read_text())
    tests["tests"] = [t for t in tests["tests"] if scenario in t["name"]]
    assert tests["tests"], scenario
    path = bundle / "tests" / "one.test.yml"
    path.write_text(yaml.safe_dump(tests))
    result = run(promtool, "test", "rules", str(path))
    return ("ok " if result.returncode == 0 else "FAILED ") + result.stdout + result.stderr


def test_one_late_item_among_few_pages_only_without_min_events(
        promtool: str, tmp_path: Path, write_inventory: Callable[[dict], Path]) -> None:
    protected = small_bundle(tmp_path, write_inventory)
    assert run_scenario(promtool, protected, "low volume").startswith("ok ")
    unprotected = small_bundle(tmp_path, write_inventory, min_events=0, min_bad_events=0)
    # Same scenario, rules without the minimum: the one late item out of three pages.
    tests = protected / "tests" / "process-problem.test.yml"
    (unprotected / "tests" / "process-problem.test.yml").write_text(tests.read_text())
    output = run_scenario(promtool, unprotected, "low volume")
    assert output.startswith("FAILED "), output
    assert "FabSlaErrorBudgetBurn" in output


def test_bursts_keep_firing_only_thanks_to_keep_firing_for(
        promtool: str, tmp_path: Path, write_inventory: Callable[[dict], Path]) -> None:
    # One pair only, or the 6h/30m pair (whose 30m window always sees a burst) would hide the gap.
    fast = {"severity": "critical", "long": "1h", "short": "5m", "budget_share": 0.02}
    bundle = small_bundle(tmp_path, write_inventory, windows=[fast])
    assert run_scenario(promtool, bundle, "no flapping").startswith("ok ")
    assert "keep_firing_for: 5m" in (bundle / "rules" / "process-problem.rules.yml").read_text()
    output = run_scenario(promtool, bundle, "no flapping", strip_keep_firing=True)
    assert output.startswith("FAILED "), output


# --- TMF events listeners ----------------------------------------------------------------------

def test_a_listener_refusing_events_fires_and_promtool_agrees(
        promtool: str, tmp_path: Path, write_inventory: Callable[[dict], Path]) -> None:
    events = {"sources": {"events": {"kind": "tmf_events", "api": "tmf621"}},
              "processes": {"problem": {"records": {"source": "events"}}}}
    inventory = load_inventory([write_inventory(merged(SMALL, events))], environ={})
    bundle = tmp_path / "bundle"
    write(build(inventory).documents, bundle)
    rules, tests = bundle / "rules" / "health.rules.yml", bundle / "tests" / "health.test.yml"
    assert "FabEventsRefused" in rules.read_text()
    assert "FabEventsRefused" not in (COMMITTED / "rules" / "health.rules.yml").read_text()  # SQL sources only
    lint = run(promtool, "check", "rules", "--lint=all", "--lint-fatal", str(rules))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    result = run(promtool, "test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr
    # The firing scenario is not vacuous: a threshold four times higher misses it.
    rules.write_text(rules.read_text().replace("> 0.05", "> 0.2"))
    result = run(promtool, "test", "rules", str(tests))
    assert result.returncode != 0
    assert "twice the threshold" in result.stdout + result.stderr


def test_a_source_on_an_hourly_crontab_is_stale_after_three_of_its_hours(
        promtool: str, tmp_path: Path, write_inventory: Callable[[dict], Path]) -> None:
    """Its unused default interval (60s) gave a limit of 5 minutes: a healthy hourly source was
    reported stale 55 minutes of every hour."""
    hourly = merged(SMALL, {"service": {"timezone": "Europe/Berlin"},
                            "sources": {"db": {"interval": None, "cron": "0 * * * *"}}})
    inventory = load_inventory([write_inventory(hourly)], environ={})
    bundle = tmp_path / "bundle"
    write(build(inventory).documents, bundle)
    rules, tests = bundle / "rules" / "health.rules.yml", bundle / "tests" / "health.test.yml"
    stale = "time() - max by (source) (fab_source_last_success_timestamp_seconds{source=\"db\"}) > "
    assert f"{stale}10800\n" in rules.read_text()  # 3 x the longest gap, 1 h, DST changes included
    result = run(promtool, "test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_listener_committing_slowly_fires_and_promtool_agrees(
        promtool: str, tmp_path: Path, write_inventory: Callable[[dict], Path]) -> None:
    events = {"sources": {"events": {"kind": "tmf_events", "api": "tmf621"}},
              "processes": {"problem": {"records": {"source": "events"}}},
              "alerting": {"health": {"events_commit_slow": "300ms"}}}
    inventory = load_inventory([write_inventory(merged(SMALL, events))], environ={})
    bundle = tmp_path / "bundle"
    write(build(inventory).documents, bundle)
    rules, tests = bundle / "rules" / "health.rules.yml", bundle / "tests" / "health.test.yml"
    text = rules.read_text()
    assert "histogram_quantile(0.99, sum by (source, le) (rate(fab_events_commit_duration_seconds_bucket" in text
    assert "(events_commit_slow: 300ms)" in text
    lint = run(promtool, "check", "rules", "--lint=all", "--lint-fatal", str(rules))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    result = run(promtool, "test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr
    # Not vacuous: slow commits (0.5-1 s) pass a threshold of 2 s, and a threshold of 0 fires on fast ones.
    for wrong, scenario in (("> 2\n", "slower than events_commit_slow"), ("> 0\n", "under a millisecond")):
        rules.write_text(text.replace("> 0.3\n", wrong))
        result = run(promtool, "test", "rules", str(tests))
        assert result.returncode != 0, wrong
        assert scenario in result.stdout + result.stderr


def test_a_silent_listener_fires_after_silent_after_and_promtool_agrees(
        promtool: str, tmp_path: Path, write_inventory: Callable[[dict], Path]) -> None:
    quiet = {"sources": {"events": {"kind": "tmf_events", "api": "tmf621"}},
             "processes": {"problem": {"records": {"source": "events"}}}}
    plain = load_inventory([write_inventory(merged(SMALL, quiet))], environ={})
    assert "FabEventsSilent" not in str(build(plain).documents)  # off by default
    silent = merged(SMALL, {**quiet, "sources": {"events": {**quiet["sources"]["events"], "silent_after": "2h"}}})
    bundle = tmp_path / "bundle"
    write(build(load_inventory([write_inventory(silent)], environ={})).documents, bundle)
    rules, tests = bundle / "rules" / "health.rules.yml", bundle / "tests" / "health.test.yml"
    assert "time() - max by (source) (fab_events_last_received_timestamp_seconds" in rules.read_text()
    lint = run(promtool, "check", "rules", "--lint=all", "--lint-fatal", str(rules))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    result = run(promtool, "test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr
    # Not vacuous: a rule that fired on any silence (or one an hour late) fails the scenarios.
    for wrong in ("> 0\n", "> 10800\n"):
        rules.write_text(rules.read_text().replace("> 7200\n", wrong))
        result = run(promtool, "test", "rules", str(tests))
        assert result.returncode != 0, wrong
        rules.write_text(rules.read_text().replace(wrong, "> 7200\n"))


REPLICAS_TEST = """
rule_files: [%(rules)s]
evaluation_interval: 30s
tests:
  - name: a source handed over between replicas, a replica holding nothing, raise no health alert
    interval: 30s
    input_series:
      # the holder's series carry the shared instance (docs/deployment.md): one series across the hand-over,
      # with the staleness marker the old holder's last scrape leaves
      - series: fab_source_up{source="db", job="fabwatch", instance="fabwatch"}
        values: 1x9 stale 1x10
      - series: fab_source_last_success_timestamp_seconds{source="db", job="fabwatch", instance="fabwatch"}
        values: 0+30x9 stale 330+30x10
      - series: fab_source_leader{source="db", replica="a", job="fabwatch", instance="fabwatch"}
        values: 1x9 stale
      - series: fab_source_leader{source="db", replica="b", job="fabwatch", instance="fabwatch"}
        values: 0x9 1x11
      - series: up{job="fabwatch", instance="a:9464"}
        values: 1x9 0x11
      - series: up{job="fabwatch", instance="b:9464"}
        values: 1x20
    alert_rule_test:
      %(quiet)s
  - name: no replica left holding the source is an absent source
    interval: 30s
    input_series:
      - series: fab_source_up{source="db", job="fabwatch", instance="fabwatch"}
        values: 1x4 stale
      - series: fab_source_leader{source="db", replica="b", job="fabwatch", instance="fabwatch"}
        values: 0x20
    alert_rule_test:
      - eval_time: 10m
        alertname: FabSourceAbsent
        exp_alerts:
          - exp_labels: {source: db, severity: warning, team: assurance-ops, process: problem, kpi: source}
            exp_annotations:
              summary: No fabwatch instance exports a source.
              description: "Prometheus has no fab_source_up for source db (fabwatch down or not scraped): \\
                problem is not monitored."
              runbook_url: https://runbooks.example/problem#fabsourceabsent
              dashboard_url: http://127.0.0.1:3000/d/fabwatch-overview
"""


def test_health_alerts_over_replicas_see_a_source_not_a_replica(promtool: str, tmp_path: Path,
                                                                write_inventory: Callable[[dict], Path]) -> None:
    """Only the holder exports a source's health (`fab_source_up`): a replica holding nothing, or one
    that died after handing over, is no down, absent or stale source; no replica at all is."""
    inventory = load_inventory([write_inventory(SMALL)], environ={})
    bundle = tmp_path / "bundle"
    write(build(inventory).documents, bundle)
    quiet = "\n      ".join(f"- {{eval_time: {t}, alertname: {alert}, exp_alerts: []}}"
                           for t in ("4m30s", "5m", "6m", "10m")
                           for alert in ("FabSourceDown", "FabSourceAbsent", "FabSourceStale"))
    tests = tmp_path / "replicas.test.yml"
    tests.write_text(REPLICAS_TEST % {"rules": bundle / "rules" / "health.rules.yml", "quiet": quiet})
    result = run(promtool, "test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr
