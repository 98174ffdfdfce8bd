"""Inventories for the alerts tests: the bundled example, and small ones written on the fly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from collector.inventory.load import load_inventory
from collector.inventory.models import Inventory

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "operator.yaml"
COMMITTED = ROOT / "examples" / "alerts"

SMALL = {
    "sources": {"db": {"kind": "sql", "dsn": "sqlite+aiosqlite:///x.db", "interval": "30s"}},
    "processes": {
        "problem": {
            "etom": "1.3.1.3", "name": "Problem", "team": "assurance-ops",
            "runbook": "https://runbooks.example/problem",
            "records": {"source": "db", "table": "trouble_ticket", "open_statuses": ["open"],
                        "columns": {"due": "due_at"}},
            "kpis": {"resolved_in_time": {"kind": "sla", "objective": 0.99, "window": "30d"},
                     "backlog": {"kind": "backlog", "target": {"max": 500}}},
        },
    },
    "alerting": {"teams": {"assurance-ops": {
        "page": {"pagerduty": {"routing_key_file": "/run/secrets/pd"}},
        "ticket": {"webhook": {"url": "http://127.0.0.1:9/tickets"}}}}},
}


@pytest.fixture(scope="session")
def example() -> Inventory:
    """Return the bundled example inventory."""
    return load_inventory([EXAMPLE], environ={})


@pytest.fixture
def write_inventory(tmp_path: Path) -> Callable[[dict], Path]:
    """Write an inventory document to a file and return its path."""
    def write(document: dict) -> Path:
        path = tmp_path / "inventory.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path
    return write


def merged(base: dict, patch: dict) -> dict:
    """Return `base` with `patch` merged in recursively (None deletes a key)."""
    out = dict(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out
