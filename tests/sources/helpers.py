"""Shared helpers: the example inventory re-pointed at other sources, a TMF simulator server, samples."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from collector.engine import SourceSampler
from collector.inventory.models import Inventory, Process, SqlSource
from collector.samples import SourceSample
from collector.sampling import build_sampler
from collector.sources.pgstore import schema_of
from collector.state import StateStore
from collector.storeurl import postgres_url
from simulator.tmf import PROCESS_APIS, TmfServer
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "operator.yaml"
API_OF = PROCESS_APIS
"""Simulated process -> (API, TMF621 ticketType) the simulator serves it through."""


def example(sources: Mapping[str, dict[str, Any]], source_of: Mapping[str, str],
            state_path: Path) -> Inventory:
    """Return the example inventory with other sources; `source_of` maps process -> source."""
    document = yaml.safe_load(EXAMPLE.read_text())
    document["sources"] = dict(sources)
    document["service"] = {"state_path": str(state_path), "currency": "EUR", "timezone": "Europe/Berlin"}
    document.pop("alerting", None)
    for key in [k for k in document if k.startswith("x-")]:
        del document[key]
    for name, process in document["processes"].items():
        process["records"]["source"] = source_of[name]
    return Inventory.model_validate(document)


@contextlib.asynccontextmanager
async def serve_app(app: web.Application, port: int | None = None) -> AsyncIterator[str]:
    """Serve an aiohttp app on a free loopback port; yield its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    port = port or free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def tmf_server(dsn: str, **options: Any) -> AsyncIterator[tuple[TmfServer, str]]:
    """Run the simulator's TMF server over a simulator database."""
    server = TmfServer(dsn, **options)
    async with serve_app(server.app()) as url:
        yield server, url


async def sample_sql(name: str, dsn: str, processes: Mapping[str, Process], state_dir: Path,
                     now: float) -> SourceSample:
    """Sample SQL records once with a fresh state (settle 0) at `now`."""
    state = StateStore(state_dir / f"{name}-state.db")
    sampler = SourceSampler(name, SqlSource(kind="sql", dsn=dsn, settle=0), processes, state)
    try:
        return await sampler.sample(now)
    finally:
        await sampler.close()
        state.close()


def comparable(sample: SourceSample) -> dict[str, Any]:
    """The families and KPI readings of a sample, in a form that compares exactly."""
    families = {f.name: (sorted(f.samples), sorted((labels, h.buckets, h.sum, h.count) for labels, h in f.histograms))
                for f in sample.families}
    kpis = sorted((k.process, k.kpi, k.value) for k in sample.kpis)
    return {"families": families, "kpis": kpis}


# --- fabwatch as a real process with a `tmf_events` source (delivery test, bench/tmf_listener.py) ---

EVENT_T0 = 1_767_225_600.0
"""2026-01-01T00:00:00Z: creation time of the tickets the load loops send."""


def events_inventory(directory: Path, *, durability: str = "full", batch_max: int = 1000,
                     interval: str = "60s", events_port: int | None = None, store: str | None = None) -> Path:
    """Write an inventory with process `problem` fed by a `tmf_events` source `events` (TMF621 v4),
    received on the events port when `events_port` is given, else on the main port; its record
    store is `store` (a PostgreSQL URL, say), else `directory/events.db`."""
    document = yaml.safe_load(EXAMPLE.read_text())
    problem = document["processes"]["problem"]
    problem["records"]["source"] = "events"
    problem["kpis"] = {k: v for k, v in problem["kpis"].items() if v["kind"] != "value"}
    inventory = {
        "service": {"state_path": str(directory / "state.db"), "currency": "EUR", "timezone": "UTC",
                    **({"events_listen": f"127.0.0.1:{events_port}"} if events_port else {})},
        "sources": {"events": {"kind": "tmf_events", "api": "tmf621", "version": 4,
                               "store": store or str(directory / "events.db"), "durability": durability,
                               "batch_max": batch_max, "interval": interval}},
        "processes": {"problem": problem},
    }
    path = directory / "inventory.yaml"
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return path


def ticket_event(number: int, ticket: int, version: int) -> bytes:
    """A TMF621 v4 status-change event: event `E<number>`, ticket `TT-<ticket>` at `version` seconds in."""
    from collector.sources.times import format_time

    created = format_time(EVENT_T0 + ticket)
    updated = format_time(EVENT_T0 + ticket + version)
    status = "resolved" if version % 2 else "inProgress"
    resource = {"id": f"TT-{ticket}", "href": f"/troubleTicket/TT-{ticket}", "@type": "TroubleTicket",
                "ticketType": "problem", "status": status, "priority": "high", "severity": "major",
                "description": "line down", "channel": {"id": "1", "name": "phone"},
                "creationDate": created, "lastUpdate": updated,
                "expectedResolutionDate": format_time(EVENT_T0 + ticket + 86_400),
                **({"resolutionDate": updated} if status == "resolved" else {})}
    body = {"eventId": f"E{number}", "eventTime": updated, "timeOcurred": updated,
            "eventType": "TroubleTicketStatusChangeEvent", "event": {"troubleTicket": resource}}
    return json.dumps(body, separators=(",", ":")).encode()


