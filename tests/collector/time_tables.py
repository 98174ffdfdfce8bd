"""Copy the simulator's records into tables whose time columns are of another kind, for the time tests.

The simulator writes epoch seconds; operators keep timestamptz, naive local timestamps, ISO text,
milliseconds. The same rows (times rounded to the millisecond, which every kind holds exactly) are
written both as epoch seconds and as the kind under test, so the KPIs read from each must agree.
"""

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import BigInteger, Column, DateTime, Double, Index, MetaData, Table, Text, text
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.types import TypeEngine

from simulator import Simulator
from simulator.store import TABLES

TIME_COLUMNS = ("created_at", "completed_at", "due_at")
Rows = dict[str, list[dict[str, Any]]]


async def simulate(path: Path, now: float, days: int = 6, seed: int = 11) -> None:
    sim = Simulator(f"sqlite+aiosqlite:///{path}", seed=seed, scale=0.5)
    await sim.create_schema()
    await sim.backfill(days, now)
    await sim.close()


def read_rows(path: Path, keep: Callable[[Mapping[str, Any]], bool] = lambda _: True) -> Rows:
    """Every records table's rows, times rounded to the millisecond."""
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    out: Rows = {}
    for table in TABLES.values():
        rows = []
        for row in db.execute(f'SELECT * FROM "{table.name}"'):
            values = dict(row)
            for name in TIME_COLUMNS:
                if values[name] is not None:
                    values[name] = round(values[name] * 1000) / 1000
            if keep(values):
                rows.append(values)
        out[table.name] = rows
    db.close()
    return out


def column_type(kind: str, dialect: str) -> TypeEngine[Any]:
    if kind == "epoch_s":
        return Double()
    if kind == "epoch_ms":
        return BigInteger()
    if kind == "iso_text":
        return Text()
    if dialect == "mariadb":
        return mysql.TIMESTAMP(fsp=6) if kind == "timestamptz" else mysql.DATETIME(fsp=6)
    return DateTime(timezone=kind == "timestamptz")


def convert(value: float | None, kind: str, dialect: str, zone: str) -> Any:
    """An epoch time as the kind stores it."""
    if value is None:
        return None
    moment = datetime.fromtimestamp(value, UTC)
    if kind == "epoch_s":
        return value
    if kind == "epoch_ms":
        return round(value * 1000)
    if kind == "iso_text":  # naive text is a wall time in the zone; "Z" text is UTC
        if zone == "UTC":
            return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
        wall = moment.astimezone(ZoneInfo(zone))
        return wall.strftime("%Y-%m-%d %H:%M:%S.") + f"{wall.microsecond // 1000:03d}"
    if kind == "timestamptz":
        return moment.replace(tzinfo=None) if dialect == "mariadb" else moment
    return moment.astimezone(ZoneInfo(zone)).replace(tzinfo=None)


def typed_tables(kind: str, dialect: str) -> MetaData:
    """The simulator's records tables with their time columns of `kind`, indexed like the simulator's."""
    metadata = MetaData()
    for base in TABLES.values():
        columns = []
        for col in base.columns:
            kind_here = kind if col.name in TIME_COLUMNS else None
            typ = column_type(kind_here, dialect) if kind_here else col.type
            if dialect == "mariadb" and isinstance(typ, Text) and (col.primary_key or col.name == "status"):
                typ = mysql.VARCHAR(64)  # MariaDB indexes no TEXT without a prefix length
            columns.append(Column(col.name, typ, primary_key=col.primary_key, nullable=col.nullable))
        table = Table(base.name, metadata, *columns)
        for name in ("created_at", "completed_at", "status"):
            Index(f"ix_{base.name}_{name}", table.c[name])
    return metadata


async def write(url: str, rows: Rows, kind: str, zone: str) -> None:
    """Create the typed tables at `url` and write the rows into them."""
    dialect = url.split("+", 1)[0].split(":", 1)[0]
    metadata = typed_tables(kind, dialect)
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            if dialect == "mariadb":
                await conn.execute(text("SET time_zone = '+00:00'"))
            await conn.run_sync(metadata.create_all)
            for name, table_rows in rows.items():
                converted = [{k: convert(v, kind, dialect, zone) if k in TIME_COLUMNS else v for k, v in r.items()}
                             for r in table_rows]
                for start in range(0, len(converted), 500):
                    await conn.execute(metadata.tables[name].insert(), converted[start:start + 500])
    finally:
        await engine.dispose()


def flatten(families: Sequence[Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a sample's families by (name, labels), histograms by bucket."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in families:
        for labels, value in family.samples:
            out[(family.name, labels)] = value
        for labels, hist in family.histograms:
            for bound, count in hist.buckets:
                out[(f"{family.name}_bucket", (*labels, ("le", str(bound))))] = count
            out[(f"{family.name}_sum", labels)] = hist.sum
            out[(f"{family.name}_count", labels)] = hist.count
    return out
