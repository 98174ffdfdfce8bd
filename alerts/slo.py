"""SLA KPIs: error-ratio recording rules and multi-window multi-burn-rate alerts (SRE Workbook ch. 5).

Events are the counters `fab_sla_good_total` / `fab_sla_valid_total{process, kpi}`; the error
ratio over a window is `1 - increase(good) / increase(valid)`. Windows up to
`slo.raw_window_max` read the counters; longer ones (1d, 3d, the SLO window) sum the recorded
base-window increases, as Sloth does with `sum_over_time`, but as a ratio of sums: an average of
short ratios would be NaN as soon as one base window of a low-volume process saw no event.

Every pair covers the SLO from 1x burn upwards: a pair whose workbook factor is under 1x (the
3d/6h pair of a 28d SLO: 0.93x) is scaled up to 1x, not dropped, so a steady 2x burn still tickets.

Low volumes are handled three ways. Every pair's long window needs `min_events` valid and
`min_bad_events` bad events before it fires (one late item among a few is a large ratio, not a
burn); it also needs the bad events its share of the whole window's budget stands for, counted
from fabwatch's `fab_sla_window_valid` when exported (a Prometheus younger than the long window
would otherwise read a burst as a burn of the whole budget). And a short window with no event at
all cannot start an alert but keeps a firing one (`keep_firing_for` its longest short window: no
news is not recovery), so a process with a few tickets per hour neither pages on one late ticket,
nor after the last event, nor flaps.

The SLA-window view (burn over the whole window, budget left, in ratio and in events) comes from
fabwatch's own window sums (`fab_kpi_value`, `fab_sla_window_valid`), which cover the window from
the records: a Prometheus holding a few hours of counters would see an almost empty budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from alerts.model import Rule, RuleGroup
from alerts.promql import indent, number, selector, window
from alerts.text import dashboard_url, runbook_url
from collector.inventory.alerting import AlertingConfig, BurnWindow, SloAlerting
from collector.inventory.models import Process, SlaKpi

GOOD, VALID = "fab_sla_good_total", "fab_sla_valid_total"
GOOD_BASE = "process_kpi:fab_sla_good:increase{w}"
VALID_W = "process_kpi:fab_sla_valid:increase{w}"
BAD_W = "process_kpi:fab_sla_bad:increase{w}"
ERROR_W = "process_kpi:fab_sla_error:ratio_rate{w}"
WINDOW_VALID = "fab_sla_window_valid"
KPI_VALUE = "fab_kpi_value"
OBJECTIVE = "process_kpi:fab_sla_objective:ratio"
BUDGET = "process_kpi:fab_sla_error_budget:ratio"
BURN_CURRENT = "process_kpi:fab_sla_burn_rate:current"
BURN_PERIOD = "process_kpi:fab_sla_burn_rate:period"
REMAINING = "process_kpi:fab_sla_error_budget_remaining:period"
REMAINING_EVENTS = "process_kpi:fab_sla_error_budget_remaining:events"
BUDGET_EVENTS = "process_kpi:fab_sla_error_budget:events"
BURN_ALERT = "FabSlaErrorBudgetBurn"
AT_RISK_ALERT = "FabSlaAtRisk"


@dataclass(frozen=True)
class BurnPair:
    """A window pair with its derived burn-rate factor and error-ratio threshold."""

    severity: str
    long: float
    short: float
    budget_share: float
    min_events: int
    min_bad_events: int
    factor: float
    budget: float
    workbook_factor: float
    """The factor `budget_share` gives; under 1x it is scaled up to 1x (`factor`)."""
    share: float
    """The share of the whole window's error budget a burn at `factor` spends within `long`."""

    @property
    def threshold(self) -> float:
        return self.factor * self.budget

    @property
    def reachable(self) -> bool:
        """Whether an error ratio (at most 1) can exceed the threshold at all."""
        return self.threshold < 1

    @property
    def scaled(self) -> bool:
        """Whether the workbook factor was under 1x: a burn under 1x meets the objective, so the
        pair fires from 1x instead (a 28d SLO's 3d pair: 0.93x)."""
        return self.workbook_factor < self.factor

    @property
    def usable(self) -> bool:
        return self.reachable


def burn_factor(slo_window: float, long: float, budget_share: float) -> float:
    """Return the burn rate that spends `budget_share` of the budget within `long`."""
    return budget_share * slo_window / long


def burn_pairs(slo_window: float, objective: float, slo: SloAlerting) -> tuple[BurnPair, ...]:
    """Return every configured window pair with its factor for this SLO."""
    return tuple(_pair(w, slo_window, 1 - objective, slo) for w in slo.windows)


def _pair(w: BurnWindow, slo_window: float, budget: float, slo: SloAlerting) -> BurnPair:
    derived = round(burn_factor(slo_window, w.long, w.budget_share), 9)
    events = w.min_events if w.min_events is not None else slo.min_events
    bad = w.min_bad_events if w.min_bad_events is not None else slo.min_bad_events
    factor = max(derived, 1.0)
    return BurnPair(w.severity, w.long, w.short, w.budget_share, events, bad, factor, round(budget, 12), derived,
                    round(factor * w.long / slo_window, 9))


