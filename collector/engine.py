"""The KPI engine: sample one SQL source incrementally and turn the sums into metric families.

Each sample reads, per process, only the rows whose creation or completion time moved past the
last watermark (entering the windows) and the rows leaving each window, in one statement per
edge; and the open items that were created or completed since the previous sample (the backlog
is recounted in full from the status index at start and every `reconcile` period). Counters
accumulate the entering rows; window sums add the entering rows and subtract the leaving ones
(recomputed in full every `reconcile` period, which also heals rows changed after they were
counted). So the rows a sample reads follow the rows that changed, not the size of the table.
Everything a sample changes is saved in one transaction of the state store before it is
published, so restarts neither lose nor double-count rows.
"""

import asyncio
import copy
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from collector.db import AsyncConnection, AsyncEngine, classify, create_engine, guard, read_only
from collector.errors import SourceQueryFailed, StateFailed
from collector.inventory.models import Process, SqlSource, ValueKpi
from collector.kpis import fixed_cost, kpi_value, variable_cost, window_key, windows_of
from collector.logs import log_event
from collector.reflect import describe, detect_times, full_scans, present_columns
from collector.samples import Family, Histogram, KpiReading, Labels, SourceSample
from collector.sql import (
    MISSING,
    UPCOMING,
    EdgeQuery,
    Lookup,
    OpenQueries,
    ProcessQueries,
    Shared,
    Times,
    build_queries,
    expand,
    label,
    share,
)
from collector.state import StateStore

log = logging.getLogger(__name__)

OTHER = "other"
"""Dimension value standing for every label set beyond the per-process cap."""
DEFAULT_LOOKBACK = 86400.0

Sums = dict[str, float]
Groups = dict[str, Sums]
"""Aggregates per group key (a JSON list of label values)."""


@dataclass
class _Open:
    backlog: Groups = field(default_factory=dict)
    oldest: float | None = None


@dataclass
class _Book:
    """Open items of one process, counted in full at times and followed by their changes between.

    A recount reads every open item (the status index); in between, each sample reads only the
    items created since (still open) and those completed since (they left), on the time indexes.
    `upcoming` keeps the due times of open items falling due before the next recount, so that
    `overdue` follows the clock. Status changes that leave no completion time (cancelled, paused,
    reopened) show at the next recount, every `reconcile` of the source.
    """

    recounted_at: float
    counted_at: float
    horizon: float
    backlog: dict[str, float] = field(default_factory=dict)
    overdue: dict[str, float] = field(default_factory=dict)
    upcoming: dict[str, list[float]] = field(default_factory=dict)
    oldest: float | None = None

    def add(self, key: str, n: float, overdue: float, due: float | None, sign: float = 1.0) -> None:
        """Add (or with sign -1 remove) a group of open items."""
        self.backlog[key] = self.backlog.get(key, 0.0) + sign * n
        self.overdue[key] = self.overdue.get(key, 0.0) + sign * overdue
        if due is None:
            return
        dues = self.upcoming.setdefault(key, [])
        for _ in range(int(n)):
            if sign > 0:
                dues.append(due)
            elif due in dues:
                dues.remove(due)

    def fold(self, now: float) -> None:
        """Count as overdue the upcoming items whose due time has passed."""
        for key, dues in self.upcoming.items():
            passed = [d for d in dues if d < now]
            if passed:
                self.overdue[key] = self.overdue.get(key, 0.0) + len(passed)
                dues[:] = [d for d in dues if d >= now]

    def snapshot(self) -> _Open:
        found = _Open(oldest=self.oldest)
        for key, n in self.backlog.items():
            found.backlog[key] = {"n": max(0.0, n), "overdue": max(0.0, self.overdue.get(key, 0.0))}
        return found


@dataclass
class _ProcessRun:
    """What one sample read for one process, besides what went into its saved state."""

    open: _Open
    values: dict[str, float | None]
    seconds: float


_KEPT_ON_REMAP = ("fixed", "fixed_at")
"""What a process's saved state keeps when its mapping changes: the fixed costs accrued."""
MonthlyLookup = Callable[[str, str, str, float], float | None]
"""(cost_csv source, process, component, now) -> the monthly amount booked, or None."""


