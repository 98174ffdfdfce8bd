"""The NOC overview: one row of stat tiles per process, each tile linking to the process dashboard."""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from alerts.slo import burn_pairs
from collector.inventory.alerting import SloAlerting
from collector.inventory.durations import format_duration
from collector.inventory.models import BacklogKpi, CostKpi, Inventory, OverdueKpi, Process, SlaKpi, Target
from collector.naming import MANAGEMENT_UID, OVERVIEW_UID, SELF_UID, process_uid
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
    dashboard_link,
    data_link,
    datasource_variable,
    job_instance_variables,
    query,
    regex,
    stat_panel,
    steps,
    tag_links,
    target_steps,
)

WIDTH = 24
BURN_UNIT = "suffix:\N{MULTIPLICATION SIGN}"


def title_of(name: str, process: Process) -> str:
    """Return the human title of a process: its eTOM number and name."""
    return f"{process.etom} {process.name}"


def humanize(name: str) -> str:
    """Turn a KPI or component name into words."""
    return name.replace("_", " ").capitalize()


@dataclass(frozen=True)
class PageBurn:
    """What the burn-rate panels of an SLA show: the burn over the long window of its fastest page,
    against the burn rates its pages fire at (the pairs the alerts keep, `alerts.slo`)."""

    window: float
    factors: tuple[float, ...]

    @property
    def lines(self) -> Any:
        """Orange from the slowest page's burn rate, red from the fastest one's (none: all green)."""
        if not self.factors:
            return steps(GOOD)
        if len(self.factors) == 1:
            return steps(GOOD, (self.factors[0], BAD))
        return steps(GOOD, (self.factors[0], WARN), (self.factors[-1], BAD))

    @property
    def text(self) -> str:
        if not self.factors:
            return "no page pair fits this SLA's window and objective"
        return " and ".join(f"{f:g}x" for f in self.factors) + ", where the burn-rate alerts page"


def page_burn(kpi: SlaKpi, slo: SloAlerting) -> PageBurn:
    """The page pairs the alerts keep for this SLA (see `alerts.slo.burn_pairs`)."""
    pages = [p for p in burn_pairs(kpi.window, kpi.objective, slo) if p.severity == "critical" and p.usable]
    window = min((p.long for p in pages), default=3600.0)
    return PageBurn(window, tuple(sorted({round(p.factor, 2) for p in pages})))


def first_kpi(process: Process, kind: type) -> tuple[str, Any] | None:
    """Return the first KPI of a kind, as (name, kpi)."""
    return next(((name, kpi) for name, kpi in process.kpis.items() if isinstance(kpi, kind)), None)


def target_of(process: Process, kind: type) -> Target | None:
    """Return the target of the first KPI of a kind, if any."""
    found = first_kpi(process, kind)
    return found[1].target if found else None


def sla_tiles(name: str, kpi_name: str, kpi: SlaKpi, slo: SloAlerting) -> Iterator[PanelSpec]:
    """Compliance vs objective, error budget left and burn rate of one SLA KPI."""
    label = humanize(kpi_name)
    yield stat_panel(
        "SLA compliance", f"{label}: share of the items of the last {kpi.window / 86400:g} days completed by "
        f"their due time; green from the objective ({kpi.objective:.1%}) up.", "percentunit",
        [query(promql.kpi_value(name, kpi_name), "compliance")], steps(BAD, (kpi.objective, GOOD)))
    yield stat_panel(
        "Error budget left", f"{label}: share of the error budget ({1 - kpi.objective:.1%} of the items over "
        f"{kpi.window / 86400:g} days) not spent yet; red once overspent.", "percentunit",
        [query(promql.error_budget_left(name, kpi_name), "budget left")], steps(BAD, (0.0, WARN), (0.25, GOOD)))
    burn = page_burn(kpi, slo)
    yield stat_panel(
        "Burn rate", f"{label}: how fast the error budget burned over the last {format_duration(burn.window)} "
        f"(1 = exactly the budget over the window); lines at {burn.text}.", BURN_UNIT,
        [query(promql.burn_rate(name, kpi_name, burn.window), "burn rate")], burn.lines)


def work_tiles(name: str, process: Process) -> Iterator[PanelSpec]:
    """Backlog and overdue items, coloured by their targets."""
    yield stat_panel("Backlog", "Open work items now; red from the backlog target.", "short",
                     [query(promql.backlog(name), "backlog")], target_steps(target_of(process, BacklogKpi)))
    yield stat_panel("Overdue", "Open work items past their due time now (paused items excluded); "
                     "red from the overdue target.", "short",
                     [query(promql.overdue(name), "overdue")], target_steps(target_of(process, OverdueKpi)))


def cost_tile(name: str, process: Process, currency: str) -> Iterator[PanelSpec]:
    """Cost per item vs target: the cost KPI when there is one, else the recent cost per completed item."""
    found = first_kpi(process, CostKpi)
    if found is not None:
        kpi_name, kpi = found
        description = (f"{humanize(kpi_name)}: cost per {kpi.per} item over the last {kpi.window / 86400:g} days; "
                       "red beyond the target.")
        yield stat_panel("Cost per item", description, currency_unit(currency),
                         [query(promql.kpi_value(name, kpi_name), "cost per item")], target_steps(kpi.target))
    elif process.costs:
        yield stat_panel("Cost per item", "Cost of the recent period per completed item (no cost target).",
                         currency_unit(currency), [query(promql.cost_per_item(name), "cost per item")],
                         target_steps(None))


def summary_tiles(name: str, process: Process, currency: str, slo: SloAlerting, *,
                  link: bool) -> list[PanelSpec]:
    """Return the tiles of one process, widened to fill the row, linked to its dashboard if asked."""
    tiles: list[PanelSpec] = []
    sla = first_kpi(process, SlaKpi)
    if sla is not None:
        tiles += sla_tiles(name, *sla, slo)
    tiles += work_tiles(name, process)
    tiles += cost_tile(name, process, currency)
    for index, tile in enumerate(tiles):
        tile.width = WIDTH // len(tiles) + (1 if index < WIDTH % len(tiles) else 0)
        if link:
            tile.builder = tile.builder.data_links([data_link(f"{process.name} dashboard", process_uid(name))])
    return tiles


def common_links() -> list[Any]:
    """Header links of every fabwatch dashboard: the others by tag, and the main ones by uid."""
    return [tag_links(),
            dashboard_link("NOC overview", OVERVIEW_UID, "Every process at a glance"),
            dashboard_link("Management", MANAGEMENT_UID, "Targets, cost and forecasts"),
            dashboard_link("fabwatch", SELF_UID, "Health of fabwatch and its sources")]


def process_matcher(inventory: Inventory) -> str:
    """Return the matcher of every process of the inventory."""
    return f'process=~"{regex(sorted(inventory.processes))}"'


def overview(inventory: Inventory) -> dict[str, Any]:
    """Build the NOC overview."""
    currency = inventory.service.currency
    rows = [RowSpec(title_of(name, process), summary_tiles(name, process, currency, inventory.alerting.slo,
                                                           link=True))
            for name, process in inventory.processes.items()]
    return dashboard(
        OVERVIEW_UID, "fabwatch / NOC overview",
        "Every customer process at a glance: SLA, error budget, burn rate, backlog, overdue and cost per item, "
        "coloured by the enterprise targets. Click a tile to open the process.",
        rows, variables=[datasource_variable(), *job_instance_variables()],
        annotations=[alerts_annotation(process_matcher(inventory))], links=common_links())
