"""PromQL of the dashboards, over the raw fabwatch metrics only (no recording rules needed).

Every `rate`/`increase` uses `$__rate_interval`; every selector carries the `$job`/`$instance`
matchers; gauges from several replicas are folded with `max` (each process lives on one shard).
"""

from collections.abc import Callable

from alerts.health import ACCEPTED_RESULTS
from collector.inventory.durations import format_duration
from collector.sources.listener import COMMITTED
from dashboards.common import JOB_INSTANCE, selector

RATE = "[$__rate_interval]"
HOUR = 3600
DAY = 86400
MONTH_END = "scalar((days_in_month() - day_of_month()) * 86400 + 86400 - time() % 86400)"
"""Seconds from now to the end of the current month (UTC)."""


def by(labels: str) -> str:
    """Return a `by (...)` clause, or nothing when there is no label to group by."""
    return f" by ({labels})" if labels else ""


def kpi_value(process: str, kpi: str) -> str:
    """The current value of one KPI over its window."""
    return f"max(fab_kpi_value{selector(process=process, kpi=kpi)})"


def kpi_target(process: str, kpi: str, bound: str) -> str:
    """One bound of one KPI's target."""
    return f"max(fab_kpi_target{selector(process=process, kpi=kpi, bound=bound)})"


def error_budget_left(process: str, kpi: str) -> str:
    """Share of the SLA window's error budget not spent yet (negative once overspent)."""
    return f"1 - (1 - {kpi_value(process, kpi)}) / (1 - {kpi_target(process, kpi, 'min')})"


def burn_rate(process: str, kpi: str, seconds: float) -> str:
    """How fast the error budget burned over the last `seconds` (the long window of the fastest page:
    over `$__rate_interval`, one late item among a few read as a page); 1 spends exactly the budget
    over the SLA window."""
    sel, span = selector(process=process, kpi=kpi), f"[{format_duration(seconds)}]"
    error_ratio = f"(1 - sum(increase(fab_sla_good_total{sel}{span})) / sum(increase(fab_sla_valid_total{sel}{span})))"
    return f"{error_ratio} / (1 - {kpi_target(process, kpi, 'min')})"


def backlog(process: str, group: str = "") -> str:
    """Open work items."""
    return f"sum{by(group)} (fab_backlog_items{selector(process=process)})"


def overdue(process: str, group: str = "") -> str:
    """Open work items past their due time."""
    return f"sum{by(group)} (fab_overdue_items{selector(process=process)})"


def oldest_open(process: str) -> str:
    """Age of the oldest open work item."""
    return f"max(fab_oldest_open_item_age_seconds{selector(process=process)})"


def created_per_hour(process: str, group: str = "") -> str:
    """Work items created per hour."""
    return f"sum{by(group)} (rate(fab_items_created_total{selector(process=process)}{RATE})) * {HOUR}"


def completed_per_hour(process: str, group: str = "outcome") -> str:
    """Work items completed per hour."""
    return f"sum{by(group)} (rate(fab_items_completed_total{selector(process=process)}{RATE})) * {HOUR}"


def cycle_time_quantile(process: str, quantile: float) -> str:
    """A quantile of the cycle time of the items completed recently."""
    sel = selector(process=process)
    return f"histogram_quantile({quantile:g}, sum by (le) (rate(fab_cycle_time_seconds_bucket{sel}{RATE})))"


def cycle_time_mean(process: str) -> str:
    """The mean cycle time of the items completed recently."""
    sel = selector(process=process)
    return (f"sum(rate(fab_cycle_time_seconds_sum{sel}{RATE})) / "
            f"sum(rate(fab_cycle_time_seconds_count{sel}{RATE}))")


def cycle_time_heatmap(process: str) -> str:
    """Completions per cycle-time bucket."""
    return f"sum by (le) (increase(fab_cycle_time_seconds_bucket{selector(process=process)}{RATE}))"


def cost_per_day(process: str, group: str = "component") -> str:
    """Cost accrued per day."""
    return f"sum{by(group)} (rate(fab_cost_total{selector(process=process)}{RATE})) * {DAY}"


def cost_per_item(process: str, per: str = "completed") -> str:
    """Cost of the recent period divided by the items created or completed in it."""
    sel = selector(process=process)
    return f"sum(rate(fab_cost_total{sel}{RATE})) / sum(rate(fab_items_{per}_total{sel}{RATE}))"


# --- management (every process at once) ----------------------------------------------------

_BY_KPI = "on (process, kpi)"


def _kpi_vs_bound(value: str, op: str, bound: str) -> str:
    target = f'max by (process, kpi) (fab_kpi_target{{bound="{bound}", {JOB_INSTANCE}}})'
    return f"{value} {op} bool {_BY_KPI} {target}"


