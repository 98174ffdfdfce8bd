"""The simulator's database: records tables, the `sim_plan`/`sim_state` side tables, batched writes."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from sqlalchemy import (
    Column,
    Double,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    bindparam,
    event,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from simulator.plans import Row
from simulator.profiles import PROFILES

CHUNK = 5000
_FLAGS = (
    "reopened", "fallout", "first_contact_resolved", "abandoned", "adjusted", "ebill", "saved",
    "written_off",
)  # fmt: skip
_INDEXED = ("status", "created_at", "completed_at", "updated_at")


def record_table(metadata: MetaData, name: str) -> Table:
    """Define one records table (the same columns for every process)."""
    flags = [Column(f, Integer, nullable=False, server_default="0") for f in _FLAGS]
    table = Table(
        name, metadata,
        Column("id", Text, primary_key=True),
        Column("created_at", Double, nullable=False),
        Column("completed_at", Double), Column("due_at", Double),
        Column("updated_at", Double, nullable=False),
        Column("status", Text, nullable=False), Column("outcome", Text),
        Column("priority", Text), Column("channel", Text), Column("segment", Text),
        Column("paused_seconds", Double, nullable=False, server_default="0"),
        *flags[:4],
        Column("wait_seconds", Double, nullable=False, server_default="0"),
        *flags[4:],
        Column("handling_minutes", Double, nullable=False, server_default="0"),
        Column("amount", Double, nullable=False, server_default="0"),
    )  # fmt: skip
    for column in _INDEXED:
        Index(f"ix_{name}_{column}", table.c[column])
    return table


METADATA = MetaData()
TABLES: dict[str, Table] = {p: record_table(METADATA, prof.table) for p, prof in PROFILES.items()}
SIM_PLAN = Table(
    "sim_plan", METADATA,
    Column("id", Text, primary_key=True), Column("process", Text, nullable=False),
    Column("plan", Text, nullable=False),
)  # fmt: skip
SIM_STATE = Table("sim_state", METADATA, Column("key", Text, primary_key=True), Column("value", Double, nullable=False))


@dataclass
class Batch:
    """Everything one backfill or step writes, in one transaction."""

    inserts: dict[str, list[Row]] = field(default_factory=dict)
    updates: dict[str, list[Row]] = field(default_factory=dict)
    plans_added: list[dict[str, str]] = field(default_factory=list)
    plans_done: list[str] = field(default_factory=list)
    cursor: float | None = None

    def rows(self) -> int:
        """Return the number of record rows written."""
        return sum(map(len, self.inserts.values())) + sum(map(len, self.updates.values()))


def _wal(dbapi_connection: Any, _record: Any) -> None:
    """Switch SQLite to WAL so the collector can read while the simulator writes."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class Store:
    """Owns the async engine of the simulated operator's database."""

    def __init__(self, dsn: str) -> None:
        self.engine: AsyncEngine = create_async_engine(dsn)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _wal)

    async def create_schema(self) -> None:
        """Create the tables and indexes that are missing."""
        async with self.engine.begin() as conn:
            await conn.run_sync(METADATA.create_all)

    async def load(self) -> tuple[float | None, list[tuple[str, str]]]:
        """Return the cursor (None before any run) and the stored plans (id, json)."""
        async with self.engine.connect() as conn:
            cursor = await conn.scalar(select(SIM_STATE.c.value).where(SIM_STATE.c.key == "cursor"))
            result = await conn.execute(select(SIM_PLAN.c.id, SIM_PLAN.c.plan).order_by(SIM_PLAN.c.id))
            return cursor, [(str(i), str(p)) for i, p in result]

    def transaction(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """Return a connection in a transaction (committed on exit) for write_batch()."""
        return self.engine.begin()

    async def write(self, batch: Batch) -> None:
        """Write a batch in one transaction."""
        async with self.engine.begin() as conn:
            await write_batch(conn, batch)

    async def close(self) -> None:
        """Dispose of the engine."""
        await self.engine.dispose()


async def write_batch(conn: AsyncConnection, batch: Batch) -> None:
    """Write the rows, plan changes and cursor of a batch on a connection in a transaction."""
    for process, rows in batch.inserts.items():
        await _chunked(conn, TABLES[process].insert(), rows)
    for process, rows in batch.updates.items():
        table = TABLES[process]
        stmt = table.update().where(table.c.id == bindparam("b_id"))
        await _chunked(conn, stmt, [_for_update(r) for r in rows])
    done = SIM_PLAN.delete().where(SIM_PLAN.c.id == bindparam("b_id"))
    await _chunked(conn, done, [{"b_id": i} for i in batch.plans_done])
    await _chunked(conn, SIM_PLAN.insert(), batch.plans_added)
    if batch.cursor is not None:
        await conn.execute(SIM_STATE.delete().where(SIM_STATE.c.key == "cursor"))
        await conn.execute(SIM_STATE.insert().values(key="cursor", value=batch.cursor))


def _for_update(row: Row) -> Row:
    """Return the update parameters of a row (id renamed, created_at left alone)."""
    params = {k: v for k, v in row.items() if k not in ("id", "created_at")}
    params["b_id"] = row["id"]
    return params


async def _chunked(conn: AsyncConnection, stmt: Any, rows: Sequence[Row]) -> None:
    """Execute a statement for many parameter sets, a chunk at a time.

    The statement is compiled once and run with plain DB-API parameters: going through
    SQLAlchemy's per-row parameter processing would triple the time of a backfill.
    """
    if not rows:
        return
    compiled = stmt.compile(dialect=conn.dialect, column_keys=list(rows[0]))
    sql = str(compiled)
    params: Sequence[Any] = rows
    if compiled.positional:
        keys = list(compiled.positiontup or ())
        pick = itemgetter(*keys)  # one key gives a bare value, not a 1-tuple
        params = [pick(row) for row in rows] if len(keys) > 1 else [(pick(row),) for row in rows]
    for i in range(0, len(params), CHUNK):
        await conn.exec_driver_sql(sql, params[i : i + CHUNK])