def sla_kpis(process: Process) -> dict[str, SlaKpi]:
    """Return the SLA KPIs of a process."""
    return {name: kpi for name, kpi in process.kpis.items() if isinstance(kpi, SlaKpi)}


def recording_group(name: str, process: Process, slo: SloAlerting) -> RuleGroup:
    """Return the SLO recording rules of one process (one group: later rules read earlier ones)."""
    rules: list[Rule] = []
    for kpi_name, kpi in sla_kpis(process).items():
        rules += kpi_recordings(name, kpi_name, kpi, slo)
    return RuleGroup(f"fabwatch-sla-recordings-{name}", tuple(rules), slo.evaluation_interval)


def kpi_recordings(process: str, kpi: str, sla: SlaKpi, slo: SloAlerting) -> list[Rule]:
    """Return the recording rules of one SLA KPI."""
    labels = {"process": process, "kpi": kpi}
    base = slo.base_window
    rules = [Rule(_sum_increase(GOOD, base, labels), record=GOOD_BASE.format(w=window(base))),
             Rule(_sum_increase(VALID, base, labels), record=VALID_W.format(w=window(base)))]
    longs = {w.long for w in slo.windows}
    for length in slo.ratio_windows():
        valid = VALID_W.format(w=window(length))
        error = ERROR_W.format(w=window(length))
        rules += _window_rules(length, labels, slo, error, None if length == base else valid)
        if length in longs:
            rules.append(Rule(_bad_count(length, labels, slo), record=BAD_W.format(w=window(length))))
    budget = 1 - sla.objective
    valid_now = f"max by (process, kpi) ({selector(WINDOW_VALID, **labels)})"
    compliance = f"max by (process, kpi) ({selector(KPI_VALUE, **labels)})"
    rules += [
        Rule(f"vector({number(sla.objective)})", record=OBJECTIVE, labels=labels),
        Rule(f"vector({number(budget)})", record=BUDGET, labels=labels),
        Rule(f"{valid_now} * {number(budget)}", record=BUDGET_EVENTS),
        Rule(_divide(ERROR_W.format(w=window(_current_window(slo))), BUDGET, labels), record=BURN_CURRENT),
        # The whole SLA window, from fabwatch's window sums: a young Prometheus has no such history.
        Rule(f"(1 - {compliance}) / {number(budget)}", record=BURN_PERIOD),
        Rule(f"1 - {selector(BURN_PERIOD, **labels)}", record=REMAINING),
        Rule(f"(\n  {valid_now}\n  * on (process, kpi)\n  ({compliance} - {number(sla.objective)})\n)\n"
             f"or on (process, kpi)\n({valid_now} == 0)", record=REMAINING_EVENTS),
    ]
    return rules


def _bad_count(length: float, labels: dict[str, str], slo: SloAlerting) -> str:
    """Return the bad events of a window: valid minus good, counted as its valid events are."""
    if length <= slo.raw_window_max:
        return f"{_sum_increase(VALID, length, labels)}\n-\n{_sum_increase(GOOD, length, labels)}"
    good = f"sum_over_time({selector(GOOD_BASE.format(w=window(slo.base_window)), **labels)}[{window(length)}])"
    total = f"sum_over_time({selector(VALID_W.format(w=window(slo.base_window)), **labels)}[{window(length)}])"
    return f"(\n  {total}\n  -\n  {good}\n)\n* {number(slo.evaluation_interval)} / {number(slo.base_window)}"


def _current_window(slo: SloAlerting) -> float:
    """Return the window of the 'current' burn rate: the fastest page's long window."""
    return min(w.long for w in slo.windows)


def _window_rules(length: float, labels: dict[str, str], slo: SloAlerting, error: str,
                  valid: str | None) -> list[Rule]:
    if length <= slo.raw_window_max:
        ratio = (f"1 - (\n{indent(_sum_increase(GOOD, length, labels))}\n  /\n"
                 f"{indent(_sum_increase(VALID, length, labels))}\n)")
        count = _sum_increase(VALID, length, labels)
    else:
        good = f"sum_over_time({selector(GOOD_BASE.format(w=window(slo.base_window)), **labels)}[{window(length)}])"
        total = f"sum_over_time({selector(VALID_W.format(w=window(slo.base_window)), **labels)}[{window(length)}])"
        ratio = f"1 - (\n  {good}\n  /\n  {total}\n)"
        # Each evaluation adds one base-window increase: the sum counts every event base/interval times.
        count = f"{total}\n* {number(slo.evaluation_interval)} / {number(slo.base_window)}"
    rules = [Rule(ratio, record=error)]
    if valid is not None:
        rules.append(Rule(count, record=valid))
    return rules


def _sum_increase(metric: str, length: float, labels: dict[str, str]) -> str:
    return f"sum by (process, kpi) (increase({selector(metric, **labels)}[{window(length)}]))"


def _divide(numerator: str, denominator: str, labels: dict[str, str]) -> str:
    return f"{selector(numerator, **labels)}\n/ on (process, kpi)\n{selector(denominator, **labels)}"


