"""The monthly summary for managers: pure functions over daily rollups (`collector.rollups`).

Every figure of a calendar month is computed from the sums of its days, never from averaged
percentages: a month's SLA attainment is its good items over its valid items, its p90 the quantile
of its summed histogram, its cost per item its summed cost over its summed items. A month has a
value only when every one of its days was rolled up ("history exists"), and a KPI's only when every
one of them was rolled under the KPI's current definitions (`collector.rollups.definitions`; a day
rolled before a KPI was added or changed has no figure for it until a backfill). A month with days
rolled before their late window had passed is provisional: late rows may still change it.

Forecast (one sentence, shown in the report): a least-squares line through the monthly values of the
last 12 months (at least 4) extended one month ahead, with a 95 % prediction interval from the
scatter of the months around the line (Student's t).
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

from collector.inventory.models import (
    BacklogKpi,
    CostKpi,
    DurationKpi,
    Inventory,
    Kpi,
    OverdueKpi,
    Process,
    RatioKpi,
    SlaKpi,
    Target,
    ValueKpi,
    VolumeKpi,
)
from collector.kpis import quantile
from collector.rollups import (
    DayRollup,
    Measures,
    Rolled,
    RollupStore,
    definitions,
    late_of,
    sql_sources,
    totals,
)

FORECAST_METHOD = ("least-squares line through the monthly values of the last 12 months (at least 4), "
                   "extended one month, with a 95% prediction interval from the months' scatter around the line")
TREND_MONTHS = 12
PERSISTENT_MONTHS = 3
"""A target missed in each of this many months up to the report's is a persistent miss."""
HORIZON_MONTHS = 3
"""A met target the trend line misses within this many months is deteriorating."""
WORST_DAYS = 3
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
"""Student's t, two-sided 95 %, for 1 to 10 degrees of freedom."""

Rollups = Mapping[date, DayRollup]
States = Mapping[date, Rolled]


