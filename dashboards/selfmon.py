"""fabwatch itself: sources up, staleness, sample durations, errors by reason, event intake, scrape cost."""

from typing import Any

from alerts.health import REFUSED_ALERT, SILENT_ALERT
from collector.inventory.models import Inventory
from collector.inventory.sources import TmfEventsSource
from collector.naming import SELF_UID
from collector.scheduler import schedule_gap
from dashboards import promql
from dashboards.common import (
    BAD,
    GOOD,
    WARN,
    RowSpec,
    alerts_annotation,
    dashboard,
    datasource_variable,
    job_instance_variables,
    label_variable,
    query,
    stat_panel,
    state_panel,
    steps,
    timeseries_panel,
)
from dashboards.overview import common_links
from dashboards.process import QUANTILES, UP_DOWN

STALE_AFTER = (2, 5)
"""Sampling intervals after which a source is late (orange) and stale (red)."""


def staleness_steps(inventory: Inventory) -> Any:
    """Orange and red from 2 and 5 times the longest sampling interval of the inventory (for a
    crontab, the longest time between two of its runs)."""
    interval = max((schedule_gap(s, inventory.service.timezone) for s in inventory.sources.values()), default=60.0)
    late, stale = (interval * n for n in STALE_AFTER)
    return steps(GOOD, (late, WARN), (stale, BAD))


def timeout_steps(inventory: Inventory) -> Any:
    """Red from the longest source timeout, orange from half of it."""
    timeout = max((s.timeout for s in inventory.sources.values()), default=10.0)
    return steps(GOOD, (timeout / 2, WARN), (timeout, BAD))


def sources_row(inventory: Inventory) -> RowSpec:
    """Whether each source is sampled, on time, fast enough and without errors."""
    stale = staleness_steps(inventory)
    return RowSpec("Sources", [
        stat_panel("Sources up", "Share of the selected sources whose last sample succeeded.", "percentunit",
                   [query(f"avg({promql.source_up()})", "up")], steps(BAD, (1, GOOD)), width=6),
        stat_panel("Oldest last success", "Time since the last successful sample of the most stale source; orange "
                   "and red at 2 and 5 sampling intervals.", "s",
                   [query(f"max({promql.since_last_success()})", "staleness")], stale, width=6),
        state_panel("Source up", "Whether the last sample of each source succeeded.",
                    query(promql.source_up(), "{{source}}"), UP_DOWN),
        timeseries_panel("Time since last successful sample", "Data staleness per source; dashed lines at 2 and 5 "
                         "sampling intervals.", "s", [query(promql.since_last_success(), "{{source}}")],
                         thresholds=stale),
        timeseries_panel("Sample duration", "Time a sample takes per source; dashed lines at half the timeout and "
                         "the timeout.", "s",
                         [query(promql.sample_duration_quantile(q), f"{{{{source}}}} p{q * 100:g}") for q in QUANTILES],
                         thresholds=timeout_steps(inventory)),
        timeseries_panel("Sample errors by reason", "Failed samples per minute, by source and reason.", "cpm",
                         [query(promql.errors_per_minute(), "{{source}} {{reason}}")], bars=True, width=24),
    ])


def intake_row(inventory: Inventory) -> RowSpec | None:
    """What the TMF event listeners receive, and how much of it they refuse (no listener: no row)."""
    if not any(isinstance(source, TmfEventsSource) for source in inventory.sources.values()):
        return None
    ratio = inventory.alerting.health.events_refused_ratio
    return RowSpec("Event intake", [
        timeseries_panel("Events received by result", "TMF events each listener received per second: accepted, "
                         "duplicate (a redelivery, stored once) or the code of the refusal (a 4xx or 503 answer: "
                         "not stored).", "reqps",
                         [query(promql.events_received_per_second(), "{{source}} {{result}}")], stacked=True,
                         width=8),
        timeseries_panel("Refused share", f"Share of the events each listener received that it refused; dashed "
                         f"line at {ratio * 100:g} % (alerting.health.events_refused_ratio), where {REFUSED_ALERT} "
                         "fires.", "percentunit", [query(promql.events_refused_share(), "{{source}}")],
                         thresholds=steps(GOOD, (ratio, BAD)), width=8),
        timeseries_panel("Time since last event", f"Time since each listener's last event, stored or redelivered "
                         f"(since its start when it has none); {SILENT_ALERT} fires past the source's "
                         "silent_after, when set.", "s", [query(promql.since_last_event(), "{{source}}")], width=8),
        timeseries_panel("Group commit duration", "Time each listener's group commits take, from writing the batch "
                         "to the end of its fsync: the events of a batch wait for it before their 201. A rise with "
                         "steady traffic points at the disk under the record store.", "s",
                         [query(promql.commit_duration_quantile(q), f"{{{{source}}}} p{q * 100:g}")
                          for q in QUANTILES]),
        timeseries_panel("Events per commit", "Events each group commit carries, on average: about one under light "
                         "traffic, up to the number of concurrent senders (and batch_max) under load.", "short",
                         [query(promql.events_per_commit(), "{{source}}")]),
    ])


def cost_row() -> RowSpec:
    """What fabwatch costs Prometheus, and how close each process is to its cardinality cap."""
    return RowSpec("Scrape cost", [
        timeseries_panel("Scrape duration", "Time Prometheus takes to scrape each fabwatch instance.", "s",
                         [query(promql.scrape_duration(), "{{instance}}")], width=8),
        timeseries_panel("Samples per scrape", "Series each scrape of each fabwatch instance returns.", "short",
                         [query(promql.scrape_samples(), "{{instance}}")], width=8),
        timeseries_panel("Dimension cap usage", "Share of each process's cap on dimension label sets in use; "
                         "beyond the cap, dimension values read `other`.", "percentunit",
                         [query(promql.dimension_cap_usage(), "{{process}}")],
                         thresholds=steps(GOOD, (0.8, WARN), (1, BAD)), width=8),
    ])


def self_dashboard(inventory: Inventory) -> dict[str, Any]:
    """Build the dashboard of fabwatch itself."""
    source = label_variable("source", "Source", 'fab_source_up{job=~"$job", instance=~"$instance"}')
    return dashboard(
        SELF_UID, "fabwatch / Self-monitoring",
        "Health of fabwatch and of the sources it samples, and what it costs Prometheus.",
        [row for row in (sources_row(inventory), intake_row(inventory), cost_row()) if row is not None],
        variables=[datasource_variable(), *job_instance_variables(), source],
        annotations=[alerts_annotation('source=~"$source"')], links=common_links())
