"""Rows committed after the watermark passed their time are counted once, late, never lost.

A read replica lagging, a batch loader, an event hub retrying: the row's own dates are behind what
the counters already read. The reconcile finds it (SQL sources), every sample does for the record
stores fabwatch writes; counters catch up monotonically and `fab_items_late_total` says how many.
"""

import sqlite3
from pathlib import Path

from collector.engine import SourceSampler
from collector.inventory.load import load_inventory
from collector.inventory.sources import NAMES
from collector.samples import SourceSample
from collector.sources.store import RecordStore
from collector.state import StateStore

T0 = 1_767_225_600.0
INVENTORY = """
sources:
  db: {{kind: sql, dsn: "sqlite+aiosqlite:///{db}", settle: 2, reconcile: 1h}}
processes:
  problem:
    etom: "1.3.1.3"
    name: tickets
    team: ops
    records:
      source: db
      table: ticket
      columns: {{id: id, created: created_at, completed: completed_at, due: due_at, status: status,
                dimensions: [priority], measures: [minutes]}}
      open_statuses: [open]
    kpis:
      inflow: {{kind: volume, window: 1d}}
      in_time: {{kind: sla, objective: 0.9, window: 7d}}
      backlog: {{kind: backlog}}
      cycle: {{kind: duration, buckets: [60, 600]}}
    costs:
      labour: {{driver: minutes, rate_per_unit: 2}}
"""


def make_db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE ticket (id TEXT PRIMARY KEY, created_at REAL, completed_at REAL, due_at REAL, "
               "status TEXT, priority TEXT, minutes REAL)")
    db.execute("CREATE INDEX ix_c ON ticket (created_at)")
    db.execute("CREATE INDEX ix_d ON ticket (completed_at)")
    return db


def sampler(tmp_path: Path, every_sample: bool = False) -> SourceSampler:
    path = tmp_path / "inv.yaml"
    path.write_text(INVENTORY.format(db=tmp_path / "ops.db"))
    inventory = load_inventory([path])
    return SourceSampler("db", inventory.sources["db"], inventory.processes,  # type: ignore[arg-type]
                         StateStore(tmp_path / "state.db"), late_every_sample=every_sample)


def value(sample: SourceSample, family: str, **labels: str) -> float:
    found = [v for f in sample.families if f.name == family for ls, v in f.samples
             if all(dict(ls).get(k) == want for k, want in labels.items())]
    assert len(found) == 1, (family, labels, found)
    return found[0]


def cost(sample: SourceSample) -> float:
    return value(sample, "fab_cost", component="labour")


async def test_a_row_committed_after_the_watermark_is_counted_at_the_next_reconcile(tmp_path: Path) -> None:
    db = make_db(tmp_path / "ops.db")
    db.execute("INSERT INTO ticket VALUES ('a', ?, ?, ?, 'done', 'high', 5)", (T0 - 500, T0 - 400, T0 - 100))
    engine = sampler(tmp_path)
    try:
        first = await engine.sample(T0)
        assert value(first, "fab_items_created", priority="high") == 1
        # committed now, dated ten minutes ago: behind the watermark (T0 - settle)
        db.execute("INSERT INTO ticket VALUES ('b', ?, ?, ?, 'done', 'high', 7)", (T0 - 600, T0 - 590, T0 + 100))
        db.execute("INSERT INTO ticket VALUES ('c', ?, NULL, NULL, 'open', 'low', 0)", (T0 - 300,))
        before = await engine.sample(T0 + 60)
        assert value(before, "fab_items_created", priority="high") == 1  # not seen until the reconcile
        reconciled = await engine.sample(T0 + 3600)
        assert value(reconciled, "fab_items_created", priority="high") == 2
        assert value(reconciled, "fab_items_created", priority="low") == 1
        assert value(reconciled, "fab_items_completed", priority="high", outcome="unknown") == 2
        assert value(reconciled, "fab_items_late", edge="created") == 2
        assert value(reconciled, "fab_items_late", edge="completed") == 1
        assert value(reconciled, "fab_sla_good", kpi="in_time") == 2
        assert cost(reconciled) == 2 * (5 + 7)
        hist = next(h for f in reconciled.families if f.name == "fab_cycle_time_seconds" for _, h in f.histograms)
        assert hist.count == 2
        assert hist.buckets[0] == (60.0, 1.0)
        assert value(reconciled, "fab_backlog_items", priority="low") == 1
        # later reconciles count nothing twice, and a deleted row takes nothing back
        db.execute("DELETE FROM ticket WHERE id = 'a'")
        later = await engine.sample(T0 + 7200)
        assert value(later, "fab_items_created", priority="high") == 2
        assert value(later, "fab_items_late", edge="created") == 2
    finally:
        await engine.close()


async def test_the_late_count_survives_a_restart(tmp_path: Path) -> None:
    db = make_db(tmp_path / "ops.db")
    engine = sampler(tmp_path)
    await engine.sample(T0)
    await engine.close()
    db.execute("INSERT INTO ticket VALUES ('b', ?, NULL, NULL, 'open', 'high', 0)", (T0 - 100,))
    engine = sampler(tmp_path)
    try:
        await engine.sample(T0 + 60)
        found = await engine.sample(T0 + 3600)
        assert value(found, "fab_items_created", priority="high") == 1
        assert value(found, "fab_items_late", edge="created") == 1
    finally:
        await engine.close()


def store_row(ident: str, created: float, completed: float | None, status: str) -> dict[str, object]:
    row: dict[str, object] = dict.fromkeys(NAMES)
    row.update(id=ident, created_at=created, completed_at=completed, due_at=created + 86400, updated_at=created,
               status=status, priority="high", handling_minutes=1.0)
    return {k: v for k, v in row.items() if v is not None}


async def test_a_record_store_counts_a_late_record_at_the_next_sample(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "ops.db", ["ticket"])
    path = tmp_path / "inv.yaml"
    path.write_text(INVENTORY.format(db=tmp_path / "ops.db").replace("measures: [minutes]",
                                                                      "measures: [handling_minutes]")
                    .replace("driver: minutes", "driver: handling_minutes"))
    inventory = load_inventory([path])
    engine = SourceSampler("db", inventory.sources["db"], inventory.processes,  # type: ignore[arg-type]
                           StateStore(tmp_path / "state.db"), late_every_sample=True)
    try:
        store.upsert("ticket", [store_row("now", T0 - 100, None, "open")])
        await engine.sample(T0)
        await engine.sample(T0 + 30)
        # a record created and completed days before it arrives (within the longest window)
        store.upsert("ticket", [store_row("old", T0 - 80000, T0 - 70000, "done")])
        found = await engine.sample(T0 + 60)
        assert value(found, "fab_items_created", priority="high") == 2
        assert value(found, "fab_items_completed", priority="high", outcome="unknown") == 1
        # an open record completed long ago, heard of late
        store.upsert("ticket", [store_row("now", T0 - 100, T0 - 90, "done")])
        again = await engine.sample(T0 + 120)
        assert value(again, "fab_items_created", priority="high") == 2
        assert value(again, "fab_items_completed", priority="high", outcome="unknown") == 2
        assert value(again, "fab_items_late", edge="created") == 1
        assert value(again, "fab_items_late", edge="completed") == 2
        assert value(again, "fab_backlog_items", priority="high") == 0
    finally:
        await engine.close()
        store.close()
