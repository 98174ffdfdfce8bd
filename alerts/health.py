"""Health alerts: a source down, absent or stale, a TMF events listener refusing what hubs send,
silent or committing slowly, a KPI that stopped being exported, and the scheduled monthly report
not delivered.

Each is raised once per process the source feeds, so it reaches that process's team; the report's
alert, about every process, once per team (labelled with the team's first process, `kpi="report"`).
"""

from __future__ import annotations

import json

from alerts.model import Rule, RuleGroup
from alerts.promql import number, selector, window
from alerts.text import dashboard_url, runbook_url
from collector.inventory.alerting import AlertingConfig
from collector.inventory.models import Inventory, Process
from collector.inventory.sources import TmfEventsSource
from collector.scheduler import schedule_gap
from collector.sources.listener import NOT_REFUSED

DOWN_ALERT = "FabSourceDown"
ABSENT_ALERT = "FabSourceAbsent"
STALE_ALERT = "FabSourceStale"
KPI_ABSENT_ALERT = "FabKpiAbsent"
REFUSED_ALERT = "FabEventsRefused"
SILENT_ALERT = "FabEventsSilent"
COMMIT_SLOW_ALERT = "FabEventsCommitSlow"
COMMIT_QUANTILE = 0.99
ACCEPTED_RESULTS = "|".join(NOT_REFUSED)
"""The `result`s of `fab_events_received_total` that are not refusals, as a regex."""
SOURCE_KPI = "source"
REPORT_ALERT = "FabReportDeliveryFailing"
REPORT_KPI = "report"


def stale_after(inventory: Inventory, source: str) -> float:
    """Return how old the last successful sample may get before the data counts as stale:
    `stale_intervals` times the longest gap of its schedule (its interval, or for a crontab the
    longest time between two of its runs: an hourly crontab is not late 5 minutes after a run)."""
    health = inventory.alerting.health
    gap = schedule_gap(inventory.sources[source], inventory.service.timezone)
    return max(health.stale_intervals * gap, health.stale_min)


def health_group(inventory: Inventory) -> RuleGroup:
    """Return the health alerts of every process."""
    rules: list[Rule] = []
    for name, process in inventory.processes.items():
        rules += source_alerts(inventory, name, process)
        rules += [kpi_absent_alert(name, process, kpi, inventory.alerting) for kpi in process.kpis]
    rules += report_alerts(inventory)
    return RuleGroup("fabwatch-health", tuple(rules))


def team_processes(inventory: Inventory) -> dict[str, str]:
    """Each team, with the first of its processes in the inventory."""
    first: dict[str, str] = {}
    for name, process in inventory.processes.items():
        first.setdefault(process.team, name)
    return first


def report_alerts(inventory: Inventory) -> list[Rule]:
    """When `serve` writes reports on a schedule: an alert for each team while the last attempt at
    delivering the monthly report has failed for `report_failing_for` (its retries included)."""
    if inventory.reports is None:
        return []
    alerting = inventory.alerting
    health = alerting.health
    rules = []
    for team, name in team_processes(inventory).items():
        process = inventory.processes[name]
        rules.append(Rule(
            "max(fab_report_delivery_failed_attempts) > 0", alert=REPORT_ALERT, for_=health.report_failing_for,
            labels={"severity": health.severity, "team": team, "process": name, "kpi": REPORT_KPI},
            annotations={
                "summary": "The monthly report could not be delivered.",
                "description": ("The last {{ $value }} attempts at writing or mailing the scheduled monthly "
                                f"report failed, for {window(health.report_failing_for)} at least, retries included: "
                                "the managers of every process, this team's too, are waiting for it. fabwatch's log "
                                "says which mail server and what failed (event=report_delivery_failed); "
                                "fab_report_deliveries_total counts the attempts by result."),
                "runbook_url": runbook_url(process, REPORT_ALERT, alerting.runbook_url),
                "dashboard_url": dashboard_url(alerting.grafana_url, None),
            }))
    return rules


