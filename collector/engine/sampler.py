"""The sampler of one SQL source: connects, runs one sample over every process, saves the state,
publishes the families. The orchestration only: what a sample reads and counts is in `edges`,
`late`, `windows`, `backlog` and `cost`, what it publishes in `families`.
"""

import asyncio
import copy
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from collector.db import AsyncConnection, AsyncEngine, classify, create_engine, guard, read_only
from collector.engine.backlog import Backlog, Open
from collector.engine.cost import MonthlyLookup, accrue_fixed, costed
from collector.engine.edges import EdgeReader, count_entering, read_shared, span
from collector.engine.expiry import expire_unseen, mark_seen
from collector.engine.families import ProcessRun, Publishing, publish
from collector.engine.late import LateRows, arrived_late, ingest_seq
from collector.engine.windows import move_windows, ranges, reconcile_due, window_lengths
from collector.errors import SourceQueryFailed, StateFailed
from collector.inventory.durations import format_duration
from collector.inventory.models import Process, SqlSource, ValueKpi
from collector.logs import log_event
from collector.reflect import describe, detect_times, full_scans, present_columns
from collector.samples import SourceSample
from collector.sql import Times, build_queries, share
from collector.state import StateError, StateStore

log = logging.getLogger("collector.engine")  # one logger for the engine's events, whichever module logs

_KEPT_ON_REMAP = ("fixed", "fixed_at")
"""What a process's saved state keeps when its mapping changes: the fixed costs accrued."""


