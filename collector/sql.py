"""SQL for one process, generated from its column mapping (SQLAlchemy Core, any dialect).

Every statement aggregates in the database and reads a range of one indexed column
(`created`, `completed`) or the open statuses, so the rows read follow the rows that changed,
not the size of the table.

Statements are built on first use: a process whose rows a `Shared` statement reads never runs
its own, and each process's statements are some 120 KiB of SQLAlchemy objects (most of them the
histogram's bucket counts), which would only make `fabwatch serve` bigger.
"""

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Double,
    Select,
    and_,
    bindparam,
    case,
    column,
    func,
    literal,
    literal_column,
    select,
    table,
    text,
    union_all,
)
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.expression import ColumnClause, Subquery, TableClause

from collector.inventory.models import Code, DurationKpi, Process, RatioKpi, Records, SlaKpi
from collector.timetypes import TimeColumn

Expr = ColumnElement[Any]
Statement = Select[Any]
Edge = str
"""Which timestamp an edge query ranges over: "created" or "completed"."""

MISSING = "unknown"
"""Label value for a NULL dimension or outcome (an empty label would vanish in Prometheus)."""

Lookup = Mapping[str, str] | None
"""Labels of a group column's codes (keys as text), or None to take the values as they are."""
EPOCH_SECONDS = TimeColumn("epoch_s")


@dataclass(frozen=True)
class Times:
    """What the time columns of a process are (detected from the database, or declared), and its dialect."""

    created: TimeColumn = EPOCH_SECONDS
    completed: TimeColumn = EPOCH_SECONDS
    due: TimeColumn = EPOCH_SECONDS
    dialect: str = "sqlite"

    def epoch(self, role: str, column: Expr) -> Expr:
        """A time column as epoch seconds, for arithmetic."""
        found: TimeColumn = getattr(self, role)
        return found.epoch_sql(column, self.dialect)

    def intervals(self) -> bool:
        """Whether cycle times can be interval arithmetic (PostgreSQL, two instants, or two wall times
        of a zone whose offset does not change)."""
        created, completed = self.created, self.completed
        if self.dialect != "postgresql" or created.kind != completed.kind or created.zone != completed.zone:
            return False
        return created.kind == "timestamptz" or (created.kind == "timestamp" and created.fixed_offset)

    def comparable(self, a: str, b: str) -> bool:
        """Whether two time columns compare as they are (same kind, zone and format)."""
        first, second = getattr(self, a), getattr(self, b)
        return bool(first.kind == second.kind and first.zone == second.zone and first.iso == second.iso
                    and first.kind != "date")


def bound(base: str, role: str, times: Times, up: bool = False) -> Expr:
    """A watermark `base` bound against the `role` time column as that column's type (see `expand`)."""
    column: TimeColumn = getattr(times, role)
    return bindparam(f"{base}__{role}{'_up' if up else ''}", type_=column.bind_type(up))


def expand(params: Mapping[str, float]) -> dict[str, float]:
    """The parameters of the open-items statements: each watermark once per time column and rounding."""
    out = dict(params)
    for base, value in params.items():
        for role in ("created", "completed", "due"):
            out[f"{base}__{role}"] = value
            out[f"{base}__{role}_up"] = value
    return out


def label(value: Any, lookup: Lookup) -> str:
    """A group value as a label: its lookup's label when it has one, else its text (NULL: `unknown`)."""
    if value is None:
        return MISSING
    text_value = _code_text(value)
    if lookup is not None:
        return lookup.get(text_value, text_value)
    return text_value


def _code_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def lookups_of(records: Records, columns: Sequence[str | None]) -> tuple[Lookup, ...]:
    """The lookup of each group column (keys as text, as `label` compares them)."""
    return tuple(None if c is None or c not in records.lookups
                 else {_code_text(k): v for k, v in records.lookups[c].items()} for c in columns)


def codes(records: Records, values: Sequence[Code]) -> list[Code]:
    """Statuses as the database holds them: a label of the status column's lookup stands for its codes."""
    lookup = records.lookups.get(records.columns.status, {})
    out: list[Code] = []
    for value in values:
        matching = [code for code, name in lookup.items() if name == value and code != value]
        out += matching or [value]
    return list(dict.fromkeys(out))


Sums = list[tuple[str, Expr]]
"""Aggregate columns after the row count, by name."""


