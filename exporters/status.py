"""The status view: what the status page and the JSON API show, built from the inventory, the
latest sample of each source and the sources' health.

States (one of `schema.State`):

- `no_data`: the KPI has no value (no item in its window, or its source was never sampled).
- `breached`: the value is outside its target; an SLA whose good ratio over its window is under
  its objective (its error budget is spent).
- `at_risk`: within target but close to it. For a `max` bound, a value above
  `max x (1 - AT_RISK_MARGIN)`; for a `min` bound, a value under `min x (1 + AT_RISK_MARGIN)`,
  or for a share (`SHARE_KINDS`: values in [0, 1]) under `min + AT_RISK_MARGIN x (1 - min)`.
  An SLA is at risk when less than `AT_RISK_MARGIN` of its error budget is left, or when an
  alert window pair of `alerting.slo.windows` burns faster than the pair allows (both its long
  and its short window above the pair's factor, the condition of `FabSlaErrorBudgetBurn`, once
  the in-memory history covers the pair's long window; before that its rates show, unjudged).
- `ok`: otherwise; also a KPI without a target whenever it has a value.

A process takes the worst state (breached, then at_risk, then no_data, then ok) of its KPIs
that have a target and of its SLAs; KPIs without a target do not colour it.

The burn rates over the alert windows need the SLA counters' past values: `StatusBoard` keeps
them in memory (one point a minute at most, as long as the longest window), with the last
`TREND_POINTS` values of every KPI for the trend lines. Both start empty when fabwatch starts.
"""

from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass

from collector.health import HealthTracker
from collector.inventory.alerting import BurnWindow
from collector.inventory.durations import format_duration
from collector.inventory.models import Inventory, Kpi, Process, SlaKpi
from collector.naming import process_uid
from collector.samples import KpiReading, SourceSample
from exporters.schema import (
    STATES,
    Availability,
    Budget,
    BurnRate,
    InventoryKpi,
    InventoryProcess,
    InventorySource,
    InventoryView,
    KpiStatus,
    Objective,
    ProcessStatus,
    ProcessSummary,
    SloStatus,
    SourceStatus,
    State,
    Target,
    TrendPoint,
)

AT_RISK_MARGIN = 0.1
SHARE_KINDS = ("sla", "ratio")
"""KPI kinds whose values are shares in [0, 1]."""
"""The share of a target (or of an error budget) within which a KPI is `at_risk`."""
TREND_POINTS = 60
"""Values kept per KPI for its trend line."""
COUNTER_SPACING = 60.0
"""Seconds between two kept points of an SLA's counters (the shortest alert window is minutes)."""

Key = tuple[str, str]
"""(process, kpi)."""
Latest = Callable[[str], SourceSample | None]
"""The latest successful sample of a source (`PrometheusExporter.latest`)."""


@dataclass(frozen=True, slots=True)
class CounterPoint:
    at: float
    good: float
    valid: float


def worst(states: Iterable[State]) -> State:
    """Return the worst of `states` (ok when there are none)."""
    return max(states, key=STATES.index, default="ok")


def target_of(kpi: Kpi) -> Target | None:
    """Return the KPI's target; an SLA's objective is its minimum."""
    low = kpi.target.min if kpi.target else None
    high = kpi.target.max if kpi.target else None
    if isinstance(kpi, SlaKpi):
        low = kpi.objective
    return None if low is None and high is None else Target(min=low, max=high)


def is_share(kpi: Kpi) -> bool:
    """Whether the KPI's values are shares in [0, 1] (an SLA's or a ratio's good ratio)."""
    return kpi.kind in SHARE_KINDS


def kpi_state(value: float | None, target: Target | None, margin: float = AT_RISK_MARGIN, *,
              share: bool = False) -> State:
    """Return the state of a non-SLA KPI's value against its target. The at-risk margin is `margin` of
    the target, or for a share's `min` bound `margin` of the headroom above it (`1 - min`): 10 % of a
    0.95 minimum would be out of reach."""
    if value is None:
        return "no_data"
    if target is None:
        return "ok"
    if (target.min is not None and value < target.min) or (target.max is not None and value > target.max):
        return "breached"
    near_max = target.max is not None and target.max > 0 and value > target.max * (1 - margin)
    near_min = target.min is not None and target.min > 0 and value < (
        target.min + margin * (1 - target.min) if share else target.min * (1 + margin))
    return "at_risk" if near_max or near_min else "ok"


