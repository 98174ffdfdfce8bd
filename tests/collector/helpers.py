"""Shared helpers of the collector tests."""

import json
from pathlib import Path


def value_kpi_file(directory: Path, name: str, sql: str) -> Path:
    """Write an inventory file adding one `value` KPI to the example's problem process."""
    path = directory / f"{name}.yaml"
    path.write_text(f"processes:\n  problem:\n    kpis:\n      {name}: {{kind: value, sql: {json.dumps(sql)}}}\n")
    return path
