"""Bad `alerting` input: each a clear error naming its path in the inventory."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest

from collector.inventory.checks import check_alerting
from collector.inventory.load import ConfigError, load_inventory
from tests.alerts.conftest import SMALL, merged


def problems(path: Path) -> list[tuple[str, str]]:
    """Return (path, message) from loading plus the alerting cross-checks (until the lead wires them in)."""
    try:
        inventory = load_inventory([path], environ={})
    except ConfigError as exc:
        return [(p.path, p.message) for p in exc.problems]
    return check_alerting(inventory)


def one_problem(write: Callable[[dict], Path], patch: dict) -> tuple[str, str]:
    found = problems(write(merged(SMALL, patch)))
    assert len(found) == 1, found
    return found[0]


def test_the_small_inventory_is_valid(write_inventory: Callable[[dict], Path]) -> None:
    assert problems(write_inventory(SMALL)) == []


def test_objective_of_one_is_refused(write_inventory: Callable[[dict], Path]) -> None:
    path, message = one_problem(write_inventory, {"processes": {"problem": {"kpis": {
        "resolved_in_time": {"objective": 1.0}}}}})
    assert path == "processes.problem.kpis.resolved_in_time.objective"
    assert "between 0 and 1 exclusive" in message


def test_slo_window_shorter_than_the_longest_alert_window(write_inventory: Callable[[dict], Path]) -> None:
    path, message = one_problem(write_inventory, {"processes": {"problem": {"kpis": {
        "resolved_in_time": {"window": "1d"}}}}})
    assert path == "processes.problem.kpis.resolved_in_time.window"
    assert message == ("the SLO window (1d) is shorter than the longest alert window (3d, alerting.slo.windows)")


def test_target_with_no_bound(write_inventory: Callable[[dict], Path]) -> None:
    patch = {"processes": {"problem": {"kpis": {"backlog": {"target": {"max": None}}}}}}
    path, message = one_problem(write_inventory, patch)
    assert path == "processes.problem.kpis.backlog.target"
    assert "needs a bound" in message


def test_receiver_without_a_secret(write_inventory: Callable[[dict], Path]) -> None:
    path, message = one_problem(write_inventory, {"alerting": {"teams": {"assurance-ops": {
        "page": {"pagerduty": {"routing_key_file": None}}}}}})
    assert path == "alerting.teams.assurance-ops.page.pagerduty"
    assert "needs routing_key_file" in message


def test_inline_secret_is_refused(write_inventory: Callable[[dict], Path]) -> None:
    path, message = one_problem(write_inventory, {"alerting": {"teams": {"assurance-ops": {
        "page": {"pagerduty": {"routing_key_file": None, "routing_key": "abc"}}}}}})
    assert path == "alerting.teams.assurance-ops.page.pagerduty"
    assert "must not be written inline" in message


def test_opsgenie_without_a_key_file(write_inventory: Callable[[dict], Path]) -> None:
    path, message = one_problem(write_inventory, {"alerting": {"teams": {"assurance-ops": {
        "page": {"pagerduty": None, "opsgenie": {"responders": ["x"]}}}}}})
    assert path == "alerting.teams.assurance-ops.page.opsgenie"
    assert "needs api_key_file" in message


def test_email_needs_smtp(write_inventory: Callable[[dict], Path]) -> None:
    path, message = one_problem(write_inventory, {"alerting": {"teams": {"assurance-ops": {
        "ticket": {"webhook": None, "email": {"to": "x@example.com"}}}}}})
    assert path == "alerting.teams.assurance-ops.ticket.email"
    assert "needs alerting.smtp" in message


def test_smtp_user_needs_a_password_file(write_inventory: Callable[[dict], Path]) -> None:
    path, message = one_problem(write_inventory, {"alerting": {"smtp": {
        "smarthost": "smtp.example.com:587", "from": "a@example.com", "auth_username": "a"}}})
    assert path == "alerting.smtp"
    assert "needs auth_password_file" in message


def test_team_without_receivers(write_inventory: Callable[[dict], Path]) -> None:
    path, message = one_problem(write_inventory, {"processes": {"problem": {"team": "nobody"}}})
    assert path == "processes.problem.team"
    assert "alerting.teams.nobody" in message


def test_unknown_time_interval(write_inventory: Callable[[dict], Path]) -> None:
    path, message = one_problem(write_inventory, {"alerting": {"teams": {"assurance-ops": {
        "tickets_during": "office_hours"}}}})
    assert path == "alerting.teams.assurance-ops.tickets_during"
    assert "unknown time interval 'office_hours'" in message


@pytest.mark.parametrize(("patch", "where"), [
    ({"short": "2h", "long": "1h"}, "alerting.slo.windows.0"),
    ({"budget_share": 0}, "alerting.slo.windows.0.budget_share"),
])
def test_bad_window(write_inventory: Callable[[dict], Path], patch: dict, where: str) -> None:
    window = {"severity": "critical", "long": "1h", "short": "5m", "budget_share": 0.02, **patch}
    path, _ = one_problem(write_inventory, {"alerting": {"slo": {"windows": [window]}}})
    assert path == where


def test_the_example_is_valid(example: object) -> None:
    assert check_alerting(example) == []  # type: ignore[arg-type]


@pytest.mark.parametrize(("hours", "valid"), [
    ("08:00-24:00", True), ("00:00-23:59", True), ("08:00-24:30", False), ("24:00-24:00", False),
    ("18:00-08:00", False),
])
def test_time_interval_hours_as_alertmanager_parses_them(write_inventory: Callable[[dict], Path], hours: str,
                                                         valid: bool) -> None:
    found = problems(write_inventory(merged(SMALL, {"alerting": {"time_intervals": {
        "office_hours": {"weekdays": ["monday:friday"], "hours": [hours]}}}})))
    assert (found == []) is valid, found


MARKER = "Zq7mArKeR42"


@pytest.mark.parametrize("url", [
    f"https://hook:{MARKER}@hooks.example/x?token={MARKER}t&a=1",
    f"ftp://hook:{MARKER}@hooks.example/x?token={MARKER}t",  # refused: a problem quotes it, masked
    f"https://hook:1234/{MARKER}@hooks.example/x",  # refused: the password's start would be the port
])
def test_a_webhook_url_is_masked_in_every_problem_and_repr(write_inventory: Callable[[dict], Path],
                                                           url: str) -> None:
    document = merged(SMALL, {"alerting": {"teams": {"assurance-ops": {"page": {"webhook": {"url": url}}}}}})
    try:
        inventory = load_inventory([write_inventory(document)], environ={})
    except ConfigError as exc:
        shown = str(exc)
        assert "alerting.teams.assurance-ops.page.webhook.url" in shown
    else:
        shown = repr(inventory) + str(inventory.model_dump(exclude={"alerting"}))
        assert inventory.alerting is not None
        assert inventory.alerting.teams["assurance-ops"].page.webhook is not None
        assert inventory.alerting.teams["assurance-ops"].page.webhook.url == url
    assert MARKER not in shown, shown


def test_alerts_build_prints_no_webhook_secret_and_writes_it_only_where_alertmanager_reads_it(
        write_inventory: Callable[[dict], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from alerts.cli import add_parser, run

    url = f"https://hook:{MARKER}@hooks.example/x?token={MARKER}t"
    hook = {"alerting": {"teams": {"assurance-ops": {"page": {"webhook": {"url": url}}}}}}
    path = write_inventory(merged(SMALL, hook))
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    assert run(parser.parse_args(["alerts", "build", "-c", str(path), "--out", str(tmp_path / "out")])) == 0
    printed = capsys.readouterr()
    assert MARKER not in printed.out + printed.err
    holding = sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file() and MARKER in p.read_text())
    assert holding == ["alertmanager.yml"]