def budget(objective: float, good_ratio: float | None, valid: float) -> tuple[Availability, Budget]:
    """Return an SLA's availability and error budget over its window from its good ratio and its
    valid events there."""
    allowed = 1 - objective
    errors = valid * (1 - good_ratio) if good_ratio is not None else 0.0
    total = valid * allowed
    error_ratio = None if good_ratio is None else 1 - good_ratio
    return (Availability(percentage=good_ratio, total=valid, errors=errors),
            Budget(total=total, used=errors, remaining=total - errors,
                   remaining_ratio=None if error_ratio is None else 1 - error_ratio / allowed,
                   burn_rate=None if error_ratio is None else error_ratio / allowed))


def burn_factor(window: BurnWindow, slo_window: float) -> float:
    """The burn rate a pair alerts above: `budget_share` of the SLO window's budget spent within
    `long`, at least 1x (as `alerts.slo` derives it)."""
    return max(1.0, window.budget_share * slo_window / window.long)


def burn_rate(points: Iterable[CounterPoint], now: float, span: float, objective: float) -> tuple[float | None, float]:
    """Return the burn rate over the last `span` seconds up to the newest point, and the seconds the
    points cover of it; None while no valid event was counted in it."""
    ordered = list(points)
    if not ordered:
        return None, 0.0
    newest = ordered[-1]
    start = next((p for p in reversed(ordered) if p.at <= now - span), ordered[0])
    valid = newest.valid - start.valid
    covered = min(span, newest.at - start.at)
    if valid <= 0:
        return None, covered
    error_ratio = (valid - (newest.good - start.good)) / valid
    return error_ratio / (1 - objective), covered


def burn_rates(points: Iterable[CounterPoint], now: float, kpi: SlaKpi,
               windows: Iterable[BurnWindow]) -> list[BurnRate]:
    """Return the burn rate over each alert window pair."""
    kept = list(points)
    rates = []
    for window in windows:
        factor = burn_factor(window, kpi.window)
        long_rate, covered = burn_rate(kept, now, window.long, kpi.objective)
        short_rate, _ = burn_rate(kept, now, window.short, kpi.objective)
        burning = (covered >= window.long and long_rate is not None and short_rate is not None
                   and min(long_rate, short_rate) > factor)  # shown before, but burning only over the long window
        rates.append(BurnRate(severity=window.severity, long_seconds=window.long, short_seconds=window.short,
                              factor=factor, long_rate=long_rate, short_rate=short_rate,
                              covered_seconds=covered, burning=burning))
    return rates


def slo_state(availability: Availability, spent: Budget, rates: Iterable[BurnRate],
              margin: float = AT_RISK_MARGIN) -> State:
    """Return an SLA's state from its budget and its burn rates."""
    if availability.percentage is None or spent.remaining_ratio is None:
        return "no_data"
    if spent.remaining_ratio < 0:
        return "breached"
    if spent.remaining_ratio < margin or any(rate.burning for rate in rates):
        return "at_risk"
    return "ok"


def safe_link(url: str | None) -> str | None:
    """Return `url` if it is an http or https link, else None (no `javascript:` on the page)."""
    if url is None:
        return None
    return url if url.lower().startswith(("http://", "https://")) else None


def dashboard_link(inventory: Inventory, process: str) -> str | None:
    """The process's Grafana dashboard (`dashboards.process` uids), when a Grafana URL is set."""
    if "grafana_url" not in inventory.alerting.model_fields_set:
        return None
    return f"{inventory.alerting.grafana_url.rstrip('/')}/d/{process_uid(process)}?var-process={process}"


def family_values(sample: SourceSample | None, family: str) -> dict[Key, float]:
    """Return a (process, kpi) family of a sample by (process, kpi)."""
    if sample is None:
        return {}
    values = {}
    for fam in sample.families:
        if fam.name == family:
            for labels, value in fam.samples:
                named = dict(labels)
                values[named.get("process", ""), named.get("kpi", "")] = value
    return values


