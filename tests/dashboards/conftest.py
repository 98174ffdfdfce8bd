"""Fixtures of the dashboard tests: the example inventory and its dashboards."""

from pathlib import Path
from typing import Any

import pytest

from collector.inventory.load import load_inventory
from collector.inventory.models import Inventory
from dashboards.build import build_dashboards

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "operator.yaml"
COMMITTED = ROOT / "examples" / "dashboards"


@pytest.fixture(scope="session")
def inventory() -> Inventory:
    """The example inventory with every `${VAR:-default}` at its default."""
    return load_inventory([EXAMPLE], {})


@pytest.fixture(scope="session")
def dashboards(inventory) -> dict[str, dict[str, Any]]:
    return build_dashboards(inventory)
