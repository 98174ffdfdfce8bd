"""The service over a MariaDB source that goes away, locks its table, freezes or comes back: the
source is down with the right reason, metrics keep serving, and it is up again without a restart."""

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from sqlalchemy import text

from app.service import HEALTH, SCHEDULER, build_app
from collector.db import BACKSTOP_SECONDS
from tests.app.test_service import wait_ready
from tests.collector.test_engine import example
from tests.collector.test_engine_mariadb import MARIADB_TABLES, copy_records, owner_engine, simulate
from tests.servers import MariaDBServer, run_mariadb

pytestmark = pytest.mark.integration


@pytest.fixture
def own_mariadb() -> Iterator[MariaDBServer]:
    """A MariaDB of this test alone: it is stopped and started again."""
    with run_mariadb(time_zones=False) as server:
        with owner_engine(server, server.database) as engine, engine.begin() as conn:
            MARIADB_TABLES.create_all(conn)
        yield server


async def sample(client: object, app: web.Application) -> str:
    """Run the source's sample now; return the exposition the next scrape gets."""
    await app[SCHEDULER].run_once("operator")
    response = await client.get("/metrics")  # type: ignore[attr-defined]
    assert response.status == 200
    return str(await response.text())


async def test_a_stopped_locked_or_frozen_server_is_down_by_reason_and_recovers(
        aiohttp_client: object, own_mariadb: MariaDBServer, tmp_path: Path) -> None:
    sim = await simulate(tmp_path / "operator.db", days=1)
    await sim.close()
    copy_records(tmp_path / "operator.db", own_mariadb, own_mariadb.database)
    inventory = example(own_mariadb.dsn("fabwatch_ro"))
    source = inventory.sources["operator"].model_copy(update={"timeout": 1.0, "interval": 3600.0})
    inventory = inventory.model_copy(update={"sources": {"operator": source}})
    # no first-start backfill: its reads would take the locks this test takes between its samples
    app = build_app(inventory, state_path=tmp_path / "state.db", backfill=False)
    client = await aiohttp_client(app)  # type: ignore[operator]
    assert (await wait_ready(client))["sources"] == ["operator"]  # the first, scheduled sample

    own_mariadb.stop()
    metrics = await sample(client, app)
    assert 'fab_source_up{source="operator"} 0.0' in metrics
    assert 'fab_source_errors_total{reason="connection",source="operator"} 1.0' in metrics
    assert "fabwatch-ro-pw" not in metrics
    assert app[HEALTH].last_reason("operator") == "connection"

    own_mariadb.start()  # the pool reconnects: no restart of fabwatch
    assert 'fab_source_up{source="operator"} 1.0' in await sample(client, app)

    with owner_engine(own_mariadb, own_mariadb.database) as engine, engine.connect() as conn:
        conn.execute(text("LOCK TABLES trouble_ticket WRITE"))
        metrics = await sample(client, app)
        conn.execute(text("UNLOCK TABLES"))
    assert 'fab_source_up{source="operator"} 0.0' in metrics
    assert 'fab_source_errors_total{reason="timeout",source="operator"} 1.0' in metrics
    assert 'fab_source_up{source="operator"} 1.0' in await sample(client, app)

    assert own_mariadb.proc is not None
    own_mariadb.proc.send_signal(signal.SIGSTOP)  # frozen: connections open, nothing answers
    try:
        started = time.monotonic()
        metrics = await sample(client, app)
        assert time.monotonic() - started < 1.0 + BACKSTOP_SECONDS + 1.0
    finally:
        own_mariadb.proc.send_signal(signal.SIGCONT)
    assert 'fab_source_errors_total{reason="timeout",source="operator"} 2.0' in metrics
    assert 'fab_source_up{source="operator"} 1.0' in await sample(client, app)
