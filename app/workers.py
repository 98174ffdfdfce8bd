"""`serve --workers N`: N worker processes serve the events port, the main process the rest.

One CPython process parses and stores TMF events on one core. With `--workers N`, the main
process keeps sampling, the service port, `/metrics`, reloads and the hub registrations, and
starts N workers (`python -m app.workers`), each of which opens the record stores of the
`tmf_events` sources and serves `service.events_listen` with its own socket bound with
`SO_REUSEPORT`: the kernel spreads new connections over the workers.

Why SO_REUSEPORT and not one socket shared by forked workers: the main process runs threads (the
commits' and samplers' thread pools) and open SQLite connections, which `fork` would copy in
whatever state they are; fresh processes bind their own sockets instead, and the kernel balances
connections by their addresses, where a shared socket gives most of them to whichever worker
happens to be idle at the time (the one that is not busy parsing).

Why a pipe and not prometheus_client's multiprocess mode: the service renders its own exposition
(`HealthTracker`), and its counters must not go back when a worker is restarted. Each worker
writes one JSON line on its stdout every `REPORT_EVERY` seconds (and a last one when it stops):
what its listeners received, their group commits' durations, the time of the last event. The
main process adds them up, keeping what a worker that exited had counted at its last report.

Each worker writes durably into the record store, as one process does: SQLite in WAL mode takes
one writer at a time, handed from worker to worker by an exclusive lock on a file beside the
store (`WriterLock`), around each group commit. Deduplication by `eventId` and the newer-version
rule are in the store's SQL, so they hold whichever worker gets an event.

A worker that exits on its own (killed, crashed) is logged (`events_worker_exited`), counted
(`fab_events_worker_restarts_total`) and started again, after a pause that doubles while they
keep dying young; one that stops cleanly (exit 0) on a signal of its own is not (systemd signals
every process of the service at once). Workers run in a session of their own, so that Ctrl+C
reaches the main process alone. SIGTERM or SIGINT to the main process stops the workers with SIGTERM: each
stops accepting, commits and answers what it has received, and exits. A reload (SIGHUP,
`POST /-/reload`) that succeeds is passed on to the workers with SIGHUP: each reads the inventory
again and the sender credentials of its listeners (a rotated `token_file`). A worker whose main
process died (its stdin closed) stops by itself.
"""

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collector.errors import CannotListen
from collector.health import COMMIT_BUCKETS, DurationHistogram
from collector.inventory.load import ConfigError, load_inventory
from collector.inventory.models import Inventory
from collector.inventory.sources import TmfEventsSource
from collector.logs import log_event, setup_logging

if TYPE_CHECKING:
    from collector.sources.listener import Listener

REPORT_EVERY = 0.5
"""Seconds between two reports of a worker's counts to the main process."""
START_TIMEOUT = 60.0
"""Seconds a worker may take to open its stores and listen before the service gives up starting."""
STOP_TIMEOUT = 30.0
"""Seconds a worker may take to commit and answer what it holds after SIGTERM, before SIGKILL."""
RESTART_PAUSE = (0.1, 30.0)
"""First and longest pause before a worker that died is started again (doubled while workers die young)."""
YOUNG = 10.0
"""A worker that dies within this many seconds of its start died young."""
_LOG = logging.getLogger("fabwatch.workers")