def window_of(kpi: Kpi) -> float | None:
    """The KPI's window, None for instant KPIs."""
    window = getattr(kpi, "window", None)
    return float(window) if window is not None else None


def inventory_view(inventory: Inventory) -> InventoryView:
    """The inventory as the API shows it: names, eTOM ids, teams, kinds, schedules, targets; no secret."""
    processes = [
        InventoryProcess(name=name, title=process.name, etom=process.etom, team=process.team,
                         runbook=safe_link(process.runbook or inventory.alerting.runbook_url),
                         source=process.records.source,
                         kpis=[InventoryKpi(name=k, kind=kpi.kind, description=kpi.description,
                                            target=target_of(kpi), window_seconds=window_of(kpi),
                                            objective=kpi.objective if isinstance(kpi, SlaKpi) else None)
                               for k, kpi in process.kpis.items()])
        for name, process in inventory.processes.items()]
    sources = [InventorySource(name=name, kind=source.kind, cron=source.cron,
                               interval_seconds=None if source.cron else source.interval)
               for name, source in inventory.sources.items()]
    return InventoryView(processes=processes, sources=sources)


def source_status(inventory: Inventory, health: HealthTracker, name: str) -> SourceStatus:
    """A source's health from the tracker (its families, the exporter's view of it)."""
    last = {dict(labels).get("source"): value for family in health.families()
            if family.name == "fab_source_last_success_timestamp_seconds" for labels, value in family.samples}
    return SourceStatus(name=name, kind=inventory.sources[name].kind, up=health.is_up(name),
                        sampled=name not in health.not_sampled(), last_success=last.get(name),
                        last_error=health.last_reason(name),
                        errors={reason: count for reason, count in health.errors(name).items() if count})


