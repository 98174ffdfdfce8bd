"""`serve --workers N`, with real processes: `fabwatch serve --workers 2` on a loopback port,
events posted to its events port over many connections, workers killed, the service reloaded
and stopped; the record store is read directly."""

from __future__ import annotations

import asyncio
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from app.workers import WorkerIntake
from tests.servers import free_port
from tests.sources.helpers import EVENT_PATH, EVENT_T0, FabwatchProcess, events_inventory, stored_rows, ticket_event

ROOT = Path(__file__).resolve().parents[2]
WAIT = 30.0
"""Bound of every wait for the service to show something."""


class Workers:
    """`fabwatch serve --workers 2` with a `tmf_events` source on its events port."""

    def __init__(self, directory: Path, *, workers: int = 2, nohup: bool = False, store: str | None = None,
                 state: str | None = None) -> None:
        """`store`, `state`: PostgreSQL URLs for the record store and the state, else SQLite files."""
        self.directory = directory
        self.port, self.events_port = free_port(), free_port()
        self.inventory = events_inventory(directory, interval="1s", events_port=self.events_port, store=store)

        self.log = directory / "fabwatch.log"
        self.fabwatch = FabwatchProcess(self.inventory, self.port, log=self.log, workers=workers)
        if state is not None:
            self.fabwatch.state = state
        self.nohup = nohup
        self.url = f"http://127.0.0.1:{self.events_port}{EVENT_PATH}"

    def start(self) -> None:
        if self.nohup:  # as `nohup fabwatch serve ... &`: SIGHUP ignored, inherited by the workers
            self.fabwatch.process = subprocess.Popen(["nohup", *self.fabwatch.command()], cwd=ROOT,
                                                     stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
            _until(lambda: _get(f"{self.fabwatch.url}/healthz") is not None, "the service answers")
        else:
            self.fabwatch.start()
        _until(lambda: len(self.workers()) == self.fabwatch.workers, "the workers run")
        _until(lambda: self.log_count("events_worker_listening") >= self.fabwatch.workers, "the workers listen")

    def workers(self) -> list[int]:
        """The pids of the running workers (the children of `serve`)."""
        assert self.fabwatch.process is not None
        found = subprocess.run(["pgrep", "-P", str(self.fabwatch.process.pid), "-f", "app.workers"],
                               capture_output=True, text=True).stdout.split()
        return sorted(int(pid) for pid in found)

    def metric(self, name: str) -> float | None:
        text = _get(f"{self.fabwatch.url}/metrics") or ""
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return None if match is None else float(match.group(1))

    def log_count(self, event: str) -> int:
        return self.log.read_text().count(f"event={event} ") if self.log.exists() else 0

    def stored(self) -> list[str]:
        db = sqlite3.connect(self.directory / "events.db")
        try:
            return [row[0] for row in db.execute("SELECT event_id FROM tmf_event")]
        finally:
            db.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Workers]:
    service = Workers(tmp_path)
    service.start()
    try:
        yield service
    finally:
        service.fabwatch.stop()


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return str(reply.read().decode())
    except OSError:
        return None


def _until(condition: object, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout:g} s: {what}")


async def _post_all(url: str, bodies: list[bytes], connections: int) -> list[tuple[int, str]]:
    """Post every body, `connections` at a time, each over a connection of its own (so that the
    kernel spreads them over the workers); return (status, worker pid header) of each."""
    answers: list[tuple[int, str]] = []
    queue = iter(bodies)

    async def sender() -> None:
        for body in queue:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session, \
                    session.post(url, data=body, headers={"Content-Type": "application/json"}) as reply:
                await reply.read()
                answers.append((reply.status, reply.headers.get("X-Fabwatch-Worker", "")))

    await asyncio.wait_for(asyncio.gather(*(sender() for _ in range(connections))), 60)
    return answers


