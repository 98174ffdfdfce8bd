"""The rollup SQL on real PostgreSQL and MariaDB: the same rollups as SQLite for the same rows."""

from pathlib import Path

import pytest

from tests.collector.test_rollups import BERLIN, compare_kinds, spring_rows  # noqa: F401  (a fixture)
from tests.collector.time_tables import Rows
from tests.servers import MariaDBServer, PostgresServer

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("server", "kind", "zone"), [
    ("postgres", "timestamptz", "UTC"),
    ("postgres", "timestamp", BERLIN),   # naive local time across the change to summer time
    ("mariadb", "timestamp", BERLIN),    # DATETIME(6) in local time
    ("mariadb", "epoch_s", "UTC"),       # DOUBLE epoch seconds
    ("postgres", "epoch_ms", "UTC"),     # BIGINT milliseconds, declared
])
async def test_server_rollups_equal_sqlite_epoch_seconds(request: pytest.FixtureRequest, spring_rows: Rows,  # noqa: F811
                                                         tmp_path: Path, server: str, kind: str, zone: str) -> None:
    db: PostgresServer | MariaDBServer = request.getfixturevalue(server)
    typed = db.create_database()
    await compare_kinds(spring_rows, db.dsn("fabwatch", database=typed),
                        f"sqlite+aiosqlite:///{tmp_path / 'epoch.db'}", tmp_path, kind, zone,
                        "epoch_ms" if kind == "epoch_ms" else None)
