"""Enterprise targets: breach alerts (`for:`), month-end trend alerts, and the oldest open item."""

from __future__ import annotations

from collections.abc import Iterator

from alerts.model import Rule, RuleGroup
from alerts.promql import SECONDS_TO_MONTH_END, number, selector, window
from alerts.text import dashboard_url, render, runbook_url, template
from collector.inventory.alerting import AlertingConfig
from collector.inventory.models import DurationKpi, Process

BREACH_ALERT = "FabKpiTargetMissed"
TREND_ALERT = "FabKpiTargetMissedByMonthEnd"
OPEN_AGE_ALERT = "FabOpenItemTooOld"
OPEN_AGE_KPI = "oldest_open_item_age"
_WORDS = {"max": ("above", "at most", ">"), "min": ("below", "at least", "<")}


def bounds(process: Process) -> Iterator[tuple[str, str, float]]:
    """Yield (kpi, bound, limit) for every target bound of a process."""
    for name, kpi in process.kpis.items():
        if kpi.target is not None:
            for bound in ("min", "max"):
                limit = getattr(kpi.target, bound)
                if limit is not None:
                    yield name, bound, limit


def value_of(process: str, kpi: str) -> str:
    """Return the KPI value, one series per (process, kpi) whatever the replicas."""
    return f"max by (process, kpi) ({selector('fab_kpi_value', process=process, kpi=kpi)})"


def target_of(process: str, kpi: str, bound: str) -> str:
    """Return the exported target bound of a KPI."""
    return f"max by (process, kpi) ({selector('fab_kpi_target', process=process, kpi=kpi, bound=bound)})"


def target_group(name: str, process: Process, alerting: AlertingConfig, currency: str) -> RuleGroup:
    """Return the breach and trend alerts of one process, and its open-item age alert."""
    rules = [breach_alert(name, process, kpi, bound, limit, alerting, currency)
             for kpi, bound, limit in bounds(process)]
    if alerting.trends.enabled:
        rules += [trend_alert(name, process, kpi, bound, limit, alerting, currency)
                  for kpi, bound, limit in bounds(process) if limit > 0]
    age = max_open_age(name, process, alerting)
    if age is not None:
        rules.append(open_age_alert(name, process, age, alerting))
    return RuleGroup(f"fabwatch-targets-{name}", tuple(rules))


def breach_alert(name: str, process: Process, kpi: str, bound: str, limit: float,
                 alerting: AlertingConfig, currency: str) -> Rule:
    """Return the alert for a KPI beyond one bound of its target for `targets.for`."""
    kind = process.kpis[kpi].kind
    side, phrase, op = _WORDS[bound]
    return Rule(
        f"{value_of(name, kpi)}\n{op} {target_of(name, kpi, bound)}",
        alert=BREACH_ALERT, for_=alerting.targets.for_,
        labels={"severity": alerting.targets.severity, "team": process.team, "process": name, "kpi": kpi},
        annotations={
            "summary": f"A KPI is {side} its enterprise target.",
            "description": (f"{{{{ $labels.kpi }}}} of {{{{ $labels.process }}}} is {template(kind, currency)}; "
                            f"the target is {phrase} {render(kind, limit, currency)}."),
            "runbook_url": runbook_url(process, BREACH_ALERT, alerting.runbook_url),
            "dashboard_url": dashboard_url(alerting.grafana_url, name),
        })


def trend_alert(name: str, process: Process, kpi: str, bound: str, limit: float,
                alerting: AlertingConfig, currency: str) -> Rule:
    """Return the alert for a KPI within its target whose trend misses it by the month's end.

    Guarded by the current level, as node-mixin's filesystem-filling alerts are: only a KPI
    already within `trends.margin` of its target warns, so a slope on a healthy KPI stays quiet.
    """
    kind = process.kpis[kpi].kind
    side, phrase, op = _WORDS[bound]
    other = "<=" if bound == "max" else ">="
    guard = number(1 - alerting.trends.margin) if bound == "max" else number(1 + alerting.trends.margin)
    value, target = value_of(name, kpi), target_of(name, kpi, bound)
    forecast = (f"max by (process, kpi) (\n  predict_linear({selector('fab_kpi_value', process=name, kpi=kpi)}"
                f"[{window(alerting.trends.lookback)}], {SECONDS_TO_MONTH_END})\n)")
    guard_op = ">=" if bound == "max" else "<="
    expr = (f"{forecast}\n{op} {target}\nand\n{value}\n{other} {target}\n"
            f"and\n{value}\n{guard_op} {guard} * {target}")
    return Rule(
        expr, alert=TREND_ALERT, for_=alerting.trends.for_,
        labels={"severity": alerting.trends.severity, "team": process.team, "process": name, "kpi": kpi},
        annotations={
            "summary": f"A KPI is heading {side} its target before the end of the month.",
            "description": (f"{{{{ $labels.kpi }}}} of {{{{ $labels.process }}}} will be {template(kind, currency)} "
                            f"at the end of the month if its {window(alerting.trends.lookback)} trend holds; "
                            f"the target is {phrase} {render(kind, limit, currency)}."),
            "runbook_url": runbook_url(process, TREND_ALERT, alerting.runbook_url),
            "dashboard_url": dashboard_url(alerting.grafana_url, name),
        })


def max_open_age(name: str, process: Process, alerting: AlertingConfig) -> float | None:
    """Return the configured open-item age limit, else the process's last cycle-time bucket."""
    configured = alerting.processes.get(name)
    if configured is not None and configured.max_open_age is not None:
        return configured.max_open_age
    buckets = [k.buckets[-1] for k in process.kpis.values() if isinstance(k, DurationKpi)]
    return max(buckets) if buckets else None


def open_age_alert(name: str, process: Process, age: float, alerting: AlertingConfig) -> Rule:
    """Return the alert on the oldest open item: a stuck item is late long before it completes."""
    return Rule(
        f"max by (process) ({selector('fab_oldest_open_item_age_seconds', process=name)}) > {number(age)}",
        alert=OPEN_AGE_ALERT, for_=alerting.targets.for_,
        labels={"severity": "warning", "team": process.team, "process": name, "kpi": OPEN_AGE_KPI},
        annotations={
            "summary": "An open work item is older than the process allows.",
            "description": (f"The oldest open item of {{{{ $labels.process }}}} is {{{{ $value | humanizeDuration }}}} "
                            f"old; the limit is {window(age)}."),
            "runbook_url": runbook_url(process, OPEN_AGE_ALERT, alerting.runbook_url),
            "dashboard_url": dashboard_url(alerting.grafana_url, name),
        })