class WorkerIntake:
    """What the workers' listeners of one source received, added up: an `Intake` and `Completions`."""

    def __init__(self) -> None:
        self.reports: dict[int, Mapping[str, Any]] = {}
        """The last report of each running worker (by pid), for this source."""
        self._gone: dict[str, int] = {}
        self._gone_commits = DurationHistogram(COMMIT_BUCKETS)
        self._started = time.time()
        self._last: float | None = None
        self._incomplete = 0
        self._completed: dict[str, int] = {}

    def report(self, pid: int, report: Mapping[str, Any]) -> None:
        """Take a worker's latest counts (cumulative since its start)."""
        self.reports[pid] = report
        last = float(report["last_received"])
        self._last = last if self._last is None else max(self._last, last)
        self._incomplete = int(report["incomplete"])  # read from the store: any worker's is the store's
        for how, count in report["completed"].items():
            self._completed[how] = max(self._completed.get(how, 0), int(count))

    def retire(self, pid: int) -> None:
        """A worker exited: keep what its last report counted."""
        report = self.reports.pop(pid, None)
        if report is None:
            return
        for result, count in report["received"].items():
            self._gone[result] = self._gone.get(result, 0) + int(count)
        _add(self._gone_commits, report["commits"])

    @property
    def received(self) -> Mapping[str, int]:
        total = dict(self._gone)
        for report in self.reports.values():
            for result, count in report["received"].items():
                total[result] = total.get(result, 0) + int(count)
        return total

    @property
    def last_received(self) -> float:
        """The newest of the workers' (each: its last event, or the newest in the store at its start,
        or its start); the service's start until a worker reports."""
        return self._started if self._last is None else self._last

    @property
    def commits(self) -> DurationHistogram:
        total = DurationHistogram(COMMIT_BUCKETS)
        _add(total, {"counts": self._gone_commits.counts, "count": self._gone_commits.count,
                     "sum": self._gone_commits.sum})
        for report in self.reports.values():
            _add(total, report["commits"])
        return total

    @property
    def incomplete(self) -> int:
        return self._incomplete

    @property
    def completed(self) -> Mapping[str, int]:
        return self._completed


def _add(histogram: DurationHistogram, counts: Mapping[str, Any]) -> None:
    histogram.counts = [a + int(b) for a, b in zip(histogram.counts, counts["counts"], strict=True)]
    histogram.count += int(counts["count"])
    histogram.sum += float(counts["sum"])


class EventsWorkers:
    """Starts, watches, restarts and stops the worker processes of the events port."""

    def __init__(self, count: int, command: Sequence[str], sources: Sequence[str], *,
                 stop_timeout: float = STOP_TIMEOUT, env: Mapping[str, str] | None = None) -> None:
        self.count = count
        self.command = list(command)
        """The worker's command line, without `--index`."""
        self.env = None if env is None else dict(env)
        """The worker's environment (None: this process's)."""
        self.stop_timeout = stop_timeout
        self.intakes = {name: WorkerIntake() for name in sources}
        self.restarts = 0
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        """The running worker of each index."""
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def running(self) -> int:
        return sum(1 for process in self.processes.values() if process.returncode is None)

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes.values() if process.returncode is None]

    async def start(self) -> None:
        """Start every worker and wait until each listens; raise `CannotListen` if one cannot."""
        self._stopping = False
        started = await asyncio.gather(*(self._spawn(index) for index in range(self.count)), return_exceptions=True)
        failed = next((r for r in started if isinstance(r, BaseException)), None)
        if failed is not None:
            await self.stop()
            raise failed
        self._tasks = [asyncio.create_task(self._watch(index), name=f"events-worker-{index}")
                       for index in range(self.count)]

    async def stop(self) -> None:
        """SIGTERM every worker; wait for each to commit and answer what it holds (SIGKILL after
        `stop_timeout`)."""
        self._stopping = True
        for task in self._tasks:  # the watchers only read reports: each worker's last one is read below
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for process in self.processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        await asyncio.gather(*(self._wait_stopped(index) for index in list(self.processes)))

    def reload(self) -> None:
        """Pass a reload on to the workers (SIGHUP)."""
        for process in self.processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGHUP)

    async def _spawn(self, index: int) -> None:
        """Start worker `index` and wait for its first report (it listens)."""
        process = await asyncio.create_subprocess_exec(
            *self.command, "--index", str(index), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env=self.env, start_new_session=True)  # Ctrl+C reaches `serve` alone, which stops its workers in order
        self.processes[index] = process
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT)
        except TimeoutError:
            line = b""
            process.kill()
        if not line:
            await self._wait_stopped(index)
            raise CannotListen(0, f"events worker {index} exited with {process.returncode} before it listened "
                                  "(its log is above)")
        self._take(process.pid, line)
        log_event(_LOG, "events_worker_started", index=index, pid=process.pid)

    async def _watch(self, index: int) -> None:
        """Read the reports of worker `index` until it exits; start it again unless stopping."""
        pause = RESTART_PAUSE[0]
        while True:
            process = self.processes[index]
            began = time.monotonic()
            assert process.stdout is not None
            while line := await process.stdout.readline():
                self._take(process.pid, line)
            code = await process.wait()
            for intake in self.intakes.values():
                intake.retire(process.pid)
            if self._stopping:
                return
            if code == 0:  # stopped on a signal the service did not send (systemd signals every process)
                log_event(_LOG, "events_worker_stopped", logging.WARNING, index=index, pid=process.pid,
                          restarted="no: it stopped cleanly, on a signal of its own")
                return
            self.restarts += 1
            pause = RESTART_PAUSE[0] if time.monotonic() - began > YOUNG else min(pause * 2, RESTART_PAUSE[1])
            log_event(_LOG, "events_worker_exited", logging.ERROR, index=index, pid=process.pid,
                      status=_status(code), restart_in=pause)
            await asyncio.sleep(pause)
            if self._stopping:
                return
            try:
                await self._spawn(index)
            except CannotListen as exc:
                log_event(_LOG, "events_worker_restart_failed", logging.ERROR, index=index, error=exc.strerror)

    async def _wait_stopped(self, index: int) -> None:
        process = self.processes[index]
        try:
            assert process.stdout is not None
            async with asyncio.timeout(self.stop_timeout):
                while line := await process.stdout.readline():
                    self._take(process.pid, line)
                await process.wait()
        except TimeoutError:
            log_event(_LOG, "events_worker_killed", logging.ERROR, index=index, pid=process.pid,
                      why=f"not stopped {self.stop_timeout:g} s after SIGTERM")
            process.kill()
            await process.wait()
        for intake in self.intakes.values():
            intake.retire(process.pid)
        if process.stdin is not None:
            process.stdin.close()

    def _take(self, pid: int, line: bytes) -> None:
        """One report line of worker `pid`: its listeners' counts, by source."""
        try:
            report = json.loads(line)
        except ValueError:
            log_event(_LOG, "events_worker_report_unreadable", logging.WARNING, pid=pid, line=line[:200])
            return
        for name, counts in report.get("sources", {}).items():
            if name in self.intakes:
                self.intakes[name].report(pid, counts)


