"""The record store's backends: each test of its semantics runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.servers import PostgresServer

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.integration)]


def postgres_store(server: PostgresServer) -> str:
    """The URL of a fresh database in the session's PostgreSQL (tests do not see each other's tables)."""
    return server.dsn(database=server.create_database(), driver="postgresql")


@pytest.fixture(params=BACKENDS)
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a test's record store lives: a SQLite file, or a PostgreSQL URL (a database of its own)."""
    if request.param == "sqlite":
        return str(tmp_path / "s.db")
    return postgres_store(request.getfixturevalue("postgres"))
