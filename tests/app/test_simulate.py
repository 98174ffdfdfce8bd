import argparse
import logging

import pytest

from app import simulate as cli
from tests.simulator.helpers import scalar


def parse(*argv):
    parser = argparse.ArgumentParser(prog="fabwatch")
    cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["simulate", *argv])


def test_backfill_then_catch_up(tmp_path, caplog):
    path = tmp_path / "cli.db"
    caplog.set_level(logging.INFO)
    args = parse("--dsn", f"sqlite+aiosqlite:///{path}", "--days", "0.5", "--scale", "0.2", "--seed", "3")
    assert cli.run(args) == 0
    assert scalar(path, "SELECT COUNT(*) FROM party_interaction") > 10
    assert "simulate backfill days=0.5 rows=" in caplog.text
    assert cli.run(args) == 0  # history present: no second backfill, just a step
    assert "simulate backfill skipped reason=history_present" in caplog.text


def test_live_with_duration_and_incident(tmp_path):
    path = tmp_path / "live.db"
    args = parse(
        "--dsn", f"sqlite+aiosqlite:///{path}", "--live", "--speed", "500", "--scale", "0.2",
        "--duration", "0.5", "--tick", "0.1", "--incident", "interface:surge:3",
    )  # fmt: skip
    assert cli.run(args) == 0
    assert scalar(path, "SELECT value FROM sim_state") > 0


def test_bad_incident_is_an_error(tmp_path, caplog):
    args = parse("--dsn", f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", "--incident", "problem:slow:nope")
    assert cli.run(args) == 2
    assert "factor 'nope' is not a number" in caplog.text


def test_env_defaults(monkeypatch):
    monkeypatch.setenv("FABWATCH_SIMULATE_DSN", "sqlite+aiosqlite:///x.db")
    monkeypatch.setenv("FABWATCH_SIMULATE_SPEED", "10")
    args = parse()
    assert (args.dsn, args.speed, args.days) == ("sqlite+aiosqlite:///x.db", 10.0, 0.0)


@pytest.mark.parametrize(("value", "live"), [("0", False), ("no", False), ("Off", False), ("False", False),
                                           ("1", True), ("yes", True)])
def test_the_live_variable_reads_booleans_as_the_other_variables_do(tmp_path, monkeypatch, value, live):
    """`no`, `off` and `False` used to mean live: a run that never ends."""
    monkeypatch.setenv("FABWATCH_SIMULATE_LIVE", value)
    args = parse("--dsn", f"sqlite+aiosqlite:///{tmp_path / 'sim.db'}", "--duration", "0.2", "--tick", "0.1")
    assert cli.run(args) == 0
    assert args.live is live


def test_a_bad_variable_is_an_error_of_simulate_alone(tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv("FABWATCH_SIMULATE_LIVE", "maybe")
    monkeypatch.setenv("FABWATCH_SIMULATE_DAYS", "abc")
    with pytest.raises(SystemExit) as stopped:
        parse("--dsn", f"sqlite+aiosqlite:///{tmp_path / 'sim.db'}")
    assert stopped.value.code == 2
    assert "argument --days: invalid float value: 'abc'" in capsys.readouterr().err
    monkeypatch.delenv("FABWATCH_SIMULATE_DAYS")
    with caplog.at_level(logging.ERROR):
        assert cli.run(parse("--dsn", f"sqlite+aiosqlite:///{tmp_path / 'sim.db'}")) == 2
    assert "FABWATCH_SIMULATE_LIVE='maybe' is not 1/true/yes/on or 0/false/no/off" in caplog.text


@pytest.mark.parametrize(("extra", "status", "message"), [
    (["--dsn", "notadsn"], 2, "Could not parse SQLAlchemy URL"),
    (["--timezone", "Mars/X"], 2, "No time zone found with key Mars/X"),
    (["--dsn", "postgresql+asyncpg://u:pw@127.0.0.1:1/x"], 1, "Connect call failed"),
])
def test_bad_arguments_and_an_unreachable_database_are_one_line_errors(tmp_path, caplog, extra, status, message):
    args = parse("--dsn", f"sqlite+aiosqlite:///{tmp_path / 'sim.db'}", "--days", "0.01", *extra)
    with caplog.at_level(logging.ERROR):
        assert cli.run(args) == status
    assert message in caplog.text
