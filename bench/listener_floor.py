"""Where the listener's CPU per event goes: the same load against three servers, side by side.

- `bare`: an httptools protocol on uvloop that answers 201 without looking at the body (the
  floor of HTTP on this machine: kernel, libuv, parser);
- `nostore`: fabwatch's events port and listener (parsing, validation, mapping, group commit
  plumbing, answers) over a store that writes nothing;
- `store`: the same with the real record store (`durability: full`);
- `store-alone`: no HTTP at all: the record store writes the same events, already parsed, in
  batches of 128 (`stage_events` + `commit`, `synchronous=FULL`) in a loop: the floor of the
  durable write from Python;
- `pipeline`: no sockets: the events port's protocol objects are fed the same requests in-process,
  128 at a time, and the listener commits each group to the real record store: all of fabwatch's
  work for an event but the kernel's and libuv's, in batches that do not depend on scheduling, so
  it is the steadiest figure to compare two versions of the code with (`--tree`).

Each server is a subprocess pinned to CPU 0; this process loads it from CPU 1 over loopback
(128 keep-alive connections, one request in flight each, `--events` TMF621 events per run) and
reads the server's CPU time from /proc. Modes alternate run by run; medians of `--runs`.

`--python` (repeatable) runs the servers with other interpreters too, alternating with the
others in each run: CPython builds differ, and the pure-Python part of the cost with them.
`--tree` (repeatable) runs them with the fabwatch code of other checkouts (a `git worktree` of
another commit), alternating the same way: a change measured against its base in one run.

    .venv/bin/python bench/listener_floor.py --runs 5
    .venv/bin/python bench/listener_floor.py --runs 5 --python .venv/bin/python --python /tmp/pgo/bin/python
    .venv/bin/python bench/listener_floor.py --runs 9 --mode pipeline --mode nostore --tree . --tree /tmp/base
"""

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[1]
TREE_VARIABLE = "FABWATCH_BENCH_TREE"
"""Set for a server subprocess: the checkout whose fabwatch code it runs (`--tree`)."""
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, os.environ.get(TREE_VARIABLE, str(ROOT)))

import uvloop  # noqa: E402
from proc import cpu_seconds, interpreter  # noqa: E402
from tmf_http import connect, post  # noqa: E402

from tests.servers import free_port  # noqa: E402
from tests.sources.helpers import ticket_event  # noqa: E402

if TYPE_CHECKING:
    from collector.sources.listener import Listener
    from collector.sources.store import RecordStore

MODES = ("bare", "nostore", "store", "store-alone", "pipeline")
PATH = "/tmf/events/listener/troubleTicketStatusChangeEvent"


def serve(mode: str, port: int, directory: str) -> None:
    """Run one server until killed (in the subprocess)."""
    import gc

    async def main() -> None:
        if mode == "bare":
            await _bare(port)
        else:
            await _events(mode, port, directory)
        gc.collect()
        gc.freeze()
        print("ready", flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())


async def _bare(port: int) -> None:
    import httptools

    class Bare(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_message_complete(self) -> None:
            self.transport.write(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"  # type: ignore[attr-defined]
                                 b"Content-Length: 2\r\n\r\n{}")

    await asyncio.get_running_loop().create_server(Bare, "127.0.0.1", port)


def event_body(number: int) -> bytes:
    """Event `number` of a run: tickets and versions cycle, so later rounds update rows."""
    return ticket_event(number, number % 10_000, 1 + number // 10_000)


def event_request(port: int, number: int) -> bytes:
    """Event `number` of a run as a pre-encoded keep-alive POST."""
    return post("127.0.0.1", port, PATH, event_body(number))


def _durable_store(directory: str) -> "RecordStore":
    """The record store a `tmf_events` source of TMF621 writes, `durability: full`."""
    from collector.sources.store import RecordStore
    from collector.sources.tmf import APIS

    return RecordStore(Path(directory) / "events.db", ["trouble_ticket"], synchronous="FULL",
                       final_statuses={"trouble_ticket": APIS["tmf621"].finals})


def _listener(store: "RecordStore") -> "Listener":
    from collector.inventory.sources import TmfEventsSource
    from collector.sources.listener import Listener

    return Listener("events", TmfEventsSource(kind="tmf_events", api="tmf621"), store)


class _NoStore:
    """A record store that writes nothing."""

    tables = ("trouble_ticket",)

    def stage_events(self, events: Sequence[object]) -> list[bool]:
        return [True] * len(events)

    def commit(self) -> None:
        return None

    def rollback(self) -> None:
        return None

    def forget_events(self, before: float, limit: int) -> int:
        return 0

    def last_received(self) -> float | None:
        return None


async def _events(mode: str, port: int, directory: str) -> None:
    from collector.sources.events_http import EventsServer

    store = _NoStore() if mode == "nostore" else _durable_store(directory)
    listener = _listener(store)  # type: ignore[arg-type]
    await listener.start()
    await EventsServer({"events": listener}).start("127.0.0.1", port)


async def load(port: int, raw: Sequence[bytes], connections: int, pid: int, timeout: float) -> tuple[float, float]:
    """Send every request; return (requests/s, server CPU µs per request)."""
    pool = [await connect("127.0.0.1", port) for _ in range(connections)]
    order = iter(raw)

    async def worker(connection: object) -> None:
        for request in order:
            status = await connection.request(request)  # type: ignore[attr-defined]
            if status != 201:
                raise SystemExit(f"server answered {status}")

    before, started = cpu_seconds(pid), time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker(c) for c in pool)), timeout)
    seconds, cpu = time.perf_counter() - started, cpu_seconds(pid) - before
    for connection in pool:
        connection.close()
    return len(raw) / seconds, cpu / len(raw) * 1e6


