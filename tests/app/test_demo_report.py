"""The demo's report: a history long enough for a whole last month, and no report of a month it does
not cover (tests/test_demo_acceptance.py runs the demo and reads the report it writes)."""

import asyncio
import io
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from app.demo_report import DemoReport, history_days, month_to_report, remember_start, write_report
from reports.summary import Month

ZONE = "Europe/Berlin"


def at(*fields: int) -> float:
    return datetime(*fields, tzinfo=ZoneInfo(ZONE)).timestamp()  # type: ignore[misc]


@pytest.mark.parametrize(("now", "days"), [
    (at(2026, 12, 3, 10), 35.0),  # 35 days reach back to October 29: November is whole
    (at(2026, 12, 20, 10), 50.0),  # back to November 1, 00:00 in Berlin (49 days and 10 hours, rounded up)
    (at(2026, 3, 31, 23), 59.0),  # back to February 1: 58 days and 22 hours (March 29 has 23 hours)
])
def test_the_first_start_simulates_the_whole_last_month(now: float, days: float) -> None:
    assert history_days(None, ZONE, now) == days
    local = datetime.fromtimestamp(now, ZoneInfo(ZONE))
    last = Month(local.year, local.month).shift(-1)
    assert now - days * 86400 <= at(last.year, last.month, 1)


def test_days_given_are_kept() -> None:
    assert history_days(2.0, ZONE, at(2026, 12, 20)) == 2.0


def test_only_a_month_the_history_covers_is_reported(tmp_path: Path) -> None:
    now = at(2026, 12, 20, 10)
    assert month_to_report(tmp_path, ZONE, now) is None  # no history start known
    remember_start(tmp_path, at(2026, 11, 1) + 1)
    assert month_to_report(tmp_path, ZONE, now) is None  # a second short of November
    remember_start(tmp_path, at(2026, 11, 1))
    assert month_to_report(tmp_path, ZONE, now) == Month(2026, 11)


def test_a_month_not_covered_says_so_and_writes_nothing(tmp_path: Path) -> None:
    remember_start(tmp_path, at(2026, 11, 15))
    out, err = io.StringIO(), io.StringIO()
    demo = DemoReport(tmp_path / "none.yaml", {}, tmp_path / "state.db", tmp_path, ZONE, tmp_path / "out")
    assert asyncio.run(write_report(demo, at(2026, 12, 20), out, err)) == []
    assert out.getvalue().startswith("report: none (the simulated history does not cover 2026-11")
    assert not (tmp_path / "out").exists()
