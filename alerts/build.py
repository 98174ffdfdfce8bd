"""Generate everything `fabwatch alerts build` writes, as documents keyed by relative path."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alerts.health import health_group
from alerts.model import RuleFile
from alerts.routing import alertmanager_config
from alerts.slo import alert_group, burn_pairs, recording_group, sla_kpis
from alerts.targets import target_group
from alerts.unittests import health_tests, process_tests
from collector.inventory.durations import format_duration
from collector.inventory.models import Inventory

HEALTH = "health"


@dataclass(frozen=True)
class Bundle:
    """Generated documents by relative path, and notes worth telling whoever generated them."""

    documents: dict[str, dict[str, Any]]
    notes: tuple[str, ...]


def rule_path(name: str) -> str:
    return f"rules/{name}.rules.yml"


def test_path(name: str) -> str:
    return f"tests/{name}.test.yml"


def process_file_name(process: str) -> str:
    return f"process-{process}"


def rule_files(inventory: Inventory) -> dict[str, RuleFile]:
    """Return the rule files: one per process, one for health."""
    alerting, currency = inventory.alerting, inventory.service.currency
    files = {process_file_name(name): RuleFile((
        recording_group(name, process, alerting.slo),
        alert_group(name, process, alerting),
        target_group(name, process, alerting, currency),
    )) for name, process in inventory.processes.items()}
    files[HEALTH] = RuleFile((health_group(inventory),))
    return files


def build(inventory: Inventory) -> Bundle:
    """Generate the rule files, their promtool tests and alertmanager.yml."""
    files = rule_files(inventory)
    documents: dict[str, dict[str, Any]] = {}
    for name, rule_file in files.items():
        documents[rule_path(name)] = rule_file.to_dict()
        if name == HEALTH:
            tests = health_tests(inventory, rule_file)
        else:
            process = name.removeprefix("process-")
            tests = process_tests(inventory, process, rule_file)
        documents[test_path(name)] = {"rule_files": [f"../{rule_path(name)}"], **tests}
    documents["alertmanager.yml"] = alertmanager_config(inventory)
    return Bundle(documents, tuple(unreachable_notes(inventory)))


def unreachable_notes(inventory: Inventory) -> list[str]:
    """Say which burn-rate pairs are left out (no error ratio can reach factor x budget) and which fire
    from 1x rather than their workbook factor (under 1x a burn meets the objective)."""
    notes = []
    for name, process in inventory.processes.items():
        for kpi_name, kpi in sla_kpis(process).items():
            for pair in burn_pairs(kpi.window, kpi.objective, inventory.alerting.slo):
                where = (f"processes.{name}.kpis.{kpi_name}: the {format_duration(pair.long)}/"
                         f"{format_duration(pair.short)} {pair.severity} pair")
                if not pair.reachable:
                    notes.append(f"{where} needs an error ratio above {pair.threshold:.3g} ({pair.factor:g}x a "
                                 f"{pair.budget:g} budget): left out")
                elif pair.scaled:
                    notes.append(f"{where} burns at {pair.workbook_factor:.3g}x over the "
                                 f"{format_duration(kpi.window)} window, which would meet the objective: it fires "
                                 f"from 1x instead")
    return notes
