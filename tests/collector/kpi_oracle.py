"""An independent oracle: every KPI of the example inventory computed in plain Python from rows.

It shares no code with the engine: rows are read with `sqlite3`/SQLAlchemy as plain dicts and
each KPI is recomputed from its definition, with the ratio predicates written out in Python.
"""

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from collector.inventory.models import (
    BacklogKpi,
    CostKpi,
    DurationKpi,
    Inventory,
    OverdueKpi,
    Process,
    RatioKpi,
    SlaKpi,
    ValueKpi,
    VolumeKpi,
)

Row = Mapping[str, Any]
MONTH = 365.2425 / 12 * 86400

PREDICATES: dict[str, Callable[[Row], bool]] = {
    "abandoned = 0 AND wait_seconds <= 20": lambda r: r["abandoned"] == 0 and r["wait_seconds"] <= 20,
    "abandoned = 1": lambda r: r["abandoned"] == 1,
    "first_contact_resolved = 1": lambda r: r["first_contact_resolved"] == 1,
    "channel IN ('chat', 'email', 'app')": lambda r: r["channel"] in ("chat", "email", "app"),
    "fallout = 1": lambda r: r["fallout"] == 1,
    "fallout = 0 AND outcome = 'completed'": lambda r: r["fallout"] == 0 and r["outcome"] == "completed",
    "outcome = 'cancelled'": lambda r: r["outcome"] == "cancelled",
    "reopened > 0": lambda r: r["reopened"] > 0,
    "saved = 1": lambda r: r["saved"] == 1,
    "outcome = 'churned'": lambda r: r["outcome"] == "churned",
    "amount > 0": lambda r: r["amount"] > 0,
    "adjusted = 1": lambda r: r["adjusted"] == 1,
    "ebill = 1": lambda r: r["ebill"] == 1,
    "written_off = 1": lambda r: r["written_off"] == 1,
}
VALUES: dict[str, Callable[[Iterable[Row]], float]] = {
    "SELECT COUNT(*) FROM trouble_ticket WHERE priority = 'critical' AND status = 'acknowledged'":
        lambda rows: float(sum(1 for r in rows if r["priority"] == "critical" and r["status"] == "acknowledged")),
}


def in_window(t: float | None, hi: float, window: float) -> bool:
    return t is not None and hi - window < t <= hi


def duration(row: Row) -> float:
    return float(row["completed_at"] - row["created_at"] - (row["paused_seconds"] or 0))


def histogram_quantile(q: float, bounds: tuple[float, ...], values: list[float]) -> float | None:
    """histogram_quantile as PromQL defines it, over exact bucket counts."""
    if not values:
        return None
    cumulative = [sum(1 for v in values if v <= b) for b in bounds]
    rank = q * len(values)
    lower, below = 0.0, 0
    for bound, seen in zip(bounds, cumulative, strict=True):
        if seen >= rank:
            return bound if seen == below else lower + (bound - lower) * (rank - below) / (seen - below)
        lower, below = bound, seen
    return bounds[-1]


def expected_kpis(inventory: Inventory, rows: Mapping[str, list[Row]], now: float,
                  hi: float) -> dict[tuple[str, str], float | None]:
    """Return every KPI of every process, as the engine should export it."""
    out = {}
    for name, process in inventory.processes.items():
        table = rows[process.records.table]
        for kpi_name, kpi in process.kpis.items():
            out[(name, kpi_name)] = _kpi(process, kpi_name, kpi, table, now, hi)
    return out


def _kpi(process: Process, name: str, kpi: object, rows: list[Row], now: float, hi: float) -> float | None:
    records = process.records
    open_rows = [r for r in rows if r["status"] in records.open_statuses]
    if isinstance(kpi, BacklogKpi):
        return float(len(open_rows))
    if isinstance(kpi, OverdueKpi):
        return float(sum(1 for r in open_rows if r["due_at"] is not None and r["due_at"] < now
                         and r["status"] not in records.paused_statuses))
    if isinstance(kpi, ValueKpi):
        return VALUES[kpi.sql](rows)
    if isinstance(kpi, VolumeKpi):
        return float(sum(1 for r in rows if in_window(r[f"{kpi.of}_at"], hi, kpi.window)))
    done = [r for r in rows if in_window(r["completed_at"], hi, getattr(kpi, "window", 0.0))]
    if isinstance(kpi, SlaKpi) and kpi.good:
        return sum(1 for r in done if PREDICATES[kpi.good](r)) / len(done) if done else None
    if isinstance(kpi, SlaKpi):
        valid = [r for r in done if r["due_at"] is not None]
        return sum(1 for r in valid if r["completed_at"] <= r["due_at"]) / len(valid) if valid else None
    if isinstance(kpi, RatioKpi):
        base = done if kpi.of == "completed" else [r for r in rows if in_window(r["created_at"], hi, kpi.window)]
        good = PREDICATES[kpi.good]
        return sum(1 for r in base if good(r)) / len(base) if base else None
    if isinstance(kpi, DurationKpi):
        values = [duration(r) for r in done]
        if kpi.stat == "mean":
            return sum(values) / len(values) if values else None
        return histogram_quantile(kpi.quantile, kpi.buckets, values)
    assert isinstance(kpi, CostKpi)
    return _cost_per_item(process, kpi, rows, done, hi)


def _cost_per_item(process: Process, kpi: CostKpi, rows: list[Row], done: list[Row], hi: float) -> float | None:
    items = done if kpi.per == "completed" else [r for r in rows if in_window(r["created_at"], hi, kpi.window)]
    if not items:
        return None
    total = 0.0
    for cost in process.costs.values():
        if cost.rate_per_hour is not None:
            total += sum(r[cost.driver] for r in done) * cost.rate_per_hour / 60  # type: ignore[index]
        elif cost.rate_per_unit is not None:
            total += sum(r[cost.driver] for r in done) * cost.rate_per_unit  # type: ignore[index]
        elif cost.per_item is not None:
            total += len(done) * cost.per_item
        else:
            total += (cost.fixed_per_month or 0) * kpi.window / MONTH
    return total / len(items)
