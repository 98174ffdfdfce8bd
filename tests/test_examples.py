"""The bundled example inventory and the simulator describe the same operator."""

from pathlib import Path

from collector.inventory import load_inventory
from simulator import PROFILES

EXAMPLE = Path(__file__).parents[1] / "examples" / "operator.yaml"


def test_example_maps_every_simulated_process_to_its_table_and_statuses() -> None:
    inventory = load_inventory([EXAMPLE], {})
    assert set(inventory.processes) == set(PROFILES)
    for name, process in inventory.processes.items():
        profile = PROFILES[name]
        assert process.records.table == profile.table, name
        assert set(process.records.open_statuses) == set(profile.open_statuses), name
        assert set(process.records.paused_statuses) == set(profile.paused_statuses), name
