"""The rollups kept current while serving, and replaced by a reload."""

import asyncio
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from app.rolling import Rolling
from collector.health import HealthTracker
from collector.inventory.load import load_inventory
from collector.inventory.models import SqlSource
from collector.rollups import RollupStore, late_of, midnight, totals
from tests.app.test_service import make_records, write_inventory


def created_today(records: Path) -> int:
    today = datetime.now(UTC).date()
    start = datetime(today.year, today.month, today.day, tzinfo=UTC).timestamp()
    with sqlite3.connect(records) as db:
        return int(db.execute("SELECT COUNT(*) FROM trouble_ticket WHERE created_at >= ?", (start,)).fetchone()[0])


async def rolled_created(state: Path, want: int, timeout: float = 20.0) -> float:
    """Wait until today's rollup of `problem` counts `want` created items; return what it counts."""
    today = datetime.now(UTC).date()
    store = RollupStore(state)
    deadline = time.monotonic() + timeout
    try:
        while True:
            days = store.read("problem", today, today, "UTC")
            got = totals(days[today]).get("created", 0.0) if days else -1.0
            if got == want or time.monotonic() > deadline:
                return got
            await asyncio.sleep(0.05)
    finally:
        store.close()


async def test_a_reload_rolls_up_the_new_inventorys_records(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    make_records(first / "records.db")
    make_records(second / "records.db", count=10)
    with sqlite3.connect(second / "records.db") as db:  # five more today: the two databases differ today
        now = time.time()
        db.executemany("INSERT INTO trouble_ticket (id, created_at, updated_at, status) VALUES (?, ?, ?, 'inProgress')",
                       [(f"new{i}", now - 60, now - 60) for i in range(5)])
    old = load_inventory([write_inventory(first, first / "records.db")])
    new = load_inventory([write_inventory(second, second / "records.db")])
    state = tmp_path / "state.db"
    rolling = Rolling(old, state, time.time)
    rolling.start()
    try:
        assert await rolled_created(state, created_today(first / "records.db")) == created_today(first / "records.db")
        rolling.replace_inventory(new)
        want = created_today(second / "records.db")
        assert want != created_today(first / "records.db")
        assert await rolled_created(state, want) == want
    finally:
        await rolling.stop()
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("rollups-")]


def rollup_samples(health: HealthTracker, family: str) -> dict[str, float]:
    found = next((f for f in health.families() if f.name == family), None)
    return {} if found is None else {dict(labels)["source"]: value for labels, value in found.samples}


async def test_the_last_final_day_and_failed_passes_are_exported(tmp_path: Path) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    make_records(good / "records.db")
    sqlite3.connect(bad / "records.db").close()  # no table: every pass fails
    inventory = load_inventory([write_inventory(good, good / "records.db")])
    broken = load_inventory([write_inventory(bad, bad / "records.db")])
    source = inventory.sources["crm"]
    assert isinstance(source, SqlSource)
    now = time.time()
    today = datetime.fromtimestamp(now, UTC).date()
    state = tmp_path / "state.db"
    store = RollupStore(state)  # three days ago final: the serve resumes from the day after
    store.save("problem", {today - timedelta(days=3): {}}, "UTC", {}, now)
    store.close()
    ends = [midnight(today - timedelta(days=i), "UTC") for i in range(3)]
    want = max(end for end in ends if end + late_of(source) <= now)
    health = HealthTracker([])
    rolling = Rolling(inventory, state, lambda: now, health)
    rolling.start()
    try:
        assert rollup_samples(health, "fab_rollup_errors") == {"crm": 0.0}  # at 0 from the start
        deadline = time.monotonic() + 20
        while "crm" not in rollup_samples(health, "fab_rollup_last_day_timestamp_seconds"):
            assert time.monotonic() < deadline, "no final day after 20 s"
            await asyncio.sleep(0.05)
        assert rollup_samples(health, "fab_rollup_last_day_timestamp_seconds") == {"crm": want}
        rolling.replace_inventory(broken)
        while health.rollup_errors("crm") < 1:
            assert time.monotonic() < deadline, "no failed pass counted after 20 s"
            await asyncio.sleep(0.05)
        assert rollup_samples(health, "fab_rollup_errors") == {"crm": 1.0}
    finally:
        await rolling.stop()