class SourceSampler:
    """Samples every process whose records live in one SQL source."""

    def __init__(self, name: str, source: SqlSource, processes: Mapping[str, Process],
                 state: StateStore, *, currency: str = "EUR", max_series: int = 2000,
                 clock: Callable[[], float] = time.time, monthly: MonthlyLookup | None = None,
                 late_every_sample: bool = False) -> None:
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
        self._store = state
        self._state: dict[str, Any] = state.load(name)
        self._times: dict[str, Times] | None = None
        self._year = 0
        """How each process's time columns hold their times: found on the first connection."""
        self._queries = {p: build_queries(proc) for p, proc in self.processes.items()}
        for process in self.processes:
            self._check_mapping(process)
        self._shared = share(self.processes)
        self._books: dict[str, _Book] = {}
        self._followed: set[str] = set()
        """Processes whose open items a shared statement already followed in this sample."""
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

    async def open(self) -> None:
        """Create the connection pool; connecting happens on the first sample."""
        self._engine = create_engine(self.source)

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def sample(self, now: float | None = None) -> SourceSample:
        """Read what changed since the last sample, save the new state, return the families."""
        now = self.clock() if now is None else now
        started = time.perf_counter()
        state = copy.deepcopy(self._state)
        runs: dict[str, _ProcessRun] = {}
        processes = self._costed(now)
        try:
            async with self._guard(), self._read_only() as conn:
                if self._times is None or _year(now) != self._year:
                    await self._detect(conn, now)
                self._arrived = await self._ingest_seq(conn) if self.late_every_sample else None
                readers = {name: _EdgeReader(conn, self._queries[name]) for name in self.processes}
                self._followed = set()
                for shared in self._shared:
                    await self._read_shared(conn, shared, state, readers, now)
                    await self._follow_shared(conn, shared, state, now)
                for name, process in processes.items():
                    try:
                        runs[name] = await self._sample_process(conn, name, process, state.setdefault(name, {}),
                                                                now, readers[name])
                    except DBAPIError as exc:  # name the process whose statement failed (its predicates, say)
                        raise classify(self.name, exc, f"process {name}: ") from exc
        except BaseException:
            self._books.clear()  # half-applied changes: recount on the next sample
            raise
        try:
            await asyncio.to_thread(self._store.save, self.name, state)
        except (sqlite3.Error, OSError) as exc:
            self._books.clear()
            raise StateFailed(self.name, f"cannot save to fabwatch's own state file {self._store.path}: "
                                         f"{exc}") from exc
        self._state = state
        families, readings = self._publish(processes, runs, now)
        seconds = tuple((p, k, runs[p].seconds) for p, proc in self.processes.items() for k in proc.kpis)
        return SourceSample(self.name, now, time.perf_counter() - started, families, readings, seconds)

    def _costed(self, now: float) -> dict[str, Process]:
        """The processes, with each `monthly_from` cost turned into this month's fixed amount (0 while
        finance has booked none), so accrual and cost per item treat it as `fixed_per_month`."""
        out: dict[str, Process] = {}
        for name, process in self.processes.items():
            monthly = {c: cost for c, cost in process.costs.items() if cost.monthly_from is not None}
            if not monthly:
                out[name] = process
                continue
            costs = dict(process.costs)
            for component, cost in monthly.items():
                amount = None if self.monthly is None else self.monthly(str(cost.monthly_from), name, component, now)
                costs[component] = cost.model_copy(update={"fixed_per_month": amount or 0.0})
            out[name] = process.model_copy(update={"costs": costs})
        return out

    def abort(self) -> None:
        """Stop the statements running now (the service is stopping and cancels this sample)."""
        if self._engine is not None:
            self._engine.abort()

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

    def _span(self, process: Process, state: dict[str, Any], now: float) -> tuple[float, float | None, float]:
        """(lo, previous watermark, hi): the rows entering in this sample are those in (lo, hi]."""
        hi = now - self.source.settle
        prev: float | None = state.get("hi")
        lookback = max([w for k in process.kpis.values() for w in _window_lengths(k)], default=DEFAULT_LOOKBACK)
        return (hi - lookback if prev is None else prev), prev, hi

    async def _read_shared(self, conn: AsyncConnection, shared: Shared, state: dict[str, Any],
                           readers: Mapping[str, "_EdgeReader"], now: float) -> None:
        """Read every edge range the shared processes need in one statement per edge; route the rows."""
        wanted: dict[str, set[tuple[float, float]]] = {}
        for name in shared.processes.values():
            process, pstate = self.processes[name], state.setdefault(name, {})
            lo, prev, hi = self._span(process, pstate, now)
            if hi > lo:
                for edge, a, b in self._ranges(readers[name], process, pstate, lo, prev, hi, now):
                    wanted.setdefault(edge, set()).add((a, b))
        for edge, spans in wanted.items():
            query = shared.queries.created if edge == "created" else shared.queries.completed
            assert query is not None
            ordered = sorted(spans)
            params = {f"{bound}{i}": value for i, (lo, hi) in enumerate(ordered)
                      for bound, value in (("lo", lo), ("hi", hi))}
            found: dict[str, list[Groups]] = {name: [{} for _ in ordered] for name in shared.processes.values()}
            for row in await conn.execute(query.parts(len(ordered)), params):
                values: tuple[Any, ...] = tuple(row)
                target = shared.processes.get(str(values[1]))
                if target is not None:  # the shared column leads the groups: skip it in the key
                    _add_row(found[target][int(values[0])], query, values[1:], skip=1)
            for target, groups in found.items():
                for (lo, hi), part in zip(ordered, groups, strict=True):
                    readers[target].keep(edge, lo, hi, part)

    def _needs_recount(self, book: "_Book | None", queries: OpenQueries, now: float) -> bool:
        return book is None or not queries.followable or now - book.recounted_at >= self.source.reconcile \
            or now > book.horizon or now < book.counted_at

    async def _follow_shared(self, conn: AsyncConnection, shared: Shared, state: dict[str, Any], now: float) -> None:
        """Recount, or follow, the open items of the shared processes in one statement when they agree
        (as of `now - settle`, as `_follow_open`)."""
        now -= self.source.settle
        names = list(shared.processes.values())
        books = [self._books.get(name) for name in names]
        queries = shared.queries.open_items
        if all(self._needs_recount(book, self._queries[name].open_items, now) for name, book in zip(names, books,
                                                                                                     strict=True)):
            horizon = now + self.source.reconcile + 60.0
            fresh = {name: _Book(recounted_at=now, counted_at=now, horizon=horizon) for name in names}
            for row in await conn.execute(queries.recount, expand({"now": now, "horizon": horizon})):
                name = shared.processes.get(str(row[0]))
                if name is not None:
                    self._book_row(fresh[name], row, queries, state.setdefault(name, {}), skip=1)
            self._books.update(fresh)
        elif all(book is not None and not self._needs_recount(book, self._queries[name].open_items, now)
                 and (book.counted_at, book.horizon) == (books[0].counted_at, books[0].horizon)  # type: ignore[union-attr]
                 and now > book.counted_at for name, book in zip(names, books, strict=True)):
            assert queries.changes is not None
            assert books[0] is not None
            params = {"lo": books[0].counted_at, "now": now, "horizon": books[0].horizon}
            for row in await conn.execute(queries.changes, expand(params)):
                name = shared.processes.get(str(row[0]))
                if name is not None:
                    self._book_row(self._books[name], row, queries, state.setdefault(name, {}),
                                   sign=-1.0 if row.part else 1.0, skip=1)
            for name in names:
                self._books[name].counted_at = now
        else:
            return
        self._followed.update(names)

    async def _sample_process(self, conn: AsyncConnection, name: str, process: Process,
                              state: dict[str, Any], now: float, reader: "_EdgeReader") -> _ProcessRun:
        started = time.perf_counter()
        queries = self._queries[name]
        lo, prev, hi = self._span(process, state, now)
        if hi > lo:
            await reader.prefetch(self._ranges(reader, process, state, lo, prev, hi, now))
            reconcile = self._reconcile_due(state, prev, now)
            await self._count_entering(reader, process, state, lo, hi)
            arrived = prev is not None and await self._arrived_late(conn, process, state, prev)  # keeps its mark
            if prev is not None and (reconcile or arrived):
                late = await self._count_late(reader, process, state, hi)
                if late and name in self._books:
                    del self._books[name]  # a late row may be open: recount the backlog now
                if late:
                    state.pop("windows", None)  # and may fall in a KPI's window: sum the windows again
            await self._move_windows(reader, process, state, prev, hi, now)
            state["hi"] = hi
        self._accrue_fixed(process, state, now)
        open_items = await self._follow_open(conn, name, queries.open_items, state, now)
        values = {k: await self._value_kpi(conn, name, k, kpi)
                  for k, kpi in process.kpis.items() if isinstance(kpi, ValueKpi)}
        return _ProcessRun(open_items, values, time.perf_counter() - started)

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

    async def _count_entering(self, reader: "_EdgeReader", process: Process, state: dict[str, Any],
                              lo: float, hi: float) -> None:
        ledgers = state.setdefault("ledger", {})
        for edge in reader.edges():
            groups = await reader.read(edge, lo, hi)
            self._add_counted(process, state, edge, groups, reader.dims)
            # what the counters took, by group, since the ledger's start (see `_count_late`)
            ledger = ledgers.setdefault(edge, {"from": lo, "sums": {}})
            for key, sums in groups.items():
                _add(ledger["sums"].setdefault(key, {}), sums)

    def _add_counted(self, process: Process, state: dict[str, Any], edge: str, groups: Groups, dims: int) -> None:
        """Add rows that entered an edge to its counters, sums and booked costs."""
        known = state.setdefault("dimsets", [])
        booked = _booked(process, state)
        counters = state.setdefault(edge, {})
        flat = state.setdefault(f"{edge}_sums", {})
        entering: Sums = {}
        for key, sums in groups.items():
            capped = self._cap(key, known, dims)
            counters[capped] = counters.get(capped, 0.0) + sums["n"]
            _add(flat, sums)
            _add(entering, sums)
        if edge == "completed":  # booked at the rates of now: a rate changed later leaves them be
            for name, cost in process.costs.items():
                if cost.fixed_per_month is None:
                    booked[name] = booked.get(name, 0.0) + variable_cost(cost, entering, name)

    async def _count_late(self, reader: "_EdgeReader", process: Process, state: dict[str, Any],
                          hi: float) -> float:
        """Count the rows that came after the watermark had passed their time (committed later than
        `settle`: a lagging replica, a batch loader, a late event): what the database holds now for the
        ledger's span beyond what the counters took. Counters only go up; the ledger restarts at
        `late_window` behind the watermark. Returns how many rows came late."""
        ledgers = state.setdefault("ledger", {})
        window = self._late_window(process)
        total = 0.0
        for edge in reader.edges():
            ledger = ledgers[edge]
            start = max(ledger["from"], hi - window)
            kept = await reader.read(edge, start, hi)
            older = await reader.read(edge, ledger["from"], start) if ledger["from"] < start else {}
            late: Groups = {}
            for key in set(kept) | set(older):
                now_sums = dict(kept.get(key, {}))
                _add(now_sums, older.get(key, {}))
                taken = ledger["sums"].get(key, {})
                extra = {name: value - taken.get(name, 0.0) for name, value in now_sums.items()}
                if extra.get("n", 0.0) > 0:
                    late[key] = {name: max(0.0, value) for name, value in extra.items()}
            if late:
                self._add_counted(process, state, edge, late, reader.dims)
                counted = sum(s["n"] for s in late.values())
                state.setdefault("late", {})[edge] = state.get("late", {}).get(edge, 0.0) + counted
                total += counted
                log_event(log, "late_rows", logging.INFO, source=self.name, edge=edge, rows=int(counted),
                          hint="rows committed later than settle; counted now")
            ledgers[edge] = {"from": start, "sums": kept}
        return total

    async def _ingest_seq(self, conn: AsyncConnection) -> int | None:
        """The record store's last ingest sequence number (read before the rows, so that a record
        written after it is looked at in the next sample)."""
        row = (await conn.execute(text("SELECT value FROM sync_meta WHERE key = 'ingest_seq'"))).first()
        return None if row is None else int(row[0])

    async def _arrived_late(self, conn: AsyncConnection, process: Process, state: dict[str, Any],
                            prev: float) -> bool:
        """Whether a record store received, since the last sample, a record whose creation or completion
        the counters had already passed (`prev`): then the late-row check runs. Two index lookups."""
        if self._arrived is None:
            return False
        since, state["seq"] = state.get("seq"), self._arrived
        if since is None:
            return True
        cols, table = process.records.columns, process.records.table
        for edge, column_name in (("created", cols.created), ("completed", cols.completed)):
            if column_name is None:
                continue
            found = await conn.execute(text(
                f'SELECT 1 FROM "{table}" WHERE fab_{edge}_seq > :since AND fab_{edge}_seq <= :until '
                f'AND "{column_name}" <= :prev LIMIT 1'), {"since": since, "until": self._arrived, "prev": prev})
            if found.first() is not None:
                return True
        return False

    def _late_window(self, process: Process) -> float:
        if self.late_every_sample:
            return max([w for k in process.kpis.values() for w in _window_lengths(k)], default=DEFAULT_LOOKBACK)
        return self.source.late_window or self.source.reconcile

    def _cap(self, key: str, known: list[str], dims: int) -> str:
        """Map a group key to itself while the process has room for it, else to the overflow set."""
        values = json.loads(key)
        dimset = json.dumps(values[:dims])
        if dimset in known:
            return key
        if len(known) < self.max_series:
            known.append(dimset)
            return key
        return json.dumps([OTHER] * dims + values[dims:])

    def _reconcile_due(self, state: dict[str, Any], prev: float | None, now: float) -> bool:
        return prev is None or now - state.get("reconciled_at", 0.0) >= self.source.reconcile

    def _ranges(self, reader: "_EdgeReader", process: Process, state: dict[str, Any], lo: float,
                prev: float | None, hi: float, now: float) -> list[tuple[str, float, float]]:
        """Every (edge, lo, hi) range this sample reads: the entering rows, then each window's edges."""
        ranges = [(edge, lo, hi) for edge in reader.edges()]
        due = self._reconcile_due(state, prev, now)
        windows = state.get("windows", {})
        for key in sorted({key for kpi in process.kpis.values() for key in windows_of(kpi)}):
            edge, length = key.split(":")[0], float(key.split(":")[1])
            if due or key not in windows or prev is None:
                ranges.append((edge, hi - length, hi))
            else:
                ranges += [(edge, prev, hi), (edge, prev - length, hi - length)]
        return ranges

    async def _move_windows(self, reader: "_EdgeReader", process: Process, state: dict[str, Any],
                            prev: float | None, hi: float, now: float) -> None:
        windows: dict[str, Sums] = state.setdefault("windows", {})
        due = self._reconcile_due(state, prev, now)
        needed = {key for kpi in process.kpis.values() for key in windows_of(kpi)}
        for key in sorted(needed):
            edge, length = key.split(":")[0], float(key.split(":")[1])
            if due or key not in windows or prev is None:
                windows[key] = _total(await reader.read(edge, hi - length, hi))
                continue
            _add(windows[key], _total(await reader.read(edge, prev, hi)))
            _add(windows[key], _total(await reader.read(edge, prev - length, hi - length)), sign=-1.0)
        for stale in set(windows) - needed:
            del windows[stale]
        if due:
            state["reconciled_at"] = now

    def _accrue_fixed(self, process: Process, state: dict[str, Any], now: float) -> None:
        since = state.get("fixed_at")
        accrued = state.setdefault("fixed", {})
        for name, cost in process.costs.items():
            if cost.fixed_per_month is not None:
                # a clock stepped back (NTP, a resumed VM) accrues nothing: a counter never goes down
                accrued[name] = accrued.get(name, 0.0) + (fixed_cost(cost, max(0.0, now - since)) if since else 0.0)
        state["fixed_at"] = now if since is None else max(since, now)

    async def _follow_open(self, conn: AsyncConnection, name: str, queries: OpenQueries,
                           state: dict[str, Any], now: float) -> _Open:
        """Recount the open items, or follow them by what was created and completed since, as of
        `now - settle`: a row committed late (within `settle`) with a time the previous sample
        already followed past would otherwise be missed until the next recount (`reconcile`)."""
        now -= self.source.settle
        book = self._books.get(name)
        reconcile = self.source.reconcile
        if name in self._followed and book is not None:
            pass  # a shared statement did it
        elif self._needs_recount(book, queries, now):
            book = _Book(recounted_at=now, counted_at=now, horizon=now + reconcile + 60.0)
            params = {"now": now, "horizon": book.horizon}
            for row in await conn.execute(queries.recount, expand(params)):
                self._book_row(book, row, queries, state)
            self._books[name] = book
        elif book is not None and now > book.counted_at:
            params = {"lo": book.counted_at, "now": now, "horizon": book.horizon}
            assert queries.changes is not None
            for row in await conn.execute(queries.changes, expand(params)):
                self._book_row(book, row, queries, state, sign=-1.0 if row.part else 1.0)
            book.counted_at = now
        assert book is not None
        book.fold(now)
        return book.snapshot()

    def _book_row(self, book: _Book, row: Any, queries: OpenQueries, state: dict[str, Any], sign: float = 1.0,
                  skip: int = 0) -> None:
        """Add one row of an open-items statement; `skip` leading columns route it (shared statements)."""
        dims = queries.dims
        key = self._cap(_key(row[skip:dims], queries.lookups[skip:dims]), state.setdefault("dimsets", []),
                        dims - skip)
        mapping = row._mapping
        due = queries.times.due.to_epoch(mapping[UPCOMING])
        book.add(key, float(row.n or 0), float(row.overdue or 0), due, sign)
        oldest = queries.times.created.to_epoch(mapping.get("oldest"))
        if oldest is not None:
            book.oldest = oldest if book.oldest is None else min(book.oldest, oldest)

    def _publish(self, processes: Mapping[str, Process], runs: Mapping[str, _ProcessRun],
                 now: float) -> tuple[tuple[Family, ...], tuple[KpiReading, ...]]:
        out = _Families()
        readings: list[KpiReading] = []
        for name, process in processes.items():
            readings += self._publish_process(out, name, process, self._state[name], runs[name], now)
        return out.all(), tuple(readings)

    def _publish_process(self, out: "_Families", name: str, process: Process, state: dict[str, Any],
                         run: _ProcessRun, now: float) -> list[KpiReading]:
        dims = process.records.columns.dimensions
        base: Labels = (("process", name),)
        for key, count in sorted(state.get("created", {}).items()):
            out.add("fab_items_created", base + _pairs(dims, key), count)
        for key, count in sorted(state.get("completed", {}).items()):
            values = json.loads(key)
            outcome = values[len(dims)] if len(values) > len(dims) else MISSING
            out.add("fab_items_completed", base + _pairs(dims, json.dumps(values[:len(dims)]))
                    + (("outcome", str(outcome)),), count)
        late = state.get("late", {})
        for edge in ("created", "completed") if process.records.columns.completed else ("created",):
            out.add("fab_items_late", base + (("edge", edge),), late.get(edge, 0.0))
        self._publish_open(out, base, dims, state, run, now)
        self._publish_histogram(out, base, process, state)
        self._publish_costs(out, base, process, state)
        return self._publish_kpis(out, name, process, state, run)

    def _publish_open(self, out: "_Families", base: Labels, dims: tuple[str, ...], state: dict[str, Any],
                      run: _ProcessRun, now: float) -> None:
        dimsets = set(state.get("dimsets", [])) | set(run.open.backlog)
        for key in sorted(dimsets):
            sums = run.open.backlog.get(key, {})
            labels = base + _pairs(dims, key)
            out.add("fab_backlog_items", labels, sums.get("n", 0.0))
            out.add("fab_overdue_items", labels, sums.get("overdue", 0.0))
        age = max(0.0, now - run.open.oldest) if run.open.oldest is not None else 0.0
        out.add("fab_oldest_open_item_age_seconds", base, age)
        out.add("fab_dimension_sets", base, float(len(state.get("dimsets", []))))
        out.add("fab_dimension_sets_limit", base, float(self.max_series))

    def _publish_histogram(self, out: "_Families", base: Labels, process: Process, state: dict[str, Any]) -> None:
        queries = self._queries[base[0][1]]
        sums = state.get("completed_sums", {})
        if queries.buckets:
            count = sums.get("n", 0.0)
            buckets = tuple((b, sums.get(f"le_{i}", 0.0)) for i, b in enumerate(queries.buckets))
            out.histogram("fab_cycle_time_seconds", base,
                          Histogram((*buckets, (float("inf"), count)), sums.get("dur_sum", 0.0), count))
        for name, kpi in process.kpis.items():
            if kpi.kind == "sla":
                labels = base + (("kpi", name),)
                out.add("fab_sla_good", labels, sums.get(f"sla_good_{name}", 0.0))
                out.add("fab_sla_valid", labels, sums.get(f"sla_valid_{name}", 0.0))
                window = state.get("windows", {}).get(window_key("completed", kpi.window), {})
                out.add("fab_sla_window_valid", labels, window.get(f"sla_valid_{name}", 0.0))

    def _publish_costs(self, out: "_Families", base: Labels, process: Process, state: dict[str, Any]) -> None:
        booked = _booked(process, state)
        fixed = state.get("fixed", {})
        for name, cost in process.costs.items():
            amount = fixed.get(name, 0.0) if cost.fixed_per_month is not None else booked.get(name, 0.0)
            out.add("fab_cost", base + (("component", name), ("currency", self.currency)), amount)

    def _publish_kpis(self, out: "_Families", name: str, process: Process, state: dict[str, Any],
                      run: _ProcessRun) -> list[KpiReading]:
        windows = state.get("windows", {})
        backlog = sum(s.get("n", 0.0) for s in run.open.backlog.values())
        overdue = sum(s.get("overdue", 0.0) for s in run.open.backlog.values())
        buckets = self._queries[name].buckets
        readings = []
        for kpi_name, kpi in process.kpis.items():
            if isinstance(kpi, ValueKpi):
                value = run.values.get(kpi_name)
            else:
                value = kpi_value(kpi_name, kpi, windows, process.costs, buckets, backlog, overdue)
            labels: Labels = (("process", name), ("kpi", kpi_name))
            if value is not None:
                out.add("fab_kpi_value", labels, value)
            low, high = _bounds(kpi)
            for bound, limit in (("min", low), ("max", high)):
                if limit is not None:
                    out.add("fab_kpi_target", labels + (("bound", bound),), limit)
            readings.append(KpiReading(name, kpi_name, kpi.kind, value, low, high))
        return readings


