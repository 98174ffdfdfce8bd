"""Shared fixtures: real PostgreSQL, MariaDB, Prometheus, Alertmanager, VictoriaMetrics, promtool and amtool."""

from __future__ import annotations

import faulthandler
import os
import signal
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

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


HARD_TIMEOUT_MARGIN = 120.0
"""Seconds past pytest-timeout's limit after which a test's process is ended (see `pytest_runtest_protocol`)."""

_watchdog_stream: list[IO[str]] = []
_watchdog_deadline: list[float] = []


def pytest_configure(config: pytest.Config) -> None:
    """Unblock every signal, and keep a copy of the real stderr before pytest captures it: the watchdog
    writes its stacks there.

    A signal mask is inherited across exec: a CI runner that starts the run with SIGALRM blocked would
    silence pytest-timeout's signal (a hung test then runs until CI's limit), and one with SIGTERM or
    SIGHUP blocked would hand the servers and fabwatch processes the tests start a mask they never
    have in production."""
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    if not _watchdog_stream:
        _watchdog_stream.append(os.fdopen(os.dup(2), "w"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    """End the process, with every thread's stack on stderr, if a test outlives its timeout by two minutes.

    pytest-timeout's signal method raises in the test; a teardown that then hangs (an event loop whose
    task ignores cancellation, a server that never stops) has no timer left, and the whole run waits for
    CI's limit with nothing printed. faulthandler's watchdog is a C thread: it fires even then, and xdist
    reports the test as the one that crashed its worker."""
    limit = float(item.config.getini("timeout") or 0)
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        limit = float(marker.args[0])
    _watchdog_deadline.clear()
    if limit > 0 and _watchdog_stream:
        _watchdog_deadline.append(time.monotonic() + limit + HARD_TIMEOUT_MARGIN)
        _arm_watchdog()
    try:
        yield
    finally:
        _watchdog_deadline.clear()
        faulthandler.cancel_dump_traceback_later()


@pytest.hookimpl(trylast=True)
def pytest_exception_interact() -> None:
    """Arm the watchdog again: pytest's own faulthandler plugin cancels every timer when a test fails,
    and a teardown after a timeout is where the hang this guards against happens."""
    _arm_watchdog()


def _arm_watchdog() -> None:
    if _watchdog_deadline and _watchdog_stream:
        remaining = max(1.0, _watchdog_deadline[0] - time.monotonic())
        faulthandler.dump_traceback_later(remaining, exit=True, file=_watchdog_stream[0])


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
