"""One dashboard per process: volume, backlog, cycle time, SLA, KPIs, cost and source health."""

from collections.abc import Iterator
from typing import Any

from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.models import dashboard as dm

from collector.inventory.alerting import SloAlerting
from collector.inventory.durations import format_duration
from collector.inventory.models import (
    BacklogKpi,
    CostKpi,
    DurationKpi,
    Inventory,
    Kpi,
    OverdueKpi,
    Process,
    SlaKpi,
    ValueKpi,
)
from collector.naming import process_uid
from dashboards import promql
from dashboards.common import (
    BAD,
    GOOD,
    PanelSpec,
    RowSpec,
    alerts_annotation,
    currency_unit,
    dashboard,
    datasource_variable,
    heatmap_panel,
    job_instance_variables,
    query,
    stat_panel,
    state_panel,
    steps,
    target_steps,
    timeseries_panel,
    value_map,
)
from dashboards.overview import (
    BURN_UNIT,
    common_links,
    first_kpi,
    humanize,
    page_burn,
    summary_tiles,
    target_of,
)

DIMENSION = "$dimension"
PER_HOUR = "suffix:/h"
QUANTILES = (0.5, 0.9, 0.99)
UP_DOWN = value_map({0: ("Down", BAD), 1: ("Up", GOOD)})


def group_label(process: Process) -> str:
    """Return the label the by-dimension panels group by: `$dimension`, or none without dimensions."""
    return DIMENSION if process.records.columns.dimensions else ""


def dimension_variable(process: Process) -> list[gd.CustomVariable]:
    """Return `$dimension`, the dimension columns of the process, when it has any."""
    dims = process.records.columns.dimensions
    if not dims:
        return []
    return [gd.CustomVariable("dimension").label("Break down by").values(",".join(dims))
            .current(dm.VariableOption(text=dims[0], value=dims[0], selected=True))
            .options([dm.VariableOption(text=d, value=d, selected=d == dims[0]) for d in dims])
            .multi(False).include_all(False)]


def volume_row(name: str, process: Process) -> RowSpec:
    """Items in and out."""
    group = group_label(process)
    return RowSpec("Volume", [
        timeseries_panel("Items created by $dimension" if group else "Items created",
                         "Work items created per hour.", PER_HOUR,
                         [query(promql.created_per_hour(name, group))],
                         stacked=True),
        timeseries_panel("Items completed by outcome", "Work items completed per hour, by outcome.", PER_HOUR,
                         [query(promql.completed_per_hour(name), "{{outcome}}")], stacked=True),
    ])


def backlog_row(name: str, process: Process) -> RowSpec:
    """Open and overdue items by dimension, and the oldest open item."""
    group = group_label(process)
    suffix = " by $dimension" if group else ""
    return RowSpec("Backlog", [
        timeseries_panel(f"Backlog{suffix}", "Open work items; the dashed line is the backlog target.", "short",
                         [query(promql.backlog(name, group))], stacked=True,
                         thresholds=target_steps(target_of(process, BacklogKpi))),
        timeseries_panel(f"Overdue{suffix}", "Open work items past their due time (paused items excluded); "
                         "the dashed line is the overdue target.", "short",
                         [query(promql.overdue(name, group))], stacked=True,
                         thresholds=target_steps(target_of(process, OverdueKpi)), width=8),
        stat_panel("Oldest open item", "Age of the oldest open work item.", "s",
                   [query(promql.oldest_open(name), "oldest")], steps(GOOD), width=4, height=8),
    ])


def cycle_time_row(name: str, process: Process) -> RowSpec | None:
    """Cycle time percentiles and heatmap, when a duration KPI makes fabwatch export the histogram."""
    duration = first_kpi(process, DurationKpi)
    if duration is None:
        return None
    targets = [query(promql.cycle_time_quantile(name, q), f"p{q * 100:g}") for q in QUANTILES]
    targets.append(query(promql.cycle_time_mean(name), "mean"))
    return RowSpec("Cycle time", [
        timeseries_panel("Cycle time percentiles", "Created to completed, paused time excluded, of the items "
                         "completed recently (estimated from the histogram buckets).", "s", targets),
        heatmap_panel("Cycle time distribution", "Items completed per cycle-time bucket.", "s",
                      query(promql.cycle_time_heatmap(name), "{{le}}", fmt="heatmap")),
    ])


def sla_panels(name: str, kpi_name: str, kpi: SlaKpi, slo: SloAlerting) -> Iterator[PanelSpec]:
    """Compliance over the window against the objective, and the burn rate against the paging rates."""
    label = humanize(kpi_name)
    yield timeseries_panel(
        f"{label}: compliance", f"Share of the items of the last {kpi.window / 86400:g} days completed by their "
        f"due time; the dashed line is the objective ({kpi.objective:.1%}).", "percentunit",
        [query(promql.kpi_value(name, kpi_name), "compliance")],
        thresholds=steps(BAD, (kpi.objective, GOOD)), minimum=None)
    burn = page_burn(kpi, slo)
    yield timeseries_panel(
        f"{label}: error budget burn rate", f"Error budget burn rate over {format_duration(burn.window)} (1 = the "
        f"budget lasts exactly the window); dashed lines at {burn.text}.", BURN_UNIT,
        [query(promql.burn_rate(name, kpi_name, burn.window), "burn rate")], thresholds=burn.lines)


