"""Alert scenarios written by hand (tests/alerts/scenarios/*.test.yml), run by the real promtool on the
rules generated for a 95 %/28d and a 99.9 %/30d SLA.

The scenarios' input series and expected alerts are typed in the files from the rule expressions:
unlike the promtool tests `fabwatch alerts build` writes, they share no code with the generator.
Annotations are dropped from the rules: these scenarios test when alerts fire, the generated
tests test their text.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from alerts.build import rule_files
from collector.inventory.load import load_inventory
from tests.alerts.conftest import SMALL, merged

pytestmark = pytest.mark.integration
SCENARIOS = Path(__file__).parent / "scenarios"
PROBLEM = SMALL["processes"]["problem"]
INVENTORY = merged(SMALL, {"processes": {
    "problem": {"kpis": {"resolved_in_time": {"kind": "sla", "objective": 0.999, "window": "30d"}}},
    "order": {**PROBLEM, "etom": "1.3.1.2", "name": "Order",
              "kpis": {"on_time": {"kind": "sla", "objective": 0.95, "window": "28d"}}},
}})


def without_annotations(document: dict) -> dict:
    """Return a rule file document whose alerting rules carry no annotations."""
    for group in document["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    return document


@pytest.fixture
def rules_dir(tmp_path: Path, write_inventory: Callable[[dict], Path]) -> Path:
    """Write the generated rules of both processes, without annotations, next to the scenarios."""
    inventory = load_inventory([write_inventory(INVENTORY)], environ={})
    out = tmp_path / "scenarios"
    out.mkdir()
    for name in ("process-order", "process-problem"):
        document = without_annotations(rule_files(inventory)[name].to_dict())
        (out / f"{name}.rules.yml").write_text(yaml.safe_dump(document, sort_keys=False))
    return out


@pytest.mark.parametrize("scenario", sorted(p.name for p in SCENARIOS.glob("*.test.yml")))
def test_hand_written_scenario_passes_promtool(promtool: str, rules_dir: Path, scenario: str) -> None:
    shutil.copy(SCENARIOS / scenario, rules_dir / scenario)
    result = subprocess.run([promtool, "test", "rules", scenario], cwd=rules_dir, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_scenario_file_is_collected() -> None:
    assert {p.name for p in SCENARIOS.glob("*.test.yml")} == {
        "slow_burn.test.yml", "low_volume.test.yml", "silence.test.yml", "young_prometheus.test.yml"}
