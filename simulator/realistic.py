"""The simulator's records stored a second way, as ITSM and OSS/BSS systems store them.

The simulator writes epoch-second columns (store.py). Operators' systems do not: tickets keep
`timestamptz` (PostgreSQL), naive local `DATETIME` (MariaDB) or ISO-8601 text (SQLite), integer
state and priority codes with lookup tables, the resolution time only in a status history, the
SLA target in a table of its own, epoch milliseconds here and there. `RealisticWriter.sync`
converts what the simulator wrote into that shape (trouble tickets and product orders), so the
same data is stored both ways and the KPIs read from either must agree.

Times keep what the column type keeps: microseconds for timestamps, milliseconds for
`requested_ms`. A naive local time in the repeated autumn hour cannot say which of the two
instants it was: that is the type's loss, the reason systems that can store UTC do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    Table,
    Text,
    func,
    select,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.types import TypeEngine

from simulator.incidents import Incident
from simulator.plans import Row
from simulator.profiles import ORDER, PROBLEM, Profile
from simulator.runner import Simulator
from simulator.store import SIM_STATE, TABLES

log = logging.getLogger(__name__)

CHUNK = 2000
SYNC_KEY = "epoch_cursor"


def codes(profile: Profile) -> dict[str, int]:
    """Return the integer code of each status of a process (1, 2, ... in lifecycle order)."""
    return {name: i for i, name in enumerate((*profile.open_statuses, *profile.final_statuses), start=1)}


def priority_codes(profile: Profile) -> dict[str, int]:
    """Return the integer code of each priority (1 = the most urgent)."""
    return {name: i for i, name in enumerate(profile.priorities.values, start=1)}


TT_STATES, PO_STATES = codes(PROBLEM), codes(ORDER)
TT_PRIORITIES, PO_PRIORITIES = priority_codes(PROBLEM), priority_codes(ORDER)


def _time() -> TypeEngine[Any]:
    """Return the column type of a time: timestamptz, naive DATETIME(6) or ISO-8601 text."""
    return (
        DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb").with_variant(Text(), "sqlite")
    )


METADATA = MetaData()


def _lookup(name: str) -> Table:
    """Define a code -> name lookup table."""
    return Table(
        name, METADATA, Column("id", SmallInteger, primary_key=True), Column("name", String(40), nullable=False)
    )


TT_STATE, TT_PRIORITY = _lookup("tt_state"), _lookup("tt_priority")
PO_STATE, PO_PRIORITY = _lookup("po_state"), _lookup("po_priority")

TT_TICKET = Table(
    "tt_ticket", METADATA,
    Column("id", String(40), primary_key=True),
    Column("opened_at", _time(), nullable=False),
    Column("state_id", SmallInteger, ForeignKey("tt_state.id"), nullable=False),
    Column("priority_id", SmallInteger, ForeignKey("tt_priority.id"), nullable=False),
    Column("channel", String(20)), Column("segment", String(20)),
    Column("paused_seconds", Double, nullable=False),
    Column("reopen_count", Integer, nullable=False),
    Column("handling_minutes", Double, nullable=False),
    Column("last_modified", _time(), nullable=False),
    Index("ix_tt_ticket_opened_at", "opened_at"), Index("ix_tt_ticket_last_modified", "last_modified"),
    Index("ix_tt_ticket_state_id", "state_id"),
)  # fmt: skip
# One row per state a ticket entered; the resolution time lives only here, as in most ITSM tools.
TT_STATUS_HISTORY = Table(
    "tt_status_history", METADATA,
    Column("ticket_id", String(40), ForeignKey("tt_ticket.id"), primary_key=True),
    Column("state_id", SmallInteger, ForeignKey("tt_state.id"), primary_key=True),
    Column("changed_at", _time(), primary_key=True),
    Index("ix_tt_status_history_state_changed", "state_id", "changed_at"),  # "resolved in a period"
)  # fmt: skip
TT_SLA = Table(
    "tt_sla", METADATA,
    Column("ticket_id", String(40), ForeignKey("tt_ticket.id"), primary_key=True),
    Column("expected_resolution_at", _time(), nullable=False),
    Index("ix_tt_sla_expected_resolution_at", "expected_resolution_at"),
)  # fmt: skip
PO_ORDER = Table(
    "po_order", METADATA,
    Column("id", String(40), primary_key=True),
    Column("order_date", _time(), nullable=False),
    Column("requested_ms", BigInteger),  # requested completion, epoch milliseconds (a Java service wrote it)
    Column("completion_date", _time()),
    Column("state_id", SmallInteger, ForeignKey("po_state.id"), nullable=False),
    Column("priority_id", SmallInteger, ForeignKey("po_priority.id"), nullable=False),
    Column("channel", String(20)), Column("segment", String(20)),
    Column("fallout", SmallInteger, nullable=False),
    Column("paused_seconds", Double, nullable=False),
    Column("handling_minutes", Double, nullable=False),
    Column("amount", Numeric(12, 2), nullable=False),
    Column("last_update", _time(), nullable=False),
    Index("ix_po_order_order_date", "order_date"), Index("ix_po_order_completion_date", "completion_date"),
    Index("ix_po_order_last_update", "last_update"), Index("ix_po_order_state_id", "state_id"),
)  # fmt: skip
RT_SYNC = Table(
    "rt_sync", METADATA, Column("key", String(40), primary_key=True), Column("value", Double, nullable=False)
)

LOOKUPS: tuple[tuple[Table, dict[str, int]], ...] = (
    (TT_STATE, TT_STATES), (TT_PRIORITY, TT_PRIORITIES), (PO_STATE, PO_STATES), (PO_PRIORITY, PO_PRIORITIES),
)  # fmt: skip

ToDb = Callable[[float], Any]
EXAMPLES = {"postgresql": "postgres", "mariadb": "mariadb", "mysql": "mariadb", "sqlite": "sqlite"}


def example_name(dsn: str) -> str:
    """Return the file name of the example inventory mapping the realistic schema in this database."""
    try:
        backend = make_url(dsn).get_backend_name()
    except ArgumentError as exc:
        raise ValueError(f"not a database URL: {exc}") from None
    if backend not in EXAMPLES:
        raise ValueError(f"the realistic schema supports postgresql, mariadb/mysql and sqlite, not {backend!r}")
    return f"realistic-{EXAMPLES[backend]}.yaml"


def time_codec(dialect: str, timezone: str = "Europe/Berlin", *, local_text: bool = False) -> ToDb:
    """Return the conversion of epoch seconds to what the dialect's time column stores.

    SQLite gets ISO-8601 text in UTC, or with `local_text` the zone's wall time without an offset
    (what applications that format `datetime.now()` write).
    """
    if dialect == "postgresql":
        return lambda t: datetime.fromtimestamp(t, UTC)
    zone = ZoneInfo(timezone)
    if dialect in ("mysql", "mariadb"):  # naive wall-clock time of the declared zone
        return lambda t: datetime.fromtimestamp(t, zone).replace(tzinfo=None)
    if dialect == "sqlite" and local_text:
        return lambda t: datetime.fromtimestamp(t, zone).replace(tzinfo=None).isoformat(" ", "microseconds")
    if dialect == "sqlite":
        return lambda t: datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds")
    raise ValueError(f"the realistic schema supports postgresql, mariadb/mysql and sqlite, not {dialect!r}")


def ticket_rows(rows: Iterable[Row], to_db: ToDb) -> tuple[list[Row], list[Row], list[Row]]:
    """Convert trouble_ticket rows to (tt_ticket, tt_sla, tt_status_history) rows."""
    tickets, slas, history = [], [], []
    for row in rows:
        tickets.append({
            "id": row["id"], "opened_at": to_db(row["created_at"]), "state_id": TT_STATES[row["status"]],
            "priority_id": TT_PRIORITIES[row["priority"]], "channel": row["channel"], "segment": row["segment"],
            "paused_seconds": row["paused_seconds"], "reopen_count": row["reopened"],
            "handling_minutes": row["handling_minutes"], "last_modified": to_db(row["updated_at"]),
        })  # fmt: skip
        if row["due_at"] is not None:
            slas.append({"ticket_id": row["id"], "expected_resolution_at": to_db(row["due_at"])})
        history += [
            {"ticket_id": row["id"], "state_id": TT_STATES[state], "changed_at": to_db(at)}
            for at, state in ticket_history(row)
        ]
    return tickets, slas, history


def ticket_history(row: Row) -> list[tuple[float, str]]:
    """Return the history entries a ticket row proves: opened, resolved (or cancelled), current state.

    A closed ticket was resolved first, at its completion time; the entries between two syncs that
    the row no longer shows (a pause, a reopen) are not needed to read the row back.
    """
    entries = [(row["created_at"], PROBLEM.open_statuses[0])]
    if row["completed_at"] is not None:
        entries.append((row["completed_at"], "cancelled" if row["status"] == "cancelled" else "resolved"))
    entries.append((row["updated_at"], row["status"]))
    return entries


def order_rows(rows: Iterable[Row], to_db: ToDb) -> list[Row]:
    """Convert product_order rows to po_order rows."""
    return [_order_row(row, to_db) for row in rows]


def _order_row(row: Row, to_db: ToDb) -> Row:
    """Convert one product_order row."""
    return {
        "id": row["id"], "order_date": to_db(row["created_at"]),
        "requested_ms": None if row["due_at"] is None else round(row["due_at"] * 1000),
        "completion_date": None if row["completed_at"] is None else to_db(row["completed_at"]),
        "state_id": PO_STATES[row["status"]], "priority_id": PO_PRIORITIES[row["priority"]],
        "channel": row["channel"], "segment": row["segment"], "fallout": row["fallout"],
        "paused_seconds": row["paused_seconds"], "handling_minutes": row["handling_minutes"],
        "amount": row["amount"], "last_update": to_db(row["updated_at"]),
    }  # fmt: skip


def _upsert(dialect: str, table: Table) -> Any:
    """Return an INSERT that replaces the row with the same primary key."""
    keep = {c.name for c in table.primary_key.columns}
    if dialect in ("mysql", "mariadb"):
        stmt = mysql.insert(table)
        return stmt.on_duplicate_key_update({c.name: stmt.inserted[c.name] for c in table.c if c.name not in keep})
    pg_or_lite = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    new = pg_or_lite.excluded
    return pg_or_lite.on_conflict_do_update(
        index_elements=list(keep), set_={c.name: new[c.name] for c in table.c if c.name not in keep}
    )


def _insert_new(dialect: str, table: Table) -> Any:
    """Return an INSERT that leaves an existing row with the same primary key alone."""
    if dialect in ("mysql", "mariadb"):
        return mysql.insert(table).prefix_with("IGNORE")
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


def _chunks(rows: Sequence[Row]) -> Iterator[Sequence[Row]]:
    """Yield the rows a chunk at a time (bounded statements)."""
    for i in range(0, len(rows), CHUNK):
        yield rows[i : i + CHUNK]


class RealisticWriter:
    """Mirrors the simulator's epoch tables into the realistic schema (one way, incrementally)."""

    def __init__(
        self, dsn: str, *, source_dsn: str | None = None, timezone: str = "Europe/Berlin", local_text: bool = False
    ) -> None:
        self.engine: AsyncEngine = create_async_engine(dsn)
        self._source = self.engine if source_dsn in (None, dsn) else create_async_engine(source_dsn)
        self.dialect = self.engine.dialect.name
        self._to_db = time_codec(self.dialect, timezone, local_text=local_text)
        self._ready = False

    async def create_schema(self) -> None:
        """Create the tables and indexes that are missing and fill the lookup tables (once)."""
        if self._ready:
            return
        async with self.engine.begin() as conn:
            await conn.run_sync(METADATA.create_all)
            for table, names in LOOKUPS:
                rows = [{"id": code, "name": name} for name, code in names.items()]
                await conn.execute(_upsert(self.dialect, table), rows)
        self._ready = True

    async def sync(self) -> int:
        """Convert the rows the simulator changed since the last sync; return how many."""
        await self.create_schema()
        async with self._source.connect() as conn:
            cursor = await conn.scalar(select(SIM_STATE.c.value).where(SIM_STATE.c.key == "cursor"))
        if cursor is None:
            return 0
        async with self.engine.connect() as conn:
            last = await conn.scalar(select(RT_SYNC.c.value).where(RT_SYNC.c.key == SYNC_KEY))
        # Rows a later step rewrote after `cursor` was read come back with the next sync.
        tickets = await self._changed("problem", last, cursor)
        orders = await self._changed("order", last, cursor)
        async with self.engine.begin() as conn:
            await self._write(conn, tickets, orders)
            await conn.execute(_upsert(self.dialect, RT_SYNC), [{"key": SYNC_KEY, "value": cursor}])
        log.debug("simulate realistic sync cursor=%.3f tickets=%d orders=%d", cursor, len(tickets), len(orders))
        return len(tickets) + len(orders)

    async def _changed(self, process: str, last: float | None, cursor: float) -> list[Row]:
        """Read the epoch rows of a process updated after last, up to the simulator's cursor."""
        table = TABLES[process]
        stmt = select(table).where(table.c.updated_at <= cursor)
        if last is not None:
            stmt = stmt.where(table.c.updated_at > last)
        async with self._source.connect() as conn:
            return [dict(r) for r in (await conn.execute(stmt)).mappings()]

    async def _write(self, conn: AsyncConnection, tickets: list[Row], orders: list[Row]) -> None:
        """Upsert tickets, SLA targets and orders; add the history entries not stored yet."""
        ticket, sla, history = ticket_rows(tickets, self._to_db)
        for table, rows in ((TT_TICKET, ticket), (TT_SLA, sla), (PO_ORDER, order_rows(orders, self._to_db))):
            for chunk in _chunks(rows):
                await conn.execute(_upsert(self.dialect, table), chunk)
        # A row read twice (a sync that failed half-way, a row seen in two states) repeats entries.
        for chunk in _chunks(history):
            await conn.execute(_insert_new(self.dialect, TT_STATUS_HISTORY), chunk)

    async def count(self, table: Table) -> int:
        """Return the number of rows of one of the realistic tables."""
        async with self.engine.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(table)) or 0)

    async def close(self) -> None:
        """Dispose of the engines."""
        if self._source is not self.engine:
            await self._source.dispose()
        await self.engine.dispose()


