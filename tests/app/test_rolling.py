"""The rollups kept current while serving, and replaced by a reload."""

import asyncio
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

from app.rolling import Rolling
from collector.inventory.load import load_inventory
from collector.rollups import RollupStore, totals
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