@pytest.mark.integration
def test_two_workers_store_each_event_once_and_both_serve(served: Workers) -> None:
    bodies = [ticket_event(n, n % 50, 1 + n // 50) for n in range(300)]
    answers = asyncio.run(_post_all(served.url, bodies + bodies[:100], connections=16))  # 100 sent twice
    assert [status for status, _ in answers] == [201] * 400
    workers = served.workers()
    assert {int(pid) for _, pid in answers} == set(workers), "both workers answered events"
    stored = served.stored()
    assert sorted(stored) == sorted(f"E{n}" for n in range(300)), "each event stored once across the workers"
    db = sqlite3.connect(served.directory / "events.db")
    try:
        versions = dict(db.execute("SELECT id, updated_at FROM trouble_ticket").fetchall())
    finally:
        db.close()
    assert versions == {f"TT-{t}": EVENT_T0 + t + 6 for t in range(50)}, \
        "each ticket holds its newest version (6), whichever worker got which version"
    _until(lambda: served.metric('fab_events_received_total{result="accepted",source="events"}') == 300,
           "/metrics adds up what the workers accepted")
    _until(lambda: served.metric('fab_events_received_total{result="duplicate",source="events"}') == 100,
           "and the redeliveries")
    assert served.metric("fab_events_workers") == 2
    assert (served.metric('fab_events_commit_duration_seconds_count{source="events"}') or 0) >= 2


def test_two_workers_over_a_postgres_store_and_state_store_each_event_once(tmp_path: Path, postgres) -> None:
    """The workers write a PostgreSQL record store side by side (no writer lock: PostgreSQL takes
    concurrent writers), the service's state in the same database: each event once, each ticket at
    its newest version, and /metrics adds up what the workers accepted."""
    database = postgres.create_database()
    url = postgres.dsn(database=database, driver="postgresql")
    service = Workers(tmp_path, store=url, state=url)
    service.start()
    try:
        bodies = [ticket_event(n, n % 20, 1 + n // 20) for n in range(120)]
        answers = asyncio.run(_post_all(service.url, bodies + bodies[:40], connections=8))  # 40 sent twice
        assert [status for status, _ in answers] == [201] * 160
        assert {int(pid) for _, pid in answers} == set(service.workers()), "both workers answered events"
        events = stored_rows(url, "events", "tmf_event")
        assert sorted(row["event_id"] for row in events) == sorted(f"E{n}" for n in range(120))
        tickets = {row["id"]: row["updated_at"] for row in stored_rows(url, "events", "trouble_ticket")}
        assert tickets == {f"TT-{t}": EVENT_T0 + t + 6 for t in range(20)}
        _until(lambda: service.metric('fab_events_received_total{result="accepted",source="events"}') == 120,
               "/metrics adds up what the workers accepted")
    finally:
        service.fabwatch.stop()
    assert not (tmp_path / "events.db").exists()
    assert not (tmp_path / "state.db").exists()
    assert not list(tmp_path.glob("*.lock")), "no writer lock over PostgreSQL"


@pytest.mark.integration
def test_a_killed_worker_is_restarted_and_its_counts_kept(served: Workers) -> None:
    bodies = [ticket_event(n, n, 1) for n in range(60)]
    asyncio.run(_post_all(served.url, bodies, connections=8))
    accepted = 'fab_events_received_total{result="accepted",source="events"}'
    _until(lambda: served.metric(accepted) == 60, "the workers' counts on /metrics")
    victim = served.workers()[0]
    subprocess.run(["kill", "-KILL", str(victim)], check=True)
    _until(lambda: len(served.workers()) == 2 and victim not in served.workers(), "a new worker replaces it")
    _until(lambda: served.metric("fab_events_worker_restarts_total") == 1, "the restart is counted")
    assert served.log_count("events_worker_exited") == 1
    _until(lambda: served.log_count("events_worker_listening") >= 3, "the new worker listens")
    more = [ticket_event(n, n, 2) for n in range(60, 120)]
    answers = asyncio.run(_post_all(served.url, more, connections=8))
    assert [status for status, _ in answers] == [201] * 60
    _until(lambda: served.metric(accepted) == 120, "what the killed worker counted is kept, the new one's added")
    assert len(served.stored()) == 120
    stopped = served.workers()[0]
    subprocess.run(["kill", "-TERM", str(stopped)], check=True)  # as systemd does, to every process
    _until(lambda: served.log_count("events_worker_stopped") == 1, "a worker that stops cleanly is no death")
    assert len(served.workers()) == 1, "it is not started again"
    assert stopped not in served.workers()
    _until(lambda: served.metric("fab_events_workers") == 1, "one worker left")
    assert served.metric("fab_events_worker_restarts_total") == 1


@pytest.mark.integration
def test_stop_commits_and_answers_what_the_workers_hold(tmp_path: Path) -> None:
    service = Workers(tmp_path)
    service.start()
    workers = service.workers()
    bodies = [ticket_event(n, n % 100, 1 + n // 100) for n in range(3000)]
    acked: set[bytes] = set()

    async def load() -> None:
        queue = iter(bodies)

        async def sender(session: aiohttp.ClientSession) -> None:
            for body in queue:
                try:
                    async with session.post(service.url, data=body) as reply:
                        await reply.read()
                        if reply.status == 201:
                            acked.add(body)
                except aiohttp.ClientError:
                    await asyncio.sleep(0.01)

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            task = asyncio.gather(*(sender(session) for _ in range(16)))
            while len(acked) < 500:
                await asyncio.sleep(0.01)
            assert service.fabwatch.process is not None
            service.fabwatch.process.send_signal(signal.SIGTERM)  # under load
            await asyncio.wait_for(task, 60)

    asyncio.run(load())
    assert service.fabwatch.process is not None
    assert service.fabwatch.process.wait(30) == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers), "no worker is left"
    stored = set(service.stored())
    assert len(acked) >= 500
    missing = [body for body in acked if re.search(rb'"eventId":"(E\d+)"', body)[1].decode() not in stored]  # type: ignore[index]
    assert not missing, f"{len(missing)} acknowledged events are not stored"
    assert service.log_count("events_worker_exited") == 0, "a worker stopped by the service is no death"


@pytest.mark.integration
def test_a_reload_reaches_the_workers_under_nohup(tmp_path: Path) -> None:
    """SIGHUP to `serve` under nohup (SIGHUP ignored, as its workers inherit) reloads, and the workers
    read their sender's rotated bearer token again."""
    token = tmp_path / "token"
    token.write_text("first\n")
    service = Workers(tmp_path, nohup=True)
    document = yaml.safe_load(service.inventory.read_text())
    document["sources"]["events"]["sender_auth"] = {"kind": "bearer", "token_file": str(token)}
    service.inventory.write_text(yaml.safe_dump(document))
    service.start()
    try:
        workers = service.workers()

        def post_with(credential: str, number: int) -> list[int]:
            async def post() -> list[int]:
                statuses = []
                for offset in range(8):  # a connection each: both workers get some
                    async with aiohttp.ClientSession() as session, session.post(
                            service.url, data=ticket_event(number + offset, number + offset, 1),
                            headers={"Authorization": f"Bearer {credential}"}) as reply:
                        statuses.append(reply.status)
                return statuses
            return asyncio.run(post())

        assert post_with("first", 0) == [201] * 8
        token.write_text("second\n")
        assert service.fabwatch.process is not None
        service.fabwatch.process.send_signal(signal.SIGHUP)
        _until(lambda: service.log_count("events_worker_reloaded") == 2, "both workers reloaded")
        assert service.workers() == workers, "no worker died of SIGHUP"
        assert post_with("second", 100) == [201] * 8
        assert post_with("first", 200) == [401] * 8
    finally:
        service.fabwatch.stop()


def test_workers_need_the_events_port(tmp_path: Path) -> None:
    inventory = events_inventory(tmp_path)  # events on the main port: nothing for workers to serve
    done = subprocess.run([sys.executable, "-m", "app.cli", "serve", "-c", str(inventory), "--workers", "2",
                           "--listen", f"127.0.0.1:{free_port()}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "--workers needs service.events_listen" in done.stderr


def _report(accepted: int, commits: int, last: float) -> dict[str, object]:
    counts = [0] * 14
    counts[2] = commits
    return {"received": {"accepted": accepted, "duplicate": 1}, "last_received": last,
            "commits": {"counts": counts, "count": commits, "sum": commits * 0.002},
            "incomplete": 3, "completed": {"api": 2}}


def test_the_intake_adds_up_workers_and_keeps_the_count_of_those_gone() -> None:
    intake = WorkerIntake()
    intake.report(1, _report(10, 2, 100.0))
    intake.report(2, _report(5, 1, 200.0))
    assert intake.received == {"accepted": 15, "duplicate": 2}
    intake.report(1, _report(12, 3, 150.0))  # worker 1 again: its counts are cumulative
    assert intake.received["accepted"] == 17
    intake.retire(1)  # died: its last report stays counted
    intake.report(3, _report(4, 1, 300.0))  # its replacement starts from 0
    assert intake.received == {"accepted": 21, "duplicate": 3}
    assert intake.commits.count == 5
    assert intake.commits.counts[2] == 5
    assert intake.last_received == 300.0
    assert (intake.incomplete, dict(intake.completed)) == (3, {"api": 2})


def test_the_workers_command_line_carries_no_postgres_password(tmp_path: Path) -> None:
    """A worker's command line is readable by every local user (`ps`, /proc/<pid>/cmdline): a
    PostgreSQL state URL given in FABWATCH_STATE to keep its password out of it must reach the
    workers by their environment, not by their arguments."""
    from app.workers import worker_command, worker_env

    url = "postgresql://fabwatch:s3cret@127.0.0.1:5432/fabwatch"
    command = worker_command([str(tmp_path / "inventory.yaml")], "info")
    assert not any("s3cret" in part or part == "--state" for part in command)
    assert worker_env(url)["FABWATCH_STATE"] == url


def test_the_state_reaches_the_workers_by_their_environment(served: Workers) -> None:
    for pid in served.workers():
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"--state" not in arguments
        assert f"FABWATCH_STATE={served.directory / 'state.db'}".encode() in environment
