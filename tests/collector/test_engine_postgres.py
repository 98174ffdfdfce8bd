"""The engine on a real PostgreSQL: same KPIs as SQLite for the same records, read-only, timeouts."""

import math
from pathlib import Path

import pytest

from collector.engine import SourceSampler
from collector.errors import SourceRefused, SourceTimeout
from collector.inventory.load import load_inventory
from collector.state import StateStore
from simulator import Simulator
from tests.collector.helpers import value_kpi_file
from tests.servers import PostgresServer

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).parents[2] / "examples" / "operator.yaml"
T0 = 1767225600.0


async def fill(dsn: str) -> None:
    sim = Simulator(dsn, seed=11, scale=0.5)
    await sim.create_schema()
    await sim.backfill(6, T0)
    await sim.step(T0 + 3600)
    await sim.close()


async def sample_kpis(dsn: str, state: Path, *extra: Path) -> dict[tuple[str, str], float | None]:
    inventory = load_inventory([EXAMPLE, *extra], {"FABWATCH_DEMO_DSN": dsn})
    engine = SourceSampler("operator", inventory.sources["operator"], inventory.processes, StateStore(state))
    try:
        await engine.sample(T0)
        sample = await engine.sample(T0 + 3600)
    finally:
        await engine.close()
    return {(k.process, k.kpi): k.value for k in sample.kpis}


async def test_postgresql_and_sqlite_give_the_same_kpis(postgres: PostgresServer, tmp_path: Path) -> None:
    database = postgres.create_database()
    await fill(postgres.dsn("fabwatch", database=database))
    await fill(f"sqlite+aiosqlite:///{tmp_path / 'op.db'}")
    # fabwatch reads PostgreSQL as a role that may only SELECT.
    on_pg = await sample_kpis(postgres.dsn("fabwatch_ro", database=database), tmp_path / "pg.state")
    on_sqlite = await sample_kpis(f"sqlite+aiosqlite:///{tmp_path / 'op.db'}", tmp_path / "sqlite.state")
    assert on_pg.keys() == on_sqlite.keys()
    assert sum(v is not None for v in on_pg.values()) > 50
    different = {k: (on_pg[k], on_sqlite[k]) for k in on_pg
                 if (on_pg[k] is None) != (on_sqlite[k] is None)
                 or (on_pg[k] is not None and not math.isclose(on_pg[k], on_sqlite[k], rel_tol=1e-9))}  # type: ignore[arg-type]
    assert not different


async def test_writes_are_refused_even_to_a_role_that_may_write(postgres: PostgresServer, tmp_path: Path) -> None:
    database = postgres.create_database()
    owner = postgres.dsn("fabwatch", database=database)
    await fill(owner)
    before = postgres.psql("SELECT COUNT(*) FROM trouble_ticket", database=database)
    sneaky = value_kpi_file(tmp_path, "sneaky",
                            "WITH gone AS (DELETE FROM trouble_ticket RETURNING 1) SELECT COUNT(*) FROM gone")
    with pytest.raises(SourceRefused, match="read-only transaction"):
        await sample_kpis(owner, tmp_path / "s.state", sneaky)
    assert postgres.psql("SELECT COUNT(*) FROM trouble_ticket", database=database) == before


async def test_statement_timeout_is_enforced_by_postgresql(postgres: PostgresServer, tmp_path: Path) -> None:
    database = postgres.create_database()
    dsn = postgres.dsn("fabwatch_ro", database=database)
    await fill(postgres.dsn("fabwatch", database=database))
    slow = value_kpi_file(tmp_path, "slow", "SELECT 1 FROM pg_sleep(30)")
    inventory = load_inventory([EXAMPLE, slow], {"FABWATCH_DEMO_DSN": dsn})
    source = inventory.sources["operator"].model_copy(update={"timeout": 1.0})
    engine = SourceSampler("operator", source, inventory.processes, StateStore(tmp_path / "s.state"))
    with pytest.raises(SourceTimeout, match="statement timeout"):
        await engine.sample(T0)
    await engine.close()
    # The server cancelled it: no query of ours is left running.
    running = postgres.psql("SELECT COUNT(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)%' "
                            "AND state = 'active' AND pid <> pg_backend_pid()", database=database)
    assert running.strip() == "0"
