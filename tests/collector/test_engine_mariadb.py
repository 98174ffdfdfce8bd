"""The engine on a real MariaDB: every KPI and counter equals the oracle's, writes are refused in
the read-only transaction, the server stops slow and locked queries, sessions read times in UTC."""

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, MetaData, String, Text, create_engine, text

from collector.db import create_engine as create_source_engine
from collector.db import guard, read_only
from collector.engine import SourceSampler
from collector.errors import SourceQueryFailed, SourceRefused, SourceTimeout
from collector.inventory.load import load_inventory
from collector.inventory.models import Inventory, SqlSource
from collector.state import StateStore
from simulator import Simulator
from simulator.store import TABLES
from tests.collector.helpers import value_kpi_file
from tests.collector.kpi_oracle import Row, expected_kpis, in_window
from tests.collector.test_engine import EXAMPLE, SETTLE, T0, assert_same, example, family, values
from tests.servers import MariaDBServer

pytestmark = pytest.mark.integration

TIMEOUT = 1.0


def mariadb_metadata() -> MetaData:
    """The simulator's records tables as MariaDB can index them: a TEXT key needs a VARCHAR."""
    metadata = MetaData()
    for table in TABLES.values():
        copy = table.to_metadata(metadata)
        keys = {c.name for index in copy.indexes for c in index.columns} | {c.name for c in copy.primary_key}
        for column in copy.columns:
            if column.name in keys and isinstance(column.type, Text):
                column.type = String(64)
    return metadata


MARIADB_TABLES = mariadb_metadata()


@pytest.fixture
def database(mariadb: MariaDBServer) -> str:
    """A fresh database with the simulator's (epoch-column) schema."""
    name = mariadb.create_database()
    with owner_engine(mariadb, name) as engine, engine.begin() as conn:
        MARIADB_TABLES.create_all(conn)
    return name


@pytest.fixture
def sim_db(tmp_path: Path) -> Path:
    """The SQLite file the simulator writes, copied into MariaDB by `copy_records`."""
    return tmp_path / "operator.db"


@contextmanager
def owner_engine(server: MariaDBServer, database: str) -> Iterator[Engine]:
    """A synchronous engine of the owner (PyMySQL, installed with aiomysql): the tests' own
    writes and reads, sharing nothing with the engine under test."""
    engine = create_engine(server.dsn(database=database, driver="mariadb+pymysql"))
    try:
        yield engine
    finally:
        engine.dispose()


async def simulate(sim_db: Path, days: float) -> Simulator:
    """Simulate the operator in SQLite (the simulator declares TEXT keys, which MariaDB cannot index)."""
    sim = Simulator(f"sqlite+aiosqlite:///{sim_db}", seed=11, scale=0.5)
    await sim.create_schema()
    await sim.backfill(days, T0)
    return sim


def copy_records(sim_db: Path, server: MariaDBServer, database: str) -> None:
    """Make the MariaDB records tables hold exactly the simulator's rows."""
    with sqlite3.connect(sim_db) as source:
        source.row_factory = sqlite3.Row
        rows = {name: [dict(r) for r in source.execute(f"SELECT * FROM {name}")] for name in MARIADB_TABLES.tables}
    with owner_engine(server, database) as engine, engine.begin() as conn:
        for name, table_rows in rows.items():
            table = MARIADB_TABLES.tables[name]
            conn.execute(table.delete())
            if table_rows:
                conn.execute(table.insert(), table_rows)


def read_rows(server: MariaDBServer, database: str, inventory: Inventory) -> dict[str, list[Row]]:
    """The records as plain dicts, read back from MariaDB for the oracle."""
    with owner_engine(server, database) as engine, engine.connect() as conn:
        return {p.records.table: [dict(r._mapping) for r in conn.execute(text(f"SELECT * FROM {p.records.table}"))]
                for p in inventory.processes.values()}


def sampler(inventory: Inventory, state: Path, **update: Any) -> SourceSampler:
    source = inventory.sources["operator"].model_copy(update=update)
    return SourceSampler("operator", source, inventory.processes, StateStore(state))