EVENT_PATH = "/tmf/events/listener/troubleTicketStatusChangeEvent"


def stored_events(store: str | Path, source: str = "tickets") -> int:
    """How many events a record store holds (table `tmf_event`): a SQLite file, or the schema of
    `source` in PostgreSQL."""
    if postgres_url(str(store)) is None:
        db = sqlite3.connect(store)
        try:
            return int(db.execute("SELECT COUNT(*) FROM tmf_event").fetchone()[0])
        finally:
            db.close()
    return len(stored_rows(store, source, "tmf_event"))


def stored_rows(store: str | Path, source: str, table: str) -> list[dict[str, Any]]:
    """Every row of a table of a record store (SQLite or PostgreSQL), by id, read on a connection of its own."""
    url, key = postgres_url(str(store)), "event_id" if table == "tmf_event" else "id"
    if url is None:
        db = sqlite3.connect(store)
        db.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in db.execute(f'SELECT * FROM "{table}" ORDER BY {key}')]
        finally:
            db.close()
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(url, options=f"-c search_path={schema_of(source)}", row_factory=dict_row) as pg:
        return list(pg.execute(f'SELECT * FROM "{table}" ORDER BY {key} COLLATE "C"'))


class FabwatchProcess:
    """`python -m app.cli serve` in a subprocess on a loopback port: start, SIGKILL, restart."""

    def __init__(self, inventory: Path, port: int, *, cpu: int | None = None,
                 log: Path | None = None, python: str | None = None, workers: int = 1) -> None:
        self.inventory = inventory
        self.workers = workers
        """`serve --workers N` when above 1: worker processes serve the events port."""
        self.python = python or sys.executable
        """The interpreter that runs fabwatch (one with its dependencies installed)."""
        self.port = port
        self.cpu = cpu
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{port}"
        self.state = str(inventory.parent / "state.db")
        """`serve --state`: a SQLite file beside the inventory, or a PostgreSQL URL."""

    def command(self) -> list[str]:
        """The exact command line (pinned with `taskset -c <cpu>` when asked and available)."""
        state = self.state
        command = [self.python, "-m", "app.cli", "serve", "-c", str(self.inventory),
                   "--listen", f"127.0.0.1:{self.port}", "--state", state]
        if self.workers > 1:
            command += ["--workers", str(self.workers)]
        if self.cpu is not None and shutil.which("taskset"):
            command = ["taskset", "-c", str(self.cpu), *command]
        return command

    def start(self, timeout: float = 30.0) -> None:
        """Start and wait until /healthz answers."""
        output = open(self.log, "ab") if self.log is not None else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.process = subprocess.Popen(self.command(), cwd=ROOT, stdout=output, stderr=output)
        finally:
            if self.log is not None:
                output.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"fabwatch exited with {self.process.returncode}; {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"fabwatch did not answer on {self.url} within {timeout} s; {self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        """The log's path and its last lines, for an error (the temporary directory may be gone when read)."""
        if self.log is None:
            return "no log"
        try:
            tail = Path(self.log).read_text(errors="replace").splitlines()[-lines:]
        except OSError as exc:
            return f"log: {self.log} ({exc})"
        return f"log: {self.log}, ending:\n" + "\n".join(tail)

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, whatever is in flight is lost unless committed."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after 10 s)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None


def problem_inventory(directory: Path, source: Mapping[str, Any],
                      kpis: Mapping[str, Any] | None = None) -> Inventory:
    """The example's `problem` process alone, its records in source `src`; `kpis` replace its KPIs."""
    document = yaml.safe_load(EXAMPLE.read_text())
    problem = document["processes"]["problem"]
    problem["records"]["source"] = "src"
    if kpis is not None:
        problem["kpis"] = dict(kpis)
    return Inventory.model_validate({
        "service": {"state_path": str(directory / "state.db"), "currency": "EUR", "timezone": "UTC"},
        "sources": {"src": dict(source)}, "processes": {"problem": problem}})


async def sample_source(directory: Path, source: Mapping[str, Any], kpis: Mapping[str, Any],
                        now: float) -> SourceSample:
    """Sample `problem_inventory(directory, source, kpis)` once at `now` with a fresh state."""
    inventory = problem_inventory(directory, source, kpis)
    state = StateStore(directory / "state.db")
    sampler = build_sampler("src", inventory.sources["src"], inventory.processes, state, inventory.service,
                            directory / "state.db")
    try:
        await sampler.open()
        return await sampler.sample(now)
    finally:
        await sampler.close()
        state.close()