def store_alone(events: int, directory: str) -> None:
    """Write `events` parsed events through the record store; print events/s and CPU µs each."""

    store = _durable_store(directory)
    listener = _listener(store)
    name = PATH.rsplit("/", 1)[1]
    parsed = [listener._parse(name, listener._decode(event_body(n)))
              for n in range(events)]
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, events, 128):
        store.stage_events(parsed[start:start + 128])
        store.commit()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(f"{events / seconds} {cpu / events * 1e6}", flush=True)


class _Sink:
    """A transport that keeps nothing: counts the answers written, wakes the feeder at a target."""

    def __init__(self) -> None:
        self.answers = 0
        self.target = 0
        self.reached: asyncio.Event | None = None

    def write(self, data: bytes) -> None:
        if not data.startswith(b"HTTP/1.1 201"):
            raise SystemExit(f"answered {data[:40]!r}")
        self.answers += 1
        if self.answers >= self.target and self.reached is not None:
            self.reached.set()

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def close(self) -> None:
        return None


def requests_file(path: Path, events: int) -> None:
    """Write `events` pre-encoded event POSTs to a file, separated by NUL bytes (HTTP holds none)."""
    path.write_bytes(b"\0".join(event_request(9, n)
                                for n in range(events)))


def pipeline(events: int, directory: str, connections: int, requests: str | None = None) -> None:
    """Feed `events` requests (made here, or read from `requests`, see `requests_file`) to the events
    port's protocol objects, `connections` at a time, each group committed to the record store
    before the next; print events/s and CPU µs each."""
    import gc

    from collector.sources.events_http import _Connection

    async def run() -> tuple[float, float]:
        listener = _listener(_durable_store(directory))
        await listener.start()
        sink, registry = _Sink(), set()  # type: ignore[var-annotated]
        feeders = [_Connection({"events": listener}, registry) for _ in range(connections)]
        for feeder in feeders:
            feeder.connection_made(sink)  # type: ignore[arg-type]
        if requests is None:
            raw = [event_request(9, n) for n in range(events)]
        else:
            raw = Path(requests).read_bytes().split(b"\0")[:events]
        gc.collect()
        gc.freeze()
        started, cpu = time.perf_counter(), time.process_time()
        for start in range(0, events, connections):
            group = raw[start:start + connections]
            sink.target, sink.reached = sink.answers + len(group), asyncio.Event()
            for feeder, request in zip(feeders, group, strict=False):
                feeder.data_received(request)
            await sink.reached.wait()
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        await listener.stop()
        return events / seconds, cpu / events * 1e6

    rate, cpu = uvloop.run(run())
    print(f"{rate} {cpu}", flush=True)


Case = tuple[str, str, str]
"""A mode, the interpreter and the checkout it runs with."""


def one_run(case: Case, a: argparse.Namespace) -> tuple[float, float]:
    mode, python, tree = case
    if mode in ("store-alone", "pipeline"):
        return _in_process_run(case, a)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="fabwatch-bench-floor-") as directory:
        command = _on_cpu0(python, a, "--serve", mode, "--port", str(port), "--dir", directory)
        server = subprocess.Popen(command, cwd=tree, stdout=subprocess.PIPE, text=True, env=_env(tree))
        try:
            assert server.stdout is not None
            if server.stdout.readline().strip() != "ready":
                raise SystemExit(f"the {mode} server did not start")
            raw = [event_request(port, n) for n in range(a.events)]
            return uvloop.run(load(port, raw, a.connections, server.pid, a.timeout))
        finally:
            server.kill()
            server.wait()


