"""Cross-checks of the `alerting` settings against the rest of the inventory (the models are in
`collector.inventory.alerting`, which the inventory's schema imports; these read the whole inventory)."""

from __future__ import annotations

from collector.inventory.alerting import AlertingConfig
from collector.inventory.durations import format_duration
from collector.inventory.models import Inventory


def check_alerting(inventory: Inventory) -> list[tuple[str, str]]:
    """Return (path, message) for each inconsistency between `alerting` and the rest."""
    alerting: AlertingConfig = inventory.alerting
    return (_check_slo_windows(inventory, alerting) + _check_teams(inventory, alerting)
            + _check_processes(inventory, alerting) + _check_email(alerting))


def _check_slo_windows(inventory: Inventory, alerting: AlertingConfig) -> list[tuple[str, str]]:
    longest = alerting.slo.longest_window
    problems = []
    for name, process in inventory.processes.items():
        for kpi_name, kpi in process.kpis.items():
            window = getattr(kpi, "window", None)
            if kpi.kind == "sla" and window is not None and window < longest:
                problems.append((f"processes.{name}.kpis.{kpi_name}.window",
                                 f"the SLO window ({format_duration(window)}) is shorter than the longest "
                                 f"alert window ({format_duration(longest)}, alerting.slo.windows)"))
    return problems


def _check_teams(inventory: Inventory, alerting: AlertingConfig) -> list[tuple[str, str]]:
    problems = []
    if alerting.teams:
        for name, process in inventory.processes.items():
            if process.team not in alerting.teams:
                problems.append((f"processes.{name}.team",
                                 f"team {process.team!r} has no receivers: add alerting.teams.{process.team} "
                                 "with page and ticket"))
    for team, config in alerting.teams.items():
        if config.tickets_during and config.tickets_during not in alerting.time_intervals:
            known = ", ".join(sorted(alerting.time_intervals)) or "none"
            problems.append((f"alerting.teams.{team}.tickets_during",
                             f"unknown time interval {config.tickets_during!r}; known: {known}"))
    return problems


def _check_processes(inventory: Inventory, alerting: AlertingConfig) -> list[tuple[str, str]]:
    return [(f"alerting.processes.{name}",
                 f"unknown process {name!r}; known: {', '.join(sorted(inventory.processes))}")
                for name in alerting.processes if name not in inventory.processes]


def check_runbooks(inventory: Inventory) -> list[tuple[str, str]]:
    """Return a problem for each process whose alerts would have no runbook link."""
    if inventory.alerting.runbook_url is not None:
        return []
    return [(f"processes.{name}.runbook", f"every alert needs a runbook: set processes.{name}.runbook "
             "or alerting.runbook_url")
            for name, process in inventory.processes.items() if not process.runbook]


def _check_email(alerting: AlertingConfig) -> list[tuple[str, str]]:
    if alerting.smtp is not None:
        return []
    slots = [(team, slot, receiver) for team, config in alerting.teams.items()
             for slot, receiver in (("page", config.page), ("ticket", config.ticket), ("info", config.info))]
    slots += [("", "default", alerting.default)]
    return [(f"alerting.teams.{team}.{slot}.email" if team else "alerting.default.email",
             "an email receiver needs alerting.smtp (smarthost, from, auth_password_file)")
            for team, slot, receiver in slots if receiver is not None and receiver.email is not None]