class _EdgeReader:
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

    async def prefetch(self, ranges: list[tuple[str, float, float]]) -> None:
        """Read every range of one edge not read yet in one statement (one round trip per edge)."""
        for edge, query in self._queries.items():
            wanted = sorted({(lo, hi) for e, lo, hi in ranges if e == edge and (e, lo, hi) not in self._cache})
            if query is None or not wanted:
                continue
            if len(wanted) == 1:
                continue  # read() runs the plain statement
            params = {f"{bound}{i}": value for i, (lo, hi) in enumerate(wanted)
                      for bound, value in (("lo", lo), ("hi", hi))}
            found: list[Groups] = [{} for _ in wanted]
            for row in await self._conn.execute(query.parts(len(wanted)), params):
                _add_row(found[row[0]], query, row[1:])
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
        _add_row(groups, query, row)
    return groups


def _booked(process: Process, state: dict[str, Any]) -> Sums:
    """The activity costs booked so far, by component. A state saved before they were booked one
    completion at a time starts from its all-time drivers at today's rates (the value it showed)."""
    if "booked" not in state:
        sums = state.get("completed_sums", {})
        state["booked"] = {name: variable_cost(cost, sums, name)
                           for name, cost in process.costs.items() if cost.fixed_per_month is None}
    booked: Sums = state["booked"]
    return booked


