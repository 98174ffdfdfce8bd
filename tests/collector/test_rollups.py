"""Daily rollups: day bounds across DST, a late row and a reopened ticket healed by the re-roll,
and the same rollups from every time kind SQLite holds."""

import math
import sqlite3
from datetime import date, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from collector.inventory.load import load_inventory
from collector.inventory.models import Inventory, RatioKpi, Target
from collector.rollups import (
    DayRollup,
    Rolled,
    RollupStore,
    SourceRoller,
    days_between,
    definitions,
    pending_days,
    reroll,
    reroll_days,
    roll_sources,
    totals,
)
from simulator import Simulator
from tests.collector.time_tables import TIME_COLUMNS, Rows, read_rows, simulate, write
from tests.reports.report_oracle import bounds, figures

EXAMPLE = Path(__file__).parents[2] / "examples" / "operator.yaml"
BERLIN = "Europe/Berlin"
NOW = datetime(2026, 3, 31, 9, 0, tzinfo=ZoneInfo(BERLIN)).timestamp()
"""Two days after the change to summer time."""


def example(dsn: str, zone: str = BERLIN, source_zone: str = "UTC", late: float | None = None,
            declared: str | None = None) -> Inventory:
    found = load_inventory([EXAMPLE], {"FABWATCH_DEMO_DSN": dsn})
    source = found.sources["operator"].model_copy(update={"timezone": source_zone, "late_window": late})
    processes = found.processes
    if declared is not None:  # a kind the database type cannot tell (milliseconds in an integer)
        processes = {name: p.model_copy(update={"records": p.records.model_copy(update={
            "time_types": dict.fromkeys(TIME_COLUMNS, declared)})}) for name, p in processes.items()}
    return found.model_copy(update={"sources": {"operator": source}, "processes": processes,
                                    "service": found.service.model_copy(update={"timezone": zone})})


def test_a_day_lasts_23_24_or_25_hours() -> None:
    march = days_between(date(2026, 3, 28), date(2026, 3, 30), BERLIN)
    assert [d.seconds / 3600 for d in march] == [24, 23, 24]
    october = days_between(date(2026, 10, 24), date(2026, 10, 26), BERLIN)
    assert [d.seconds / 3600 for d in october] == [24, 25, 24]
    assert all(a.end == b.start for a, b in pairwise(march))
    new_york = days_between(date(2026, 3, 8), date(2026, 3, 8), "America/New_York")[0]
    assert (new_york.seconds, datetime.fromtimestamp(new_york.start, ZoneInfo("UTC")).hour) == (23 * 3600, 5)


def test_a_reroll_covers_today_and_the_late_window() -> None:
    days = reroll_days(NOW, BERLIN, 36 * 3600)  # 09:00 on the 31st, 36 h back: the evening of the 29th
    assert [d.day for d in days] == [date(2026, 3, 29), date(2026, 3, 30), date(2026, 3, 31)]
    assert [d.day for d in reroll_days(NOW, BERLIN, 3600)] == [date(2026, 3, 31)]


def test_a_day_is_final_once_rolled_the_late_window_after_its_end() -> None:
    end = datetime(2026, 3, 30, 0, 0, tzinfo=ZoneInfo(BERLIN)).timestamp()  # the end of the 29th
    assert Rolled(end + 3600, None).final(date(2026, 3, 29), BERLIN, 3600)
    assert not Rolled(end + 3599, None).final(date(2026, 3, 29), BERLIN, 3600)
    assert not Rolled(end + 3600, None).final(date(2026, 3, 30), BERLIN, 3600)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def state_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """`service.state_path`: a SQLite file, or a PostgreSQL URL (a fresh database of the session's server)."""
    if request.param == "sqlite":
        return str(tmp_path / "state.db")
    server = request.getfixturevalue("postgres")
    return str(server.dsn(database=server.create_database(), driver="postgresql"))


