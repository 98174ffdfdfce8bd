"""A marker secret in every secret-bearing field of an inventory is found nowhere fabwatch writes:
debug logs of `check` and `serve`, `check`'s table, the service's answers, generated rules and
dashboards (issue 18, defect 6)."""

import http.server
import json
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.app.test_cli import run_fabwatch, wait_http
from tests.app.test_service import make_records
from tests.servers import PostgresServer, free_port

MARKER = "Zq7mArKeR42"
"""Alphanumeric, so no escaping hides it from a grep."""


class _Json(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"n": 1}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Stay quiet: the test reads fabwatch's output only."""


@pytest.fixture
def json_api() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Json)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class Drained:
    """Reads a process's stdout and stderr as it writes them, so that it never blocks on a full pipe."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.out: list[str] = []
        self.err: list[str] = []
        self.threads = [threading.Thread(target=self._read, args=(stream, into), daemon=True)
                        for stream, into in ((proc.stdout, self.out), (proc.stderr, self.err))]
        for thread in self.threads:
            thread.start()

    @staticmethod
    def _read(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    def stop(self) -> tuple[int, str, str]:
        """SIGTERM, wait (SIGKILL after 20 s), and return (exit code, stdout, stderr)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        for thread in self.threads:
            thread.join(10)
        return self.proc.returncode, "".join(self.out), "".join(self.err)


def marked_inventory(tmp_path: Path, postgres: PostgresServer, api: str) -> Path:
    """An inventory with MARKER in each secret-bearing field, reachable sources and unreachable ones
    (whose errors quote their URL)."""
    postgres.psql(f"DROP ROLE IF EXISTS fab_marker; CREATE ROLE fab_marker LOGIN PASSWORD '{MARKER}';")
    closed = f"http://127.0.0.1:{free_port()}"
    make_records(tmp_path / "ops.db")
    inventory = {
        "service": {"listen": "127.0.0.1:9464", "events_listen": f"127.0.0.1:{free_port()}",
                    "state_path": str(tmp_path / "state.db")},
        "sources": {
            "ops": {"kind": "sql", "dsn": f"sqlite+aiosqlite:///{tmp_path / 'ops.db'}", "interval": "1s"},
            "crm": {"kind": "sql", "dsn": postgres.dsn("fab_marker", password=MARKER), "interval": "1s"},
            "crm_down": {"kind": "sql", "interval": "1s", "timeout": "2s",
                         "dsn": f"postgresql+asyncpg://fab:{MARKER}@127.0.0.1:{free_port()}/crm"},
            "api": {"kind": "http_json", "url": f"{api}/v1/kpis?api_key={MARKER}&page=1", "interval": "1s",
                    "values": {"n": "n"}, "auth": {"kind": "basic", "username": "fab", "password": MARKER}},
            "api_down": {"kind": "http_json", "url": f"{closed}/v1/kpis?Token={MARKER}", "interval": "1s",
                         "retries": 0, "values": {"n": "n"}, "auth": {"kind": "bearer", "token": MARKER}},
            "tickets": {"kind": "tmf621", "base_url": f"{closed}/tmf-api/troubleTicket/v4?sig={MARKER}",
                        "interval": "1s", "retries": 0,
                        "auth": {"kind": "oauth2", "token_url": f"{closed}/token?client_secret={MARKER}",
                                 "client_id": "fab", "client_secret": MARKER}},
            "events": {"kind": "tmf_events", "api": "tmf621", "secret": MARKER, "interval": "1s",
                       "hub_url": f"{closed}/tmf-api/troubleTicket/v4?access_token={MARKER}",
                       "callback": f"http://127.0.0.1:9/tmf/events?signature={MARKER}",
                       "base_url": f"{closed}/tmf-api/troubleTicket/v4?apikey={MARKER}",
                       "auth": {"kind": "basic", "username": "fab", "password": MARKER},
                       "sender_auth": {"kind": "bearer", "token": MARKER}},
        },
        "exporters": {"otlp": {"endpoint": f"{closed}/v1/metrics?api_key={MARKER}", "interval": "1s",
                               "timeout": "1s", "headers": {"Authorization": f"Bearer {MARKER}"}}},
        # a run missed "just now" is made up at start: a report is written and mailed to a closed port,
        # and the failure logged (with the mail server, never its password)
        "reports": {"schedule": "* * * * *", "directory": str(tmp_path / "reports"), "retries": 0,
                    "email": {"host": "127.0.0.1", "port": free_port(), "security": "none", "username": "fab",
                              "password": MARKER, "from": "fabwatch@example.com", "to": ["boss@example.com"],
                              "timeout": "2s"}},
        "processes": {"problem": {  # alerts and dashboards are built per process
            "etom": "1.3.1.3", "name": "Problem", "team": "assurance-ops", "runbook": "https://wiki.example/problem",
            "records": {"source": "ops", "table": "trouble_ticket", "open_statuses": ["open"]},
            "kpis": {"backlog": {"kind": "backlog"}}}},
    }
    path = tmp_path / "marked.yaml"
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return path