def _status(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"exit {code}"


def worker_command(paths: Sequence[str], log_level: str) -> list[str]:
    """The command line of a worker (without `--index`), for the inventory files `serve` read; the
    state location goes in its environment (`worker_env`)."""
    command = [sys.executable, "-m", "app.workers", "--log-level", log_level]
    for path in paths:
        command += ["-c", path]
    return command


STATE_VAR = "FABWATCH_STATE"


def worker_env(state: str | None) -> dict[str, str]:
    """The environment of a worker: `serve`'s, with the state location `serve` was given. Not an
    argument: a command line is readable by every local user, and a PostgreSQL URL holds a password."""
    env = dict(os.environ)
    if state is not None:
        env[STATE_VAR] = state
    return env


def events_sources(inventory: Inventory) -> list[str]:
    return [name for name, source in inventory.sources.items() if isinstance(source, TmfEventsSource)]


# --- the worker process ------------------------------------------------------------------

def snapshot(listeners: Mapping[str, "Listener"]) -> bytes:
    """One report line: what each listener received, its commits' durations, its last event."""
    sources = {name: {"received": listener.received, "last_received": listener.last_received,
                      "commits": {"counts": listener.commits.counts, "count": listener.commits.count,
                                  "sum": listener.commits.sum},
                      "incomplete": listener.incomplete, "completed": listener.completed}
               for name, listener in listeners.items()}
    return json.dumps({"pid": os.getpid(), "sources": sources}, separators=(",", ":")).encode() + b"\n"


async def work(inventory: Inventory, state_path: str | Path, paths: Sequence[str], index: int) -> int:
    """Serve the events port until SIGTERM or SIGINT (or the main process is gone), reporting counts
    on stdout; return the exit status."""
    from collector.sources.events_http import EventsServer

    address = inventory.service.events_address
    if address is None:
        print("fabwatch: events worker: the inventory has no service.events_listen", file=sys.stderr)
        return 2
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    out = sys.stdout.buffer
    async with AsyncExitStack() as stack:
        listeners = await open_worker_listeners(inventory, state_path, stack)
        loop.add_signal_handler(signal.SIGHUP, lambda: _reread(paths, listeners, index))
        server = EventsServer(listeners, tls=inventory.service.events_tls, reuse_port=True)
        await server.start(*address)
        stack.push_async_callback(_drain, server)  # before the listeners commit what they hold and stop
        await _watch_parent(stop)
        log_event(_LOG, "events_worker_listening", index=index, pid=os.getpid())
        while not stop.is_set():
            out.write(snapshot(listeners))
            out.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), REPORT_EVERY)
    for _ in range(100):  # let the last answers leave before the loop closes (at most 1 s)
        if not server.connections:
            break
        await asyncio.sleep(0.01)
    out.write(snapshot(listeners))  # the last counts, every event committed and answered
    out.flush()
    return 0


