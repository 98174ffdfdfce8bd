"""Real servers for the integration tests: PostgreSQL, MariaDB, Prometheus, Alertmanager and VictoriaMetrics
on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import itertools
import json
import os
import pty
import pwd
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

HOST = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
ENSURE_DEPS = "run `scripts/ensure-deps.sh` (or `make test`) to install it"

ResultPredicate = Callable[[list[dict[str, Any]]], bool]


PORTS = (20000, 32000)
"""Where `free_port` looks: below the kernel's ephemeral range (32768 and up), so that no client
connection of another test worker is given the port between the pick and the server's bind."""
_picked = itertools.count()


def free_port() -> int:
    """Return a loopback TCP port that is free right now, from this test worker's own share of `PORTS`
    (xdist workers never hand out the same port), never the same twice in a row."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    span = (PORTS[1] - PORTS[0]) // workers
    first = PORTS[0] + worker % workers * span
    for _ in range(span):
        port = first + next(_picked) % span
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, port))
            except OSError:  # in use, or still in TIME_WAIT: the next one
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # the share is all taken: any port
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port bound and not listening while the block runs: a connection to it is refused, and
    no server of another test (or of another suite on the machine) can take it meanwhile."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        yield int(sock.getsockname()[1])


def require_binary(name: str) -> str:
    """Return the path of an executable on PATH, failing the test when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` not found on PATH; {ENSURE_DEPS}", pytrace=False)
    return path


def postgres_bin_dir() -> Path:
    """Return the newest PostgreSQL server bin directory, failing the test when none exists."""
    on_path = shutil.which("initdb")
    if on_path is not None:
        return Path(on_path).resolve().parent
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not found:
        pytest.fail(f"PostgreSQL `initdb` not found; {ENSURE_DEPS}", pytrace=False)
    newest = max(found, key=lambda p: int(Path(p).parent.parent.name.split(".")[0]))
    return Path(newest).parent


def log_tail(path: Path, lines: int = 40) -> str:
    """Return the last lines of a log file, for failure messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop a server: send `sig`, wait, then kill."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT)


def wait_until(
    ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, log: Path
) -> None:
    """Poll `ready` until it is true; fail when the process dies or the time is up."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log_tail(log)}", pytrace=False)
        if ready():
            return
        time.sleep(0.1)
    stop_process(proc)
    pytest.fail(f"{what} not ready after {START_TIMEOUT}s:\n{log_tail(log)}", pytrace=False)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET a URL; return (status, body), with status 0 when the connection fails."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


def http_json(url: str, data: Any = None, method: str | None = None) -> Any:
    """Send a request with an optional JSON body and return the decoded JSON answer."""
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10.0) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def poll(
    fetch: Callable[[], list[dict[str, Any]]],
    predicate: ResultPredicate,
    timeout: float,
    interval: float,
    what: str,
) -> list[dict[str, Any]]:
    """Call `fetch` until `predicate` holds on its result; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    result = fetch()
    while not predicate(result):
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}; last result: {result}")
        time.sleep(interval)
        result = fetch()
    return result


async def poll_async(
    fetch: Callable[[], list[dict[str, Any]]],
    predicate: ResultPredicate,
    timeout: float,
    interval: float,
    what: str,
) -> list[dict[str, Any]]:
    """Like `poll`, without blocking the event loop (servers in this loop keep answering)."""
    deadline = time.monotonic() + timeout
    result = await asyncio.to_thread(fetch)
    while not predicate(result):
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}; last result: {result}")
        await asyncio.sleep(interval)
        result = await asyncio.to_thread(fetch)
    return result


def write_files(directory: Path, files: Mapping[str, str] | None) -> None:
    """Write extra files (rule files, templates...) next to a server's config."""
    for name, text in (files or {}).items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


# --------------------------------------------------------------------------- PostgreSQL

PG_PASSWORDS = {
    "postgres": "postgres-pw",
    "fabwatch": "fabwatch-pw",
    "fabwatch_ro": "fabwatch-ro-pw",
}


class PostgresServer:
    """A running PostgreSQL: database `fabwatch`, owner role `fabwatch`, reader `fabwatch_ro`."""

    owner = "fabwatch"
    readonly = "fabwatch_ro"
    database = "fabwatch"

    def __init__(self, bin_dir: Path, base: Path, port: int) -> None:
        self.bin_dir = bin_dir
        self.base = base
        self.port = port
        self.host = HOST
        self.socket_dir = base / "sock"
        self._databases = 0

    def dsn(
        self,
        user: str = "fabwatch",
        *,
        database: str | None = None,
        driver: str = "postgresql+asyncpg",
        password: str | None = None,
    ) -> str:
        """Return a SQLAlchemy URL for `user` (owner by default) over TCP on loopback."""
        secret = PG_PASSWORDS.get(user, "") if password is None else password
        quoted = urllib.parse.quote(secret, safe="")
        return f"{driver}://{user}:{quoted}@{HOST}:{self.port}/{database or self.database}"

    def psql(self, sql: str, *, user: str = "postgres", database: str | None = None) -> str:
        """Run SQL with psql over the unix socket (trusted); return its unaligned output."""
        cmd = [
            str(self.bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-h", str(self.socket_dir), "-p", str(self.port),
            "-U", user, "-d", database or self.database,
        ]  # fmt: skip
        proc = subprocess.run(cmd, input=sql, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"psql failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def create_database(self, name: str | None = None) -> str:
        """Create a database owned by `fabwatch`, readable by `fabwatch_ro`; return its name."""
        if name is None:
            self._databases += 1
            name = f"fabwatch_{self._databases}"
        self.psql(f'CREATE DATABASE "{name}" OWNER {self.owner}', database="postgres")
        self.psql(readonly_grants_sql(name), database=name)
        return name


def readonly_grants_sql(database: str) -> str:
    """Return SQL giving `fabwatch_ro` SELECT on present and future tables of `fabwatch`."""
    return f"""
        REVOKE CREATE ON SCHEMA public FROM PUBLIC;
        GRANT CONNECT ON DATABASE "{database}" TO fabwatch_ro;
        GRANT USAGE ON SCHEMA public TO fabwatch_ro;
        GRANT SELECT ON ALL TABLES IN SCHEMA public TO fabwatch_ro;
        ALTER DEFAULT PRIVILEGES FOR ROLE fabwatch IN SCHEMA public
            GRANT SELECT ON TABLES TO fabwatch_ro;
    """


def pg_process_user() -> dict[str, Any]:
    """Return Popen keywords that drop root to `postgres` (the server refuses to run as root)."""
    if os.geteuid() != 0:
        return {}
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail(f"running as root but there is no `postgres` user; {ENSURE_DEPS}")
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def make_pg_base() -> Path:
    """Create the cluster's directory, reachable by the server's user (pytest's is root-only)."""
    base = Path(tempfile.mkdtemp(prefix="fabwatch-pg-"))
    (base / "sock").mkdir()
    (base / "pwfile").write_text(PG_PASSWORDS["postgres"] + "\n")
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        for path in (base, base / "sock", base / "pwfile"):
            os.chown(path, pw.pw_uid, pw.pw_gid)
    return base


def pg_initdb(bin_dir: Path, base: Path, user_kw: Mapping[str, Any]) -> None:
    """Create the cluster: trust on the unix socket, passwords (scram) over TCP."""
    cmd = [
        str(bin_dir / "initdb"), "-D", str(base / "data"), "-U", "postgres",
        "--pwfile", str(base / "pwfile"), "--auth-local=trust", "--auth-host=scram-sha-256",
        "-E", "UTF8", "--no-locale", "--no-sync",
    ]  # fmt: skip
    env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C"}
    proc = subprocess.run(cmd, cwd=base, env=env, capture_output=True, text=True, **user_kw)
    if proc.returncode != 0:
        pytest.fail(f"initdb failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def pg_setup_roles(server: PostgresServer) -> None:
    """Create the owner and read-only roles and the `fabwatch` database."""
    pw = PG_PASSWORDS
    server.psql(
        f"CREATE ROLE fabwatch LOGIN PASSWORD '{pw['fabwatch']}';"
        f"CREATE ROLE fabwatch_ro LOGIN PASSWORD '{pw['fabwatch_ro']}';",
        database="postgres",
    )
    server.create_database("fabwatch")


@contextlib.contextmanager
def run_postgres() -> Iterator[PostgresServer]:
    """Start a throwaway PostgreSQL on a free loopback port; stop it and remove it after."""
    bin_dir = postgres_bin_dir()
    user_kw = pg_process_user()
    base = make_pg_base()
    log = base / "postgres.log"
    try:
        pg_initdb(bin_dir, base, user_kw)
        server = PostgresServer(bin_dir, base, free_port())
        cmd = [
            str(bin_dir / "postgres"), "-D", str(base / "data"), "-p", str(server.port),
            "-c", f"listen_addresses={HOST}", "-c", f"unix_socket_directories={server.socket_dir}",
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=200",
        ]  # fmt: skip
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, cwd=base, stdout=out, stderr=subprocess.STDOUT, **user_kw)
        try:
            ready = [str(bin_dir / "pg_isready"), "-q", "-h", HOST, "-p", str(server.port)]
            wait_until(lambda: subprocess.run(ready).returncode == 0, proc, "postgres", log)
            pg_setup_roles(server)
            yield server
        finally:
            stop_process(proc, signal.SIGINT)  # SIGINT = fast shutdown
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- MariaDB

MARIADB_PASSWORDS = {
    "fabwatch": "fabwatch-pw",
    "fabwatch_ro": "fabwatch-ro-pw",
}
ZONEINFO = Path("/usr/share/zoneinfo")


def mariadb_binary(name: str) -> str:
    """Return the path of a MariaDB program (the server lives in /usr/sbin, off a user's PATH)."""
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(f"MariaDB `{name}` not found; {ENSURE_DEPS}", pytrace=False)


class MariaDBServer:
    """A MariaDB on loopback: database `fabwatch`, user `fabwatch` (all privileges on the
    `fabwatch*` databases) and reader `fabwatch_ro` (SELECT only). `root` logs in on the socket
    alone, without a password. `stop` and `start` keep the data and the port."""

    owner = "fabwatch"
    readonly = "fabwatch_ro"
    database = "fabwatch"

    def __init__(self, base: Path, port: int) -> None:
        self.base = base
        self.port = port
        self.host = HOST
        self.socket = base / "mariadb.sock"
        self.log = base / "mariadb.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._databases = 0

    def dsn(
        self,
        user: str = "fabwatch",
        *,
        database: str | None = None,
        driver: str = "mariadb+aiomysql",
        password: str | None = None,
    ) -> str:
        """Return a SQLAlchemy URL for `user` (owner by default) over TCP on loopback."""
        secret = MARIADB_PASSWORDS.get(user, "") if password is None else password
        quoted = urllib.parse.quote(secret, safe="")
        return f"{driver}://{user}:{quoted}@{HOST}:{self.port}/{database or self.database}"

    def sql(self, sql: str, *, database: str | None = None) -> str:
        """Run SQL as root over the socket; return the tab-separated rows without headers."""
        cmd = [mariadb_binary("mariadb"), "--no-defaults", f"--socket={self.socket}", "--user=root",
               "--batch", "--skip-column-names", database or self.database]
        proc = subprocess.run(cmd, input=sql, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"mariadb failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def create_database(self, name: str | None = None) -> str:
        """Create a database the owner may change and the reader may read; return its name."""
        if name is None:
            self._databases += 1
            name = f"fabwatch_{self._databases}"
        self.sql(f"CREATE DATABASE `{name}`", database="mysql")
        return name

    def start(self) -> None:
        """Start the server on its data directory and port; wait until it answers."""
        cmd = [
            mariadb_binary("mariadbd"), "--no-defaults", f"--datadir={self.base / 'data'}",
            f"--port={self.port}", f"--bind-address={HOST}", f"--socket={self.socket}",
            f"--pid-file={self.base / 'mariadb.pid'}", f"--tmpdir={self.base}", "--skip-name-resolve",
            "--innodb-buffer-pool-size=64M", "--innodb-flush-log-at-trx-commit=0",
            "--innodb-flush-method=nosync", "--skip-innodb-doublewrite",  # throwaway data: no fsync
            "--character-set-server=utf8mb4", "--max-connections=200", *_mariadb_user(),
        ]  # fmt: skip
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=self.base, stdout=out, stderr=subprocess.STDOUT)
        ping = [mariadb_binary("mariadb-admin"), "--no-defaults", f"--socket={self.socket}",
                "--user=root", "--silent", "ping"]
        proc = self.proc
        wait_until(lambda: subprocess.run(ping, capture_output=True).returncode == 0, proc, "mariadbd",
                   self.log)

    def stop(self) -> None:
        """Stop the server (a clean shutdown), keeping its data for `start`."""
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


def _mariadb_user() -> list[str]:
    """mariadbd refuses to run as root unless told to, which CI (root on a clean machine) is."""
    return ["--user=root"] if os.geteuid() == 0 else []


def mariadb_setup_sql() -> str:
    """Return the SQL creating the owner, the reader and the `fabwatch` database."""
    pw = MARIADB_PASSWORDS
    return f"""
        CREATE USER 'fabwatch'@'{HOST}' IDENTIFIED BY '{pw['fabwatch']}';
        CREATE USER 'fabwatch_ro'@'{HOST}' IDENTIFIED BY '{pw['fabwatch_ro']}';
        GRANT ALL PRIVILEGES ON `fabwatch%`.* TO 'fabwatch'@'{HOST}';
        GRANT SELECT ON `fabwatch%`.* TO 'fabwatch_ro'@'{HOST}';
        CREATE DATABASE fabwatch;
    """


def load_time_zones(server: MariaDBServer) -> None:
    """Load the system's zones into the server (CONVERT_TZ, named `time_zone`s): about 2 s."""
    tzinfo = subprocess.run([mariadb_binary("mariadb-tzinfo-to-sql"), str(ZONEINFO)],
                            capture_output=True, text=True, timeout=60)
    if tzinfo.returncode != 0:
        pytest.fail(f"mariadb-tzinfo-to-sql failed: {tzinfo.stderr.strip()}")
    server.sql(tzinfo.stdout, database="mysql")


@contextlib.contextmanager
def run_mariadb(*, time_zones: bool = True) -> Iterator[MariaDBServer]:
    """Start a throwaway MariaDB on a free loopback port; stop it and remove it after."""
    base = Path(tempfile.mkdtemp(prefix="fabwatch-mariadb-"))
    try:
        install = [
            mariadb_binary("mariadb-install-db"), "--no-defaults", f"--datadir={base / 'data'}",
            "--auth-root-authentication-method=normal", "--skip-test-db", *_mariadb_user(),
            # its own temporary directory: a bootstrap removes every `#sql*` file of its tmpdir at
            # start, so two test workers bootstrapping at once in /tmp delete each other's tables
            f"--tmpdir={base}",
        ]  # fmt: skip
        proc = subprocess.run(install, cwd=base, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            pytest.fail(f"mariadb-install-db failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        server = MariaDBServer(base, free_port())
        server.start()
        try:
            server.sql(mariadb_setup_sql(), database="mysql")
            if time_zones:
                load_time_zones(server)
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- Prometheus

DEFAULT_PROMETHEUS_CONFIG = """\
global:
  scrape_interval: 1s
  evaluation_interval: 1s
"""


class HttpServer:
    """A server process with an HTTP API on 127.0.0.1:port."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, workdir: Path) -> None:
        self.proc = proc
        self.port = port
        self.workdir = workdir
        self.address = f"{HOST}:{port}"
        self.url = f"http://{self.address}"

    @property
    def log(self) -> str:
        """Return the server's log so far."""
        return (self.workdir / "server.log").read_text(errors="replace")

    def get_json(self, path: str, **params: str) -> Any:
        """GET `path` (with query parameters) and return the decoded JSON."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return http_json(f"{self.url}{path}{query}")

    def reload(self) -> None:
        """Ask the server to reload its configuration (POST /-/reload)."""
        http_json(f"{self.url}/-/reload", data={}, method="POST")

    def stop(self) -> None:
        """Stop the server: terminate, wait, kill."""
        stop_process(self.proc)


class PrometheusServer(HttpServer):
    """A running Prometheus; `.query` and `.wait_for` talk to its HTTP API."""

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path> and return its `data`, failing on an error answer."""
        body = self.get_json(f"/api/v1/{path}", **params)
        if body.get("status") != "success":
            pytest.fail(f"Prometheus /api/v1/{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Evaluate an instant query; return the result list (`metric`, `value` dicts)."""
        params = {"query": expr} if at is None else {"query": expr, "time": str(at)}
        data = self.api("query", **params)
        if data["resultType"] == "vector":
            return list(data["result"])
        return [{"metric": {}, "value": data["result"]}]  # scalar or string

    def wait_for(
        self,
        expr: str,
        predicate: ResultPredicate = bool,
        timeout: float = 30.0,
        interval: float = 0.25,
    ) -> list[dict[str, Any]]:
        """Poll `expr` until `predicate(result)` holds (default: non-empty); fail on timeout."""
        return poll(lambda: self.query(expr), predicate, timeout, interval, f"`{expr}`")

    async def query_async(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """`query` without blocking the event loop."""
        return await asyncio.to_thread(self.query, expr, at)

    async def wait_for_async(
        self,
        expr: str,
        predicate: ResultPredicate = bool,
        timeout: float = 30.0,
        interval: float = 0.25,
    ) -> list[dict[str, Any]]:
        """`wait_for` without blocking the event loop (for exporters served in the same loop)."""
        return await poll_async(lambda: self.query(expr), predicate, timeout, interval, f"`{expr}`")


class AlertmanagerServer(HttpServer):
    """A running Alertmanager; `.alerts` and `.wait_for_alerts` use its v2 API."""

    def alerts(self, **filters: str) -> list[dict[str, Any]]:
        """Return the alerts Alertmanager holds (GET /api/v2/alerts)."""
        return list(self.get_json("/api/v2/alerts", **filters))

    def post_alerts(self, alerts: Sequence[Mapping[str, Any]]) -> None:
        """Push alerts as Prometheus would (POST /api/v2/alerts)."""
        http_json(f"{self.url}/api/v2/alerts", data=list(alerts), method="POST")

    def wait_for_alerts(
        self,
        predicate: ResultPredicate = bool,
        timeout: float = 30.0,
        interval: float = 0.25,
    ) -> list[dict[str, Any]]:
        """Poll the alerts until `predicate(alerts)` holds (default: non-empty); fail on timeout."""
        return poll(self.alerts, predicate, timeout, interval, "alertmanager alerts")

    async def wait_for_alerts_async(
        self,
        predicate: ResultPredicate = bool,
        timeout: float = 30.0,
        interval: float = 0.25,
    ) -> list[dict[str, Any]]:
        """`wait_for_alerts` without blocking the event loop."""
        return await poll_async(self.alerts, predicate, timeout, interval, "alertmanager alerts")


DEFAULT_ALERTMANAGER_CONFIG = """\
route:
  receiver: blackhole
receivers:
  - name: blackhole
"""


def start_http_server(
    cmd: list[str], port: int, workdir: Path, what: str
) -> subprocess.Popen[bytes]:
    """Start a server with its log in `workdir`, wait for GET /-/ready to answer 200."""
    log = workdir / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
    ready = f"http://{HOST}:{port}/-/ready"
    wait_until(lambda: http_get(ready, timeout=1.0)[0] == 200, proc, what, log)
    return proc


def start_prometheus(
    workdir: Path, config: str, files: Mapping[str, str] | None, args: Sequence[str]
) -> PrometheusServer:
    """Write the config (and rule files) in `workdir`, start Prometheus, wait until ready."""
    binary = require_binary("prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    write_files(workdir, files)
    (workdir / "prometheus.yml").write_text(config)

    def command(port: int) -> list[str]:
        return [
            binary, f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address={HOST}:{port}",
            "--web.enable-lifecycle", "--log.level=warn", *args,
        ]  # fmt: skip

    proc, port = start_on_free_port(command, workdir, "prometheus")
    return PrometheusServer(proc, port, workdir)


def start_alertmanager(
    workdir: Path, config: str, files: Mapping[str, str] | None, args: Sequence[str]
) -> AlertmanagerServer:
    """Write the config in `workdir`, start Alertmanager without clustering, wait until ready."""
    binary = require_binary("prometheus-alertmanager")
    workdir.mkdir(parents=True, exist_ok=True)
    write_files(workdir, files)
    (workdir / "alertmanager.yml").write_text(config)

    def command(port: int) -> list[str]:
        return [
            binary, f"--config.file={workdir / 'alertmanager.yml'}",
            f"--storage.path={workdir / 'data'}", f"--web.listen-address={HOST}:{port}",
            "--cluster.listen-address=", "--log.level=warn", *args,
        ]  # fmt: skip

    proc, port = start_on_free_port(command, workdir, "alertmanager")
    return AlertmanagerServer(proc, port, workdir)


BIND_ATTEMPTS = 3


def start_on_free_port(
    command: Callable[[int], list[str]], workdir: Path, what: str
) -> tuple[subprocess.Popen[bytes], int]:
    """Start `command(port)` on a free port with `start_http_server`. A port taken between `free_port`
    and the server's bind (by a process outside this test run) is replaced by another, up to
    `BIND_ATTEMPTS` times."""
    for attempt in range(1, BIND_ATTEMPTS + 1):
        port = free_port()
        try:
            return start_http_server(command(port), port, workdir, what), port
        except pytest.fail.Exception:
            if attempt < BIND_ATTEMPTS and "address already in use" in log_tail(workdir / "server.log"):
                continue
            raise
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- VictoriaMetrics

VICTORIAMETRICS_RETENTION = "100y"
"""Keep every sample a test writes, however old its timestamps (a backfilled history included)."""


class VictoriaMetricsServer(PrometheusServer):
    """A running single-node VictoriaMetrics: the Prometheus query API (`.query`, `.wait_for`) at the
    same paths, remote write at `.write_url`, and its own metrics at `/metrics`."""

    @property
    def write_url(self) -> str:
        """Return the URL Prometheus' `remote_write` posts to."""
        return f"{self.url}/api/v1/write"

    def flush(self) -> None:
        """Make every sample received so far searchable and counted in its data size."""
        status, body = http_get(f"{self.url}/internal/force_flush")
        if status != 200:
            pytest.fail(f"VictoriaMetrics force_flush answered {status}: {body!r}")

    def import_prometheus_blocks(self, directory: Path) -> str:
        """Copy the samples of a Prometheus TSDB directory (its blocks, or a snapshot) into this
        server with `vmctl prometheus`, as an operator migrates a history; return vmctl's output."""
        cmd = [require_binary("vmctl"), "prometheus", "-s", "--vm-disable-progress-bar",
               f"--prom-snapshot={directory}", f"--vm-addr={self.url}"]
        status, output = run_in_terminal(cmd, timeout=120.0)
        if status != 0 or "Import finished!" not in output:
            pytest.fail(f"vmctl prometheus exited with {status}:\n{output[-3000:]}", pytrace=False)
        self.flush()
        return output

    def own_metrics(self) -> dict[str, float]:
        """Return VictoriaMetrics' own metrics (`name{labels}` -> value), from its /metrics page."""
        status, body = http_get(f"{self.url}/metrics")
        if status != 200:
            pytest.fail(f"VictoriaMetrics /metrics answered {status}")
        metrics: dict[str, float] = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                metrics[name] = float(value)
        return metrics


def run_in_terminal(cmd: Sequence[str], timeout: float) -> tuple[int, str]:
    """Run a program on a pseudo-terminal (vmctl stops with "inappropriate ioctl for device" without
    one); return its exit status and output. Killed after `timeout` seconds."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave)
    finally:
        os.close(slave)
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the program closed the terminal (it exited)
                    break
                if not chunk:
                    break
                output += chunk
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
        return proc.wait(timeout=STOP_TIMEOUT), output.decode(errors="replace")
    finally:
        os.close(master)


def start_victoriametrics(workdir: Path, args: Sequence[str]) -> VictoriaMetricsServer:
    """Start single-node VictoriaMetrics with its data in `workdir`, wait until ready.

    Queries see a sample as soon as it is flushed (no 30 s `latencyOffset`, no response cache), so
    that a test polling for recent data reads what was written, not what a cached answer held. A
    port taken between `free_port` and the server's bind (by a process outside this test run) is
    replaced by another, up to `BIND_ATTEMPTS` times."""
    binary = require_binary("victoria-metrics")
    workdir.mkdir(parents=True, exist_ok=True)

    def command(port: int) -> list[str]:
        return [
            binary, f"-storageDataPath={workdir / 'data'}", f"-httpListenAddr={HOST}:{port}",
            f"-retentionPeriod={VICTORIAMETRICS_RETENTION}", "-search.latencyOffset=0s",
            "-search.disableCache", "-loggerLevel=WARN", *args,
        ]  # fmt: skip

    proc, port = start_on_free_port(command, workdir, "victoria-metrics")
    return VictoriaMetricsServer(proc, port, workdir)
