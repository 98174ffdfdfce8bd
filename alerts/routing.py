"""Alertmanager configuration from the inventory: a route per team, then per severity.

Critical alerts go to the team's `page` receiver, warnings to `ticket`, info to `info` (or
`ticket`); notifications are grouped by process; a critical alert inhibits the warnings and
infos of the same process and KPI; a source that is down or absent inhibits the stale-data and
absent-KPI alerts it causes.
"""

from __future__ import annotations

from typing import Any

from alerts.health import ABSENT_ALERT, DOWN_ALERT, KPI_ABSENT_ALERT, STALE_ALERT
from collector.inventory.alerting import AlertingConfig, Receiver, TeamAlerting, TimeInterval
from collector.inventory.durations import format_duration
from collector.inventory.models import Inventory

DEFAULT_RECEIVER = "fabwatch-default"
_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september",
           "october", "november", "december")
_PRIORITY = {"page": ("critical", "P1"), "ticket": ("warning", "P3"), "info": ("info", "P5")}


def receiver_name(team: str, slot: str) -> str:
    """Return the Alertmanager receiver name of a team's page, ticket or info slot."""
    return f"{team}-{slot}"


def holidays_name(interval: str) -> str:
    return f"{interval}-holidays"


def alertmanager_config(inventory: Inventory) -> dict[str, Any]:
    """Return alertmanager.yml as a document."""
    alerting = inventory.alerting
    config: dict[str, Any] = {}
    if alerting.smtp is not None:
        config["global"] = _smtp(alerting)
    config["route"] = _route(inventory, alerting)
    config["inhibit_rules"] = _inhibit_rules()
    config["receivers"] = _receivers(alerting)
    if alerting.time_intervals:
        config["time_intervals"] = _time_intervals(alerting.time_intervals)
    return config


def _smtp(alerting: AlertingConfig) -> dict[str, Any]:
    smtp = alerting.smtp
    assert smtp is not None
    out: dict[str, Any] = {"smtp_smarthost": smtp.smarthost, "smtp_from": smtp.from_,
                           "smtp_require_tls": smtp.require_tls}
    if smtp.auth_username:
        out["smtp_auth_username"] = smtp.auth_username
        out["smtp_auth_password_file"] = smtp.auth_password_file
    return out


def _route(inventory: Inventory, alerting: AlertingConfig) -> dict[str, Any]:
    timing = alerting.routing
    teams = sorted({p.team for p in inventory.processes.values()} & set(alerting.teams))
    return {
        "receiver": DEFAULT_RECEIVER,
        "group_by": ["process"],
        "group_wait": format_duration(timing.group_wait),
        "group_interval": format_duration(timing.group_interval),
        "repeat_interval": format_duration(timing.repeat_interval),
        "routes": [_team_route(team, alerting.teams[team], alerting) for team in teams],
    }


def _team_route(team: str, config: TeamAlerting, alerting: AlertingConfig) -> dict[str, Any]:
    routes: list[dict[str, Any]] = [{
        "receiver": receiver_name(team, "page"),
        "matchers": ['severity="critical"'],
        "repeat_interval": format_duration(alerting.routing.page_repeat_interval),
    }]
    for severity, slot in (("warning", "ticket"), ("info", "info" if config.info else "ticket")):
        route: dict[str, Any] = {"receiver": receiver_name(team, slot), "matchers": [f'severity="{severity}"']}
        if config.tickets_during:
            route["active_time_intervals"] = [config.tickets_during]
            if alerting.time_intervals[config.tickets_during].holidays:
                route["mute_time_intervals"] = [holidays_name(config.tickets_during)]
        routes.append(route)
    return {"receiver": receiver_name(team, "ticket"), "matchers": [f'team="{team}"'], "routes": routes}


def _inhibit_rules() -> list[dict[str, Any]]:
    return [
        {"source_matchers": ['severity="critical"'], "target_matchers": ['severity=~"warning|info"'],
         "equal": ["process", "kpi"]},
        {"source_matchers": [f'alertname=~"{DOWN_ALERT}|{ABSENT_ALERT}"'],
         "target_matchers": [f'alertname=~"{STALE_ALERT}|{KPI_ABSENT_ALERT}"'],
         "equal": ["process"]},
    ]


def _receivers(alerting: AlertingConfig) -> list[dict[str, Any]]:
    default: dict[str, Any] = {"name": DEFAULT_RECEIVER}
    if alerting.default is not None:
        default.update(_integrations(alerting.default, "ticket"))
    out = [default]
    for team, config in sorted(alerting.teams.items()):
        for slot, receiver in (("page", config.page), ("ticket", config.ticket), ("info", config.info)):
            if receiver is not None:
                out.append({"name": receiver_name(team, slot), **_integrations(receiver, slot)})
    return out


def _integrations(receiver: Receiver, slot: str) -> dict[str, Any]:
    severity, priority = _PRIORITY[slot]
    out: dict[str, Any] = {}
    if receiver.webhook is not None:
        hook = receiver.webhook
        config: dict[str, Any] = {"url": hook.url, "send_resolved": hook.send_resolved}
        if hook.max_alerts:
            config["max_alerts"] = hook.max_alerts
        if hook.credentials_file:
            config["http_config"] = {"authorization": {"credentials_file": hook.credentials_file}}
        out["webhook_configs"] = [config]
    if receiver.email is not None:
        out["email_configs"] = [{"to": receiver.email.to, "send_resolved": receiver.email.send_resolved}]
    if receiver.pagerduty is not None:
        out["pagerduty_configs"] = [{"routing_key_file": receiver.pagerduty.routing_key_file,
                                     "send_resolved": receiver.pagerduty.send_resolved, "severity": severity}]
    if receiver.opsgenie is not None:
        out["opsgenie_configs"] = [_opsgenie(receiver, priority)]
    return out


def _opsgenie(receiver: Receiver, priority: str) -> dict[str, Any]:
    genie = receiver.opsgenie
    assert genie is not None
    config: dict[str, Any] = {"api_key_file": genie.api_key_file, "priority": priority,
                              "send_resolved": genie.send_resolved}
    if genie.api_url:
        config["api_url"] = genie.api_url
    if genie.responders:
        config["responders"] = [{"name": team, "type": "team"} for team in genie.responders]
    return config


def _time_intervals(intervals: dict[str, TimeInterval]) -> list[dict[str, Any]]:
    out = []
    for name, interval in sorted(intervals.items()):
        times = [{"start_time": h[:5], "end_time": h[6:]} for h in interval.hours]
        out.append({"name": name, "time_intervals": [
            {"weekdays": list(interval.weekdays), "times": times, "location": interval.timezone}]})
        if interval.holidays:
            out.append({"name": holidays_name(name), "time_intervals": [
                {"years": [str(d.year)], "months": [_MONTHS[d.month - 1]], "days_of_month": [str(d.day)],
                 "location": interval.timezone} for d in interval.holidays]})
    return out