@dataclass(frozen=True)
class Month:
    """A calendar month."""

    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> "Month":
        """A month written YYYY-MM."""
        year, _, month = text.partition("-")
        if not (year.isdigit() and month.isdigit() and len(year) == 4 and 1 <= int(month) <= 12):
            raise ValueError(f"a month is written YYYY-MM, e.g. 2026-11, got {text!r}")
        return cls(int(year), int(month))

    @property
    def first(self) -> date:
        return date(self.year, self.month, 1)

    @property
    def last(self) -> date:
        return self.shift(1).first - timedelta(days=1)

    def days(self) -> list[date]:
        return [self.first + timedelta(days=i) for i in range(self.last.day)]

    def shift(self, months: int) -> "Month":
        index = self.year * 12 + self.month - 1 + months
        return Month(index // 12, index % 12 + 1)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


@dataclass(frozen=True)
class Forecast:
    """Next month's value on the trend line, with its 95 % prediction interval."""

    month: str
    value: float
    low: float
    high: float
    slope: float
    """Change per month of the line."""
    months: int
    """How many monthly values the line was fitted to."""
    will_meet: bool | None
    """Whether the forecast value meets the target (None: no target)."""


@dataclass(frozen=True)
class KpiSummary:
    """One KPI over the month."""

    kpi: str
    kind: str
    description: str
    unit: str
    """"count", "share" (0 to 1), "seconds" or "money"."""
    value: float | None
    target_min: float | None
    target_max: float | None
    met: bool | None
    previous: float | None
    last_year: float | None
    trend: list[tuple[str, float | None]]
    """The monthly values of the 12 months ending with the report's, oldest first."""
    forecast: Forecast | None
    worst_days: list[tuple[str, float]]
    attainment: float | None = None
    """An SLA: the share of valid items that were good."""
    budget_used: float | None = None
    """An SLA: the share of the month's error budget (1 - objective of its valid items) spent."""
    good: float | None = None
    valid: float | None = None
    needs_backfill: bool = False
    """Days of the months read were rolled before the KPI was added or changed: their figures are n/a
    until `fabwatch report --backfill`."""
    partial: bool = False
    """A cost KPI with a component not rolled up (`monthly_from`): its value leaves that out, so no verdict."""
    records_only: bool = False
    """Read from Prometheus, a KPI no exported counter gives (ratio, value): n/a, only the records have it."""

    @property
    def change_previous(self) -> float | None:
        return None if self.value is None or self.previous is None else self.value - self.previous

    @property
    def change_year(self) -> float | None:
        return None if self.value is None or self.last_year is None else self.value - self.last_year

    @property
    def title(self) -> str:
        """The KPI's name as words (its description says what it counts)."""
        return self.kpi.replace("_", " ")

    @property
    def target_text(self) -> str:
        return target_text(self.target_min, self.target_max)


@dataclass(frozen=True)
class Finding:
    """A reason for a process to be modified, in one sentence."""

    process: str
    kpi: str
    reason: str
    """"persistent" or "deteriorating"."""
    sentence: str
    process_title: str = ""


@dataclass(frozen=True)
class ProcessSummary:
    """One process over the month."""

    name: str
    title: str
    etom: str
    team: str
    days_rolled: int
    days_in_month: int
    created: float
    completed: float
    by_outcome: dict[str, float]
    cost_total: float
    cost_by_component: dict[str, float | None]
    """None: a component read from a `cost_csv` source, not rolled up."""
    cost_per_item: float | None
    """Cost total over the items completed in the month."""
    kpis: list[KpiSummary]
    findings: list[Finding] = field(default_factory=list)
    provisional_days: list[str] = field(default_factory=list)
    """Days of the month rolled before their late window had passed: late rows may still change them."""
    cost_partial: bool = False
    """The cost total and cost per item leave out components not rolled up (None in `cost_by_component`)."""

    @property
    def final(self) -> bool:
        return not self.provisional_days

    @property
    def needs_backfill(self) -> list[str]:
        """The KPIs with days rolled under other definitions."""
        return [k.kpi for k in self.kpis if k.needs_backfill]

    @property
    def complete(self) -> bool:
        return self.days_rolled == self.days_in_month

    @property
    def targets_met(self) -> int:
        return sum(1 for k in self.kpis if k.met is True)

    @property
    def targets_missed(self) -> int:
        return sum(1 for k in self.kpis if k.met is False)

    @property
    def status(self) -> str:
        """"needs modification", "attention" (a target missed this month), "incomplete" (days of the month
        not rolled up: no KPI of it is judged) or "on track"."""
        if self.findings:
            return "needs modification"
        if self.targets_missed:
            return "attention"
        return "on track" if self.complete else "incomplete"


@dataclass(frozen=True)
class Report:
    month: str
    timezone: str
    currency: str
    forecast_method: str
    processes: list[ProcessSummary]
    source: str = "rollups"
    """Where the daily figures came from: "rollups" (the records) or "prometheus" (`reports.prometheus`)."""

    @property
    def findings(self) -> list[Finding]:
        return [f for p in self.processes for f in p.findings]


# --- figures of a span of days ---------------------------------------------------------------


def target_text(low: float | None, high: float | None) -> str:
    parts = ([f">= {low:g}"] if low is not None else []) + ([f"<= {high:g}"] if high is not None else [])
    return " and ".join(parts)


def meets(value: float | None, target: Target | None) -> bool | None:
    """Whether a value is within a target (None: no value or no target)."""
    if value is None or target is None:
        return None
    return (target.min is None or value >= target.min) and (target.max is None or value <= target.max)


def unit_of(kpi: Kpi) -> str:
    if isinstance(kpi, SlaKpi | RatioKpi):
        return "share"
    if isinstance(kpi, DurationKpi):
        return "seconds"
    if isinstance(kpi, CostKpi):
        return "money"
    return "count"


def span_totals(days: Sequence[DayRollup]) -> Measures:
    """The measures of several days summed (the open items: those of the last day)."""
    out: Measures = {}
    for rollup in days:
        for name, value in totals(rollup).items():
            if not name.startswith("open"):
                out[name] = out.get(name, 0.0) + value
    if days:
        out.update({n: v for n, v in totals(days[-1]).items() if n.startswith("open")})
    return out


def cost_total(sums: Measures) -> float:
    return sum(v for n, v in sums.items() if n.startswith("cost."))


def kpi_value(name: str, kpi: Kpi, sums: Measures, buckets: Sequence[float]) -> float | None:
    """A KPI over the span whose summed measures are `sums` (None: undefined, or not from records)."""
    if isinstance(kpi, BacklogKpi):
        return sums.get("open", 0.0)
    if isinstance(kpi, OverdueKpi):
        return sums.get("open.overdue", 0.0)
    if isinstance(kpi, ValueKpi):
        return None
    if isinstance(kpi, VolumeKpi):
        return sums.get(kpi.of, 0.0)
    if isinstance(kpi, SlaKpi):
        return _share(sums.get(f"completed.sla_good_{name}", 0.0), sums.get(f"completed.sla_valid_{name}", 0.0))
    if isinstance(kpi, RatioKpi):
        return _share(sums.get(f"{kpi.of}.ratio_{name}", 0.0), sums.get(kpi.of, 0.0))
    if isinstance(kpi, DurationKpi):
        count = sums.get("completed", 0.0)
        if kpi.stat == "mean":
            return sums.get("completed.dur_sum", 0.0) / count if count > 0 else None
        cumulative = [sums.get(f"completed.le_{i}", 0.0) for i in range(len(buckets))]
        return quantile(kpi.quantile, buckets, cumulative, count)
    assert isinstance(kpi, CostKpi)
    items = sums.get(kpi.per, 0.0)
    return cost_total(sums) / items if items > 0 else None


def _share(good: float, total: float) -> float | None:
    return good / total if total > 0 else None


def buckets_of(process: Process) -> tuple[float, ...]:
    return next((k.buckets for k in process.kpis.values() if isinstance(k, DurationKpi)), ())


# --- trend and forecast ----------------------------------------------------------------------


def fit_line(values: Sequence[tuple[int, float]]) -> tuple[float, float, float] | None:
    """Least squares through (x, y): (intercept, slope, residual standard error); None under 4 points."""
    n = len(values)
    if n < 4:
        return None
    mean_x = sum(x for x, _ in values) / n
    mean_y = sum(y for _, y in values) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in values)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in values) / sxx
    intercept = mean_y - slope * mean_x
    residuals = sum((y - intercept - slope * x) ** 2 for x, y in values)
    return intercept, slope, math.sqrt(residuals / (n - 2))