def _in_process_run(case: Case, a: argparse.Namespace) -> tuple[float, float]:
    mode, python, tree = case
    with tempfile.TemporaryDirectory(prefix="fabwatch-bench-floor-") as directory:
        command = _on_cpu0(python, a, f"--{mode}", "--events", str(a.events), "--connections", str(a.connections),
                           "--dir", directory)
        done = subprocess.run(command, cwd=tree, capture_output=True, text=True, timeout=a.timeout, check=True,
                              env=_env(tree))
        rate, cpu = done.stdout.split()
        return float(rate), float(cpu)


def _env(tree: str) -> dict[str, str]:
    return {**os.environ, TREE_VARIABLE: str(Path(tree).resolve())}


def _on_cpu0(python: str, a: argparse.Namespace, *arguments: str) -> list[str]:
    """This script run again by `python` with `arguments`, pinned to CPU 0 unless `--no-pin`."""
    command = [python, __file__, *arguments]
    return ["taskset", "-c", "0", *command] if a.pin and len(os.sched_getaffinity(0)) > 1 else command


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=128)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--no-pin", dest="pin", action="store_false")
    parser.add_argument("--mode", action="append", dest="modes", choices=MODES,
                        help="measure only this mode (repeat for several; default: all)")
    parser.add_argument("--python", action="append", dest="pythons",
                        help="interpreter that runs the servers, with fabwatch's dev dependencies installed "
                             "(repeat to compare; default: this one)")
    parser.add_argument("--tree", action="append", dest="trees",
                        help="checkout whose fabwatch code the servers run (repeat to compare; default: this one)")
    parser.add_argument("--serve", choices=MODES[:3], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--store-alone", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pipeline", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--requests", help=argparse.SUPPRESS)
    a = parser.parse_args(argv)
    if a.store_alone:
        store_alone(a.events, a.dir)
        return
    if a.pipeline:
        pipeline(a.events, a.dir, a.connections, a.requests)
        return
    if a.serve:
        serve(a.serve, a.port, a.dir)
        return
    if a.pin and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {1})
    pythons, trees = a.pythons or [sys.executable], a.trees or [str(ROOT)]
    cases = [(mode, python, tree) for mode in (a.modes or MODES) for python in pythons for tree in trees]
    results: dict[Case, list[tuple[float, float]]] = {case: [] for case in cases}
    for run in range(a.runs):
        for case in cases:
            results[case].append(one_run(case, a))
        print(f"run {run + 1}: " + "; ".join(f"{_label(case, pythons, trees)} {results[case][-1][1]:.0f} µs"
                                             for case in cases), flush=True)
    print(f"\ncommand: .venv/bin/python bench/{Path(__file__).name} {' '.join(sys.argv[1:])}")
    print(f"{a.connections} connections, {a.events:,} events per run, median (and lowest) of {a.runs} runs")
    for number, python in enumerate(pythons, 1):
        print(f"interpreter {number}: {interpreter(python)}")
    for number, tree in enumerate(trees, 1):
        print(f"tree {number}: {_describe(tree)}")
    print("\n| mode | events/s | server CPU µs per event (lowest) |")
    print("|---|---|---|")
    for case in cases:
        cpus = [r[1] for r in results[case]]
        print(f"| {_label(case, pythons, trees)} | {statistics.median(r[0] for r in results[case]):,.0f} | "
              f"{statistics.median(cpus):.1f} ({min(cpus):.1f}) |")


def _describe(tree: str) -> str:
    """A checkout and the commit it is at (`+` when it has changes)."""
    def git(*arguments: str) -> str:
        return subprocess.run(["git", "-C", tree, *arguments], capture_output=True, text=True).stdout.strip()

    changed = "+" if git("status", "--porcelain") else ""
    return f"{Path(tree).resolve()} at {git('rev-parse', '--short', 'HEAD') or '?'}{changed}"


def _label(case: Case, pythons: Sequence[str], trees: Sequence[str]) -> str:
    """The mode, and the interpreter's and the tree's numbers when there are several."""
    mode, python, tree = case
    extra = ([f"interpreter {pythons.index(python) + 1}"] if len(pythons) > 1 else []) + (
        [f"tree {trees.index(tree) + 1}"] if len(trees) > 1 else [])
    return f"{mode} ({', '.join(extra)})" if extra else mode


if __name__ == "__main__":
    main()