def source_alerts(inventory: Inventory, name: str, process: Process) -> list[Rule]:
    """Return the down, absent and stale alerts of the source feeding one process."""
    alerting, source = inventory.alerting, process.records.source
    health = alerting.health
    up = selector("fab_source_up", source=source)
    last = selector("fab_source_last_success_timestamp_seconds", source=source)
    labels = {"severity": health.severity, "team": process.team, "process": name, "kpi": SOURCE_KPI}
    links = {"runbook_url": "", "dashboard_url": dashboard_url(alerting.grafana_url, None)}

    def annotate(alert: str, summary: str, description: str) -> dict[str, str]:
        return {"summary": summary, "description": description,
                **links, "runbook_url": runbook_url(process, alert, alerting.runbook_url)}

    rules = [
        Rule(f"max by (source) ({up}) == 0", alert=DOWN_ALERT, for_=health.source_down_for, labels=labels,
             annotations=annotate(DOWN_ALERT, "A source cannot be sampled.",
                                  f"Source {{{{ $labels.source }}}} failed every sample for "
                                  f"{window(health.source_down_for)}: the KPIs of {name} are not updated.")),
        Rule(f"absent({up})", alert=ABSENT_ALERT, for_=health.source_down_for, labels=labels,
             annotations=annotate(ABSENT_ALERT, "No fabwatch instance exports a source.",
                                  f"Prometheus has no fab_source_up for source {source} "
                                  f"(fabwatch down or not scraped): {name} is not monitored.")),
        Rule(f"time() - max by (source) ({last}) > {number(stale_after(inventory, source))}",
             alert=STALE_ALERT, labels=labels,
             annotations=annotate(STALE_ALERT, "The data of a source is stale.",
                                  f"The last successful sample of source {{{{ $labels.source }}}} is "
                                  f"{{{{ $value | humanizeDuration }}}} old: the KPIs of {name} are stale.")),
    ]
    listener = inventory.sources[source]
    if isinstance(listener, TmfEventsSource):
        def over_window(expr: str, alert: str, summary: str, description: str) -> Rule:
            """A listener alert on `events_window`, held for `source_down_for`."""
            return Rule(expr, alert=alert, for_=health.source_down_for, labels=labels,
                        annotations=annotate(alert, summary, description))

        span, slow = window(health.events_window), health.events_commit_slow
        rules.append(over_window(
            refused_share(source, health.events_window) + f" > {number(health.events_refused_ratio)}",
            REFUSED_ALERT, "A TMF events listener refuses what hubs send.",
            f"Source {{{{ $labels.source }}}} refused {{{{ $value | humanizePercentage }}}} of the events it "
            f"received over {span} (by result: fab_events_received_total): {name} misses those changes."))
        rules.append(over_window(
            commit_quantile(source, health.events_window) + f" > {number(slow)}",
            COMMIT_SLOW_ALERT, "A TMF events listener commits slowly.",
            f"The p{COMMIT_QUANTILE * 100:g} of the group commits of source {{{{ $labels.source }}}} over {span} "
            f"is {{{{ $value | humanizeDuration }}}} (events_commit_slow: {window(slow)}): each event waits that "
            "long for its 201, and hubs that time out send it again. Look at the disk under the record store "
            "(fab_events_commit_duration_seconds)."))
        if listener.silent_after is not None:
            quiet = selector("fab_events_last_received_timestamp_seconds", source=source)
            rules.append(Rule(f"time() - max by (source) ({quiet}) > {number(listener.silent_after)}",
                              alert=SILENT_ALERT, labels=labels,
                              annotations=annotate(SILENT_ALERT, "A TMF events listener has received nothing "
                                                   "for long.",
                                                   f"The last event of source {{{{ $labels.source }}}} came "
                                                   f"{{{{ $value | humanizeDuration }}}} ago (silent_after: "
                                                   f"{window(listener.silent_after)}): the hub may have lost the "
                                                   f"subscription or stopped sending; {name} misses the changes "
                                                   "since.")))
    return rules


def refused_share(source: str, seconds: float) -> str:
    """The share of a listener's events refused over a window (no traffic: no value, no alert)."""
    refused = f'fab_events_received_total{{source={json.dumps(source)}, result!~"{ACCEPTED_RESULTS}"}}'
    received = selector("fab_events_received_total", source=source)
    span = window(seconds)
    return f"sum by (source) (increase({refused}[{span}])) / sum by (source) (increase({received}[{span}]))"


def commit_quantile(source: str, seconds: float) -> str:
    """The p99 of a listener's group commit durations over a window (no commit: no value, no alert)."""
    buckets = selector("fab_events_commit_duration_seconds_bucket", source=source)
    return (f"histogram_quantile({COMMIT_QUANTILE:g}, sum by (source, le) "
            f"(rate({buckets}[{window(seconds)}])))")


def kpi_absent_alert(name: str, process: Process, kpi: str, alerting: AlertingConfig) -> Rule:
    """Return the alert for a KPI with no value exported for `health.absent_for`."""
    health = alerting.health
    return Rule(
        f"absent({selector('fab_kpi_value', process=name, kpi=kpi)})",
        alert=KPI_ABSENT_ALERT, for_=health.absent_for,
        labels={"severity": health.absent_severity, "team": process.team, "process": name, "kpi": kpi},
        annotations={
            "summary": "A KPI has no value.",
            "description": (f"No fab_kpi_value for {{{{ $labels.kpi }}}} of {{{{ $labels.process }}}} for "
                            f"{window(health.absent_for)}: nothing in its window to compute it from, or no "
                            "sample has succeeded since fabwatch started (a failed sample keeps the last values: "
                            "FabSourceDown reports it)."),
            "runbook_url": runbook_url(process, KPI_ABSENT_ALERT, alerting.runbook_url),
            "dashboard_url": dashboard_url(alerting.grafana_url, name),
        })