def alert_group(name: str, process: Process, alerting: AlertingConfig) -> RuleGroup:
    """Return the burn-rate and in-flight alerts of one process's SLA KPIs."""
    rules: list[Rule] = []
    for kpi_name, kpi in sla_kpis(process).items():
        pairs = burn_pairs(kpi.window, kpi.objective, alerting.slo)
        for severity in ("critical", "warning"):
            chosen = [p for p in pairs if p.severity == severity and p.usable]
            if chosen:
                rules.append(burn_alert(name, kpi_name, kpi, process, chosen, severity, alerting))
        rules.append(at_risk_alert(name, kpi_name, kpi, process, alerting))
    return RuleGroup(f"fabwatch-sla-alerts-{name}", tuple(rules), alerting.slo.evaluation_interval)


def burn_condition(pair: BurnPair, labels: dict[str, str]) -> str:
    """Return one pair's condition: both ratios over the threshold, enough valid and bad events in the
    long window. An empty short window never starts an alert (`keep_firing_for` bridges it)."""
    threshold = f"({number(pair.factor)} * {number(pair.budget)})"
    terms = [f"{selector(ERROR_W.format(w=window(pair.long)), **labels)} > {threshold}"]
    if pair.min_events:
        terms.append(f"{selector(VALID_W.format(w=window(pair.long)), **labels)} >= {pair.min_events}")
    bad = selector(BAD_W.format(w=window(pair.long)), **labels)
    if pair.min_bad_events:
        terms.append(f"{bad} >= {pair.min_bad_events}")
    # The pair's share of the whole window's budget, in events: what its long window must have spent.
    # On a young Prometheus the long window holds less than `long`; this keeps its meaning.
    budget = selector(BUDGET_EVENTS, **labels)
    terms.append(f"(\n  {bad} >= on (process, kpi) {number(pair.share)} * {budget}\n"
                 f"  or on (process, kpi)\n  {bad} unless on (process, kpi) {budget}\n)")
    terms.append(f"{selector(ERROR_W.format(w=window(pair.short)), **labels)} > {threshold}")
    joined = "\nand on (process, kpi)\n".join(terms)
    return f"(\n{indent(joined)}\n)"


def burn_alert(process_name: str, kpi_name: str, kpi: SlaKpi, process: Process, pairs: list[BurnPair],
               severity: str, alerting: AlertingConfig) -> Rule:
    """Return the page (critical) or ticket (warning) burn-rate alert of one SLA KPI."""
    labels = {"process": process_name, "kpi": kpi_name}
    expr = "\nor on (process, kpi)\n".join(burn_condition(p, labels) for p in pairs)
    speed = "fast" if severity == "critical" else "steadily"
    described = ", ".join(f"{window(p.long)}/{window(p.short)} at {number(p.factor)}x" for p in pairs)
    return Rule(
        expr, alert=BURN_ALERT, keep_firing_for=max(p.short for p in pairs),
        labels={"severity": severity, "team": process.team, **labels},
        annotations={
            "summary": f"An SLA is burning its error budget {speed}.",
            "description": (f"{{{{ $labels.kpi }}}} of {{{{ $labels.process }}}} failed {{{{ $value | "
                            f"humanizePercentage }}}} of its events over the long window; the objective is "
                            f"{_percent(kpi.objective)} over {window(kpi.window)} (windows {described})."),
            "runbook_url": runbook_url(process, BURN_ALERT, alerting.runbook_url),
            "dashboard_url": dashboard_url(alerting.grafana_url, process_name),
        })


def at_risk_alert(process_name: str, kpi_name: str, kpi: SlaKpi, process: Process,
                  alerting: AlertingConfig) -> Rule:
    """Return the in-flight risk alert: items already late outnumber the budget left.

    An event-based SLO only counts a late item when it completes; a stuck process shows no burn.
    """
    labels = {"process": process_name, "kpi": kpi_name}
    overdue = f"sum by (process) ({selector('fab_overdue_items', process=process_name)})"
    guard = f" >= {alerting.slo.min_events}" if alerting.slo.min_events else " > 0"
    expr = (f"({overdue}{guard})\n> on (process) group_right ()\n"
            f"{selector(REMAINING_EVENTS, **labels)}")
    return Rule(
        expr, alert=AT_RISK_ALERT, for_=alerting.slo.at_risk_for,
        labels={"severity": "critical", "team": process.team, **labels},
        annotations={
            "summary": "Items already overdue will exhaust an SLA error budget.",
            "description": (f"{{{{ $value | humanize }}}} open items of {{{{ $labels.process }}}} are past their "
                            f"due time: more than the error budget of {{{{ $labels.kpi }}}} "
                            f"({_percent(kpi.objective)} over {window(kpi.window)}) has left; they will count "
                            f"as late when they complete."),
            "runbook_url": runbook_url(process, AT_RISK_ALERT, alerting.runbook_url),
            "dashboard_url": dashboard_url(alerting.grafana_url, process_name),
        })


def _percent(ratio: float) -> str:
    return f"{number(round(ratio * 100, 6))}%"
