"""The managers' dashboard: targets met month to date, forecasts to month end, cost per unit trends."""

from typing import Any

from collector.inventory.models import CostKpi, Inventory
from collector.naming import MANAGEMENT_UID
from dashboards import promql
from dashboards.common import (
    BAD,
    GOOD,
    WARN,
    PanelSpec,
    RowSpec,
    alerts_annotation,
    currency_unit,
    dashboard,
    datasource_variable,
    job_instance_variables,
    query,
    steps,
    table_panel,
    target_steps,
    timeseries_panel,
    value_map,
)
from dashboards.overview import common_links, first_kpi, process_matcher

ON_TRACK = value_map({0: ("At risk", BAD), 1: ("On track", GOOD)})
MONTH_TO_DATE = "now/M"
SMALL_MULTIPLES = 4
"""Cost-per-item panels per grid line."""


def targets_row() -> RowSpec:
    """Month-to-date attainment and the forecast at month end, for every KPI with a target."""
    return RowSpec("Targets, month to date", [
        table_panel("Time within target", "Share of the selected range (this month so far by default) each KPI "
                    "spent within each bound of its target; SLA KPIs count from their objective.",
                    "percentunit", [query(promql.time_within_target(), instant=True, fmt="table")],
                    steps(BAD, (0.9, WARN), (0.99, GOOD)), width=12, height=12),
        table_panel("Forecast at month end", "Whether each KPI's linear trend over the selected range still meets "
                    "each bound of its target at the end of the month (UTC).", "none",
                    [query(promql.forecast_on_track(), instant=True, fmt="table")],
                    steps(BAD, (1, GOOD)), mappings=ON_TRACK, width=12, height=12),
    ])


def cost_rows(inventory: Inventory) -> list[RowSpec]:
    """Cost per day of every process, then one cost-per-item trend per process against its target."""
    unit = currency_unit(inventory.service.currency)
    per_day = timeseries_panel("Cost per day by process", "Cost accrued per day, stacked by process.", unit,
                               [query(promql.cost_per_day_by_process(), "{{process}}")], stacked=True, width=24)
    multiples: list[PanelSpec] = []
    for name, process in inventory.processes.items():
        found = first_kpi(process, CostKpi)
        if found is None:
            continue
        kpi_name, kpi = found
        multiples.append(timeseries_panel(
            f"{process.name}: cost per item", f"Cost per {kpi.per} item over the last {kpi.window / 86400:g} "
            f"days (KPI {kpi_name}); the dashed line is the target.", unit,
            [query(promql.kpi_value(name, kpi_name), name)], thresholds=target_steps(kpi.target),
            minimum=None, width=24 // SMALL_MULTIPLES, height=7))
    rows = [RowSpec("Cost", [per_day])]
    if multiples:
        rows.append(RowSpec("Cost per unit trends", multiples))
    return rows


def management(inventory: Inventory) -> dict[str, Any]:
    """Build the management dashboard (default range: this month so far)."""
    return dashboard(
        MANAGEMENT_UID, "fabwatch / Management",
        "Are the enterprise targets met this month, will they be at month end, and what does a unit of work cost?",
        [targets_row(), *cost_rows(inventory)],
        variables=[datasource_variable(), *job_instance_variables()],
        annotations=[alerts_annotation(process_matcher(inventory))], links=common_links(),
        time_from=MONTH_TO_DATE)
