"""Families: the metric families and KPI readings a sample publishes, built from the processes'
saved state (counters, sums, windows, costs) and what the sample read besides (open items, the
values of `value` KPIs).
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from collector.engine.backlog import Open
from collector.engine.cost import booked
from collector.inventory.models import Process, ValueKpi
from collector.kpis import kpi_value, window_key
from collector.samples import Family, Histogram, KpiReading, Labels
from collector.sql import MISSING, ProcessQueries


@dataclass
class ProcessRun:
    """What one sample read for one process, besides what went into its saved state."""

    open: Open
    values: dict[str, float | None]
    seconds: float


@dataclass(frozen=True)
class Publishing:
    """What every process of a source is published with."""

    currency: str
    max_series: int
    queries: Mapping[str, ProcessQueries]


class Families:
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


def publish(how: Publishing, processes: Mapping[str, Process], states: Mapping[str, dict[str, Any]],
            runs: Mapping[str, ProcessRun], now: float) -> tuple[tuple[Family, ...], tuple[KpiReading, ...]]:
    """Every family and KPI reading of one sample of a source."""
    out = Families()
    readings: list[KpiReading] = []
    for name, process in processes.items():
        readings += _publish_process(how, out, name, process, states[name], runs[name], now)
    return out.all(), tuple(readings)


def _publish_process(how: Publishing, out: Families, name: str, process: Process, state: dict[str, Any],
                     run: ProcessRun, now: float) -> list[KpiReading]:
    dims = process.records.columns.dimensions
    base: Labels = (("process", name),)
    _publish_items(out, base, dims, process, state)
    _publish_open(out, base, dims, state, run, now, how.max_series)
    _publish_histogram(out, base, process, state, how.queries[name])
    _publish_costs(out, base, process, state, how.currency)
    return _publish_kpis(out, name, process, state, run, how.queries[name])


def _publish_items(out: Families, base: Labels, dims: tuple[str, ...], process: Process,
                   state: dict[str, Any]) -> None:
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


def _publish_open(out: Families, base: Labels, dims: tuple[str, ...], state: dict[str, Any], run: ProcessRun,
                  now: float, max_series: int) -> None:
    dimsets = set(state.get("dimsets", [])) | set(run.open.backlog)
    for key in sorted(dimsets):
        sums = run.open.backlog.get(key, {})
        labels = base + _pairs(dims, key)
        out.add("fab_backlog_items", labels, sums.get("n", 0.0))
        out.add("fab_overdue_items", labels, sums.get("overdue", 0.0))
    age = max(0.0, now - run.open.oldest) if run.open.oldest is not None else 0.0
    out.add("fab_oldest_open_item_age_seconds", base, age)
    out.add("fab_dimension_sets", base, float(len(state.get("dimsets", []))))
    out.add("fab_dimension_sets_limit", base, float(max_series))


def _publish_histogram(out: Families, base: Labels, process: Process, state: dict[str, Any],
                       queries: ProcessQueries) -> None:
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


def _publish_costs(out: Families, base: Labels, process: Process, state: dict[str, Any], currency: str) -> None:
    activity = booked(process, state)
    fixed = state.get("fixed", {})
    for name, cost in process.costs.items():
        amount = fixed.get(name, 0.0) if cost.fixed_per_month is not None else activity.get(name, 0.0)
        out.add("fab_cost", base + (("component", name), ("currency", currency)), amount)


def _publish_kpis(out: Families, name: str, process: Process, state: dict[str, Any], run: ProcessRun,
                  queries: ProcessQueries) -> list[KpiReading]:
    windows = state.get("windows", {})
    backlog = sum(s.get("n", 0.0) for s in run.open.backlog.values())
    overdue = sum(s.get("overdue", 0.0) for s in run.open.backlog.values())
    readings = []
    for kpi_name, kpi in process.kpis.items():
        if isinstance(kpi, ValueKpi):
            value = run.values.get(kpi_name)
        else:
            value = kpi_value(kpi_name, kpi, windows, process.costs, queries.buckets, backlog, overdue)
        labels: Labels = (("process", name), ("kpi", kpi_name))
        if value is not None:
            out.add("fab_kpi_value", labels, value)
        low, high = _bounds(kpi)
        for bound, limit in (("min", low), ("max", high)):
            if limit is not None:
                out.add("fab_kpi_target", labels + (("bound", bound),), limit)
        readings.append(KpiReading(name, kpi_name, kpi.kind, value, low, high))
    return readings


def _bounds(kpi: object) -> tuple[float | None, float | None]:
    target = getattr(kpi, "target", None)
    if target is not None:
        return target.min, target.max
    objective = getattr(kpi, "objective", None)
    return objective, None


def _pairs(dims: tuple[str, ...], key: str) -> Labels:
    return tuple(zip(dims, json.loads(key)[:len(dims)], strict=True))