def _add_row(groups: Groups, query: EdgeQuery, row: Any, skip: int = 0) -> None:
    """Add one row of an edge statement; `skip` leading group columns route it (shared statements)."""
    key = _key(row[skip:query.groups], query.lookups[skip:query.groups])
    sums = {name: float(value or 0) for name, value in zip(query.sum_names, row[query.groups:], strict=True)}
    _add(groups.setdefault(key, {}), sums)




class _Families:
    """Families by name, in first-seen order."""

    _KINDS: ClassVar[dict[str, tuple[str, str]]] = {
        "fab_items_created": ("counter", "Work items created."),
        "fab_items_completed": ("counter", "Work items completed, by outcome."),
        "fab_items_late": ("counter", "Work items counted late: committed after the watermark passed their time."),
        "fab_backlog_items": ("gauge", "Open work items."),
        "fab_overdue_items": ("gauge", "Open work items past their due time (paused items excluded)."),
        "fab_oldest_open_item_age_seconds": ("gauge", "Age of the oldest open work item."),
        "fab_cycle_time_seconds": ("histogram", "Created to completed, paused time excluded."),
        "fab_sla_good": ("counter", "Completed items with a due time that completed by it."),
        "fab_sla_valid": ("counter", "Completed items with a due time."),
        "fab_cost": ("counter", "Accrued cost: activity drivers booked on completion, fixed costs over time."),
        "fab_sla_window_valid": ("gauge", "Valid items of an SLA over its window (its budget: x (1 - objective))."),
        "fab_kpi_value": ("gauge", "Current value of each KPI over its window."),
        "fab_kpi_target": ("gauge", "Enterprise target of each KPI, by bound (min or max)."),
        "fab_dimension_sets": ("gauge", "Distinct dimension label sets of a process."),
        "fab_dimension_sets_limit": ("gauge", "Cap on dimension label sets; beyond it values read 'other'."),
    }

    def __init__(self) -> None:
        self._families: dict[str, Family] = {}

    def _family(self, name: str) -> Family:
        if name not in self._families:
            kind, doc = self._KINDS[name]
            self._families[name] = Family(name, kind, doc)  # type: ignore[arg-type]
        return self._families[name]

    def add(self, name: str, labels: Labels, value: float) -> None:
        self._family(name).samples.append((labels, value))

    def histogram(self, name: str, labels: Labels, value: Histogram) -> None:
        self._family(name).histograms.append((labels, value))

    def all(self) -> tuple[Family, ...]:
        return tuple(self._families.values())


def _year(epoch: float) -> int:
    return time.gmtime(epoch).tm_year


def _window_lengths(kpi: object) -> list[float]:
    window = getattr(kpi, "window", None)
    return [window] if isinstance(window, float) else []


def _bounds(kpi: object) -> tuple[float | None, float | None]:
    target = getattr(kpi, "target", None)
    if target is not None:
        return target.min, target.max
    objective = getattr(kpi, "objective", None)
    return objective, None


def _key(values: Any, lookups: Sequence[Lookup] = ()) -> str:
    """The JSON key of a group: its values as labels (through their lookups)."""
    return json.dumps([label(v, lookups[i] if i < len(lookups) else None) for i, v in enumerate(values)])


def _pairs(dims: tuple[str, ...], key: str) -> Labels:
    return tuple(zip(dims, json.loads(key)[:len(dims)], strict=True))


def _total(groups: Groups) -> Sums:
    total: Sums = {}
    for sums in groups.values():
        _add(total, sums)
    return total


def _add(into: Sums, sums: Mapping[str, float], sign: float = 1.0) -> None:
    for name, value in sums.items():
        into[name] = into.get(name, 0.0) + sign * value