async def test_every_kpi_matches_an_independent_computation(mariadb: MariaDBServer, database: str,
                                                            sim_db: Path, tmp_path: Path) -> None:
    sim = await simulate(sim_db, days=8)
    copy_records(sim_db, mariadb, database)
    inventory = example(mariadb.dsn("fabwatch_ro", database=database))  # a user that may only SELECT
    engine = sampler(inventory, tmp_path / "state.db")
    first = await engine.sample(T0)
    assert {k.kind for k in first.kpis} == {"volume", "backlog", "overdue", "duration", "sla", "ratio",
                                            "cost", "value"}
    want = expected_kpis(inventory, read_rows(mariadb, database, inventory), T0, T0 - SETTLE)
    assert sum(v is not None for v in want.values()) > 50
    assert_same(values(first), want)

    # Two hours later, the windows moved by their edges alone (rows inserted and completed): exact.
    await sim.step(T0 + 7200)
    copy_records(sim_db, mariadb, database)
    second = await engine.sample(T0 + 7200)
    rows = read_rows(mariadb, database, inventory)
    assert_same(values(second), expected_kpis(inventory, rows, T0 + 7200, T0 + 7200 - SETTLE))
    await engine.close()
    await sim.close()


async def test_counters_count_each_row_once_across_samples_and_restarts(
        mariadb: MariaDBServer, database: str, sim_db: Path, tmp_path: Path) -> None:
    sim = await simulate(sim_db, days=4)
    copy_records(sim_db, mariadb, database)
    on_mariadb = example(mariadb.dsn("fabwatch_ro", database=database))
    on_sqlite = example(f"sqlite+aiosqlite:///{sim_db}")  # the very rows copied, as a second opinion
    state = tmp_path / "state.db"
    engines = [sampler(on_mariadb, state), sampler(on_sqlite, tmp_path / "sqlite.state")]
    for engine in engines:
        await engine.sample(T0)
    for t in (T0 + 600, T0 + 1800):
        await sim.step(t)
        copy_records(sim_db, mariadb, database)
        for engine in engines:
            await engine.sample(t)
    await engines[0].close()
    engines[0] = sampler(on_mariadb, state)  # a new process on the same state continues the counters
    await sim.step(T0 + 3600)
    copy_records(sim_db, mariadb, database)
    last, reference = [await engine.sample(T0 + 3600) for engine in engines]
    for engine in engines:
        await engine.close()
    await sim.close()

    rows = read_rows(mariadb, database, on_mariadb)
    lookback = 30 * 86400  # the longest KPI window: how far back the first sample counts
    created = family(last, "fab_items_created")
    for name, process in on_mariadb.processes.items():
        want = sum(1 for r in rows[process.records.table]
                   if in_window(r["created_at"], T0 + 3600 - SETTLE, lookback + 3600))
        assert sum(v for labels, v in created.items() if ("process", name) in labels) == want, name
    counters = sorted({f.name for f in last.families if f.kind == "counter"})
    assert {"fab_items_created", "fab_items_completed", "fab_sla_good", "fab_cost"} <= set(counters)
    for name in counters:
        assert_same(family(last, name), family(reference, name))  # type: ignore[arg-type]


DRIVERS = pytest.mark.parametrize("driver", ["mariadb+aiomysql", "mysql+aiomysql"])
"""Both DSNs reach MariaDB (SQLAlchemy's mysql dialect does not check the server)."""


@DRIVERS
async def test_writes_are_refused_even_to_a_user_that_may_write(mariadb: MariaDBServer, database: str,
                                                                sim_db: Path, tmp_path: Path, driver: str) -> None:
    sim = await simulate(sim_db, days=1)
    copy_records(sim_db, mariadb, database)
    await sim.close()
    # A function with a side effect: the one way a single SELECT can write on MariaDB.
    mariadb.sql("DELIMITER //\nCREATE FUNCTION purge_tickets() RETURNS INT MODIFIES SQL DATA "
                "BEGIN DELETE FROM trouble_ticket; RETURN 1; END//", database=database)
    before = mariadb.sql("SELECT COUNT(*) FROM trouble_ticket", database=database)
    assert int(before) > 0
    owner = mariadb.dsn("fabwatch", database=database, driver=driver)
    sneaky = value_kpi_file(tmp_path, "sneaky", "SELECT purge_tickets()")
    with pytest.raises(SourceRefused, match="READ ONLY transaction"):
        await sampled_once(owner, tmp_path, sneaky)
    # Statements stacked after a COMMIT would run outside the read-only transaction: the session
    # takes one statement per call, so none of them runs.
    stacked = value_kpi_file(tmp_path, "stacked", "SELECT 1; COMMIT; DELETE FROM trouble_ticket; COMMIT")
    with pytest.raises(SourceQueryFailed, match="error 1064"):
        await sampled_once(owner, tmp_path, stacked)
    assert mariadb.sql("SELECT COUNT(*) FROM trouble_ticket", database=database) == before