def test_a_marker_secret_reaches_no_log_table_answer_or_generated_file(tmp_path, postgres, json_api):
    inventory = marked_inventory(tmp_path, postgres, json_api)
    assert MARKER in inventory.read_text()  # the marker is there to be leaked

    check = run_fabwatch("--log-level", "debug", "check", "-c", str(inventory))
    out, err = check.communicate(timeout=120)
    assert check.returncode == 1, err  # the unreachable sources fail; the others sample
    assert "Token=***" in out, out  # a failed source's URL is shown, masked

    port = free_port()
    serve = run_fabwatch("--log-level", "debug", "serve", "-c", str(inventory), "--listen", f"127.0.0.1:{port}",
                         "--state", str(tmp_path / "serve-state.db"))
    drained = Drained(serve)  # debug logs fill a pipe's 64 KiB in seconds: unread, they would block serve
    try:
        answers = [wait_http(f"http://127.0.0.1:{port}/metrics", serve)]
        time.sleep(3)  # a few samples of each source, failed ones included
        for page in ("/metrics", "/", "/healthz", "/reports/", "/api/v1/reports", "/api/v1/inventory",
                     "/api/v1/sources", "/api/v1/processes/problem",
                     "/api/v1/kpis", "/api/v1/slos", "/api/v1/openapi.json"):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{page}", timeout=5) as reply:
                    answers.append(reply.read())
            except urllib.error.HTTPError as exc:  # /readyz-like pages may answer 503: read it all the same
                answers.append(exc.read())
    finally:  # a failed request must not leave serve running after the test
        code, serve_out, serve_err = drained.stop()
    assert code == 0, serve_err
    assert "event=source_opened" in serve_err
    assert "api_key=***" in serve_err
    assert "event=export_failed" in serve_err  # the OTLP push to the closed port, logged without its secrets
    assert "event=report_delivery_failed" in serve_err  # the report mailed to the closed port, likewise

    built = tmp_path / "built"
    for command in (["alerts", "build", "--out", str(built / "alerts")],
                    ["dashboards", "build", "--out", str(built / "dashboards")]):
        proc = run_fabwatch("--log-level", "debug", *command, "-c", str(inventory))
        build_out, build_err = proc.communicate(timeout=120)
        assert proc.returncode == 0, build_err
        out += build_out
        err += build_err
    reports = sorted((tmp_path / "reports").glob("fabwatch-report-*"))
    assert reports  # written before the mail failed
    files = [p for p in built.rglob("*") if p.is_file()] + reports

    leaks = [name for name, text in [("check stdout", out), ("check and build logs", err),
                                     ("serve stdout", serve_out), ("serve logs", serve_err),
                                     *((f"answer {i}", a.decode(errors="replace")) for i, a in enumerate(answers)),
                                     *((str(p), p.read_text(errors="replace")) for p in files)]
             if MARKER in text]
    assert not leaks, [next(line for line in text.splitlines() if MARKER in line)
                       for name, text in [("check stdout", out), ("logs", err + serve_err)] if MARKER in text]