class SourceSampler:
    """Samples every process whose records live in one SQL source."""

    def __init__(self, name: str, source: SqlSource, processes: Mapping[str, Process],
                 state: StateStore, *, currency: str = "EUR", max_series: int = 2000,
                 clock: Callable[[], float] = time.time, monthly: MonthlyLookup | None = None,
                 late_every_sample: bool = False, series_expiry: float | None = None) -> None:
        self.name = name
        self.late_every_sample = late_every_sample
        """Look for late rows at every sample over the longest window (a record store fabwatch writes,
        where a record may arrive days after its dates), not only at a reconcile over `late_window`."""
        self._arrived: int | None = None
        """The record store's ingest sequence at the start of this sample."""
        self.clock = clock
        """What `now` is when `sample()` is not given one (the wall clock unless replaying)."""
        self.source = source
        self.processes = dict(processes)
        self.currency = currency
        self.max_series = max_series
        self.monthly = monthly
        """Finds the monthly amount of a `monthly_from` cost: (cost source, process, component, now)."""
        self.series_expiry = series_expiry
        """Drop a dimension set nothing happened in for this long (at least the longest KPI window)."""
        self._store = state
        self._state: dict[str, Any] = state.load(name)
        self._times: dict[str, Times] | None = None
        self._year = 0
        """How each process's time columns hold their times: found on the first connection."""
        self._queries = {p: build_queries(proc) for p, proc in self.processes.items()}
        for process in self.processes:
            self._check_mapping(process)
        self._shared = share(self.processes)
        self._backlog = Backlog(source.settle, source.reconcile, max_series)
        self._books = self._backlog.books
        self._engine: AsyncEngine | None = None

    def _check_mapping(self, name: str) -> None:
        """Start a process's counts again when its dimensions, outcome column or duration buckets
        changed since its state was saved: the saved counts are keyed by position (dimension values,
        bucket index), and read under another mapping they crash the sample or land on other labels.
        Its accrued fixed costs stay (they do not depend on the mapping)."""
        columns = self.processes[name].records.columns
        mapping = json.dumps([list(columns.dimensions), columns.outcome, list(self._queries[name].buckets)])
        saved = self._state.get(name)
        if saved and saved.get("mapping", mapping) != mapping:
            log_event(log, "process_mapping_changed", logging.WARNING, source=self.name, process=name,
                      was=saved["mapping"], now=mapping, action="counting again from the lookback window")
            self._state[name] = {key: saved[key] for key in _KEPT_ON_REMAP if key in saved}
        self._state.setdefault(name, {})["mapping"] = mapping

    def resume(self) -> None:
        """Read the saved state again and forget what was followed in memory: another replica sampled
        this source since this one last did (a lease taken over), and its counters go on from there."""
        self._state = self._store.load(self.name)
        for process in self.processes:
            self._check_mapping(process)
        self._books.clear()

    async def open(self) -> None:
        """Create the connection pool; connecting happens on the first sample."""
        self._engine = create_engine(self.source)

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    def abort(self) -> None:
        """Stop the statements running now (the service is stopping and cancels this sample)."""
        if self._engine is not None:
            self._engine.abort()

    async def sample(self, now: float | None = None) -> SourceSample:
        """Read what changed since the last sample, save the new state, return the families."""
        now = self.clock() if now is None else now
        started = time.perf_counter()
        state = copy.deepcopy(self._state)
        processes = costed(self.processes, self.monthly, now)
        try:
            runs = await self._read(processes, state, now)
        except BaseException:
            self._books.clear()  # half-applied changes: recount on the next sample
            raise
        try:
            await asyncio.to_thread(self._store.save, self.name, state)
        except (sqlite3.Error, OSError, StateError) as exc:
            self._books.clear()
            raise StateFailed(self.name, f"cannot save to fabwatch's own state file {self._store.where}: "
                                         f"{exc}") from exc
        self._state = state
        families, readings = publish(Publishing(self.currency, self.max_series, self._queries), processes,
                                     self._state, runs, now)
        seconds = tuple((p, k, runs[p].seconds) for p, proc in self.processes.items() for k in proc.kpis)
        return SourceSample(self.name, now, time.perf_counter() - started, families, readings, seconds)

    async def _read(self, processes: Mapping[str, Process], state: dict[str, Any],
                    now: float) -> dict[str, ProcessRun]:
        """Run every statement of one sample on one read-only connection, updating `state`."""
        runs: dict[str, ProcessRun] = {}
        async with self._guard(), self._read_only() as conn:
            if self._times is None or _year(now) != self._year:
                await self._detect(conn, now)
            self._arrived = await ingest_seq(conn) if self.late_every_sample else None
            readers = {name: EdgeReader(conn, self._queries[name]) for name in self.processes}
            self._backlog.followed = set()
            own = {n: q.open_items for n, q in self._queries.items()}
            for shared in self._shared:
                await read_shared(conn, shared, self.processes, state, readers, now, self.source.settle,
                                  self.source.reconcile)
                await self._backlog.follow_shared(conn, shared, own, state, now)
            for name, process in processes.items():
                try:
                    runs[name] = await self._sample_process(conn, name, process, state.setdefault(name, {}),
                                                            now, readers[name])
                except DBAPIError as exc:  # name the process whose statement failed (its predicates, say)
                    raise classify(self.name, exc, f"process {name}: ") from exc
        return runs

    async def _sample_process(self, conn: AsyncConnection, name: str, process: Process,
                              state: dict[str, Any], now: float, reader: EdgeReader) -> ProcessRun:
        started = time.perf_counter()
        lo, prev, hi = span(process, state, now, self.source.settle)
        if hi > lo:
            await self._count_edges(conn, name, process, state, reader, (lo, prev, hi), now)
        accrue_fixed(process, state, now)
        open_items = await self._backlog.follow(conn, name, self._queries[name].open_items, state, now)
        self._expire(name, process, state, open_items, now)
        values = {k: await self._value_kpi(conn, name, k, kpi)
                  for k, kpi in process.kpis.items() if isinstance(kpi, ValueKpi)}
        return ProcessRun(open_items, values, time.perf_counter() - started)

    def _expire(self, name: str, process: Process, state: dict[str, Any], open_items: Open, now: float) -> None:
        """Drop the dimension sets of `name` nothing happened in for `series_expiry` (see `expiry`)."""
        dims = len(process.records.columns.dimensions)
        mark_seen(state, [key for key, sums in open_items.backlog.items() if sums.get("n", 0.0) > 0], dims, now)
        after = None if self.series_expiry is None else max(
            [self.series_expiry, *(w for kpi in process.kpis.values() for w in window_lengths(kpi))])
        gone = expire_unseen(state, dims, now, after)
        if gone:
            log_event(log, "series_expired", logging.INFO, source=self.name, process=name, dimension_sets=len(gone),
                      first=gone[0], unseen_for=format_duration(after or 0.0))

    async def _count_edges(self, conn: AsyncConnection, name: str, process: Process, state: dict[str, Any],
                           reader: EdgeReader, bounds: tuple[float, float | None, float], now: float) -> None:
        """Count the rows entering (lo, hi], and the late ones when due; move the windows to `hi`."""
        lo, prev, hi = bounds
        reconcile = self.source.reconcile
        due = reconcile_due(state, prev, now, reconcile)
        await reader.prefetch(ranges(reader.edges(), process, state, lo, prev, hi, due))
        await count_entering(reader, process, state, lo, hi, self.max_series)
        arrived = prev is not None and await arrived_late(conn, process, state, prev, self._arrived)  # keeps its mark
        if prev is not None and (due or arrived):
            late_rows = LateRows(self.name, self.source, self.late_every_sample, self.max_series)
            late = await late_rows.count(reader, process, state, hi)
            if late:
                self._backlog.forget(name)  # a late row may be open: recount the backlog now
                state.pop("windows", None)  # and may fall in a KPI's window: sum the windows again
        await move_windows(reader, process, state, prev, hi, now, reconcile_due(state, prev, now, reconcile))
        state["hi"] = hi

    async def _value_kpi(self, conn: AsyncConnection, process: str, name: str, kpi: ValueKpi) -> float | None:
        """The first column of the first row of a `value` KPI's statement (no row, NULL: no value)."""
        row = (await conn.execute(text(kpi.sql))).first()
        if row is None or row[0] is None:
            return None
        try:
            return float(row[0])
        except (TypeError, ValueError, OverflowError) as exc:
            raise SourceQueryFailed(self.name, f"process {process}: kpi {name}: the statement gave "
                                               f"{type(row[0]).__name__} {row[0]!r}, not a number") from exc

    async def _detect(self, conn: AsyncConnection, now: float) -> None:
        """Find what each process's time columns are, and build its statements for them (again each
        new year: the zone changes written out in them follow the year)."""
        times: dict[str, Times] = {}
        self._year = _year(now)
        for name, process in self.processes.items():
            try:
                times[name] = await detect_times(conn, process.records, self.source, self._year)
            except DBAPIError as exc:
                raise classify(self.name, exc, f"process {name}: ") from exc
        self._queries = {p: build_queries(proc, None, times[p]) for p, proc in self.processes.items()}
        self._shared = share(self.processes, times)
        self._times = times
        for name, found in times.items():
            log_event(log, "time_columns", logging.DEBUG, source=self.name, process=name,
                      columns="; ".join(describe(found, self.processes[name].records)))

    async def check_columns(self) -> list[str]:
        """Return one line per mapped table or column that the database does not have."""
        problems = []
        async with self._guard(), self._read_only() as conn:
            for name, process in self.processes.items():
                records = process.records
                try:
                    present = await present_columns(conn, records)
                except DBAPIError as exc:
                    problems.append(f"process {name}: records.query fails: {classify(self.name, exc)}")
                    continue
                if present is None:
                    problems.append(f"process {name}: table {records.table!r} not found")
                    continue
                missing = sorted(records.columns.all() - present)
                if missing:
                    what = f"table {records.table}" if records.table else "records.query"
                    problems.append(f"process {name}: {what} has no column " + ", ".join(missing))
        return problems

    async def inspect(self) -> list[str]:
        """Say what each process's time columns were found to be, and how the database plans the
        edge queries: a warning for each table read in full (a missing index on a time column)."""
        notes: list[str] = []
        async with self._guard(), self._read_only() as conn:
            if self._times is None:
                await self._detect(conn, self.clock())
            assert self._times is not None
            hi = self.clock() - self.source.settle
            for name, process in self.processes.items():
                notes += [f"process {name}: {line}" for line in describe(self._times[name], process.records)]
                notes += await self._plans(conn, name, hi)
        return notes

    async def _plans(self, conn: AsyncConnection, name: str, hi: float) -> list[str]:
        """How the database plans a process's edge queries over the last hour."""
        notes = []
        queries = self._queries[name]
        for edge in (queries.created, queries.completed):
            if edge is None:
                continue
            scans, plan = await full_scans(conn, edge.statement, {"lo": hi - 3600.0, "hi": hi})
            warning = f"WARNING full scan of {', '.join(scans)}: index the {edge.edge} time column " \
                      "(or a view over it); " if scans else ""
            notes.append(f"process {name}: {edge.edge} edge plan: {warning}{plan}")
        return notes

    def _guard(self) -> AbstractAsyncContextManager[None]:
        return guard(self.name, self.source.timeout)

    def _read_only(self) -> AbstractAsyncContextManager[AsyncConnection]:
        if self._engine is None:
            self._engine = create_engine(self.source)
        return read_only(self.name, self._engine, self.source.timeout)


def _year(epoch: float) -> int:
    return time.gmtime(epoch).tm_year