class EdgeQuery:
    """One statement aggregating the rows whose `edge` time falls in (:lo, :hi].

    `sums` builds the aggregates, called on first use (see the module's docstring).
    """

    def __init__(self, edge: Edge, time_column: Expr, groups: Sequence[Expr], filters: Sequence[Expr],
                 sums: Callable[[], Sums], time: TimeColumn = EPOCH_SECONDS,
                 lookups: tuple[Lookup, ...] = ()) -> None:
        self.edge = edge
        self.time = time
        """The kind of the edge's time column: how its watermarks are bound."""
        self.lookups = lookups or (None,) * len(groups)
        """The lookup of each group column, to label its values."""
        self.groups = len(groups)
        """How many group columns (the dimensions, then the outcome column if mapped) lead each row."""
        self._time_column = time_column
        self._group_by = tuple(groups)
        self._filters = tuple(filters)
        self._build_sums = sums
        self._parts: dict[int, Statement] = {}

    @cached_property
    def _sums(self) -> Sums:
        return self._build_sums()

    @cached_property
    def sum_names(self) -> tuple[str, ...]:
        """Names of the aggregate columns after the groups; "n" (the row count) comes first."""
        return ("n", *[name for name, _ in self._sums])

    @cached_property
    def statement(self) -> Statement:
        return self._ranged("lo", "hi")

    def parts(self, n: int) -> Statement:
        """The same aggregation over `n` ranges (:lo0, :hi0] ... in one statement, each row led by its
        range's index `part`: one round trip for all the ranges a sample reads on this edge."""
        if n not in self._parts:
            union = union_all(*[self._ranged(f"lo{i}", f"hi{i}", literal(i).label("part")) for i in range(n)])
            self._parts[n] = select(union.subquery())
        return self._parts[n]

    @cached_property
    def _columns(self) -> list[Expr]:
        """The labelled group columns, then the aggregates (shared by every statement of this edge)."""
        groups = [g.label(f"g{i}") for i, g in enumerate(self._group_by)]
        return [*groups, func.count().label("n"), *[expr.label(name) for name, expr in self._sums]]

    def bucketed(self, bucket: Callable[[Expr], Expr], lo: str, hi: str) -> Statement:
        """The same aggregation over the rows whose edge time is in [:lo, :hi), each row led by
        `bucket(edge time)` labelled `fab_bucket` and grouped by it: e.g. the day a row falls in
        (collector/rollups.py). Grouped by the label, as PostgreSQL needs for an expression with
        bound parameters."""
        kind = self.time.bind_type(True)
        return (
            select(bucket(self._time_column).label(BUCKET), *self._columns)
            .where(self._time_column >= bindparam(lo, type_=kind), self._time_column < bindparam(hi, type_=kind),
                   *self._filters)
            .group_by(text(BUCKET), *self._group_by)
        )

    def _ranged(self, lo: str, hi: str, *lead: Expr) -> Statement:
        return (
            select(*lead, *self._columns)
            .where(self._time_column > bindparam(lo, type_=self.time.bind_type(False)),
                   self._time_column <= bindparam(hi, type_=self.time.bind_type(False)), *self._filters)
            .group_by(*self._group_by)
        )


BUCKET = "fab_bucket"
"""Label of the leading column of a `bucketed` statement."""

UPCOMING = "fab_upcoming"
"""Label of the column giving the due time of an open item that falls due before the next recount."""


@dataclass(frozen=True)
class _OpenStatements:
    """The statements of `OpenQueries`, once built."""

    recount: Statement
    changes: Statement | None


class OpenQueries:
    """Open items per dimension set, counted in full or followed by their changes.

    Each statement returns the dimension columns, `fab_upcoming` (the due time of open items that
    fall due in (:now, :horizon], one row each, else NULL), then `n` and `overdue`. `build` makes
    the statements, called on first use (see the module's docstring).
    """

    def __init__(self, dims: int, followable: bool, build: Callable[[], _OpenStatements],
                 times: Times = Times(), lookups: tuple[Lookup, ...] = ()) -> None:
        self.dims = dims
        self.times = times
        """How to read `oldest` (a created time) and `fab_upcoming` (a due time) back as epoch seconds."""
        self.lookups = lookups or (None,) * dims
        self.followable = followable
        """Whether the open items can be followed by their changes between recounts (`changes`
        exists: a completion column is mapped)."""
        self._build = build

    @cached_property
    def _statements(self) -> _OpenStatements:
        return self._build()

    @property
    def recount(self) -> Statement:
        """Every open item created up to :now; also `oldest` (params :now, :horizon)."""
        return self._statements.recount

    @property
    def changes(self) -> Statement | None:
        """In one statement (params :lo, :now, :horizon), each row led by `part`: 0 for the open
        items created in (:lo, :now]; 1 for the items created up to :lo and completed in
        (:lo, :now], which left the backlog (`overdue` counts those due before :lo, `fab_upcoming`
        gives the due time of those due in [:lo, :horizon])."""
        return self._statements.changes


@dataclass(frozen=True)
class ProcessQueries:
    created: EdgeQuery
    completed: EdgeQuery | None
    open_items: OpenQueries
    buckets: tuple[float, ...]


