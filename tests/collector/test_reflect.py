"""What `check` finds in a database: time column kinds, and the plans of the edge queries."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Column, Index, Integer, MetaData, Table, Text
from sqlalchemy.ext.asyncio import create_async_engine

from collector.engine import SourceSampler
from collector.inventory.load import load_inventory
from collector.state import StateStore
from tests.collector.time_tables import column_type
from tests.servers import MariaDBServer, PostgresServer

ROWS = 100_000
NOW = datetime(2026, 11, 30, tzinfo=UTC)
INVENTORY = """
sources:
  ops: {{kind: sql, dsn: "{dsn}"}}
processes:
  problem:
    etom: "1.3.1.3"
    name: tickets
    team: ops
    records:
      source: ops
      table: ticket
      columns: {{id: id, created: opened, completed: closed, status: state, dimensions: [prio]}}
      open_statuses: [1, 2]
    kpis:
      inflow: {{kind: volume}}
"""


async def make_tickets(url: str, indexed: bool, text_times: bool) -> None:
    metadata = MetaData()
    dialect = url.split("+", 1)[0]
    time = Text() if text_times else column_type("timestamptz", dialect)
    table = Table("ticket", metadata, Column("id", Integer, primary_key=True), Column("opened", time),
                  Column("closed", time), Column("state", Integer), Column("prio", Text))
    if indexed:
        Index("ix_ticket_opened", table.c.opened)
        Index("ix_ticket_closed", table.c.closed)
    engine = create_async_engine(url)

    def at(minutes: int) -> object:
        moment = NOW - timedelta(minutes=minutes)
        if text_times:
            return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
        return moment.replace(tzinfo=None) if dialect == "mariadb" else moment

    rows = [{"id": i, "opened": at(i), "closed": at(i - 30) if i % 3 else None, "state": i % 4,
             "prio": "high" if i % 7 else "low"} for i in range(1, ROWS + 1)]
    async with engine.begin() as conn:
        if dialect == "mariadb":
            await conn.exec_driver_sql("SET time_zone = '+00:00'")
        await conn.run_sync(metadata.create_all)
        for start in range(0, ROWS, 5000):
            await conn.execute(table.insert(), rows[start:start + 5000])
    if url.startswith("postgresql"):
        async with engine.connect() as conn:
            await conn.exec_driver_sql("ANALYZE ticket")
            await conn.commit()
    await engine.dispose()


async def notes_for(dsn: str, tmp_path: Path) -> list[str]:
    path = tmp_path / "inv.yaml"
    path.write_text(INVENTORY.format(dsn=dsn))
    inventory = load_inventory([path])
    sampler = SourceSampler("ops", inventory.sources["ops"], inventory.processes,  # type: ignore[arg-type]
                            StateStore(tmp_path / "state.db"), clock=NOW.timestamp)
    try:
        return await sampler.inspect()
    finally:
        await sampler.close()


async def sqlite_url(tmp_path: Path, indexed: bool) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / ('indexed.db' if indexed else 'bare.db')}"
    await make_tickets(url, indexed, text_times=True)
    return url


@pytest.mark.slow
async def test_sqlite_edge_queries_use_the_time_index(tmp_path: Path) -> None:
    notes = await notes_for(await sqlite_url(tmp_path, indexed=True), tmp_path)
    assert "process problem: created opened: iso_text" in "\n".join(notes)
    plans = [n for n in notes if "edge plan" in n]
    assert len(plans) == 2
    assert not [n for n in plans if "full scan" in n], plans


@pytest.mark.slow
async def test_a_missing_index_is_a_warning_naming_the_table(tmp_path: Path) -> None:
    notes = await notes_for(await sqlite_url(tmp_path, indexed=False), tmp_path)
    assert [n for n in notes if "WARNING full scan of ticket" in n]


@pytest.mark.integration
@pytest.mark.parametrize(("server", "found"), [("postgres", "timestamp with time zone"), ("mariadb", "TIMESTAMP")])
@pytest.mark.parametrize("indexed", [True, False])
async def test_server_edge_queries_use_the_time_index(request: pytest.FixtureRequest, tmp_path: Path, server: str,
                                                      found: str, indexed: bool) -> None:
    db: PostgresServer | MariaDBServer = request.getfixturevalue(server)
    dsn = db.dsn("fabwatch", database=db.create_database())
    await make_tickets(dsn, indexed, text_times=False)
    notes = await notes_for(dsn, tmp_path)
    assert f"created opened: timestamptz (database type {found})" in "\n".join(notes)
    scans = [n for n in notes if "edge plan" in n and "WARNING full scan of ticket" in n]
    assert len(scans) == (0 if indexed else 2), notes


@pytest.mark.integration
async def test_epoch_seconds_in_a_bigint_are_bound_as_integers_and_use_the_index(postgres: PostgresServer,
                                                                                 tmp_path: Path) -> None:
    """A float watermark against a bigint column makes PostgreSQL cast the column: no index."""
    database = postgres.create_database()
    owner = postgres.dsn("fabwatch", database=database)
    await make_tickets(owner, indexed=True, text_times=False)
    postgres.psql("ALTER TABLE ticket ALTER opened TYPE bigint USING extract(epoch FROM opened)::bigint, "
                  "ALTER closed TYPE bigint USING extract(epoch FROM closed)::bigint; ANALYZE ticket;",
                  user="fabwatch", database=database)
    notes = await notes_for(owner, tmp_path)
    assert "created opened: epoch_s (database type bigint)" in "\n".join(notes)
    assert not [n for n in notes if "full scan" in n], notes