def forecast(trend: Sequence[tuple[str, float | None]], target: Target | None, next_month: str) -> Forecast | None:
    """Next month on the least-squares line of the trend, with a 95 % prediction interval."""
    points = [(i, v) for i, (_, v) in enumerate(trend) if v is not None]
    fitted = fit_line(points)
    if fitted is None:
        return None
    intercept, slope, spread = fitted
    n, x0 = len(points), len(trend)
    mean_x = sum(x for x, _ in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    t = _T95[min(n - 2, len(_T95)) - 1] if n - 2 <= len(_T95) else 1.96
    half = t * spread * math.sqrt(1 + 1 / n + (x0 - mean_x) ** 2 / sxx)
    value = intercept + slope * x0
    return Forecast(next_month, value, value - half, value + half, slope, n, meets(value, target))


def projected_miss(trend: Sequence[tuple[str, float | None]], target: Target | None) -> int | None:
    """In how many months (1 to 3) the trend line first misses the target, or None."""
    points = [(i, v) for i, (_, v) in enumerate(trend) if v is not None]
    fitted = fit_line(points)
    if fitted is None or target is None:
        return None
    intercept, slope, _ = fitted
    for ahead in range(1, HORIZON_MONTHS + 1):
        if meets(intercept + slope * (len(trend) - 1 + ahead), target) is False:
            return ahead
    return None


# --- the report ------------------------------------------------------------------------------


def month_sums(rollups: Rollups, month: Month) -> Measures | None:
    """The summed measures of a month, None unless every day of it was rolled up."""
    days = month.days()
    if any(d not in rollups for d in days):
        return None
    return span_totals([rollups[d] for d in days])


def kpi_measures(name: str, kpi: Kpi) -> list[tuple[str, str]]:
    """(measure, base): the measures a KPI's value reads that a day has whenever it has items of the base."""
    if isinstance(kpi, SlaKpi):
        return [(f"completed.sla_valid_{name}", "completed")]
    if isinstance(kpi, RatioKpi):
        return [(f"{kpi.of}.ratio_{name}", kpi.of)]
    if isinstance(kpi, DurationKpi):
        measure = "completed.dur_sum" if kpi.stat == "mean" else f"completed.le_{len(kpi.buckets) - 1}"
        return [(measure, "completed")]
    return []


def stale_days(name: str, kpi: Kpi, fingerprint: str, rollups: Rollups, states: States | None) -> set[date]:
    """The days rolled under other definitions of the KPI than `fingerprint`, or without its measures."""
    needed = kpi_measures(name, kpi)
    out = set()
    for day, rollup in rollups.items():
        state = states.get(day) if states is not None else None
        if state is not None and state.definitions is not None and state.definitions.get(name) != fingerprint:
            out.add(day)
            continue
        if needed:
            sums = totals(rollup)
            if any(m not in sums and sums.get(base, 0.0) > 0 for m, base in needed):
                out.add(day)
    return out


class MonthSums:
    """The summed measures of each month of a process, computed once for all its KPIs."""

    def __init__(self, rollups: Rollups) -> None:
        self._rollups = rollups
        self._sums: dict[Month, Measures | None] = {}

    def __call__(self, month: Month) -> Measures | None:
        if month not in self._sums:
            self._sums[month] = month_sums(self._rollups, month)
        return self._sums[month]


def summarize_kpi(name: str, kpi: Kpi, process: Process, rollups: Rollups, month: Month,
                  monthly: MonthSums | None = None, stale: set[date] | None = None) -> KpiSummary:
    """One KPI's figures for the month, its trend, forecast and worst days; the `stale` days (rolled
    under other definitions of the KPI) count as not rolled up for it."""
    buckets = buckets_of(process)
    sums_of = monthly or MonthSums(rollups)
    stale = stale or set()
    partial = isinstance(kpi, CostKpi) and any(c.monthly_from is not None for c in process.costs.values())

    def value_in(m: Month) -> float | None:
        sums = sums_of(m)
        if sums is None or any(d in stale for d in m.days()):
            return None
        return kpi_value(name, kpi, sums, buckets)

    trend = [(str(m), value_in(m)) for m in (month.shift(i - TREND_MONTHS + 1) for i in range(TREND_MONTHS))]
    value = trend[-1][1]
    sums = (sums_of(month) if not any(d in stale for d in month.days()) else None) or {}
    extra: dict[str, float | None] = {}
    if isinstance(kpi, SlaKpi):
        good, valid = sums.get(f"completed.sla_good_{name}", 0.0), sums.get(f"completed.sla_valid_{name}", 0.0)
        extra = {"attainment": value, "good": good, "valid": valid,
                 "budget_used": (valid - good) / (valid * (1 - kpi.objective)) if valid > 0 else None}
    target = kpi.target if not isinstance(kpi, SlaKpi) else (kpi.target or Target(min=kpi.objective))
    judged = None if partial else target
    current = {d: r for d, r in rollups.items() if d not in stale} if stale else rollups
    return KpiSummary(
        kpi=name, kind=kpi.kind, description=kpi.description or kpi.kind, unit=unit_of(kpi), value=value,
        target_min=target.min if target else None, target_max=target.max if target else None,
        met=meets(value, judged), previous=trend[-2][1], last_year=value_in(month.shift(-12)), trend=trend,
        forecast=forecast(trend, judged, str(month.shift(1))),
        worst_days=worst_days(name, kpi, target, current, month, buckets),
        needs_backfill=bool(stale), partial=partial, **extra)  # type: ignore[arg-type]


def worst_days(name: str, kpi: Kpi, target: Target | None, rollups: Rollups, month: Month,
               buckets: Sequence[float]) -> list[tuple[str, float]]:
    """The days of the month whose own value is furthest outside the target, then (when fewer are
    outside) the days inside it nearest the bound the month strays towards; none without a target."""
    if target is None or isinstance(kpi, ValueKpi):
        return []
    daily = [(d.isoformat(), kpi_value(name, kpi, span_totals([rollups[d]]), buckets))
             for d in month.days() if d in rollups]
    known = [(d, v) for d, v in daily if v is not None]
    outside = sorted((item for item in known if outside_by(item[1], target) > 0),
                     key=lambda item: (-outside_by(item[1], target), item[0]))
    bound = violated_bound([v for _, v in outside] or [v for _, v in known], target)
    inside = sorted((item for item in known if outside_by(item[1], target) <= 0),
                    key=lambda item: (abs(item[1] - bound) if bound is not None else 0.0, item[0]))
    return (outside + inside)[:WORST_DAYS]


def outside_by(value: float, target: Target) -> float:
    """How far a value lies outside a target (0 inside it)."""
    below = target.min - value if target.min is not None else 0.0
    above = value - target.max if target.max is not None else 0.0
    return max(below, above, 0.0)


def violated_bound(values: Sequence[float], target: Target) -> float | None:
    """The bound the worst of `values` (sorted worst first when outside) are on the wrong side of, else the
    bound nearest their mean: the one a day inside the target is "bad" by being near."""
    if target.min is None or target.max is None:
        return target.min if target.max is None else target.max
    if not values:
        return None
    first = values[0]
    if outside_by(first, target) > 0:
        return target.min if first < target.min else target.max
    mean = sum(values) / len(values)
    return target.min if abs(mean - target.min) <= abs(mean - target.max) else target.max


def findings_of(process: str, kpi: KpiSummary, title: str = "") -> list[Finding]:
    """Why a KPI makes its process need modification: missed every one of the last 3 months, or met
    now with a trend line that misses the target within 3 months."""
    target = Target(min=kpi.target_min, max=kpi.target_max) if kpi.target_text else None
    if target is None or kpi.partial:
        return []
    recent = [v for _, v in kpi.trend[-PERSISTENT_MONTHS:]]
    label = kpi.title.capitalize()
    if all(v is not None and meets(v, target) is False for v in recent):
        values = ", ".join(format_value(v, kpi.unit) for v in recent)
        return [Finding(process, kpi.kpi, "persistent",
                        f"{label} missed its target ({format_target(kpi)}) in each of the last "
                        f"{PERSISTENT_MONTHS} months ({values}): the process as it runs cannot reach it.",
                        title or process)]
    ahead = projected_miss(kpi.trend, target)
    if kpi.met and ahead is not None and kpi.forecast is not None:
        when = "next month" if ahead == 1 else f"within {ahead} months"
        return [Finding(process, kpi.kpi, "deteriorating",
                        f"{label} still meets its target ({format_target(kpi)}) but is getting worse by "
                        f"{format_change(-abs(kpi.forecast.slope), kpi.unit)[1:]} a month and will miss it {when} "
                        "if nothing changes.", title or process)]
    return []


def summarize_process(name: str, process: Process, rollups: Rollups, month: Month, states: States | None = None,
                      zone: str = "UTC", late: float = 0.0) -> ProcessSummary:
    """A process's month; `states` (when and under what each day was rolled) tell the days rolled before
    their `late` window had passed, and those rolled under other KPI definitions."""
    days = month.days()
    monthly = MonthSums(rollups)
    sums = monthly(month) or span_totals([rollups[d] for d in days if d in rollups])
    fingerprints = definitions(process)
    kpis: list[KpiSummary] = []
    findings: list[Finding] = []
    for kpi_name, kpi in process.kpis.items():
        stale = stale_days(kpi_name, kpi, fingerprints[kpi_name], rollups, states)
        summary = summarize_kpi(kpi_name, kpi, process, rollups, month, monthly, stale)
        kpis.append(summary)
        findings += findings_of(name, summary, process.name)
    completed = sums.get("completed", 0.0)
    costs: dict[str, float | None] = {c: None if component.monthly_from is not None else sums.get(f"cost.{c}", 0.0)
                                      for c, component in process.costs.items()}
    total = sum(v for v in costs.values() if v is not None)
    provisional = [d.isoformat() for d in days if states is not None and d in states and d in rollups
                   and not states[d].final(d, zone, late)]
    return ProcessSummary(
        name=name, title=process.name, etom=process.etom, team=process.team,
        days_rolled=sum(1 for d in days if d in rollups), days_in_month=len(days),
        created=sums.get("created", 0.0), completed=completed,
        by_outcome={n.removeprefix("outcome."): v for n, v in sorted(sums.items()) if n.startswith("outcome.")},
        cost_total=total, cost_by_component=costs, cost_per_item=total / completed if completed > 0 else None,
        kpis=kpis, findings=findings, provisional_days=provisional,
        cost_partial=any(v is None for v in costs.values()))


def summarize(inventory: Inventory, rollups: Mapping[str, Rollups], month: Month,
              states: Mapping[str, States] | None = None) -> Report:
    """The monthly summary of every process from its daily rollups (and, when given, when and under
    what definitions each day was rolled: `read_states`)."""
    zone = inventory.service.timezone
    sources = sql_sources(inventory.sources)
    processes = [summarize_process(name, process, rollups.get(name, {}), month,
                                   None if states is None else states.get(name, {}), zone,
                                   late_of(sources[process.records.source])
                                   if process.records.source in sources else 0.0)
                 for name, process in inventory.processes.items()]
    return Report(str(month), zone, inventory.service.currency, FORECAST_METHOD, processes)


def history_span(month: Month) -> tuple[date, date]:
    """The days a month's report reads: the same month a year before through the month."""
    return month.shift(-12).first, month.last


def read_rollups(store: RollupStore, inventory: Inventory, month: Month) -> dict[str, dict[date, DayRollup]]:
    """The rollups a month's report needs, for every process."""
    first, last = history_span(month)
    return {name: store.read_totals(name, first, last, inventory.service.timezone) for name in inventory.processes}


def read_states(store: RollupStore, inventory: Inventory, month: Month) -> dict[str, dict[date, Rolled]]:
    """When, and under which KPI definitions, each day a month's report reads was rolled, for every process."""
    first, last = history_span(month)
    return {name: store.states(name, first, last, inventory.service.timezone) for name in inventory.processes}


# --- text ------------------------------------------------------------------------------------


def format_value(value: float | None, unit: str, currency: str = "") -> str:
    """A figure as a manager reads it: 93.1%, 1,204, 2.5 h, 14.20 EUR."""
    if value is None:
        return "n/a"
    if unit == "share":
        return f"{value * 100:.1f}%"
    if unit == "seconds":
        if abs(value) >= 86400:
            return f"{value / 86400:.1f} d"
        if abs(value) >= 3600:
            return f"{value / 3600:.1f} h"
        return f"{value / 60:.1f} min" if abs(value) >= 60 else f"{value:.0f} s"
    if unit == "money":
        return f"{value:,.2f} {currency}".strip()
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def format_change(value: float | None, unit: str, currency: str = "") -> str:
    if value is None:
        return "n/a"
    if unit == "share":
        return f"{value * 100:+.2f} pt" if abs(value) < 0.001 else f"{value * 100:+.1f} pt"
    sign = "+" if value >= 0 else "-"
    return sign + format_value(abs(value), unit, currency)


def format_target(kpi: KpiSummary, currency: str = "") -> str:
    parts = ([f">= {format_value(kpi.target_min, kpi.unit, currency)}"] if kpi.target_min is not None else []) + \
            ([f"<= {format_value(kpi.target_max, kpi.unit, currency)}"] if kpi.target_max is not None else [])
    return " and ".join(parts) or "no target"
