"""An independent oracle of the monthly summary: every figure of a month computed in plain Python
from the raw rows, with nothing of fabwatch's rollups, SQL or summary code.

A month is [local midnight of its first day, local midnight of the next month's first day) in the
zone; an item counts in the month its time falls in; the open items are those created before the
month's end and not completed by it.
"""

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from collector.inventory.models import (
    BacklogKpi,
    CostKpi,
    DurationKpi,
    OverdueKpi,
    Process,
    RatioKpi,
    SlaKpi,
    ValueKpi,
    VolumeKpi,
)
from tests.collector.kpi_oracle import PREDICATES, Row, duration, histogram_quantile

MONTH = 365.2425 / 12 * 86400


def bounds(first: date, last: date, zone: str) -> tuple[float, float]:
    """[start of `first`, end of `last`) in `zone`, as epoch seconds."""
    tz = ZoneInfo(zone)
    following = last + timedelta(days=1)
    return (datetime(first.year, first.month, first.day, tzinfo=tz).timestamp(),
            datetime(following.year, following.month, following.day, tzinfo=tz).timestamp())


def month_bounds(month: str, zone: str) -> tuple[float, float]:
    year, number = map(int, month.split("-"))
    first = date(year, number, 1)
    last = (date(year + number // 12, number % 12 + 1, 1)) - timedelta(days=1)
    return bounds(first, last, zone)


def inside(t: float | None, lo: float, hi: float) -> bool:
    return t is not None and lo <= t < hi


@dataclass
class Figures:
    created: int
    completed: int
    outcomes: Counter[str]
    costs: dict[str, float]
    kpis: dict[str, float | None]
    good: dict[str, int]
    valid: dict[str, int]


def figures(process: Process, rows: Sequence[Row], lo: float, hi: float) -> Figures:
    """Every figure of a span [lo, hi) of one process."""
    created = [r for r in rows if inside(r["created_at"], lo, hi)]
    done = [r for r in rows if inside(r["completed_at"], lo, hi)]
    still_open = [r for r in rows if r["created_at"] < hi and (r["completed_at"] is None or r["completed_at"] >= hi)]
    costs = {}
    for name, cost in process.costs.items():
        if cost.rate_per_hour is not None:
            costs[name] = sum(r[cost.driver] or 0 for r in done) * cost.rate_per_hour / 60  # type: ignore[index]
        elif cost.rate_per_unit is not None:
            costs[name] = sum(r[cost.driver] or 0 for r in done) * cost.rate_per_unit  # type: ignore[index]
        elif cost.per_item is not None:
            costs[name] = len(done) * cost.per_item
        else:
            costs[name] = (cost.fixed_per_month or 0) * (hi - lo) / MONTH
    kpis: dict[str, float | None] = {}
    good: dict[str, int] = {}
    valid: dict[str, int] = {}
    for name, kpi in process.kpis.items():
        if isinstance(kpi, BacklogKpi):
            kpis[name] = float(len(still_open))
        elif isinstance(kpi, OverdueKpi):
            kpis[name] = float(sum(1 for r in still_open if r["due_at"] is not None and r["due_at"] < hi))
        elif isinstance(kpi, ValueKpi):
            kpis[name] = None
        elif isinstance(kpi, VolumeKpi):
            kpis[name] = float(len(created if kpi.of == "created" else done))
        elif isinstance(kpi, SlaKpi):
            if kpi.good:
                valid_rows = done
                good_rows = [r for r in done if PREDICATES[kpi.good](r)]
            else:
                valid_rows = [r for r in done if r["due_at"] is not None]
                good_rows = [r for r in valid_rows if r["completed_at"] <= r["due_at"]]
            good[name], valid[name] = len(good_rows), len(valid_rows)
            kpis[name] = len(good_rows) / len(valid_rows) if valid_rows else None
        elif isinstance(kpi, RatioKpi):
            base = done if kpi.of == "completed" else created
            kpis[name] = sum(1 for r in base if PREDICATES[kpi.good](r)) / len(base) if base else None
        elif isinstance(kpi, DurationKpi):
            values = [duration(r) for r in done]
            if kpi.stat == "mean":
                kpis[name] = sum(values) / len(values) if values else None
            else:
                kpis[name] = histogram_quantile(kpi.quantile, kpi.buckets, values)
        else:
            assert isinstance(kpi, CostKpi)
            items = len(done) if kpi.per == "completed" else len(created)
            kpis[name] = sum(costs.values()) / items if items else None
    return Figures(len(created), len(done), Counter(r["outcome"] or "unknown" for r in done), costs, kpis,
                   good, valid)


def line_forecast(values: Sequence[float | None]) -> tuple[float, float] | None:
    """The next value on the least-squares line of the known values (statistics.linear_regression), and
    the half width of its 95 % prediction interval."""
    points = [(float(i), v) for i, v in enumerate(values) if v is not None]
    if len(points) < 4:
        return None
    xs, ys = [x for x, _ in points], [y for _, y in points]
    slope, intercept = statistics.linear_regression(xs, ys)
    n, x0 = len(points), float(len(values))
    residual = math.sqrt(sum((y - intercept - slope * x) ** 2 for x, y in points) / (n - 2))
    t95 = {2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}[n - 2]
    spread = sum((x - statistics.fmean(xs)) ** 2 for x in xs)
    return intercept + slope * x0, t95 * residual * math.sqrt(1 + 1 / n + (x0 - statistics.fmean(xs)) ** 2 / spread)
