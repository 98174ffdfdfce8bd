"""The bundled example inventory and the simulator describe the same operator."""

from pathlib import Path

import pytest

from collector.inventory.load import load_inventory
from simulator import PROFILES
from simulator.realistic import PO_PRIORITIES, PO_STATES, TT_PRIORITIES, TT_STATES

EXAMPLE = Path(__file__).parents[1] / "examples" / "operator.yaml"


def test_example_maps_every_simulated_process_to_its_table_and_statuses() -> None:
    inventory = load_inventory([EXAMPLE], {})
    assert set(inventory.processes) == set(PROFILES)
    for name, process in inventory.processes.items():
        profile = PROFILES[name]
        assert process.records.table == profile.table, name
        assert set(process.records.open_statuses) == set(profile.open_statuses), name
        assert set(process.records.paused_statuses) == set(profile.paused_statuses), name


REALISTIC = sorted((EXAMPLE.parent).glob("realistic-*.yaml"))


def test_there_is_a_realistic_example_per_dialect() -> None:
    assert [p.name for p in REALISTIC] == ["realistic-mariadb.yaml", "realistic-postgres.yaml", "realistic-sqlite.yaml"]


@pytest.mark.parametrize("path", REALISTIC, ids=lambda p: p.stem)
def test_realistic_example_labels_the_codes_the_simulator_writes(path: Path) -> None:
    inventory = load_inventory([path], {})
    assert set(inventory.processes) == {"problem", "order"}
    for name, states, priorities in (("problem", TT_STATES, TT_PRIORITIES), ("order", PO_STATES, PO_PRIORITIES)):
        records, profile = inventory.processes[name].records, PROFILES[name]
        assert records.query is not None
        assert records.lookups["state_id"] == {code: label for label, code in states.items()}, name
        assert records.lookups["priority"] == {code: label for label, code in priorities.items()}, name
        assert set(records.open_statuses) == set(profile.open_statuses), name
        assert set(records.paused_statuses) == set(profile.paused_statuses), name


def test_realistic_mariadb_example_reads_naive_times_in_the_operator_s_zone() -> None:
    inventory = load_inventory([EXAMPLE.parent / "realistic-mariadb.yaml"], {})
    assert inventory.sources["ops"].timezone == "Europe/Berlin"  # type: ignore[union-attr]
    assert inventory.sources["ops"].dsn.startswith("mariadb+aiomysql://")  # type: ignore[union-attr]