def sla_row(name: str, process: Process, slo: SloAlerting) -> RowSpec | None:
    """Every SLA KPI of the process."""
    panels = [p for k, kpi in process.kpis.items() if isinstance(kpi, SlaKpi)
              for p in sla_panels(name, k, kpi, slo)]
    return RowSpec("SLA", panels) if panels else None


def kpi_unit(kpi: Kpi, currency: str) -> str:
    """Return the unit of a KPI's value."""
    if kpi.kind in ("sla", "ratio"):
        return "percentunit"
    if kpi.kind == "duration":
        return "s"
    if kpi.kind == "cost":
        return currency_unit(currency)
    return "short"


def kpi_description(kpi: Kpi) -> str:
    """Return what a KPI tile shows, with its target."""
    text = kpi.description or f"{kpi.kind.capitalize()} KPI."
    if isinstance(kpi, SlaKpi):
        return f"{text} Objective: {kpi.objective:.1%}."
    if kpi.target is not None:
        bounds = [f"{b} {v:g}" for b, v in (("min", kpi.target.min), ("max", kpi.target.max)) if v is not None]
        return f"{text} Target: {', '.join(bounds)}."
    return f"{text} No target."


def kpis_row(name: str, process: Process, currency: str) -> RowSpec:
    """One tile per KPI, in its unit, coloured by its target."""
    tiles = []
    for kpi_name, kpi in process.kpis.items():
        target = steps(BAD, (kpi.objective, GOOD)) if isinstance(kpi, SlaKpi) else target_steps(kpi.target)
        if isinstance(kpi, ValueKpi) and kpi.target is None:
            target = steps(GOOD)
        tiles.append(stat_panel(humanize(kpi_name), kpi_description(kpi), kpi_unit(kpi, currency),
                                [query(promql.kpi_value(name, kpi_name), kpi_name)], target, width=4))
    return RowSpec("KPIs", tiles)


def cost_row(name: str, process: Process, currency: str) -> RowSpec | None:
    """Cost per day by component, and cost per item against the cost target."""
    if not process.costs:
        return None
    unit = currency_unit(currency)
    cost = first_kpi(process, CostKpi)
    per = cost[1].per if cost else "completed"
    targets = [query(promql.cost_per_item(name, per), "recent")]
    if cost is not None:
        targets.append(query(promql.kpi_value(name, cost[0]), f"last {cost[1].window / 86400:g} days"))
    return RowSpec("Cost", [
        timeseries_panel("Cost per day by component", "Cost accrued per day: activity drivers booked on "
                         "completion, fixed costs spread over time.", unit,
                         [query(promql.cost_per_day(name), "{{component}}")], stacked=True),
        timeseries_panel("Cost per item", f"Cost per {per} item, recently and over the cost KPI's window; "
                         "the dashed line is the target.", unit, targets,
                         thresholds=target_steps(cost[1].target if cost else None)),
    ])


def source_row(process: Process) -> RowSpec:
    """Health of the source the process's records come from."""
    source = process.records.source
    return RowSpec(f"Source: {source}", [
        state_panel("Source up", f"Whether the last sample of source {source} succeeded.",
                    query(promql.source_up(source), "{{source}}"), UP_DOWN, width=6),
        timeseries_panel("Time since last successful sample", "Data staleness of the process's source.", "s",
                         [query(promql.since_last_success(source), "{{source}}")], width=6),
        timeseries_panel("Sample duration", "90th percentile of the time a sample of the source takes.", "s",
                         [query(promql.sample_duration_quantile(0.9, source), "p90")], width=6),
        timeseries_panel("Sample errors by reason", "Failed samples per minute, by reason.", "cpm",
                         [query(promql.errors_per_minute(source), "{{reason}}")], bars=True, width=6),
    ])


def process_rows(name: str, process: Process, currency: str, slo: SloAlerting) -> list[RowSpec]:
    """Return the rows of a process dashboard, skipping those the process has no data for."""
    rows = [RowSpec("Summary", summary_tiles(name, process, currency, slo, link=False)),
            volume_row(name, process), backlog_row(name, process), cycle_time_row(name, process),
            sla_row(name, process, slo), kpis_row(name, process, currency), cost_row(name, process, currency),
            source_row(process)]
    return [row for row in rows if row is not None]


def process_dashboard(inventory: Inventory, name: str) -> dict[str, Any]:
    """Build the dashboard of one process."""
    process = inventory.processes[name]
    description = f"eTOM {process.etom} {process.name}, run by team {process.team}."
    if process.runbook:
        description += f" Runbook: {process.runbook}."
    return dashboard(
        process_uid(name), f"fabwatch / {process.name}", description,
        process_rows(name, process, inventory.service.currency, inventory.alerting.slo),
        variables=[datasource_variable(), *job_instance_variables(), *dimension_variable(process)],
        annotations=[alerts_annotation(f'process="{name}"')], links=common_links())