def build_queries(process: Process, split: tuple[str, tuple[str, ...]] | None = None,
                  times: Times = Times()) -> ProcessQueries:
    """Return the statements that sample one process.

    With `split` = (column, values), the statements read the rows of every value instead of
    applying the process's `where`, and lead their groups with that column (see `Shared`).
    `times` says how the time columns hold their times (epoch seconds unless told).
    """
    records, cols = process.records, process.records.columns
    names = cols.all() | ({split[0]} if split else set())
    tbl = records_relation(records, names)
    filters: list[Expr] = [text(f"({records.where})")] if records.where else []  # type: ignore[list-item]
    dims: list[Expr] = [tbl.c[d] for d in cols.dimensions]
    dim_names: list[str | None] = list(cols.dimensions)
    if split:
        filters = [tbl.c[split[0]].in_(split[1])]
        dims = [tbl.c[split[0]], *dims]
        dim_names = [None, *dim_names]
    buckets = next((k.buckets for k in process.kpis.values() if isinstance(k, DurationKpi)), ())
    created = EdgeQuery("created", tbl.c[cols.created], dims, filters, lambda: _created_sums(process),
                        times.created, lookups_of(records, dim_names))
    completed = None
    if cols.completed:
        groups: list[Expr] = [*dims, tbl.c[cols.outcome]] if cols.outcome else dims
        outcome: list[str | None] = [cols.outcome] if cols.outcome else []
        completed = EdgeQuery("completed", tbl.c[cols.completed], groups, filters,
                              lambda: _completed_sums(process, tbl, buckets, times), times.completed,
                              lookups_of(records, dim_names + outcome))
    open_items = OpenQueries(len(dims), cols.completed is not None,
                             lambda: _open_statements(process, tbl, dims, filters, times), times,
                             lookups_of(records, dim_names))
    return ProcessQueries(created, completed, open_items, buckets)


_EQUALS = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*'([^']*)'\s*$")


@dataclass(frozen=True)
class Shared:
    """Processes that read one table and differ only by a `column = 'value'` filter.

    Their statements run once for all of them, grouped by that column: one index scan and one
    round trip instead of one per process. Rows are routed back by the column's value.
    """

    column: str
    processes: dict[str, str]
    """Column value -> process name."""
    queries: ProcessQueries


def share(processes: Mapping[str, Process], times: Mapping[str, Times] | None = None) -> list[Shared]:
    """Find the processes whose statements can be shared (two or more per group)."""

    def times_of(process: Process) -> Times:
        return (times or {}).get(next(n for n, p in processes.items() if p is process), Times())

    groups: dict[tuple[str, ...], dict[str, str]] = {}
    column_of: dict[tuple[str, ...], str] = {}
    for name, process in processes.items():
        match = _EQUALS.match(process.records.where or "")
        if not match or match.group(1) not in process.records.columns.all():
            continue
        plain = build_queries(process.model_copy(update={
            "records": process.records.model_copy(update={"where": None})}), None, times_of(process))
        key = (process.records.relation, match.group(1), *_signature(plain))
        if match.group(2) in groups.setdefault(key, {}):
            continue  # two processes on one value: leave them to their own statements
        groups[key][match.group(2)] = name
        column_of[key] = match.group(1)
    shared = []
    for key, members in groups.items():
        if len(members) < 2:
            continue
        first = processes[next(iter(members.values()))]
        queries = build_queries(first, (column_of[key], tuple(members)), times_of(first))
        shared.append(Shared(column_of[key], members, queries))
    return shared


def _signature(queries: ProcessQueries) -> list[str]:
    statements = [queries.created.statement, queries.open_items.recount]
    if queries.completed is not None:
        statements.append(queries.completed.statement)
    return [_rendered(statement) for statement in statements] + [repr(queries.buckets)]


def _rendered(statement: Statement) -> str:
    """A statement's SQL and the values bound in it: `str()` alone shows `IN (__[POSTCOMPILE_status_1])`
    for the open statuses, and two processes with other statuses would share a statement."""
    compiled = statement.compile()
    return f"{compiled} {sorted(compiled.params.items())!r}"


RECORDS_ALIAS = "fab_records"
"""The name of a `records.query` read as a derived table."""


def records_relation(records: Records, columns: set[str]) -> TableClause | Subquery:
    """The records table, or the records query as a derived table with the mapped columns."""
    ordered: list[ColumnClause[Any]] = [column(c) for c in sorted(columns)]
    if records.query is not None:
        return text(records.query.strip().rstrip(";")).columns(*ordered).subquery(RECORDS_ALIAS)
    assert records.table is not None
    schema, _, bare = records.table.rpartition(".")
    return table(bare, *ordered, schema=schema or None)


def _count_if(predicate: Expr | TextClause) -> Expr:
    return func.sum(case((predicate, 1), else_=0))


def _created_sums(process: Process) -> Sums:
    return [(f"ratio_{name}", _count_if(text(f"({kpi.good})")))
            for name, kpi in process.kpis.items() if isinstance(kpi, RatioKpi) and kpi.of == "created"]