def _each_bound(make: Callable[[str, str], str]) -> str:
    """Apply `make(op, bound)` to both bounds, each result labelled by `bound`."""
    parts = [f'label_replace({make(op, bound)}, "bound", "{bound}", "", "")'
             for op, bound in ((">=", "min"), ("<=", "max"))]
    return " or ".join(parts)


def time_within_target() -> str:
    """Share of the dashboard's range each KPI spent within each bound of its target."""
    value = f"max by (process, kpi) (fab_kpi_value{{{JOB_INSTANCE}}})"
    return _each_bound(lambda op, bound: f"avg_over_time(({_kpi_vs_bound(value, op, bound)})[$__range:])")


def forecast_on_track() -> str:
    """1 when the KPI's linear trend over the range still meets each bound at month end, else 0."""
    value = f"max by (process, kpi) (predict_linear(fab_kpi_value{{{JOB_INSTANCE}}}[$__range], {MONTH_END}))"
    return _each_bound(lambda op, bound: _kpi_vs_bound(value, op, bound))


def cost_per_day_by_process() -> str:
    """Cost accrued per day, by process."""
    return f"sum by (process) (rate(fab_cost_total{{{JOB_INSTANCE}}}{RATE})) * {DAY}"


# --- fabwatch itself ----------------------------------------------------------------------

SOURCES = f'{{source=~"$source", {JOB_INSTANCE}}}'


def source_up(source: str = "") -> str:
    """1 while the last sample of the source succeeded."""
    sel = selector(source=source) if source else SOURCES
    return f"max by (source) (fab_source_up{sel})"


def since_last_success(source: str = "") -> str:
    """Seconds since the last successful sample of each source."""
    sel = selector(source=source) if source else SOURCES
    return f"time() - max by (source) (fab_source_last_success_timestamp_seconds{sel})"


def sample_duration_quantile(quantile: float, source: str = "") -> str:
    """A quantile of the sample duration of each source."""
    sel = selector(source=source) if source else SOURCES
    return (f"histogram_quantile({quantile:g}, sum by (source, le) "
            f"(rate(fab_source_sample_duration_seconds_bucket{sel}{RATE})))")


def events_received_per_second() -> str:
    """TMF events each listener received per second, by result (stored, redelivered, refusal code)."""
    return f"sum by (source, result) (rate(fab_events_received_total{SOURCES}{RATE}))"


def events_refused_share() -> str:
    """The share of the events each listener received that it refused (no traffic: no value)."""
    refused = f'{{source=~"$source", result!~"{ACCEPTED_RESULTS}", {JOB_INSTANCE}}}'
    return (f"sum by (source) (rate(fab_events_received_total{refused}{RATE})) / "
            f"sum by (source) (rate(fab_events_received_total{SOURCES}{RATE}))")


def commit_duration_quantile(quantile: float) -> str:
    """A quantile of the time each listener's group commits take."""
    return (f"histogram_quantile({quantile:g}, sum by (source, le) "
            f"(rate(fab_events_commit_duration_seconds_bucket{SOURCES}{RATE})))")


def events_per_commit() -> str:
    """The events each listener's group commits carried, on average (no commit: no value)."""
    committed = f'{{source=~"$source", result=~"{"|".join(COMMITTED)}", {JOB_INSTANCE}}}'
    return (f"sum by (source) (rate(fab_events_received_total{committed}{RATE})) / "
            f"sum by (source) (rate(fab_events_commit_duration_seconds_count{SOURCES}{RATE}))")


def since_last_event() -> str:
    """Seconds since each listener's last event (stored or redelivered)."""
    return f"time() - max by (source) (fab_events_last_received_timestamp_seconds{SOURCES})"


def errors_per_minute(source: str = "") -> str:
    """Failed samples per minute, by source and reason."""
    sel = selector(source=source) if source else SOURCES
    return f"sum by (source, reason) (rate(fab_source_errors_total{sel}{RATE})) * 60"


def scrape_duration() -> str:
    """How long Prometheus takes to scrape each fabwatch instance."""
    return f"max by (instance) (scrape_duration_seconds{{{JOB_INSTANCE}}})"


def scrape_samples() -> str:
    """Samples each scrape of each fabwatch instance returns."""
    return f"max by (instance) (scrape_samples_scraped{{{JOB_INSTANCE}}})"


def dimension_cap_usage() -> str:
    """Share of each process's cap on dimension label sets in use."""
    return (f"max by (process) (fab_dimension_sets{{{JOB_INSTANCE}}}) / "
            f"max by (process) (fab_dimension_sets_limit{{{JOB_INSTANCE}}})")
