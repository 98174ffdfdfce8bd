"""Edges: reading the rows whose creation or completion time crossed a range, and counting them.

A process's rows enter at two edges, `created` and `completed`. Each sample reads the range
(previous watermark, now - settle] of each edge (and the ranges its windows need), at most once
per range, in one statement per edge; processes that share a table read theirs in one statement
routed by the shared column. The rows counted go into the counters, the flat sums and the ledger
that `late` compares against.
"""

from collections.abc import Mapping
from typing import Any

from collector.db import AsyncConnection
from collector.engine.cost import book_completed, booked
from collector.engine.expiry import mark_seen
from collector.engine.sums import Groups, Sums, add, cap, group_key
from collector.engine.windows import Range, longest_window, ranges, reconcile_due
from collector.inventory.models import Process
from collector.sql import EdgeQuery, ProcessQueries, Shared


class EdgeReader:
    """Runs edge queries, each range at most once per sample."""

    def __init__(self, conn: AsyncConnection, queries: ProcessQueries) -> None:
        self._conn = conn
        self._queries = {"created": queries.created, "completed": queries.completed}
        self._cache: dict[tuple[str, float, float], Groups] = {}
        self.dims = queries.created.groups

    def edges(self) -> list[str]:
        return [edge for edge, query in self._queries.items() if query is not None]

    def keep(self, edge: str, lo: float, hi: float, groups: Groups) -> None:
        """Remember what a shared statement read for this process."""
        self._cache[(edge, lo, hi)] = groups

    async def prefetch(self, wanted_ranges: list[Range]) -> None:
        """Read every range of one edge not read yet in one statement (one round trip per edge)."""
        for edge, query in self._queries.items():
            wanted = sorted({(lo, hi) for e, lo, hi in wanted_ranges if e == edge and (e, lo, hi) not in self._cache})
            if query is None or not wanted:
                continue
            if len(wanted) == 1:
                continue  # read() runs the plain statement
            params = {f"{bound}{i}": value for i, (lo, hi) in enumerate(wanted)
                      for bound, value in (("lo", lo), ("hi", hi))}
            found: list[Groups] = [{} for _ in wanted]
            for row in await self._conn.execute(query.parts(len(wanted)), params):
                add_row(found[row[0]], query, row[1:])
            for (lo, hi), groups in zip(wanted, found, strict=True):
                self._cache[(edge, lo, hi)] = groups

    async def read(self, edge: str, lo: float, hi: float) -> Groups:
        key = (edge, lo, hi)
        if key not in self._cache:
            query = self._queries[edge]
            assert query is not None, f"no {edge} column mapped"
            self._cache[key] = await _run_edge(self._conn, query, lo, hi)
        return self._cache[key]


async def _run_edge(conn: AsyncConnection, query: EdgeQuery, lo: float, hi: float) -> Groups:
    groups: Groups = {}
    for row in await conn.execute(query.statement, {"lo": lo, "hi": hi}):
        add_row(groups, query, row)
    return groups


def add_row(groups: Groups, query: EdgeQuery, row: Any, skip: int = 0) -> None:
    """Add one row of an edge statement; `skip` leading group columns route it (shared statements)."""
    key = group_key(row[skip:query.groups], query.lookups[skip:query.groups])
    sums = {name: float(value or 0) for name, value in zip(query.sum_names, row[query.groups:], strict=True)}
    add(groups.setdefault(key, {}), sums)


def span(process: Process, state: dict[str, Any], now: float, settle: float) -> tuple[float, float | None, float]:
    """(lo, previous watermark, hi): the rows entering in this sample are those in (lo, hi]."""
    hi = now - settle
    prev: float | None = state.get("hi")
    return (hi - longest_window(process) if prev is None else prev), prev, hi


async def read_shared(conn: AsyncConnection, shared: Shared, processes: Mapping[str, Process],
                      state: dict[str, Any], readers: Mapping[str, EdgeReader], now: float, settle: float,
                      reconcile: float) -> None:
    """Read every edge range the shared processes need in one statement per edge; route the rows."""
    wanted: dict[str, set[tuple[float, float]]] = {}
    for name in shared.processes.values():
        process, pstate = processes[name], state.setdefault(name, {})
        lo, prev, hi = span(process, pstate, now, settle)
        if hi > lo:
            due = reconcile_due(pstate, prev, now, reconcile)
            for edge, a, b in ranges(readers[name].edges(), process, pstate, lo, prev, hi, due):
                wanted.setdefault(edge, set()).add((a, b))
    for edge, spans in wanted.items():
        await _read_shared_edge(conn, shared, edge, sorted(spans), readers)


async def _read_shared_edge(conn: AsyncConnection, shared: Shared, edge: str, ordered: list[tuple[float, float]],
                            readers: Mapping[str, EdgeReader]) -> None:
    query = shared.queries.created if edge == "created" else shared.queries.completed
    assert query is not None
    params = {f"{bound}{i}": value for i, (lo, hi) in enumerate(ordered)
              for bound, value in (("lo", lo), ("hi", hi))}
    found: dict[str, list[Groups]] = {name: [{} for _ in ordered] for name in shared.processes.values()}
    for row in await conn.execute(query.parts(len(ordered)), params):
        values: tuple[Any, ...] = tuple(row)
        target = shared.processes.get(str(values[1]))
        if target is not None:  # the shared column leads the groups: skip it in the key
            add_row(found[target][int(values[0])], query, values[1:], skip=1)
    for target, groups in found.items():
        for (lo, hi), part in zip(ordered, groups, strict=True):
            readers[target].keep(edge, lo, hi, part)


async def count_entering(reader: EdgeReader, process: Process, state: dict[str, Any], lo: float, hi: float,
                         limit: int) -> None:
    """Count the rows that entered each edge in (lo, hi], and note them in the ledger."""
    ledgers = state.setdefault("ledger", {})
    for edge in reader.edges():
        groups = await reader.read(edge, lo, hi)
        add_counted(process, state, edge, groups, reader.dims, limit)
        mark_seen(state, groups, reader.dims, hi)
        # what the counters took, by group, since the ledger's start (see `late.count_late`)
        ledger = ledgers.setdefault(edge, {"from": lo, "sums": {}})
        for key, sums in groups.items():
            add(ledger["sums"].setdefault(key, {}), sums)


def add_counted(process: Process, state: dict[str, Any], edge: str, groups: Groups, dims: int, limit: int) -> None:
    """Add rows that entered an edge to its counters, sums and booked costs."""
    known = state.setdefault("dimsets", [])
    costs = booked(process, state)  # before the sums grow: an old state starts from its drivers so far
    counters = state.setdefault(edge, {})
    flat = state.setdefault(f"{edge}_sums", {})
    entering: Sums = {}
    for key, sums in groups.items():
        capped = cap(key, known, dims, limit)
        counters[capped] = counters.get(capped, 0.0) + sums["n"]
        add(flat, sums)
        add(entering, sums)
    if edge == "completed":
        book_completed(process, costs, entering)