def test_a_reroll_resumes_after_the_last_final_day_oldest_first_and_bounded(state_location: str) -> None:
    store = RollupStore(state_location)
    assert [d.day for d in pending_days(store, ["problem"], BERLIN, 3600, NOW)] == [date(2026, 3, 31)]
    final_at = datetime(2026, 1, 2, 12, 0, tzinfo=ZoneInfo(BERLIN)).timestamp()  # the 1st is final, not the 2nd
    store.save("problem", {date(2026, 1, 1): {}, date(2026, 1, 2): {}}, BERLIN, {}, final_at)
    days = pending_days(store, ["problem", "order"], BERLIN, 3600, NOW)
    assert len(days) == 62  # 2 January to 4 March: the oldest first, today in a later pass
    assert days == days_between(date(2026, 1, 2), date(2026, 3, 4), BERLIN)
    assert [d.day for d in pending_days(store, ["problem"], BERLIN, 3600, NOW, limit=400)][-1] == date(2026, 3, 31)
    store.save("problem", {date(2026, 3, 29): {}}, BERLIN, {}, NOW)  # a later final day
    assert [d.day for d in pending_days(store, ["problem"], BERLIN, 3600, NOW)] == [date(2026, 3, 30),
                                                                                   date(2026, 3, 31)]
    store.close()


def test_a_kpi_fingerprint_changes_with_what_its_rolled_measures_depend_on_only() -> None:
    inventory = load_inventory([EXAMPLE], {"FABWATCH_DEMO_DSN": "sqlite+aiosqlite:///unused.db"})
    problem = inventory.processes["problem"]
    before = definitions(problem)
    reopen = problem.kpis["reopen_rate"]
    assert isinstance(reopen, RatioKpi)
    retargeted = problem.model_copy(update={
        "kpis": {**problem.kpis, "reopen_rate": reopen.model_copy(update={"target": Target(max=0.5),
                                                                          "description": "other"})},
        "records": problem.records.model_copy(update={"open_statuses": ("held",)})})
    assert definitions(retargeted) == before
    regood = problem.model_copy(update={"kpis": {**problem.kpis, "reopen_rate": reopen.model_copy(
        update={"good": "reopened = 1"})}})
    assert {k for k, v in definitions(regood).items() if before[k] != v} == {"reopen_rate"}
    filtered = problem.model_copy(update={"records": problem.records.model_copy(update={"where": "1 = 1"})})
    assert all(before[k] != v for k, v in definitions(filtered).items())
    recosted = problem.model_copy(update={"costs": {}})
    assert {k for k, v in definitions(recosted).items() if before[k] != v} == {
        k for k, kpi in problem.kpis.items() if kpi.kind == "cost"}


def assert_rollups_match(rollups: dict[date, DayRollup], inventory: Inventory, rows: Rows, process: str,
                         zone: str, rolled_at: float | None = None) -> None:
    """A day's totals against the oracle: created, completed, outcomes, costs, open items (none for a day
    still running at `rolled_at`: it has no end yet)."""
    model = inventory.processes[process]
    for day, rollup in rollups.items():
        got = totals(rollup)
        running = rolled_at is not None and bounds(day, day, zone)[1] > rolled_at
        want = figures(model, rows[model.records.table], *bounds(day, day, zone))
        assert got.get("created", 0.0) == want.created, day
        assert got.get("completed", 0.0) == want.completed, day
        assert {k.removeprefix("outcome."): v for k, v in got.items() if k.startswith("outcome.")} == \
            dict(want.outcomes), day
        for name, cost in want.costs.items():
            assert math.isclose(got.get(f"cost.{name}", 0.0), cost, rel_tol=1e-9, abs_tol=1e-9), (day, name)
        if running:
            assert not [k for k in got if k.startswith("open")], day
            continue
        backlog = next((n for n, k in model.kpis.items() if k.kind == "backlog"), None)
        if backlog is not None:
            assert got.get("open", 0.0) == want.kpis[backlog], day
        overdue = next((n for n, k in model.kpis.items() if k.kind == "overdue"), None)
        if overdue is not None:
            assert got.get("open.overdue", 0.0) == want.kpis[overdue], day
        end = bounds(day, day, zone)[1]
        still_open = [r["created_at"] for r in rows[model.records.table]
                      if r["created_at"] < end and (r["completed_at"] is None or r["completed_at"] >= end)]
        oldest_age = end - min(still_open) if still_open else None
        assert (got.get("open.oldest_age") is None) == (oldest_age is None), day
        if oldest_age is not None:
            assert math.isclose(got["open.oldest_age"], oldest_age, rel_tol=1e-9, abs_tol=1e-6), day


