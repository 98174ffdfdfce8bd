"""The KPI engine: sample one SQL source incrementally and turn the sums into metric families.

Each sample reads, per process, only the rows whose creation or completion time moved past the
last watermark (entering the windows) and the rows leaving each window, plus the open items
from the status index. Counters accumulate the entering rows; window sums add the entering rows
and subtract the leaving ones (recomputed in full every `reconcile` period, which also heals
rows changed after they were counted). Everything a sample changes is saved in one transaction
of the state store before it is published, so restarts neither lose nor double-count rows.
"""

import asyncio
import copy
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from collector.errors import (
    SourceError,
    SourceQueryFailed,
    SourceRefused,
    SourceTimeout,
    SourceUnreachable,
)
from collector.kpis import fixed_cost, kpi_value, variable_cost, window_key, windows_of
from collector.samples import Family, Histogram, KpiReading, Labels, SourceSample
from collector.schema import Process, SqlSource, ValueKpi
from collector.sql import MISSING, EdgeQuery, ProcessQueries, build_queries
from collector.state import StateStore

log = logging.getLogger(__name__)

OTHER = "other"
"""Dimension value standing for every label set beyond the per-process cap."""
DEFAULT_LOOKBACK = 86400.0
BACKSTOP_SECONDS = 2.0

Sums = dict[str, float]
Groups = dict[str, Sums]
"""Aggregates per group key (a JSON list of label values)."""


@dataclass
class _Open:
    backlog: Groups = field(default_factory=dict)
    oldest: float | None = None


@dataclass
class _ProcessRun:
    """What one sample read for one process, besides what went into its saved state."""

    open: _Open
    values: dict[str, float | None]
    seconds: float