async def sampled_once(dsn: str, tmp_path: Path, *extra: Path, timeout: float = 10.0) -> None:
    """Sample the example inventory (plus `extra` files) once."""
    inventory = load_inventory([EXAMPLE, *extra], {"FABWATCH_DEMO_DSN": dsn})
    engine = sampler(inventory, tmp_path / "once.state", timeout=timeout)
    try:
        await engine.sample(T0)
    finally:
        await engine.close()


def running(server: MariaDBServer, marker: str) -> int:
    """How many statements containing `marker` the server is still running (other than this one)."""
    return int(server.sql("SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                          f"WHERE INFO LIKE '%{marker}%' AND ID <> CONNECTION_ID()", database="mysql"))


@DRIVERS
async def test_a_slow_query_is_stopped_by_the_server(mariadb: MariaDBServer, database: str,
                                                     sim_db: Path, tmp_path: Path, driver: str) -> None:
    sim = await simulate(sim_db, days=1)
    copy_records(sim_db, mariadb, database)
    await sim.close()
    slow = value_kpi_file(tmp_path, "slow", "SELECT COUNT(*) FROM trouble_ticket WHERE SLEEP(30) = 0")
    started = time.monotonic()
    with pytest.raises(SourceTimeout, match="max_statement_time exceeded"):
        await sampled_once(mariadb.dsn("fabwatch_ro", database=database, driver=driver), tmp_path, slow,
                           timeout=TIMEOUT)
    # The server's own timeout, not the asyncio backstop (which would come 2 s later).
    assert time.monotonic() - started < TIMEOUT + 1.5
    assert running(mariadb, "SLEEP(30)") == 0


async def test_a_locked_table_is_a_timeout_within_the_timeout(mariadb: MariaDBServer, database: str,
                                                              sim_db: Path, tmp_path: Path) -> None:
    sim = await simulate(sim_db, days=1)
    copy_records(sim_db, mariadb, database)
    await sim.close()
    dsn = mariadb.dsn("fabwatch_ro", database=database)
    with owner_engine(mariadb, database) as engine, engine.connect() as conn:
        conn.execute(text("LOCK TABLES trouble_ticket WRITE"))
        started = time.monotonic()
        with pytest.raises(SourceTimeout, match="max_statement_time exceeded"):
            await sampled_once(dsn, tmp_path, timeout=TIMEOUT)
        assert time.monotonic() - started < TIMEOUT + 1.5
        conn.execute(text("UNLOCK TABLES"))
    await sampled_once(dsn, tmp_path, timeout=TIMEOUT)  # the lock gone, the same source samples


async def test_sessions_read_timestamps_in_utc_whatever_the_server_zone(mariadb: MariaDBServer,
                                                                         database: str) -> None:
    """A TIMESTAMP is stored in UTC and shown in the session's zone: fabwatch's sessions are in
    UTC even on a server whose default zone is not, so instants read and bind right."""
    mariadb.sql("CREATE TABLE stamped (at TIMESTAMP NULL); SET time_zone = '+00:00'; "
                "INSERT INTO stamped VALUES ('2026-03-29 00:30:00')", database=database)
    mariadb.sql("SET GLOBAL time_zone = '+05:00'")  # new sessions start in +05:00
    try:
        source = SqlSource(kind="sql", dsn=mariadb.dsn("fabwatch_ro", database=database))
        engine = create_source_engine(source)
        async with guard("m", source.timeout), read_only("m", engine, source.timeout) as conn:
            zone, shown, epoch = (await conn.execute(text(
                "SELECT @@session.time_zone, CAST(at AS CHAR), UNIX_TIMESTAMP(at) FROM stamped"))).one()
        await engine.dispose()
    finally:
        mariadb.sql("SET GLOBAL time_zone = 'SYSTEM'")
    assert (zone, shown) == ("+00:00", "2026-03-29 00:30:00")
    assert epoch == 1774744200  # 2026-03-29T00:30:00Z
