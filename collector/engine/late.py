"""Late rows: rows committed after the watermark had passed their time (a lagging replica, a batch
loader, a late event), found by comparing what the database holds now for the ledger's span with
what the counters took, and counted when found.

The check runs at each reconcile over `late_window`; for a record store fabwatch writes, at every
sample over the longest window, and only when its ingest sequence shows a record arrived behind
the watermark. Saved in the process's state: `ledger` by edge, `late` by edge, `seq`.
"""

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from collector.db import AsyncConnection
from collector.engine.edges import EdgeReader, add_counted
from collector.engine.sums import Groups, add
from collector.engine.windows import longest_window
from collector.inventory.models import Process, SqlSource
from collector.logs import log_event

log = logging.getLogger("collector.engine")


@dataclass(frozen=True)
class LateRows:
    """How one source looks for late rows."""

    source_name: str
    source: SqlSource
    every_sample: bool
    """Look at every sample over the longest window (a record store fabwatch writes, where a record
    may arrive days after its dates), not only at a reconcile over `late_window`."""
    limit: int
    """The cap on dimension sets (rows counted late are capped as the others)."""

    def window(self, process: Process) -> float:
        """How far behind the watermark rows are compared with the ledger."""
        if self.every_sample:
            return longest_window(process)
        return self.source.late_window or self.source.reconcile

    async def count(self, reader: EdgeReader, process: Process, state: dict[str, Any], hi: float) -> float:
        """Count the rows that came after the watermark had passed their time (committed later than
        `settle`): what the database holds now for the ledger's span beyond what the counters took.
        Counters only go up; the ledger restarts at the window behind the watermark. Returns how many
        rows came late."""
        ledgers = state.setdefault("ledger", {})
        window = self.window(process)
        found = 0.0
        for edge in reader.edges():
            ledger = ledgers[edge]
            start = max(ledger["from"], hi - window)
            kept = await reader.read(edge, start, hi)
            older = await reader.read(edge, ledger["from"], start) if ledger["from"] < start else {}
            late = _beyond(kept, older, ledger["sums"])
            if late:
                found += self._count_edge(process, state, edge, late, reader.dims)
            ledgers[edge] = {"from": start, "sums": kept}
        return found

    def _count_edge(self, process: Process, state: dict[str, Any], edge: str, late: Groups, dims: int) -> float:
        add_counted(process, state, edge, late, dims, self.limit)
        counted = sum(s["n"] for s in late.values())
        state.setdefault("late", {})[edge] = state.get("late", {}).get(edge, 0.0) + counted
        log_event(log, "late_rows", logging.INFO, source=self.source_name, edge=edge, rows=int(counted),
                  hint="rows committed later than settle; counted now")
        return counted


def _beyond(kept: Groups, older: Groups, taken_by_key: Groups) -> Groups:
    """The groups of which the database now holds more rows than the counters took."""
    late: Groups = {}
    for key in set(kept) | set(older):
        now_sums = dict(kept.get(key, {}))
        add(now_sums, older.get(key, {}))
        taken = taken_by_key.get(key, {})
        extra = {name: value - taken.get(name, 0.0) for name, value in now_sums.items()}
        if extra.get("n", 0.0) > 0:
            late[key] = {name: max(0.0, value) for name, value in extra.items()}
    return late


async def ingest_seq(conn: AsyncConnection) -> int | None:
    """The record store's last ingest sequence number (read before the rows, so that a record
    written after it is looked at in the next sample)."""
    row = (await conn.execute(text("SELECT value FROM sync_meta WHERE key = 'ingest_seq'"))).first()
    return None if row is None else int(row[0])


async def arrived_late(conn: AsyncConnection, process: Process, state: dict[str, Any], prev: float,
                       arrived: int | None) -> bool:
    """Whether a record store received, since the last sample (up to ingest sequence `arrived`), a
    record whose creation or completion the counters had already passed (`prev`): then the late-row
    check runs. Two index lookups."""
    if arrived is None:
        return False
    since, state["seq"] = state.get("seq"), arrived
    if since is None:
        return True
    cols, table = process.records.columns, process.records.table
    for edge, column_name in (("created", cols.created), ("completed", cols.completed)):
        if column_name is None:
            continue
        found = await conn.execute(text(
            f'SELECT 1 FROM "{table}" WHERE fab_{edge}_seq > :since AND fab_{edge}_seq <= :until '
            f'AND "{column_name}" <= :prev LIMIT 1'), {"since": since, "until": arrived, "prev": prev})
        if found.first() is not None:
            return True
    return False