class SourceSampler:
    """Samples every process whose records live in one SQL source."""

    def __init__(self, name: str, source: SqlSource, processes: Mapping[str, Process],
                 state: StateStore, *, currency: str = "EUR", max_series: int = 2000) -> None:
        self.name = name
        self.source = source
        self.processes = dict(processes)
        self.currency = currency
        self.max_series = max_series
        self._store = state
        self._state: dict[str, Any] = state.load(name)
        self._queries = {p: build_queries(proc) for p, proc in self.processes.items()}
        self._engine: AsyncEngine | None = None

    async def open(self) -> None:
        """Create the connection pool; connecting happens on the first sample."""
        self._engine = _create_engine(self.source)

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def sample(self, now: float | None = None) -> SourceSample:
        """Read what changed since the last sample, save the new state, return the families."""
        now = time.time() if now is None else now
        started = time.perf_counter()
        state = copy.deepcopy(self._state)
        runs: dict[str, _ProcessRun] = {}
        async with self._guard(), self._read_only() as conn:
            for name, process in self.processes.items():
                runs[name] = await self._sample_process(conn, name, process, state.setdefault(name, {}), now)
        await asyncio.to_thread(self._store.save, self.name, state)
        self._state = state
        families, readings = self._publish(runs, now)
        seconds = tuple((p, k, runs[p].seconds) for p, proc in self.processes.items() for k in proc.kpis)
        return SourceSample(self.name, now, time.perf_counter() - started, families, readings, seconds)

    async def check_columns(self) -> list[str]:
        """Return one line per mapped table or column that the database does not have."""
        async with self._guard(), self._read_only() as conn:
            return await conn.run_sync(self._missing_columns)

    def _missing_columns(self, conn: Connection) -> list[str]:
        inspector = inspect(conn)
        problems = []
        for name, process in self.processes.items():
            schema, _, table = process.records.table.rpartition(".")
            if not inspector.has_table(table, schema=schema or None):
                problems.append(f"process {name}: table {process.records.table!r} not found")
                continue
            present = {c["name"] for c in inspector.get_columns(table, schema=schema or None)}
            missing = sorted(process.records.columns.all() - present)
            if missing:
                problems.append(f"process {name}: table {process.records.table} has no column "
                                + ", ".join(missing))
        return problems

    @asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        """Bound the sample in time and turn driver exceptions into typed `SourceError`s."""
        try:
            # The database enforces the timeout first; this is the backstop for a stuck driver.
            async with asyncio.timeout(self.source.timeout + BACKSTOP_SECONDS):
                yield
        except SourceError:
            raise
        except TimeoutError as exc:
            raise SourceTimeout(self.name, f"no answer within {self.source.timeout:g}s") from exc
        except DBAPIError as exc:
            raise _classify(self.name, exc) from exc
        except (SQLAlchemyError, ValueError, TypeError) as exc:
            raise SourceQueryFailed(self.name, str(exc).splitlines()[0]) from exc

    @asynccontextmanager
    async def _read_only(self) -> AsyncIterator[AsyncConnection]:
        if self._engine is None:
            await self.open()
        assert self._engine is not None
        _require_sqlite_file(self.name, self._engine)
        try:
            conn = await self._engine.connect()
        except (OSError, DBAPIError) as exc:
            refused = isinstance(exc, DBAPIError) and _sqlstate(exc).startswith("28")
            error = SourceRefused if refused else SourceUnreachable
            raise error(self.name, _first_line(exc)) from exc
        try:
            if conn.dialect.name == "postgresql":
                await conn.execute(text("SET TRANSACTION READ ONLY"))
                await conn.execute(text(f"SET LOCAL statement_timeout = {int(self.source.timeout * 1000)}"))
            elif conn.dialect.name == "sqlite":
                await _sqlite_deadline(conn, time.monotonic() + self.source.timeout)
            yield conn
        finally:
            await _release(conn)

    async def _sample_process(self, conn: AsyncConnection, name: str, process: Process,
                              state: dict[str, Any], now: float) -> _ProcessRun:
        started = time.perf_counter()
        queries = self._queries[name]
        hi = now - self.source.settle
        prev: float | None = state.get("hi")
        lookback = max([w for k in process.kpis.values() for w in _window_lengths(k)], default=DEFAULT_LOOKBACK)
        lo = hi - lookback if prev is None else prev
        reader = _EdgeReader(conn, queries)
        if hi > lo:
            await self._count_entering(reader, state, lo, hi)
            await self._move_windows(reader, process, state, prev, hi, now)
            state["hi"] = hi
        self._accrue_fixed(process, state, now)
        open_items = await self._read_open(conn, queries, state, now)
        values = {k: await _value_kpi(conn, kpi) for k, kpi in process.kpis.items() if isinstance(kpi, ValueKpi)}
        return _ProcessRun(open_items, values, time.perf_counter() - started)

    async def _count_entering(self, reader: "_EdgeReader", state: dict[str, Any], lo: float, hi: float) -> None:
        known = state.setdefault("dimsets", [])
        for edge in reader.edges():
            groups = await reader.read(edge, lo, hi)
            counters = state.setdefault(edge, {})
            flat = state.setdefault(f"{edge}_sums", {})
            for key, sums in groups.items():
                capped = self._cap(key, known, reader.dims)
                counters[capped] = counters.get(capped, 0.0) + sums["n"]
                _add(flat, sums)

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

    async def _move_windows(self, reader: "_EdgeReader", process: Process, state: dict[str, Any],
                            prev: float | None, hi: float, now: float) -> None:
        windows: dict[str, Sums] = state.setdefault("windows", {})
        due = prev is None or now - state.get("reconciled_at", 0.0) >= self.source.reconcile
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
                accrued[name] = accrued.get(name, 0.0) + (fixed_cost(cost, now - since) if since else 0.0)
        state["fixed_at"] = now if since is None else max(since, now)

    async def _read_open(self, conn: AsyncConnection, queries: ProcessQueries,
                         state: dict[str, Any], now: float) -> _Open:
        result = await conn.execute(queries.open_items, {"now": now})
        dims = queries.created.groups
        found = _Open()
        known = state.setdefault("dimsets", [])
        for row in result:
            key = self._cap(_key(row[:dims]), known, dims)
            _add(found.backlog.setdefault(key, {}), {"n": float(row.n or 0), "overdue": float(row.overdue or 0)})
            if row.oldest is not None:
                found.oldest = float(row.oldest) if found.oldest is None else min(found.oldest, float(row.oldest))
        return found

    def _publish(self, runs: Mapping[str, _ProcessRun],
                 now: float) -> tuple[tuple[Family, ...], tuple[KpiReading, ...]]:
        out = _Families()
        readings: list[KpiReading] = []
        for name, process in self.processes.items():
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

    def _publish_costs(self, out: "_Families", base: Labels, process: Process, state: dict[str, Any]) -> None:
        sums = state.get("completed_sums", {})
        fixed = state.get("fixed", {})
        for name, cost in process.costs.items():
            amount = fixed.get(name, 0.0) if cost.fixed_per_month is not None else variable_cost(cost, sums, name)
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
        key = _key(row[:query.groups])
        sums = {name: float(value or 0) for name, value in zip(query.sum_names, row[query.groups:], strict=True)}
        _add(groups.setdefault(key, {}), sums)
    return groups