async def test_a_late_row_and_a_reopened_ticket_change_their_day_after_the_next_reroll(tmp_path: Path,
                                                                                      state_location: str) -> None:
    db = tmp_path / "operator.db"
    dsn = f"sqlite+aiosqlite:///{db}"
    sim = Simulator(dsn, seed=3, scale=0.2)
    await sim.create_schema()
    await sim.backfill(5, NOW)
    await sim.close()
    inventory = example(dsn, late=2 * 86400)
    store = RollupStore(state_location)
    roller = SourceRoller("operator", inventory.sources["operator"], inventory.processes,  # type: ignore[arg-type]
                          store, BERLIN)
    await roller.roll(days_between(date(2026, 3, 27), date(2026, 3, 31), BERLIN))
    yesterday = date(2026, 3, 30)
    before = totals(store.read("problem", yesterday, yesterday, BERLIN)[yesterday])
    noon = datetime(2026, 3, 30, 12, 0, tzinfo=ZoneInfo(BERLIN)).timestamp()
    with sqlite3.connect(db) as conn:  # committed now, dated yesterday: a late row
        conn.execute("INSERT INTO trouble_ticket (id, created_at, updated_at, status, priority, channel, segment) "
                     "VALUES ('LATE-1', ?, ?, 'inProgress', 'high', 'web', 'consumer')", (noon, noon))
        start, end = bounds(yesterday, yesterday, BERLIN)
        reopened = conn.execute("SELECT id FROM trouble_ticket WHERE completed_at >= ? AND completed_at < ? "
                                "AND created_at < ? LIMIT 1", (start, end, start)).fetchone()[0]
        conn.execute("UPDATE trouble_ticket SET completed_at = NULL, outcome = NULL, status = 'inProgress', "
                     "reopened = reopened + 1 WHERE id = ?", (reopened,))
    untouched = store.read("problem", date(2026, 3, 27), date(2026, 3, 27), BERLIN)
    days = await reroll(roller, NOW)
    await roller.close()
    assert [d.day for d in days] == [date(2026, 3, 29), date(2026, 3, 30), date(2026, 3, 31)]
    after = totals(store.read("problem", yesterday, yesterday, BERLIN)[yesterday])
    assert after["created"] == before["created"] + 1
    assert after["completed"] == before["completed"] - 1
    assert after["open"] == before["open"] + 2  # both are open at the end of the day
    rows = read_rows(db)
    assert_rollups_match(store.read("problem", days[0].day, days[-1].day, BERLIN), inventory, rows, "problem", BERLIN,
                         rolled_at=NOW)  # today, running at NOW: no open items at its end yet
    assert store.read("problem", date(2026, 3, 27), date(2026, 3, 27), BERLIN) == untouched
    store.close()


async def test_a_day_rolled_before_its_late_window_passed_is_rerolled_on_the_next_pass(tmp_path: Path) -> None:
    """A serve stopped the evening of the 28th and started again the 31st: the 28th, rolled before it
    ended, is recomputed with the rows that came later, though it is outside the 1 h late window."""
    db = tmp_path / "operator.db"
    dsn = f"sqlite+aiosqlite:///{db}"
    sim = Simulator(dsn, seed=3, scale=0.2)
    await sim.create_schema()
    await sim.backfill(5, NOW)
    await sim.close()
    inventory = example(dsn, late=3600)
    store = RollupStore(tmp_path / "state.db")
    roller = SourceRoller("operator", inventory.sources["operator"], inventory.processes,  # type: ignore[arg-type]
                          store, BERLIN)
    evening = datetime(2026, 3, 28, 20, 0, tzinfo=ZoneInfo(BERLIN)).timestamp()
    await reroll(roller, evening)
    day = date(2026, 3, 28)
    late = datetime(2026, 3, 28, 21, 0, tzinfo=ZoneInfo(BERLIN)).timestamp()
    with sqlite3.connect(db) as conn:  # a row of the 28th committed after that roll
        conn.execute("INSERT INTO trouble_ticket (id, created_at, updated_at, status, priority, channel, segment) "
                     "VALUES ('LATE-1', ?, ?, 'inProgress', 'high', 'web', 'consumer')", (late, late))
    before = totals(store.read("problem", day, day, BERLIN)[day])
    assert not store.states("problem", day, day, BERLIN)[day].final(day, BERLIN, 3600)
    days = await reroll(roller, NOW)
    await roller.close()
    assert [d.day for d in days] == [day, date(2026, 3, 29), date(2026, 3, 30), date(2026, 3, 31)]
    assert totals(store.read("problem", day, day, BERLIN)[day])["created"] == before["created"] + 1
    fresh = RollupStore(tmp_path / "fresh.db")
    again = SourceRoller("operator", inventory.sources["operator"], inventory.processes,  # type: ignore[arg-type]
                         fresh, BERLIN)
    await again.roll(days_between(day, day, BERLIN))
    await again.close()
    assert store.read("problem", day, day, BERLIN) == fresh.read("problem", day, day, BERLIN)
    fresh.close()
    assert store.states("problem", day, day, BERLIN)[day].final(day, BERLIN, 3600)
    store.close()