class RealisticSimulator:
    """The simulator writing its epoch tables and, after every backfill and step, the realistic ones.

    The epoch tables go to `epoch_dsn` when given (the demo keeps them in its own SQLite file, so
    the database under test holds only the realistic schema), else next to the realistic ones.
    """

    def __init__(
        self,
        dsn: str,
        *,
        epoch_dsn: str | None = None,
        seed: int = 1,
        scale: float = 1.0,
        speed: float = 1.0,
        incidents: Sequence[Incident] = (),
        timezone: str = "Europe/Berlin",
        local_text: bool = False,
    ) -> None:
        epoch = epoch_dsn or dsn
        if make_url(epoch).get_backend_name() in ("mysql", "mariadb"):  # TEXT primary keys: MariaDB cannot index them
            raise ValueError(
                "the simulator's own tables cannot live in MariaDB/MySQL: give them another database "
                "(--epoch-dsn sqlite+aiosqlite:///simulator.db)"
            )
        # The writer first: it refuses a dialect it cannot write before anything is created.
        self.writer = RealisticWriter(dsn, source_dsn=epoch, timezone=timezone, local_text=local_text)
        self.simulator = Simulator(epoch, seed=seed, scale=scale, speed=speed, incidents=incidents, timezone=timezone)

    async def create_schema(self) -> None:
        """Create both schemas."""
        await self.simulator.create_schema()
        await self.writer.create_schema()

    async def cursor(self) -> float | None:
        """Return the simulator's cursor (None for an empty database)."""
        return await self.simulator.cursor()

    async def backfill(self, days: float, now: float, *, speed: float = 1.0) -> int:
        """Backfill the epoch tables, then convert them; return the epoch rows written."""
        rows = await self.simulator.backfill(days, now, speed=speed)
        await self.writer.sync()
        return rows

    async def step(self, now: float) -> int:
        """Advance the world to now and convert what changed; return the epoch rows written."""
        rows = await self.simulator.step(now)
        await self.writer.sync()
        return rows

    async def run(self, stop: asyncio.Event, tick: float = 1.0) -> None:
        """Call step(time.time()) every tick until stop is set."""
        log.info("simulate live schema=realistic dialect=%s tick=%g", self.writer.dialect, tick)
        while not stop.is_set():
            await self.step(time.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), tick)

    async def close(self) -> None:
        """Release both engines."""
        await self.simulator.close()
        await self.writer.close()


__all__ = ["RealisticSimulator", "RealisticWriter", "example_name", "ticket_history", "time_codec"]
