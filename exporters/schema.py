"""The JSON API's response shapes: pydantic models the view builds, the API serialises and the
OpenAPI document is generated from, so the document cannot drift from what is served.

The SLO shapes follow Pyrra's objective API (`objective`, `availability`, `budget`), with
fabwatch's additions: the budget in events, and the burn rate over each alert window.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict

State = Literal["ok", "at_risk", "breached", "no_data"]
"""A KPI's, an SLO's or a process's state; see `exporters.status` for the definitions."""


class Shape(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Error(Shape):
    """What a 400 or a 404 answers."""

    error: str
    """A short, stable code: bad_parameter, not_found, method_not_allowed."""
    detail: str
    """What was wrong, for a person."""


class Target(Shape):
    """The enterprise target: the value must stay within [min, max]."""

    min: float | None
    max: float | None


class TrendPoint(Shape):
    at: float
    """When the sample was taken (Unix time)."""
    value: float


class KpiStatus(Shape):
    """A KPI's current value against its target."""

    process: str
    kpi: str
    kind: str
    """volume, backlog, overdue, duration, sla, ratio, cost or value."""
    description: str
    value: float | None
    """The value over the KPI's window; null when undefined (no items in the window, no sample yet)."""
    target: Target | None
    state: State
    sampled_at: float | None
    """When the source of the value was last sampled successfully (Unix time)."""
    trend: list[TrendPoint]
    """The last values, oldest first (kept in memory since fabwatch started)."""


class Objective(Shape):
    """What the SLA promises (Pyrra: `target`, `window`)."""

    target: float
    """The objective, e.g. 0.9 for 90 % good."""
    window_seconds: float
    window: str
    """The window as a Prometheus duration, e.g. 30d."""
    description: str


class Availability(Shape):
    """The SLA over its window (Pyrra: `availability`)."""

    percentage: float | None
    """Good events / valid events over the window (0..1); null without a valid event."""
    total: float
    """Valid events (completed items with a due time) over the window."""
    errors: float
    """Bad events over the window."""


class Budget(Shape):
    """The error budget over the window, in events (Pyrra: `budget`)."""

    total: float
    """Bad events the objective allows over the window: valid x (1 - objective)."""
    used: float
    remaining: float
    """total - used; negative once the budget is spent."""
    remaining_ratio: float | None
    """remaining / total (1 = untouched, 0 = spent, below 0 = overspent); null without a valid event."""
    burn_rate: float | None
    """Error ratio over the window / (1 - objective): 1 spends the budget exactly over the window."""


class BurnRate(Shape):
    """The burn rate over one alert window pair of `alerting.slo.windows`."""

    severity: str
    long_seconds: float
    short_seconds: float
    factor: float
    """The burn rate above which the pair alerts (both windows above it)."""
    long_rate: float | None
    """Burn rate over the long window; null while no valid event was counted in it."""
    short_rate: float | None
    covered_seconds: float
    """How much of the long window fabwatch's in-memory history covers (it starts empty at start-up)."""
    burning: bool
    """Both rates above the factor: the pair's alert condition (before its event minimums)."""


class SloStatus(Shape):
    """An SLA KPI as an objective with its error budget (shaped after Pyrra's objective status)."""

    labels: dict[str, str]
    """process and kpi."""
    objective: Objective
    availability: Availability
    budget: Budget
    burn_rates: list[BurnRate]
    state: State


class SourceStatus(Shape):
    """A source's health; never its DSN, URL or credentials."""

    name: str
    kind: str
    up: bool
    """Whether the last sample succeeded."""
    sampled: bool
    """Whether it was sampled at all since fabwatch started."""
    last_success: float | None
    """When the last successful sample finished (Unix time)."""
    last_error: str | None
    """The reason of the last failure (timeout, connection, query...); null after a success."""
    errors: dict[str, int]
    """Failed samples so far, by reason."""


class ProcessSummary(Shape):
    """A process and its overall state (the worst of its KPIs with a target and its SLAs)."""

    name: str
    title: str
    etom: str
    team: str
    runbook: str | None
    """The runbook (http or https only)."""
    dashboard: str | None
    """The Grafana dashboard, when `alerting.grafana_url` is set in the inventory."""
    state: State
    states: dict[str, int]
    """How many of its KPIs are in each state."""


class ProcessStatus(ProcessSummary):
    """A process with its KPIs, SLAs and the health of its source."""

    kpis: list[KpiStatus]
    slos: list[SloStatus]
    source: SourceStatus


class InventoryKpi(Shape):
    name: str
    kind: str
    description: str
    target: Target | None
    window_seconds: float | None
    """The window of a windowed KPI; null for instant ones (backlog, overdue, value)."""
    objective: float | None
    """An SLA's objective."""


class InventoryProcess(Shape):
    name: str
    title: str
    etom: str
    team: str
    runbook: str | None
    source: str
    kpis: list[InventoryKpi]


class InventorySource(Shape):
    """A source's kind and schedule; its DSN, URLs and credentials are never shown."""

    name: str
    kind: str
    interval_seconds: float | None
    """Sampling interval; null when a cron expression schedules it."""
    cron: str | None


class InventoryView(Shape):
    processes: list[InventoryProcess]
    sources: list[InventorySource]


class ProcessList(Shape):
    processes: list[ProcessSummary]


class KpiList(Shape):
    kpis: list[KpiStatus]


class SloList(Shape):
    slos: list[SloStatus]


class SourceList(Shape):
    sources: list[SourceStatus]


class ReportFile(Shape):
    """One file of a monthly report in the reports directory."""

    name: str
    """The file name, `fabwatch-report-<month>.<format>`."""
    month: str
    """The calendar month reported, YYYY-MM."""
    format: str
    """html, md, json, csv or pdf."""
    url: str
    """Where the service serves it, relative to its root: `reports/fabwatch-report-<month>.<format>`."""
    bytes: int
    modified: float
    """When the file was written (Unix time)."""


class ReportList(Shape):
    reports: list[ReportFile]
    """Newest month first; in a month, html, pdf, md, json, csv."""


STATES: tuple[State, ...] = ("ok", "no_data", "at_risk", "breached")
"""From best to worst: a process takes the worst state of its KPIs."""