def _duration_sums(tbl: TableClause | Subquery, paused: str | None, completed: Expr, created: Expr,
                   buckets: Sequence[float], times: Times) -> Sums:
    """The cycle-time sum and bucket counts. PostgreSQL subtracts instants as intervals and compares
    them with interval bounds, converting only the group's sum to seconds: three times cheaper than
    converting every row's two times (`EXTRACT(epoch ...)` yields a numeric)."""
    if times.intervals():
        span: Expr = completed - created
        if paused:
            span = span - func.coalesce(tbl.c[paused], 0) * literal_column("INTERVAL '1 second'")
        total = func.date_part("epoch", func.sum(span), type_=Double)
        return [("dur_sum", total), *[(f"le_{i}", _count_if(span <= literal_column(f"INTERVAL '{bound!r} seconds'")))
                                      for i, bound in enumerate(buckets)]]
    duration = completed - created
    if not (times.created.kind == times.completed.kind == "epoch_s"):
        duration = times.epoch("completed", completed) - times.epoch("created", created)
    if paused:
        duration = duration - func.coalesce(tbl.c[paused], 0)
    return [("dur_sum", func.sum(duration)),
            *[(f"le_{i}", _count_if(duration <= bound)) for i, bound in enumerate(buckets)]]


def _completed_sums(process: Process, tbl: TableClause | Subquery, buckets: Sequence[float], times: Times) -> Sums:
    cols = process.records.columns
    assert cols.completed is not None
    completed, created = tbl.c[cols.completed], tbl.c[cols.created]
    sums: Sums = []
    if buckets:
        sums += _duration_sums(tbl, cols.paused, completed, created, buckets, times)
    for name, kpi in process.kpis.items():
        if isinstance(kpi, SlaKpi) and kpi.good:
            sums.append((f"sla_good_{name}", _count_if(text(f"({kpi.good})"))))
            sums.append((f"sla_valid_{name}", func.count()))
        elif isinstance(kpi, SlaKpi) and cols.due:
            due = tbl.c[cols.due]
            in_time = completed <= due if times.comparable("completed", "due") \
                else times.epoch("completed", completed) <= times.epoch("due", due)
            sums.append((f"sla_good_{name}", _count_if(and_(due.is_not(None), in_time))))
            sums.append((f"sla_valid_{name}", _count_if(due.is_not(None))))
        elif isinstance(kpi, RatioKpi) and kpi.of == "completed":
            sums.append((f"ratio_{name}", _count_if(text(f"({kpi.good})"))))
    for name, cost in process.costs.items():
        if cost.driver is not None:
            sums.append((f"driver_{name}", func.sum(func.coalesce(tbl.c[cost.driver], 0))))
    return sums


def _open_statements(process: Process, tbl: TableClause | Subquery, dims: list[Expr], filters: list[Expr],
                     times: Times) -> _OpenStatements:
    records, cols = process.records, process.records.columns
    created = tbl.c[cols.created]
    status = tbl.c[cols.status]
    is_open = status.in_(codes(records, records.open_statuses))
    paused = codes(records, records.paused_statuses)

    def counted(due_from: str, late_before: str, where: list[Expr], oldest: bool) -> Statement:
        upcoming: Expr = literal(None, Double)
        overdue: Expr = literal(0)
        if cols.due:
            due = tbl.c[cols.due]
            active = [status.not_in(paused)] if paused else []
            upcoming = case((and_(due >= bound(due_from, "due", times, up=True), due <= bound("horizon", "due", times),
                                  *active), due), else_=None)
            overdue = _count_if(and_(due.is_not(None), due < bound(late_before, "due", times, up=True), *active))
        columns = [*[d.label(f"g{i}") for i, d in enumerate(dims)], upcoming.label(UPCOMING),
                   func.count().label("n"), overdue.label("overdue")]
        if oldest:
            columns.append(func.min(created).label("oldest"))
        return select(*columns).where(*where, *filters).group_by(*dims, text(UPCOMING))

    def counted_part(part: int, *args: Any) -> Statement:
        plain = counted(*args)
        return plain.add_columns(literal(part).label("part"))

    changes = None
    if cols.completed:
        completed = tbl.c[cols.completed]
        opened_where = [is_open, created > bound("lo", "created", times), created <= bound("now", "created", times)]
        closed_where = [completed > bound("lo", "completed", times), completed <= bound("now", "completed", times),
                        created <= bound("lo", "created", times)]
        changes = select(union_all(counted_part(0, "now", "now", opened_where, False),
                                   counted_part(1, "lo", "lo", closed_where, False)).subquery())
    recount = counted("now", "now", [is_open, created <= bound("now", "created", times)], True)
    return _OpenStatements(recount=recount, changes=changes)
