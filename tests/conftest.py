"""Shared fixtures: real PostgreSQL, MariaDB, Prometheus, Alertmanager, VictoriaMetrics, promtool and amtool."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from tests.servers import (
    DEFAULT_ALERTMANAGER_CONFIG,
    DEFAULT_PROMETHEUS_CONFIG,
    AlertmanagerServer,
    HttpServer,
    MariaDBServer,
    PostgresServer,
    PrometheusServer,
    VictoriaMetricsServer,
    require_binary,
    run_mariadb,
    run_postgres,
    start_alertmanager,
    start_prometheus,
    start_victoriametrics,
)

PrometheusFactory = Callable[..., PrometheusServer]
AlertmanagerFactory = Callable[..., AlertmanagerServer]
VictoriaMetricsFactory = Callable[..., VictoriaMetricsServer]

SERVER_FIXTURES = frozenset({"postgres", "mariadb", "promtool", "amtool", "prometheus_factory", "alertmanager_factory",
                             "victoriametrics_factory"})
"""The fixtures that start a real server or run a Prometheus tool: a test using one is `integration`."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a real server `integration`, marker or not, so that the quick tier
    (`make check`: `-m "not integration and not slow"`) never starts one."""
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """Start one PostgreSQL for the whole session (database `fabwatch`, roles owner + read-only)."""
    with run_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDBServer]:
    """Start one MariaDB for the whole session (database `fabwatch`, users owner + read-only)."""
    with run_mariadb() as server:
        yield server


@pytest.fixture(scope="session")
def promtool() -> str:
    """Return the path of promtool."""
    return require_binary("promtool")


@pytest.fixture(scope="session")
def amtool() -> str:
    """Return the path of amtool."""
    return require_binary("amtool")


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[PrometheusFactory]:
    """Start Prometheus servers on demand; each is stopped when the test ends."""
    started: list[HttpServer] = []

    def start(
        config: str = DEFAULT_PROMETHEUS_CONFIG,
        *,
        files: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> PrometheusServer:
        server = start_prometheus(tmp_path / f"prometheus-{len(started)}", config, files, args)
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def alertmanager_factory(tmp_path: Path) -> Iterator[AlertmanagerFactory]:
    """Start Alertmanager servers on demand; each is stopped when the test ends."""
    started: list[HttpServer] = []

    def start(
        config: str = DEFAULT_ALERTMANAGER_CONFIG,
        *,
        files: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> AlertmanagerServer:
        server = start_alertmanager(tmp_path / f"alertmanager-{len(started)}", config, files, args)
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def victoriametrics_factory(tmp_path: Path) -> Iterator[VictoriaMetricsFactory]:
    """Start single-node VictoriaMetrics servers on demand, each with its data in the test's
    temporary directory; each is stopped when the test ends."""
    started: list[HttpServer] = []

    def start(*, args: Sequence[str] = ()) -> VictoriaMetricsServer:
        server = start_victoriametrics(tmp_path / f"victoriametrics-{len(started)}", args)
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()
