"""The Simulator against real SQLite files: determinism, incidents, stepping, speed."""

import asyncio
import sqlite3
import time

import pytest

from simulator import Incident, Simulator, SimulatorError
from simulator.plans import Plan, row_at
from tests.simulator.helpers import NOW, TABLES, backfill, dsn, dump, query, scalar

HOUR = 3600.0
DAY = 86400.0


def test_same_seed_same_rows_different_seed_different_rows(tmp_path):
    backfill(tmp_path / "a.db", 2, scale=0.3, seed=7)
    backfill(tmp_path / "b.db", 2, scale=0.3, seed=7)
    backfill(tmp_path / "c.db", 2, scale=0.3, seed=8)
    a, b, c = dump(tmp_path / "a.db"), dump(tmp_path / "b.db"), dump(tmp_path / "c.db")
    assert sum(map(len, a.values())) > 1000
    assert a == b
    assert a["trouble_ticket"] != c["trouble_ticket"]
    assert query(tmp_path / "a.db", "SELECT * FROM sim_plan ORDER BY id") == query(
        tmp_path / "b.db", "SELECT * FROM sim_plan ORDER BY id"
    )


def test_schema_indexes_and_wal(tmp_path):
    backfill(tmp_path / "s.db", 0.5, scale=0.1)
    with sqlite3.connect(tmp_path / "s.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        columns = [r[1] for r in conn.execute("PRAGMA table_info(trouble_ticket)")]
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(product_order)")}
    assert columns == [
        "id", "created_at", "completed_at", "due_at", "updated_at", "status", "outcome", "priority", "channel",
        "segment", "paused_seconds", "reopened", "fallout", "first_contact_resolved", "abandoned", "wait_seconds",
        "adjusted", "ebill", "saved", "written_off", "handling_minutes", "amount",
    ]  # fmt: skip
    assert {f"ix_product_order_{c}" for c in ("status", "created_at", "completed_at", "updated_at")} <= indexes


def on_time(path, table, low, high):
    sql = (
        f"SELECT AVG(completed_at <= due_at) FROM {table} "
        "WHERE completed_at IS NOT NULL AND created_at >= ? AND created_at < ?"
    )
    return scalar(path, sql, low, high)


@pytest.mark.slow
def test_slow_incident_lowers_on_time_share_in_its_window(tmp_path):
    window = (NOW - 8 * DAY, NOW - 4 * DAY)
    backfill(tmp_path / "base.db", 10, scale=0.5)
    backfill(tmp_path / "slow.db", 10, scale=0.5, incidents=[Incident("problem", "slow", 3.0, *window)])
    base, slow = (
        on_time(tmp_path / "base.db", "trouble_ticket", *window),
        on_time(tmp_path / "slow.db", "trouble_ticket", *window),
    )
    assert base > 0.85
    assert slow < base - 0.2
    before = (NOW - 10 * DAY, window[0])
    assert on_time(tmp_path / "slow.db", "trouble_ticket", *before) == on_time(
        tmp_path / "base.db", "trouble_ticket", *before
    )


def test_fallout_incident_raises_order_fallout(tmp_path):
    window = (NOW - 8 * DAY, NOW - 3 * DAY)
    backfill(tmp_path / "f.db", 10, scale=0.5, incidents=[Incident("order", "fallout", 5.0, *window)])
    sql = "SELECT AVG(fallout) FROM product_order WHERE created_at >= ? AND created_at < ?"
    inside = scalar(tmp_path / "f.db", sql, *window)
    outside = scalar(tmp_path / "f.db", sql, NOW - 10 * DAY, window[0])
    assert inside > 0.1  # 5 x 3.5 % of the orders, less those not yet held by now
    assert outside < 0.06


def test_surge_incident_raises_arrivals(tmp_path):
    window = (NOW - 2 * DAY, NOW - 1 * DAY)
    backfill(tmp_path / "s.db", 3, scale=0.3, incidents=[Incident("interface", "surge", 4.0, *window)])
    sql = "SELECT COUNT(*) FROM party_interaction WHERE created_at >= ? AND created_at < ?"
    assert scalar(tmp_path / "s.db", sql, *window) > 2.5 * scalar(tmp_path / "s.db", sql, window[0] - DAY, window[0])


def planned(path):
    return [Plan.from_json(i, text) for i, text in query(path, "SELECT id, plan FROM sim_plan")]


def test_backfill_then_step_completes_planned_items_and_creates_new_ones(tmp_path):
    path = tmp_path / "live.db"
    backfill(path, 2, scale=0.3)
    later = NOW + 2 * HOUR
    due = [p for p in planned(path) if p.created <= NOW and row_at(p, later) != row_at(p, NOW)]
    assert due

    async def go():
        sim = Simulator(dsn(path), scale=0.3)
        try:
            return await sim.step(later)
        finally:
            await sim.close()

    assert asyncio.run(go()) > len(due)
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        for plan in due:
            table = {"problem": "trouble_ticket"}.get(plan.process)
            if table is None:
                continue
            stored = dict(conn.execute(f"SELECT * FROM {table} WHERE id = ?", (plan.id,)).fetchone())
            assert stored == row_at(plan, later)
    new = sum(scalar(path, f"SELECT COUNT(*) FROM {t} WHERE created_at > ?", NOW) for t in TABLES)
    assert new > 5
    assert scalar(path, "SELECT value FROM sim_state WHERE key = 'cursor'") == later


def test_stepping_does_not_depend_on_step_boundaries(tmp_path):
    async def go(path, steps):
        sim = Simulator(dsn(path), scale=0.3)
        try:
            await sim.backfill(1, NOW)
            for t in steps:
                await sim.step(t)
        finally:
            await sim.close()

    asyncio.run(go(tmp_path / "one.db", [NOW + 3 * HOUR]))
    asyncio.run(go(tmp_path / "many.db", [NOW + 600, NOW + 601, NOW + 1 * HOUR, NOW + 3 * HOUR]))
    assert dump(tmp_path / "one.db") == dump(tmp_path / "many.db")


def test_restart_continues_from_the_database(tmp_path):
    path = tmp_path / "restart.db"
    backfill(path, 1, scale=0.3)

    async def go(t):
        sim = Simulator(dsn(path), scale=0.3)
        try:
            return await sim.step(t)
        finally:
            await sim.close()

    asyncio.run(go(NOW + HOUR))
    kept = planned(path)
    later = NOW + 5 * DAY
    asyncio.run(go(later))
    assert scalar(path, "SELECT COUNT(*) FROM trouble_ticket WHERE created_at > ?", NOW + HOUR) > 100
    remaining = {p.id for p in planned(path)}
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        for plan in kept:
            if plan.process == "problem":
                row = conn.execute("SELECT * FROM trouble_ticket WHERE id = ?", (plan.id,)).fetchone()
                assert dict(row) == row_at(plan, later)
            assert (plan.id in remaining) == (plan.next_event(later) is not None)


def test_backfill_refuses_a_database_with_history(tmp_path):
    path = tmp_path / "h.db"
    backfill(path, 0.2, scale=0.1)
    with pytest.raises(SimulatorError, match="already holds simulated data"):
        backfill(path, 0.2, scale=0.1)


def test_speed_compresses_durations(tmp_path):
    path = tmp_path / "fast.db"

    async def go():
        sim = Simulator(dsn(path), speed=60, scale=0.5)
        try:
            await sim.step(NOW)
            return await sim.step(NOW + 1800)  # 30 simulated hours
        finally:
            await sim.close()

    assert asyncio.run(go()) > 1000  # ~1.25 simulated days at half volume
    due = query(path, "SELECT DISTINCT priority, due_at - created_at FROM trouble_ticket")
    assert {p: round(d) for p, d in due} == {"critical": 240, "high": 480, "medium": 1440, "low": 4320}
    assert scalar(path, "SELECT COUNT(*) FROM trouble_ticket WHERE completed_at IS NOT NULL") > 20
    median = scalar(
        path,
        "SELECT completed_at - created_at FROM party_interaction WHERE completed_at IS NOT NULL "
        "ORDER BY 1 LIMIT 1 OFFSET (SELECT COUNT(*) / 2 FROM party_interaction WHERE completed_at IS NOT NULL)",
    )
    assert median < 15  # ~7 minutes of handling at speed 60
    assert 6 <= scalar(path, "SELECT AVG(handling_minutes) FROM party_interaction WHERE abandoned = 0") <= 9


def test_run_steps_until_stopped(tmp_path):
    path = tmp_path / "run.db"

    async def go():
        sim = Simulator(dsn(path), speed=20000, scale=0.2)
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(1.0, stop.set)
        try:
            started = time.monotonic()
            await sim.run(stop, tick=0.1)
            return time.monotonic() - started
        finally:
            await sim.close()

    assert asyncio.run(go()) < 3
    assert sum(scalar(path, f"SELECT COUNT(*) FROM {t}") for t in TABLES) > 0