async def _value_kpi(conn: AsyncConnection, kpi: ValueKpi) -> float | None:
    row = (await conn.execute(text(kpi.sql))).first()
    if row is None or row[0] is None:
        return None
    return float(row[0])


class _Families:
    """Families by name, in first-seen order."""

    _KINDS: ClassVar[dict[str, tuple[str, str]]] = {
        "fab_items_created": ("counter", "Work items created."),
        "fab_items_completed": ("counter", "Work items completed, by outcome."),
        "fab_backlog_items": ("gauge", "Open work items."),
        "fab_overdue_items": ("gauge", "Open work items past their due time (paused items excluded)."),
        "fab_oldest_open_item_age_seconds": ("gauge", "Age of the oldest open work item."),
        "fab_cycle_time_seconds": ("histogram", "Created to completed, paused time excluded."),
        "fab_sla_good": ("counter", "Completed items with a due time that completed by it."),
        "fab_sla_valid": ("counter", "Completed items with a due time."),
        "fab_cost": ("counter", "Accrued cost: activity drivers booked on completion, fixed costs over time."),
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


def _create_engine(source: SqlSource) -> AsyncEngine:
    url = make_url(source.dsn)
    options: dict[str, Any] = {"pool_pre_ping": True, "pool_timeout": source.timeout}
    if url.get_backend_name() == "sqlite":
        options["connect_args"] = {"timeout": source.timeout}
    else:
        options.update(pool_size=source.pool_size, max_overflow=0)
    engine = create_async_engine(url, **options)
    if url.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_read_only)
    return engine


async def _release(conn: AsyncConnection) -> None:
    """Roll back and return the connection; a connection broken by a cancelled query is discarded."""
    try:
        await conn.rollback()
    except SQLAlchemyError:
        await conn.invalidate()
    await conn.close()


def _require_sqlite_file(source: str, engine: AsyncEngine) -> None:
    """Refuse to connect to a missing SQLite file: connecting would create an empty database."""
    database = engine.url.database
    if engine.url.get_backend_name() == "sqlite" and database and database != ":memory:" \
            and not database.startswith("file:") and not Path(database).exists():
        raise SourceUnreachable(source, f"SQLite database file {database} does not exist")


async def _sqlite_deadline(conn: AsyncConnection, deadline: float) -> None:
    """Make SQLite abort this connection's statements after `deadline` (it has no statement timeout)."""
    driver = (await conn.get_raw_connection()).driver_connection
    await driver.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)  # type: ignore[union-attr]


def _sqlite_read_only(dbapi_connection: Any, _record: Any) -> None:
    """Make every SQLite connection refuse writes (SQLite enforces PRAGMA query_only)."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA query_only = ON")
    cursor.close()


def _sqlstate(exc: DBAPIError) -> str:
    orig = exc.orig
    return str(getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or "")


def _classify(source: str, exc: DBAPIError) -> SourceError:
    state, message = _sqlstate(exc), _first_line(exc)
    lowered = message.lower()
    if state == "57014" or "interrupted" in lowered:
        return SourceTimeout(source, message)
    if state in {"25006", "42501"} or state.startswith("28") or "readonly" in lowered or "read-only" in lowered:
        return SourceRefused(source, message)
    if state.startswith("08") or exc.connection_invalidated or "unable to open" in lowered:
        return SourceUnreachable(source, message)
    return SourceQueryFailed(source, message)


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


def _window_lengths(kpi: object) -> list[float]:
    window = getattr(kpi, "window", None)
    return [window] if isinstance(window, float) else []


def _bounds(kpi: object) -> tuple[float | None, float | None]:
    target = getattr(kpi, "target", None)
    if target is not None:
        return target.min, target.max
    objective = getattr(kpi, "objective", None)
    return objective, None


def _key(values: Any) -> str:
    return json.dumps([MISSING if v is None else str(v) for v in values])


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


def window_sums(state: Mapping[str, Any], edge: str, window: float) -> Sums:
    """Return the saved window sums of one process (for reports and tests)."""
    return dict(state.get("windows", {}).get(window_key(edge, window), {}))
