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
    select,
    table,
    text,
    union_all,
)
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.expression import TableClause

from collector.schema import DurationKpi, Process, RatioKpi, SlaKpi

Expr = ColumnElement[Any]
Statement = Select[Any]
Edge = str
"""Which timestamp an edge query ranges over: "created" or "completed"."""

MISSING = "unknown"
"""Label value for a NULL dimension or outcome (an empty label would vanish in Prometheus)."""


Sums = list[tuple[str, Expr]]
"""Aggregate columns after the row count, by name."""


class EdgeQuery:
    """One statement aggregating the rows whose `edge` time falls in (:lo, :hi].

    `sums` builds the aggregates, called on first use (see the module's docstring).
    """

    def __init__(self, edge: Edge, time_column: Expr, groups: Sequence[Expr], filters: Sequence[Expr],
                 sums: Callable[[], Sums]) -> None:
        self.edge = edge
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

    def _ranged(self, lo: str, hi: str, *lead: Expr) -> Statement:
        return (
            select(*lead, *self._columns)
            .where(self._time_column > bindparam(lo, type_=Double), self._time_column <= bindparam(hi, type_=Double),
                   *self._filters)
            .group_by(*self._group_by)
        )


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

    def __init__(self, dims: int, followable: bool, build: Callable[[], _OpenStatements]) -> None:
        self.dims = dims
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


def build_queries(process: Process, split: tuple[str, tuple[str, ...]] | None = None) -> ProcessQueries:
    """Return the statements that sample one process.

    With `split` = (column, values), the statements read the rows of every value instead of
    applying the process's `where`, and lead their groups with that column (see `Shared`).
    """
    records, cols = process.records, process.records.columns
    names = cols.all() | ({split[0]} if split else set())
    tbl = _table(records.table, names)
    filters: list[Expr] = [text(f"({records.where})")] if records.where else []  # type: ignore[list-item]
    dims: list[Expr] = [tbl.c[d] for d in cols.dimensions]
    if split:
        filters = [tbl.c[split[0]].in_(split[1])]
        dims = [tbl.c[split[0]], *dims]
    buckets = next((k.buckets for k in process.kpis.values() if isinstance(k, DurationKpi)), ())
    created = EdgeQuery("created", tbl.c[cols.created], dims, filters, lambda: _created_sums(process))
    completed = None
    if cols.completed:
        groups: list[Expr] = [*dims, tbl.c[cols.outcome]] if cols.outcome else dims
        completed = EdgeQuery("completed", tbl.c[cols.completed], groups, filters,
                              lambda: _completed_sums(process, tbl, buckets))
    open_items = OpenQueries(len(dims), cols.completed is not None,
                             lambda: _open_statements(process, tbl, dims, filters))
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


def share(processes: Mapping[str, Process]) -> list[Shared]:
    """Find the processes whose statements can be shared (two or more per group)."""
    groups: dict[tuple[str, ...], dict[str, str]] = {}
    column_of: dict[tuple[str, ...], str] = {}
    for name, process in processes.items():
        match = _EQUALS.match(process.records.where or "")
        if not match or match.group(1) not in process.records.columns.all():
            continue
        plain = build_queries(process.model_copy(update={
            "records": process.records.model_copy(update={"where": None})}))
        key = (process.records.table, match.group(1), *_signature(plain))
        if match.group(2) in groups.setdefault(key, {}):
            continue  # two processes on one value: leave them to their own statements
        groups[key][match.group(2)] = name
        column_of[key] = match.group(1)
    shared = []
    for key, members in groups.items():
        if len(members) < 2:
            continue
        first = processes[next(iter(members.values()))]
        queries = build_queries(first, (column_of[key], tuple(members)))
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


def _table(name: str, columns: set[str]) -> TableClause:
    schema, _, bare = name.rpartition(".")
    return table(bare, *[column(c) for c in sorted(columns)], schema=schema or None)


def _count_if(predicate: Expr | TextClause) -> Expr:
    return func.sum(case((predicate, 1), else_=0))


def _created_sums(process: Process) -> Sums:
    return [(f"ratio_{name}", _count_if(text(f"({kpi.good})")))
            for name, kpi in process.kpis.items() if isinstance(kpi, RatioKpi) and kpi.of == "created"]


def _completed_sums(process: Process, tbl: TableClause, buckets: Sequence[float]) -> Sums:
    cols = process.records.columns
    assert cols.completed is not None
    duration = tbl.c[cols.completed] - tbl.c[cols.created]
    if cols.paused:
        duration = duration - func.coalesce(tbl.c[cols.paused], 0)
    sums: Sums = []
    if buckets:
        sums.append(("dur_sum", func.sum(duration)))
        sums += [(f"le_{i}", _count_if(duration <= bound)) for i, bound in enumerate(buckets)]
    for name, kpi in process.kpis.items():
        if isinstance(kpi, SlaKpi) and kpi.good:
            sums.append((f"sla_good_{name}", _count_if(text(f"({kpi.good})"))))
            sums.append((f"sla_valid_{name}", func.count()))
        elif isinstance(kpi, SlaKpi) and cols.due:
            due = tbl.c[cols.due]
            sums.append((f"sla_good_{name}", _count_if(and_(due.is_not(None), tbl.c[cols.completed] <= due))))
            sums.append((f"sla_valid_{name}", _count_if(due.is_not(None))))
        elif isinstance(kpi, RatioKpi) and kpi.of == "completed":
            sums.append((f"ratio_{name}", _count_if(text(f"({kpi.good})"))))
    for name, cost in process.costs.items():
        if cost.driver is not None:
            sums.append((f"driver_{name}", func.sum(func.coalesce(tbl.c[cost.driver], 0))))
    return sums


def _open_statements(process: Process, tbl: TableClause, dims: list[Expr], filters: list[Expr]) -> _OpenStatements:
    records, cols = process.records, process.records.columns
    now, horizon = bindparam("now", type_=Double), bindparam("horizon", type_=Double)
    lo = bindparam("lo", type_=Double)
    created = tbl.c[cols.created]
    is_open = tbl.c[cols.status].in_(records.open_statuses)

    def counted(due_from: Expr, late_before: Expr, where: list[Expr], oldest: bool) -> Statement:
        upcoming: Expr = literal(None, Double)
        overdue: Expr = literal(0)
        if cols.due:
            due = tbl.c[cols.due]
            active = [tbl.c[cols.status].not_in(records.paused_statuses)] if records.paused_statuses else []
            upcoming = case((and_(due >= due_from, due <= horizon, *active), due), else_=None)
            overdue = _count_if(and_(due.is_not(None), due < late_before, *active))
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
        opened_where = [is_open, created > lo, created <= now]
        closed_where = [completed > lo, completed <= now, created <= lo]
        changes = select(union_all(counted_part(0, now, now, opened_where, False),
                                   counted_part(1, lo, lo, closed_where, False)).subquery())
    return _OpenStatements(recount=counted(now, now, [is_open, created <= now], True), changes=changes)
