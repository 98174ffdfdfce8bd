"""The fabwatch command line: check, serve and demo, flags from the environment."""

import argparse
import contextlib
import logging
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from app.cli import (
    build_parser,
    callbacks_reachable,
    listening_on,
    main,
    parse_listen,
    resolve_env,
    target_cell,
)
from collector.inventory.load import ConfigError, load_inventory
from collector.samples import KpiReading
from collector.scheduler import STOP_GRACE
from tests.app.test_service import make_records, write_inventory
from tests.collector.inventory.test_load import BOMB
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _restore_logging():
    """main() installs its log handler on the root logger; take it off after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def inventory_file(tmp_path: Path) -> Path:
    records = tmp_path / "records.db"
    make_records(records)
    return write_inventory(tmp_path, records)


def broken_inventory(tmp_path: Path) -> Path:
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump({
        "sources": {"crm": {"kind": "sql", "dsn": "sqlite+aiosqlite://", "interval": "soon"}},
        "processes": {"problem": {
            "etom": "1.3.1.3", "name": "Problem", "team": "ops",
            "records": {"source": "crm", "table": "trouble_ticket", "open_statuses": ["open"]},
            "kpis": {"in_time": {"kind": "sla", "objective": 90}}}}}))
    return path


def test_check_on_a_broken_inventory_prints_each_problem_and_exits_2(tmp_path, capsys):
    path = broken_inventory(tmp_path)
    with pytest.raises(ConfigError) as raised:
        load_inventory([path])
    assert len(raised.value.problems) >= 2
    assert main(["check", "-c", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [str(problem) for problem in raised.value.problems]
    assert any("interval" in line for line in err)
    assert any("objective" in line for line in err)


def test_check_samples_every_kpi_without_touching_the_real_state(tmp_path, inventory_file,
                                                                 capsys):
    assert main(["check", "-c", str(inventory_file)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["SOURCE", "PROCESS", "KPI", "VALUE", "TARGET", "SECONDS", "STATUS"]
    kpis = {line.split()[2]: re.split(r"\s{2,}", line) for line in lines[1:] if line.startswith("crm ")}
    assert set(kpis) == {"inflow", "backlog", "resolved_in_time", "time_to_restore",
                         "reopen_rate"}
    assert kpis["backlog"][3] == "10"
    assert all(row[-1] == "ok" for row in kpis.values())
    # The ratio counts tickets never reopened (its `good`), most of them, against a maximum of 5 %: missed.
    assert {kpi: row[4] for kpi, row in kpis.items()} == {
        "inflow": "no target", "backlog": "met (<= 500)", "resolved_in_time": "met (>= 0.9)",
        "time_to_restore": "no target", "reopen_rate": "missed (<= 0.05)"}
    assert "1 source(s), 5 ok, 0 failed; 1 KPI(s) missing their target" in out
    assert not (tmp_path / "state.db").exists()  # the inventory's state file stays untouched


@pytest.mark.parametrize(("reading", "cell"), [
    (KpiReading("order", "late_orders", "overdue", 49.0, None, 40.0), "missed (<= 40)"),
    (KpiReading("order", "late_orders", "overdue", 40.0, None, 40.0), "met (<= 40)"),
    (KpiReading("order", "on_time", "sla", 0.85, 0.9), "missed (>= 0.9)"),
    (KpiReading("order", "share", "ratio", 0.2, 0.1, 0.5), "met (>= 0.1, <= 0.5)"),
    (KpiReading("order", "cycle", "duration", None, None, 3600.0), "no value (<= 3600)"),
    (KpiReading("order", "inflow", "volume", 12.0), "no target"),
])
def test_check_says_whether_each_kpi_meets_its_target(reading: KpiReading, cell: str) -> None:
    assert target_cell(reading) == cell


@pytest.mark.parametrize(("text", "message"), [
    ("sources: " + "[" * 5000 + "]" * 5000 + "\n", ":1: invalid YAML: nested over 100 levels deep"),
    (BOMB, ":5: invalid YAML: its aliases expand to over 50,000 values"),
    ("sources: {}\nprocesses: {}\nservice: {listen: '" + "x" * 500_000 + "'}\n",
     f"{'x' * 200}'… (500,000 characters)"),
])
def test_check_on_a_hostile_file_names_it_and_exits_2(tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    started = time.process_time()  # CPU time: a busy machine (parallel workers, CI) does not inflate it
    assert main(["check", "-c", str(path)]) == 2
    assert time.process_time() - started < 2.0
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(str(path)), line[:300]
    assert message in line, line[:300]
    assert len(line) < 600


def test_check_reports_an_unreachable_source_and_exits_1(tmp_path, capsys):
    records = tmp_path / "records.db"
    make_records(records)
    path = write_inventory(tmp_path, records, unreachable=True)
    assert main(["check", "-c", str(path)]) == 1
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("remote "))
    assert "error (connection)" in row
    assert "u:***@127.0.0.1:1" in row
    assert "secret" not in out


def test_check_reports_missing_columns(tmp_path, capsys):
    records = tmp_path / "records.db"
    make_records(records)
    path = write_inventory(tmp_path, records)
    document = yaml.safe_load(path.read_text())
    document["processes"]["problem"]["records"]["columns"]["dimensions"] = ["priority", "region"]
    path.write_text(yaml.safe_dump(document))
    assert main(["check", "-c", str(path)]) == 1
    out = capsys.readouterr().out
    assert "error (columns)" in out
    assert "region" in out


def test_flags_fall_back_to_environment_variables(inventory_file, capsys, monkeypatch):
    monkeypatch.setenv("FABWATCH_CONFIG", str(inventory_file))
    assert main(["check"]) == 0
    args = build_parser().parse_args(["serve", "--listen", "127.0.0.1:1234"])
    resolve_env(args, {"FABWATCH_LISTEN": "127.0.0.1:9999", "FABWATCH_STATE": "/tmp/s.db",
                       "FABWATCH_LOG_LEVEL": "DEBUG"})
    assert args.listen == ("127.0.0.1", 1234)  # the command line wins
    assert args.state == "/tmp/s.db"
    assert args.log_level == "debug"
    demo = build_parser().parse_args(["demo"])
    resolve_env(demo, {"FABWATCH_DAYS": "3", "FABWATCH_LISTEN": "[::1]:9465"})
    assert (demo.days, demo.speed, demo.data_dir) == (3.0, 1.0, ".fabwatch-demo")
    assert demo.listen == ("::1", 9465)
    with pytest.raises(SystemExit, match=r"FABWATCH_LOG_LEVEL='trace': choose from debug, info, warning, error"):
        resolve_env(build_parser().parse_args(["check"]), {"FABWATCH_LOG_LEVEL": "trace"})


def test_missing_config_and_bad_listen(capsys, monkeypatch):
    monkeypatch.delenv("FABWATCH_CONFIG", raising=False)
    assert main(["check"]) == 2
    assert "-c FILE" in capsys.readouterr().err
    with pytest.raises(SystemExit) as raised:
        main(["serve", "-c", "x.yaml", "--listen", "nowhere"])
    assert raised.value.code == 2
    with pytest.raises(Exception, match="HOST:PORT"):
        parse_listen("nowhere")


SIGINT_AT_START = {"default": "signal.default_int_handler", "ignored": "signal.SIG_IGN"}
"""What `python -m app.cli` finds for SIGINT: set by the child itself, never inherited from the test
run (`nohup make test &` starts it ignored), so that each test knows what it tests."""


def run_fabwatch(*args: str, env: dict[str, str] | None = None, sigint: str = "default",
                 blocked: bool = False) -> subprocess.Popen[str]:
    """`python -m app.cli ARGS` with SIGINT as `sigint` says; `blocked`: with SIGINT, SIGTERM and SIGHUP
    in the blocked signal mask, as a parent that blocked them would leave it (inherited across exec)."""
    block = ("signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}); "
             if blocked else "")
    start = (f"import runpy, signal, sys; signal.signal(signal.SIGINT, {SIGINT_AT_START[sigint]}); {block}"
             "sys.argv = ['fabwatch', *sys.argv[1:]]; runpy.run_module('app.cli', run_name='__main__', alter_sys=True)")
    return subprocess.Popen([sys.executable, "-c", start, *args], cwd=ROOT,
                            env={**os.environ, **(env or {})}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_http(url: str, proc: subprocess.Popen[str], timeout: float = 60.0) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read()
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    proc.kill()
    pytest.fail(f"{url} never answered 200: {proc.communicate()}")


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[int, str, str]:
    proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


@pytest.mark.slow
@pytest.mark.parametrize("blocked", [False, True], ids=["signals-open", "signals-blocked-by-the-parent"])
def test_serve_stops_cleanly_on_sigterm(inventory_file, blocked):
    port = free_port()
    proc = run_fabwatch("serve", "-c", str(inventory_file), env={"FABWATCH_LISTEN":
                                                                 f"127.0.0.1:{port}"}, blocked=blocked)
    wait_http(f"http://127.0.0.1:{port}/readyz", proc)
    body = wait_http(f"http://127.0.0.1:{port}/metrics", proc)
    assert b'fab_source_up{source="crm"} 1.0' in body
    code, _, err = stop(proc)
    assert code == 0, err
    assert "event=scheduler_stopped" in err
    assert all(line.startswith("ts=") for line in err.splitlines()), err


@pytest.mark.slow
def test_serve_stops_within_its_grace_during_a_slow_sqlite_statement(tmp_path):
    """A statement calling a slow function on each row ignored the stop: `sample_cancelled` after
    the grace, then the process hung for as long as the statement ran (40 s here; issue 18)."""
    records = tmp_path / "records.db"
    make_records(records)
    inventory_file = write_inventory(tmp_path, records)
    inventory = yaml.safe_load(inventory_file.read_text())
    inventory["sources"]["crm"]["timeout"] = "10m"
    inventory["processes"]["problem"]["kpis"]["slow"] = {"kind": "value", "sql": (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 600) "
        "SELECT COUNT(*) FROM c WHERE length(randomblob(20000000)) > 0")}
    inventory_file.write_text(yaml.safe_dump(inventory))
    port = free_port()
    proc = run_fabwatch("serve", "-c", str(inventory_file), env={"FABWATCH_LISTEN": f"127.0.0.1:{port}"})
    wait_http(f"http://127.0.0.1:{port}/healthz", proc)
    time.sleep(1.0)  # the first sample, due at start, is in the slow statement
    started = time.monotonic()
    code, _, err = stop(proc)  # kills it after 20 s
    assert time.monotonic() - started < STOP_GRACE + 3, err
    assert code == 0, err
    assert re.search(r"event=sample_cancelled .*source=crm", err), err
    assert all(line.startswith("ts=") for line in err.splitlines()), err  # no traceback


@pytest.mark.slow
def test_demo_backfills_then_serves_until_sigint(tmp_path):
    port = free_port()
    data = tmp_path / "demo"
    proc = run_fabwatch("demo", "--data-dir", str(data), "--days", "1", "--listen",
                        f"127.0.0.1:{port}")
    wait_http(f"http://127.0.0.1:{port}/readyz", proc, timeout=120)
    body = wait_http(f"http://127.0.0.1:{port}/metrics", proc)
    assert b'fab_source_up{source="operator"} 1.0' in body
    assert b'fab_items_created_total{' in body
    page = wait_http(f"http://127.0.0.1:{port}/", proc)
    assert page.count(b'<article class="tile') == 8
    code, out, err = stop(proc, signal.SIGINT)
    assert code == 0, err
    assert out.splitlines()[0] == f"fabwatch status page: http://127.0.0.1:{port}/"  # first, before the backfill
    assert f"http://127.0.0.1:{port}/metrics" in out
    assert "Ctrl+C" in out
    assert (data / "operator.db").exists()
    assert (data / "state.db").exists()


@pytest.mark.slow
def test_serve_loads_neither_the_simulator_nor_the_generators():
    code = ("import sys; from app.cli import build_parser; build_parser('serve'); "
            "print(sorted({m.split('.')[0] for m in sys.modules}"
            " & {'simulator', 'dashboards', 'grafana_foundation_sdk', 'reports'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
def test_serving_sql_sources_loads_neither_the_orm_nor_the_other_sources(inventory_file):
    """Memory (issue 3): what an inventory of SQL sources does not use is not imported."""
    code = ("import sys; from app.cli import build_parser; from collector.inventory.load import load_inventory; "
            "from app.service import build_app; build_parser('serve'); "
            f"build_app(load_inventory([{str(inventory_file)!r}])); "
            "print(sorted(m for m in sys.modules if m in {'sqlalchemy.orm', 'sqlalchemy.ext.asyncio', 'jmespath', "
            "'httptools', 'uvloop', 'msgspec', 'collector.sources.http', 'collector.sources.listener', "
            "'collector.sources.tmf', 'collector.sources.store'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_simulate_runs_through_the_fabwatch_command(tmp_path):
    db = tmp_path / "op.db"
    assert main(["simulate", "--dsn", f"sqlite+aiosqlite:///{db}", "--days", "1", "--scale", "0.1"]) == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM trouble_ticket").fetchone()[0] > 0


@pytest.mark.slow
@pytest.mark.integration
def test_demo_in_tmf_mode_polls_the_simulator_through_its_open_apis(tmp_path):
    port = free_port()
    proc = run_fabwatch("demo", "--tmf", "--data-dir", str(tmp_path / "demo"), "--days", "2",
                        "--listen", f"127.0.0.1:{port}")
    processes = {"interface", "order", "problem", "retention", "qos_sla", "invoice", "payments", "bill_inquiry"}
    deadline = time.monotonic() + 90
    body = b""
    while time.monotonic() < deadline:
        body = wait_http(f"http://127.0.0.1:{port}/metrics", proc)
        up = {p for p in processes if f'fab_source_up{{source="tmf_{p}"}} 1.0'.encode() in body}
        created = set(re.findall(rb'^fab_items_created_total\{[^}]*process="([a-z_]+)"', body, re.MULTILINE))
        created = {p.decode() for p in created}
        if up == created == processes:
            break
        time.sleep(0.5)
    code, out, err = stop(proc, signal.SIGINT)
    assert up == created == processes, (sorted(processes - up), sorted(processes - created))
    assert code == 0, err
    assert "TMF APIs of the simulated operator: http://127.0.0.1:" in out


@pytest.mark.slow
def test_serve_names_a_busy_events_port_and_exits_1(tmp_path):
    from tests.sources.helpers import events_inventory

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        events_port = busy.getsockname()[1]
        inventory = events_inventory(tmp_path, events_port=events_port)
        proc = run_fabwatch("serve", "-c", str(inventory), "--listen", f"127.0.0.1:{free_port()}")
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert f"fabwatch: cannot listen for events on 127.0.0.1:{events_port}: Address already in use" in err
    assert "Traceback" not in err  # a sample queued before the failure does not run on closed sources


class _Hub:
    """A TMF hub endpoint on a loopback port that records the registrations it receives."""

    def __init__(self) -> None:
        import http.server
        import json
        import threading

        registrations: list[dict[str, str]] = []
        self.registrations = registrations
        calls: list[str] = []
        self.calls = calls
        """`POST <id>` and `DELETE <id>`, in order."""

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                registrations.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                calls.append(f"POST {len(registrations)}")
                self._answer(201, json.dumps({"id": str(len(registrations)), "callback": "x"}).encode())

            def do_DELETE(self) -> None:
                calls.append(f"DELETE {self.path.rsplit('/', 1)[1]}")
                self._answer(204, b"")

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/tmf-api/troubleTicket/v4"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _with_hub(inventory: Path, hub_url: str) -> None:
    document = yaml.safe_load(inventory.read_text())
    document["sources"]["events"]["hub_url"] = hub_url
    inventory.write_text(yaml.safe_dump(document, sort_keys=False))


@pytest.mark.slow
def test_serve_registers_the_address_given_by_listen_with_the_hub(tmp_path):
    """`--listen` overrides service.listen; the callback the hub calls must follow it, or every
    event goes to a port nobody listens on."""
    from tests.sources.helpers import FabwatchProcess, events_inventory

    hub = _Hub()
    inventory = events_inventory(tmp_path, interval="1s")
    _with_hub(inventory, hub.url)
    fabwatch = FabwatchProcess(inventory, free_port())
    try:
        fabwatch.start()
        deadline = time.monotonic() + 20
        while not hub.registrations and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        fabwatch.stop()
        hub.close()
    assert hub.registrations, "fabwatch did not register with the hub"
    assert hub.registrations[0]["callback"] == f"http://127.0.0.1:{fabwatch.port}/tmf/events"


@pytest.mark.parametrize("where", ["inventory", "flag"])
def test_a_wildcard_listen_address_needs_an_explicit_callback(tmp_path, capsys, where):
    from tests.sources.helpers import events_inventory

    inventory = events_inventory(tmp_path)
    _with_hub(inventory, "http://127.0.0.1:9/tmf-api/troubleTicket/v4")
    if where == "inventory":
        document = yaml.safe_load(inventory.read_text())
        document["service"]["listen"] = "0.0.0.0:9464"
        inventory.write_text(yaml.safe_dump(document, sort_keys=False))
        assert main(["check", "-c", str(inventory)]) == 2
        expected = (f"{inventory}:", "sources.events.callback: required with hub_url: service.listen is 0.0.0.0")
    else:  # what `serve --listen 0.0.0.0:9464` checks before it binds (a test binds loopback only)
        served = listening_on(load_inventory([inventory]), "0.0.0.0", 9464)
        assert served.service.listen == "0.0.0.0:9464"
        assert not callbacks_reachable(served, "--listen 0.0.0.0:9464")
        expected = ("fabwatch: --listen 0.0.0.0:9464: sources.events.callback: required with hub_url: "
                    "service.listen is 0.0.0.0",)
    err = capsys.readouterr().err
    assert all(part in err for part in expected), err


@pytest.mark.parametrize("what", ["directory", "not a database"])
def test_serve_names_a_state_file_it_cannot_use_and_exits_1(tmp_path, inventory_file, capsys, what):
    state = tmp_path / "state.db"
    if what == "directory":
        state.mkdir()
    else:
        state.write_text("key = value\n" * 100)
    assert main(["serve", "-c", str(inventory_file), "--listen", f"127.0.0.1:{free_port()}", "--state",
                 str(state)]) == 1
    err = capsys.readouterr().err
    assert f"fabwatch: cannot use the state file {state}: " in err, err
    assert "Traceback" not in err
    assert "cannot listen" not in err


def test_serve_refuses_a_clock_rate_without_a_start(inventory_file, capsys):
    assert main(["serve", "-c", str(inventory_file), "--listen", f"127.0.0.1:{free_port()}",
                 "--clock-rate", "60"]) == 2
    assert "--clock-rate needs --clock-start" in capsys.readouterr().err


@pytest.mark.slow
def test_a_subscription_left_by_a_killed_run_is_dropped_at_the_next_start(tmp_path):
    """SIGKILL leaves no time to unregister: the next start removes the old subscription, else the
    hub would post every event twice, to the old one and the new one, for as long as it lives."""
    from tests.sources.helpers import FabwatchProcess, events_inventory

    hub = _Hub()
    inventory = events_inventory(tmp_path, interval="1s")
    _with_hub(inventory, hub.url)
    fabwatch = FabwatchProcess(inventory, free_port())

    def wait_for(calls: int) -> None:
        deadline = time.monotonic() + 20
        while len(hub.calls) < calls and time.monotonic() < deadline:
            time.sleep(0.05)

    def subscription_kept() -> bool:  # the id is written once the hub answered: kill after that
        with contextlib.closing(sqlite3.connect(tmp_path / "events.db")) as db:
            return db.execute("SELECT value FROM sync_meta WHERE key = 'hub_id'").fetchone() == ("1",)

    try:
        fabwatch.start()
        deadline = time.monotonic() + 20
        while not subscription_kept() and time.monotonic() < deadline:
            time.sleep(0.05)
        fabwatch.kill()
        fabwatch.start()
        wait_for(3)
        fabwatch.stop()
        wait_for(4)
    finally:
        fabwatch.kill()
        hub.close()
    assert hub.calls == ["POST 1", "DELETE 1", "POST 2", "DELETE 2"]


@pytest.mark.slow
@pytest.mark.parametrize("sigint", ["default", "ignored"])  # ignored: a shell's background job, `nohup ... &`
def test_demo_interrupted_while_backfilling_exits_without_a_traceback(tmp_path, sigint):
    data = tmp_path / "demo"
    proc = run_fabwatch("demo", "--data-dir", str(data), "--days", "30", "--listen", f"127.0.0.1:{free_port()}",
                        sigint=sigint)
    deadline = time.monotonic() + 60
    while not (data / "operator.db").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # well into the 30-day backfill
    code, _, err = stop(proc, signal.SIGINT)
    assert code in (0, 130), err
    assert "Traceback" not in err


def test_demo_names_a_data_directory_it_cannot_use(tmp_path, capsys):
    taken = tmp_path / "a-file"
    taken.write_text("")
    assert main(["demo", "--data-dir", str(taken)]) == 1
    assert f"fabwatch: cannot use {taken} as the demo's data directory" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "committed"), [
    (["schema"], ROOT / "schema" / "inventory.schema.json"),
    (["schema", "--markdown"], ROOT / "docs" / "reference" / "inventory.md"),
], ids=["json-schema", "reference"])
def test_schema_prints_what_is_committed(argv, committed, capsys):
    """A field added to a model and not to the published files fails here."""
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out == committed.read_text(encoding="utf-8"), (
        f"regenerate: fabwatch {' '.join(argv)} > {committed.relative_to(ROOT)}")


# --- help: one style -----------------------------------------------------------------------

HELP_COMMANDS = [(), ("serve",), ("check",), ("demo",), ("simulate",), ("alerts",), ("alerts", "build"),
                 ("dashboards",), ("dashboards", "build"), ("dashboards", "push"), ("report",)]
ENV_NAME = re.compile(r"FABWATCH_[A-Z0-9_]+")
ENV_AT_END = re.compile(r" \[env FABWATCH_[A-Z0-9_]+\]$")


def _parser_of(words: tuple[str, ...]) -> argparse.ArgumentParser:
    """The parser `fabwatch <words>` runs with (the lazy commands loaded as when they run)."""
    parser = build_parser(words[0] if words else None)
    for word in words:
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = commands.choices[word]
    return parser


def _helps(parser: argparse.ArgumentParser) -> list[tuple[str, str | None]]:
    """(what, help) of every option, positional and subcommand of one parser."""
    out: list[tuple[str, str | None]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            out += [(f"command {a.dest}", a.help) for a in action._choices_actions]
        else:
            out.append(("/".join(action.option_strings) or action.dest, action.help))
    return out


@pytest.mark.parametrize("words", HELP_COMMANDS, ids=lambda words: " ".join(words) or "fabwatch")
def test_every_help_speaks_one_style(words, capsys):
    with pytest.raises(SystemExit) as exited:
        main([*words, "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith(" ".join(("usage: fabwatch", *words)))
    assert len(ENV_NAME.findall(text)) == len(re.findall(r"\[env FABWATCH_[A-Z0-9_]+\]", text)), \
        f"an environment variable not written [env FABWATCH_X]: {text}"
    for what, help_text in _helps(_parser_of(words)):
        assert help_text, f"{what} has no help"
        assert help_text != argparse.SUPPRESS, f"{what} has no help"
        first = help_text.split()[0]
        assert first[0].islower() or first.isupper(), f"{what}: help starts upper-case: {help_text!r}"
        assert not help_text.endswith("."), f"{what}: help ends with a period: {help_text!r}"
        assert len(re.findall(r"\bdefault\b", help_text)) == help_text.count("(default: "), \
            f"{what}: a default not written (default: X): {help_text!r}"
        if "FABWATCH_" in help_text:
            assert ENV_AT_END.search(help_text), f"{what}: its variable not at the end as [env FABWATCH_X]"
            assert len(ENV_NAME.findall(help_text)) == 1, f"{what}: more than one variable: {help_text!r}"


def test_every_inventory_option_reads_the_same():
    helps = {" ".join(words): dict(_helps(_parser_of(words)))["-c/--config"]
             for words in HELP_COMMANDS if "-c/--config" in dict(_helps(_parser_of(words)))}
    assert set(helps) == {"serve", "check", "alerts build", "dashboards build", "dashboards push", "report"}
    assert len(set(helps.values())) == 1, helps