async def open_worker_listeners(inventory: Inventory, state_path: str | Path,
                                stack: AsyncExitStack) -> dict[str, "Listener"]:
    from collector.sampling import open_listeners

    return await open_listeners(inventory, state_path, stack, shared=True)


async def _drain(server: Any) -> None:
    """Stop accepting; the connections close once answered (the listeners answer as they commit)."""
    await server.stop()


async def _watch_parent(stop: asyncio.Event) -> None:
    """Stop when stdin reaches its end: the main process holds its other end until it stops the
    worker, so an end means it died (SIGKILL) and no one would stop or count this worker."""
    loop = asyncio.get_running_loop()

    class Parent(asyncio.Protocol):
        def connection_lost(self, exc: Exception | None) -> None:
            stop.set()

        def eof_received(self) -> bool:
            stop.set()
            return False

    await loop.connect_read_pipe(Parent, sys.stdin)


def _reread(paths: Sequence[str], listeners: Mapping[str, "Listener"], index: int) -> None:
    """SIGHUP: read the inventory again and the sender credentials of each listener (what a reload
    may change here: the `tmf_events` sources themselves change only at a restart)."""
    try:
        inventory = load_inventory(paths)
    except ConfigError as exc:
        log_event(_LOG, "events_worker_reload_refused", logging.ERROR, index=index, problems=len(exc.problems))
        return
    for name, listener in listeners.items():
        source = inventory.sources.get(name)
        if isinstance(source, TmfEventsSource) and source == listener.source:
            try:
                listener.reread_credentials()
            except Exception as exc:  # an unreadable token file: the old credentials stay
                log_event(_LOG, "events_worker_reload_failed", logging.ERROR, index=index, source=name,
                          error=repr(exc))
    log_event(_LOG, "events_worker_reloaded", index=index, pid=os.getpid())


def main(argv: Sequence[str] | None = None) -> int:
    """A worker of `serve --workers N` (started by the main process, not by hand)."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the loop handles it: a reload must not kill a worker
    parser = argparse.ArgumentParser(prog="python -m app.workers", description=main.__doc__)
    parser.add_argument("-c", "--config", action="append", required=True, help="inventory file (repeatable)")
    parser.add_argument("--state", default=os.environ.get(STATE_VAR),
                        help=f"state file or PostgreSQL URL [env {STATE_VAR}] (default: service.state_path "
                             "of the inventory)")
    parser.add_argument("--index", type=int, default=0, help="the worker's number, from 0 (for the logs)")
    parser.add_argument("--log-level", default="info", help="log level (default: info)")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        inventory = load_inventory(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"fabwatch: events worker: {problem}", file=sys.stderr)
        return 2
    import uvloop

    try:
        return uvloop.run(work(inventory, args.state or inventory.service.state_path, args.config, args.index))
    except CannotListen as exc:
        print(f"fabwatch: {exc.strerror}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
