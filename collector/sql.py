"""SQL for one process, generated from its column mapping (SQLAlchemy Core, any dialect).

Every statement aggregates in the database and reads a range of one indexed column
(`created`, `completed`) or the open statuses, so the rows read follow the rows that changed,
not the size of the table.
"""

from collections.abc import Sequence
from dataclasses import dataclass
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
)
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.expression import TableClause

from collector.schema import CostKpi, DurationKpi, Process, RatioKpi, SlaKpi

Expr = ColumnElement[Any]
Statement = Select[Any]
Edge = str
"""Which timestamp an edge query ranges over: "created" or "completed"."""

MISSING = "unknown"
"""Label value for a NULL dimension or outcome (an empty label would vanish in Prometheus)."""


@dataclass(frozen=True)
class EdgeQuery:
    """One statement aggregating the rows whose `edge` time falls in (:lo, :hi]."""

    edge: Edge
    statement: Statement
    groups: int
    """How many group columns (the dimensions, then the outcome column if mapped) lead each row."""
    sum_names: tuple[str, ...]
    """Names of the aggregate columns after the groups; "n" (the row count) comes first."""


@dataclass(frozen=True)
class ProcessQueries:
    created: EdgeQuery
    completed: EdgeQuery | None
    open_items: Statement
    """Backlog, overdue and the oldest creation time per dimension set (params :now)."""
    buckets: tuple[float, ...]


def build_queries(process: Process) -> ProcessQueries:
    """Return the statements that sample one process."""
    records, cols = process.records, process.records.columns
    names = cols.all()
    tbl = _table(records.table, names)
    filters: list[Expr] = [text(f"({records.where})")] if records.where else []  # type: ignore[list-item]
    dims: list[Expr] = [tbl.c[d] for d in cols.dimensions]
    buckets = next((k.buckets for k in process.kpis.values() if isinstance(k, DurationKpi)), ())
    created = _edge_query(
        "created", tbl.c[cols.created], dims, filters, _created_sums(process))
    completed = None
    if cols.completed:
        groups: list[Expr] = [*dims, tbl.c[cols.outcome]] if cols.outcome else dims
        completed = _edge_query(
            "completed", tbl.c[cols.completed], groups, filters,
            _completed_sums(process, tbl, buckets))
    return ProcessQueries(created, completed, _open_query(process, tbl, dims, filters), buckets)


def _table(name: str, columns: set[str]) -> TableClause:
    schema, _, bare = name.rpartition(".")
    return table(bare, *[column(c) for c in sorted(columns)], schema=schema or None)


def _count_if(predicate: Expr | TextClause) -> Expr:
    return func.sum(case((predicate, 1), else_=0))


def _created_sums(process: Process) -> list[tuple[str, Expr]]:
    return [(f"ratio_{name}", _count_if(text(f"({kpi.good})")))
            for name, kpi in process.kpis.items() if isinstance(kpi, RatioKpi) and kpi.of == "created"]


def _completed_sums(process: Process, tbl: TableClause, buckets: Sequence[float]
                    ) -> list[tuple[str, Expr]]:
    cols = process.records.columns
    assert cols.completed is not None
    duration = tbl.c[cols.completed] - tbl.c[cols.created]
    if cols.paused:
        duration = duration - func.coalesce(tbl.c[cols.paused], 0)
    sums: list[tuple[str, Expr]] = []
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


def _edge_query(edge: Edge, time_column: Expr, groups: list[Expr],
                filters: list[Expr],
                sums: list[tuple[str, Expr]]) -> EdgeQuery:
    labelled_groups = [g.label(f"g{i}") for i, g in enumerate(groups)]
    aggregates = [func.count().label("n"), *[expr.label(name) for name, expr in sums]]
    statement = (
        select(*labelled_groups, *aggregates)
        .where(time_column > bindparam("lo", type_=Double), time_column <= bindparam("hi", type_=Double),
               *filters)
        .group_by(*groups)
    )
    return EdgeQuery(edge, statement, len(groups), ("n", *[name for name, _ in sums]))


def _open_query(process: Process, tbl: TableClause, dims: list[Expr],
                filters: list[Expr]) -> Statement:
    records, cols = process.records, process.records.columns
    now = bindparam("now", type_=Double)
    overdue: Expr = literal(0)
    if cols.due:
        late = and_(tbl.c[cols.due].is_not(None), tbl.c[cols.due] < now)
        if records.paused_statuses:
            late = and_(late, tbl.c[cols.status].not_in(records.paused_statuses))
        overdue = _count_if(late)
    return (
        select(*[d.label(f"g{i}") for i, d in enumerate(dims)], func.count().label("n"),
               overdue.label("overdue"), func.min(tbl.c[cols.created]).label("oldest"))
        .where(tbl.c[cols.status].in_(records.open_statuses), *filters)
        .group_by(*dims)
    )


def uses_cost(process: Process) -> bool:
    """Whether any KPI of the process divides cost by items."""
    return any(isinstance(k, CostKpi) for k in process.kpis.values())