class StatusBoard:
    """Keeps the history the view needs (a `SampleSink` next to the exporter) and builds the view.

    The view is rebuilt at most once per change (a sample, a health change): the page and the
    API serve the same objects until the next one, whatever the number of clients.
    """

    def __init__(self, inventory: Inventory, health: HealthTracker, latest: Latest) -> None:
        self.inventory = inventory
        self._health = health
        self._latest = latest
        self._trends: dict[Key, deque[TrendPoint]] = {}
        self._counters: dict[Key, deque[CounterPoint]] = {}
        self._keep = inventory.alerting.slo.longest_window + COUNTER_SPACING
        self._cache: dict[str, ProcessStatus] | None = None
        self._sources: list[SourceStatus] | None = None
        self._memo: dict[Hashable, bytes] = {}
        self.version = 0
        """Bumped on every change; what a client may cache the view by."""

    def replace_inventory(self, inventory: Inventory) -> None:
        """Show `inventory` from now on (a reload applied it): KPIs it no longer has lose their history."""
        kept = {(name, kpi) for name, process in inventory.processes.items() for kpi in process.kpis}
        self._trends = {key: trend for key, trend in self._trends.items() if key in kept}
        self._counters = {key: points for key, points in self._counters.items() if key in kept}
        self.inventory = inventory
        self._keep = inventory.alerting.slo.longest_window + COUNTER_SPACING
        self.invalidate()

    def update(self, sample: SourceSample) -> None:
        """Record the KPI values and SLA counters of a new sample."""
        for reading in sample.kpis:
            if reading.value is not None:
                trend = self._trends.setdefault((reading.process, reading.kpi), deque(maxlen=TREND_POINTS))
                trend.append(TrendPoint(at=sample.sampled_at, value=reading.value))
        valid = family_values(sample, "fab_sla_valid")
        for key, good in family_values(sample, "fab_sla_good").items():
            if key in valid:
                self._record(key, CounterPoint(sample.sampled_at, good, valid[key]))
        self.invalidate()

    def invalidate(self) -> None:
        """Forget the view: a sample or a source's health changed."""
        self._cache = None
        self._sources = None
        self._memo.clear()
        self.version += 1

    def _record(self, key: Key, point: CounterPoint) -> None:
        points = self._counters.setdefault(key, deque())
        if points and (point.valid < points[-1].valid or point.good < points[-1].good):
            points.clear()  # counters went back (state reset): earlier points no longer compare
        if len(points) >= 2 and points[-1].at - points[-2].at < COUNTER_SPACING:
            points[-1] = point  # the newest replaces a point too close to the one before: one a spacing
        else:
            points.append(point)
        while points and points[0].at < point.at - self._keep:
            points.popleft()

    def processes(self) -> dict[str, ProcessStatus]:
        """Every process's status, by name, in inventory order."""
        if self._cache is None:
            self._cache = {name: self._process(name, process) for name, process in self.inventory.processes.items()}
        return self._cache

    def summaries(self) -> list[ProcessSummary]:
        """The processes without their KPIs."""
        return [ProcessSummary(**status.model_dump(include=set(ProcessSummary.model_fields)))
                for status in self.processes().values()]

    def sources(self) -> list[SourceStatus]:
        """Every source's health (a health change invalidates the view too)."""
        if self._sources is None:
            self._sources = [source_status(self.inventory, self._health, name) for name in self.inventory.sources]
        return self._sources

    def memo(self, key: Hashable, build: Callable[[], bytes]) -> bytes:
        """Return what `build` returns for `key`, built once per version of the view (a serialised
        answer: fifty wall screens cost one serialisation, not fifty). Keys must come from a
        bounded set (validated parameters), never from raw request text."""
        body = self._memo.get(key)
        if body is None:
            body = self._memo[key] = build()
        return body

    def _process(self, name: str, process: Process) -> ProcessStatus:
        sample = self._latest(process.records.source)
        readings = {r.kpi: r for r in sample.kpis if r.process == name} if sample else {}
        window_valid = family_values(sample, "fab_sla_window_valid")
        kpis, slos = [], []
        for kpi_name, kpi in process.kpis.items():
            reading = readings.get(kpi_name)
            kpis.append(self._kpi(name, kpi_name, kpi, reading, sample))
            if isinstance(kpi, SlaKpi):
                slos.append(self._slo(name, kpi_name, kpi, reading, window_valid.get((name, kpi_name), 0.0),
                                      sample.sampled_at if sample else 0.0))
        slo_states = {s.labels["kpi"]: s.state for s in slos}
        kpis = [k.model_copy(update={"state": slo_states[k.kpi]}) if k.kpi in slo_states else k for k in kpis]
        counted = [k.state for k in kpis if k.target is not None]
        inventory = self.inventory
        return ProcessStatus(
            name=name, title=process.name, etom=process.etom, team=process.team,
            runbook=safe_link(process.runbook or inventory.alerting.runbook_url),
            dashboard=dashboard_link(inventory, name), state=worst(counted),
            states={state: sum(1 for k in kpis if k.state == state) for state in STATES},
            kpis=kpis, slos=slos, source=source_status(inventory, self._health, process.records.source))

    def _kpi(self, process: str, name: str, kpi: Kpi, reading: KpiReading | None,
             sample: SourceSample | None) -> KpiStatus:
        value = reading.value if reading else None
        target = target_of(kpi)
        return KpiStatus(process=process, kpi=name, kind=kpi.kind, description=kpi.description, value=value,
                         target=target, state=kpi_state(value, target, share=is_share(kpi)),
                         sampled_at=sample.sampled_at if sample else None,
                         trend=list(self._trends.get((process, name), ())))

    def _slo(self, process: str, name: str, kpi: SlaKpi, reading: KpiReading | None, valid: float,
             now: float) -> SloStatus:
        availability, spent = budget(kpi.objective, reading.value if reading else None, valid)
        rates = burn_rates(self._counters.get((process, name), ()), now, kpi, self.inventory.alerting.slo.windows)
        objective = Objective(target=kpi.objective, window_seconds=kpi.window, window=format_duration(kpi.window),
                              description=kpi.description)
        return SloStatus(labels={"process": process, "kpi": name}, objective=objective, availability=availability,
                         budget=spent, burn_rates=rates, state=slo_state(availability, spent, rates))


def filter_kpis(statuses: Mapping[str, ProcessStatus], process: str | None, state: State | None) -> list[KpiStatus]:
    """Every KPI, of one process and/or in one state when asked."""
    return [kpi for name, status in statuses.items() if process in (None, name)
            for kpi in status.kpis if state in (None, kpi.state)]
