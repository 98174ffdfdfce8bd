"""Helpers for the simulator tests: run a simulator, read its SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from simulator import Simulator
from simulator.profiles import PROFILES

NOW = 1_780_000_000.0  # a Thursday, 20:26 UTC
TABLES = [p.table for p in PROFILES.values()]


def dsn(path: Path) -> str:
    """Return the aiosqlite DSN of a file."""
    return f"sqlite+aiosqlite:///{path}"


def backfill(path: Path, days: float, now: float = NOW, **options: Any) -> int:
    """Backfill a fresh file synchronously; return the rows written."""

    async def go() -> int:
        sim = Simulator(dsn(path), **options)
        try:
            return await sim.backfill(days, now)
        finally:
            await sim.close()

    return asyncio.run(go())


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Return every records row of a file, by table, sorted by id."""
    with sqlite3.connect(path) as conn:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY id").fetchall() for t in TABLES}


def query(path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one query on a file."""
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, params).fetchall()


def scalar(path: Path, sql: str, *params: Any) -> Any:
    """Return the first column of the first row of a query."""
    return query(path, sql, *params)[0][0]