@pytest.fixture(scope="module")
def spring_rows(tmp_path_factory: pytest.TempPathFactory) -> Rows:
    import asyncio

    path = tmp_path_factory.mktemp("sim") / "spring.db"
    asyncio.run(simulate(path, NOW))
    return read_rows(path)


async def rollups_of(dsn: str, tmp: Path, name: str, source_zone: str = "UTC",
                     declared: str | None = None) -> dict[str, Any]:
    inventory = example(dsn, source_zone=source_zone, declared=declared)
    store = RollupStore(tmp / f"{name}.state")
    days = days_between(date(2026, 3, 25), date(2026, 3, 31), BERLIN)
    skipped = await roll_sources(inventory.sources, inventory.processes, store, BERLIN, days)
    assert skipped == []
    out = {p: store.read(p, days[0].day, days[-1].day, BERLIN) for p in inventory.processes}
    store.close()
    return out


def assert_same_rollups(mine: dict[str, Any], theirs: dict[str, Any]) -> None:
    flat = {(p, d, dims, m): v for p, days in mine.items() for d, r in days.items()
            for dims, ms in r.items() for m, v in ms.items()}
    other = {(p, d, dims, m): v for p, days in theirs.items() for d, r in days.items()
             for dims, ms in r.items() for m, v in ms.items()}
    assert flat.keys() == other.keys()
    assert len(flat) > 1000
    differ = {k: (flat[k], other[k]) for k in flat if not math.isclose(flat[k], other[k], rel_tol=1e-9, abs_tol=1e-6)}
    assert not differ


async def compare_kinds(rows: Rows, typed_dsn: str, epoch_dsn: str, tmp: Path, kind: str, zone: str,
                        declared: str | None = None) -> None:
    """The rollups of the rows with times of `kind` equal those of the same rows in epoch seconds."""
    await write(epoch_dsn, rows, "epoch_s", "UTC")
    await write(typed_dsn, rows, kind, zone)
    epoch = await rollups_of(epoch_dsn, tmp, "epoch")
    assert_rollups_match(epoch["problem"], example(epoch_dsn), rows, "problem", BERLIN)
    assert_same_rollups(await rollups_of(typed_dsn, tmp, "typed", zone, declared), epoch)


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "zone", "declared"), [
    ("iso_text", BERLIN, None),        # '2026-03-30 12:00:00.000', a wall time across the change
    ("iso_text", "UTC", None),         # '2026-03-30T10:00:00.000Z'
    ("epoch_ms", "UTC", "epoch_ms"),   # an INTEGER of milliseconds, declared
])
async def test_sqlite_time_kinds_give_the_rollups_of_epoch_seconds(spring_rows: Rows, tmp_path: Path, kind: str,
                                                                   zone: str, declared: str | None) -> None:
    await compare_kinds(spring_rows, f"sqlite+aiosqlite:///{tmp_path / 'typed.db'}",
                        f"sqlite+aiosqlite:///{tmp_path / 'epoch.db'}", tmp_path, kind, zone, declared)


def test_the_postgres_rollup_store_reconnects_after_its_connection_was_broken(postgres: Any) -> None:
    """PostgreSQL restarted or a partition: the call that finds the connection broken fails (a failed
    pass, counted), the next one opens a new connection instead of failing until a restart."""
    import psycopg

    database = postgres.create_database()
    store = RollupStore(postgres.dsn(database=database, driver="postgresql"))
    day = date(2026, 11, 3)
    store.save("problem", {day: {}}, "UTC", {}, 1.0)
    postgres.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                  "WHERE datname = current_database() AND pid <> pg_backend_pid()", database=database)
    with pytest.raises(psycopg.Error):
        store.rolled("problem", day, day, "UTC")
    assert store.rolled("problem", day, day, "UTC") == {day}
    store.close()
