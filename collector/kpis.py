"""Pure KPI arithmetic over aggregated sums: no database, no clock."""

from collections.abc import Mapping, Sequence

from collector.inventory.models import (
    BacklogKpi,
    CostComponent,
    CostKpi,
    DurationKpi,
    Kpi,
    OverdueKpi,
    RatioKpi,
    SlaKpi,
    ValueKpi,
    VolumeKpi,
)

MONTH_SECONDS = 365.2425 / 12 * 86400
"""The mean Gregorian month: fixed monthly costs accrue at this steady rate."""

Sums = Mapping[str, float]


def window_key(edge: str, window: float) -> str:
    return f"{edge}:{window:g}"


def windows_of(kpi: Kpi) -> list[str]:
    """Return the window sums a KPI's value is computed from."""
    if isinstance(kpi, VolumeKpi):
        return [window_key(kpi.of, kpi.window)]
    if isinstance(kpi, RatioKpi):
        return [window_key(kpi.of, kpi.window)]
    if isinstance(kpi, DurationKpi | SlaKpi):
        return [window_key("completed", kpi.window)]
    if isinstance(kpi, CostKpi):
        return sorted({window_key("completed", kpi.window), window_key(kpi.per, kpi.window)})
    return []


def quantile(q: float, bounds: Sequence[float], cumulative: Sequence[float], count: float) -> float | None:
    """Estimate a quantile from cumulative bucket counts as PromQL's histogram_quantile does."""
    if count <= 0:
        return None
    rank = q * count
    lower, below = 0.0, 0.0
    for bound, seen in zip(bounds, cumulative, strict=True):
        if seen >= rank:
            inside = seen - below
            return bound if inside <= 0 else lower + (bound - lower) * (rank - below) / inside
        lower, below = bound, seen
    return bounds[-1] if bounds else None


def variable_cost(component: CostComponent, sums: Sums, name: str) -> float:
    """Return the cost booked on completion for the completed items summed in `sums`."""
    if component.rate_per_hour is not None:
        return sums.get(f"driver_{name}", 0.0) * component.rate_per_hour / 60.0
    if component.rate_per_unit is not None:
        return sums.get(f"driver_{name}", 0.0) * component.rate_per_unit
    if component.per_item is not None:
        return sums.get("n", 0.0) * component.per_item
    return 0.0


def fixed_cost(component: CostComponent, seconds: float) -> float:
    """Return the share of a fixed monthly cost that accrues over `seconds`."""
    return (component.fixed_per_month or 0.0) * seconds / MONTH_SECONDS


def kpi_value(name: str, kpi: Kpi, windows: Mapping[str, Sums], costs: Mapping[str, CostComponent],
              buckets: Sequence[float], backlog: float, overdue: float) -> float | None:
    """Return the value of a windowed or instant KPI, None when it is undefined (no items)."""
    if isinstance(kpi, BacklogKpi):
        return backlog
    if isinstance(kpi, OverdueKpi):
        return overdue
    if isinstance(kpi, ValueKpi):
        raise TypeError("a value KPI is read by its own query, not from window sums")
    sums = windows[windows_of(kpi)[0]]
    if isinstance(kpi, VolumeKpi):
        return sums.get("n", 0.0)
    if isinstance(kpi, RatioKpi):
        return _share(sums, f"ratio_{name}", "n")
    if isinstance(kpi, SlaKpi):
        return _share(sums, f"sla_good_{name}", f"sla_valid_{name}")
    if isinstance(kpi, DurationKpi):
        return _duration(kpi, sums, buckets)
    return _cost_per_item(kpi, windows, costs)


def _share(sums: Sums, good: str, total: str) -> float | None:
    whole = sums.get(total, 0.0)
    return sums.get(good, 0.0) / whole if whole > 0 else None


def _duration(kpi: DurationKpi, sums: Sums, buckets: Sequence[float]) -> float | None:
    count = sums.get("n", 0.0)
    if count <= 0:
        return None
    if kpi.stat == "mean":
        return sums.get("dur_sum", 0.0) / count
    cumulative = [sums.get(f"le_{i}", 0.0) for i in range(len(buckets))]
    return quantile(kpi.quantile, buckets, cumulative, count)


def _cost_per_item(kpi: CostKpi, windows: Mapping[str, Sums],
                   costs: Mapping[str, CostComponent]) -> float | None:
    completed = windows[window_key("completed", kpi.window)]
    items = windows[window_key(kpi.per, kpi.window)].get("n", 0.0)
    if items <= 0:
        return None
    total = sum(variable_cost(c, completed, n) + fixed_cost(c, kpi.window) for n, c in costs.items())
    return total / items
