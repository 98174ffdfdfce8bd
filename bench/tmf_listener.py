"""TMF event listener: events acknowledged durably per second, and ack latency at a fixed rate.

Starts `fabwatch serve` (a real process, pinned with `taskset -c 0`) with one `tmf_events`
source (TMF621 v4, `durability: full` = fsync per group commit unless `--durability normal`),
receiving on the events port (`service.events_listen`; `--via main` posts to the aiohttp route of
the main port instead), and loads it from this process (pinned to CPU 1, on uvloop so that the
load generator is not the bottleneck) over loopback with keep-alive connections:

1. saturation: `--events` events through `--connections` connections, one in flight each;
   acknowledged (201) events per second, and the latency of each;
2. fixed rate: `--rate` events/s offered for `--seconds` (open loop: latency counts from the
   scheduled send time, so queueing is not hidden), p50/p99 acknowledgement latency.

Each run starts a fresh fabwatch and store and checks afterwards that the store holds exactly the
acknowledged events. Medians of `--runs` runs; bounded by counts and `--timeout`.

    .venv/bin/python bench/tmf_listener.py --runs 5
"""

import argparse
import asyncio
import itertools
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import uvloop  # noqa: E402
from proc import cpu_seconds, interpreter  # noqa: E402
from tmf_http import Connection, connect, post  # noqa: E402

from tests.servers import free_port  # noqa: E402
from tests.sources.helpers import (  # noqa: E402
    EVENT_PATH,
    FabwatchProcess,
    events_inventory,
    stored_events,
    ticket_event,
)

HOST = "127.0.0.1"
TICKETS = 10_000
"""Events cycle over this many tickets: the first round inserts, later rounds update."""


@dataclass
class Phase:
    """What one load phase measured."""

    acked: int
    failed: int
    seconds: float
    latencies: list[float]
    cpu: float = float("nan")
    """CPU seconds fabwatch used during the phase (all its threads)."""

    @property
    def rate(self) -> float:
        return self.acked / self.seconds

    @property
    def cpu_per_event(self) -> float:
        return self.cpu / self.acked

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def requests(port: int, first: int, count: int) -> list[bytes]:
    """Pre-encoded event POSTs numbered `first`..; ticket and version cycle so rows get updated."""
    return [post(HOST, port, EVENT_PATH, ticket_event(n, n % TICKETS, 1 + n // TICKETS))
            for n in range(first, first + count)]


async def saturate(port: int, raw: Sequence[bytes], connections: int, timeout: float) -> Phase:
    """Send every request as fast as acknowledgements come back."""
    pool = [await connect(HOST, port) for _ in range(connections)]
    order = iter(range(len(raw)))
    latencies: list[float] = []
    failed = 0

    async def worker(connection: Connection) -> None:
        nonlocal failed
        for index in order:
            sent = time.perf_counter()
            status = await connection.request(raw[index])
            if status == 201:
                latencies.append(time.perf_counter() - sent)
            else:
                failed += 1

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker(c) for c in pool)), timeout)
    seconds = time.perf_counter() - started
    for connection in pool:
        connection.close()
    return Phase(len(latencies), failed, seconds, latencies)


async def fixed_rate(port: int, raw: Sequence[bytes], rate: float, connections: int, timeout: float) -> Phase:
    """Offer `rate` events/s (open loop); latency from the scheduled send time."""
    pool = [await connect(HOST, port) for _ in range(connections)]
    slots = itertools.count()
    latencies: list[float] = []
    failed = 0
    started = time.perf_counter() + 0.05

    async def worker(connection: Connection) -> None:
        nonlocal failed
        for index in slots:
            if index >= len(raw):
                return
            due = started + index / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            status = await connection.request(raw[index])
            if status == 201:
                latencies.append(time.perf_counter() - due)
            else:
                failed += 1

    await asyncio.wait_for(asyncio.gather(*(worker(c) for c in pool)), timeout)
    seconds = time.perf_counter() - started
    for connection in pool:
        connection.close()
    return Phase(len(latencies), failed, seconds, latencies)


async def one_run(a: argparse.Namespace, directory: Path) -> tuple[Phase, list[Phase], list[str]]:
    """Fresh fabwatch + store; saturation then fixed rate; check the store."""
    main_port = free_port()
    port = main_port if a.via == "main" else free_port()
    inventory = events_inventory(directory, durability=a.durability, batch_max=a.batch_max,
                                 events_port=None if a.via == "main" else port)
    fabwatch = FabwatchProcess(inventory, main_port, cpu=0 if a.pin else None, log=directory / "fabwatch.log",
                               python=a.python)
    saturation_raw = requests(port, 0, a.events)
    first = a.events
    rate_raws = []
    for rate in a.rates:
        rate_raws.append(requests(port, first, int(rate * a.seconds)))
        first += int(rate * a.seconds)
    fabwatch.start()
    try:
        await saturate(port, requests(port, 10_000_000, 500), 16, a.timeout)  # warm-up, not counted
        assert fabwatch.process is not None
        pid = fabwatch.process.pid
        before = cpu_seconds(pid)
        saturation = await saturate(port, saturation_raw, a.connections, a.timeout)
        saturation.cpu = cpu_seconds(pid) - before
        steadies = []
        for rate, rate_raw in zip(a.rates, rate_raws, strict=True):
            await asyncio.sleep(0.5)
            before = cpu_seconds(pid)
            steady = await fixed_rate(port, rate_raw, rate, a.connections, a.timeout)
            steady.cpu = cpu_seconds(pid) - before
            steadies.append(steady)
    finally:
        fabwatch.stop()
    stored = stored_events(directory / "events.db") - 500
    acked = saturation.acked + sum(p.acked for p in steadies)
    if stored != acked:
        raise SystemExit(f"store holds {stored} events, {acked} were acknowledged")
    return saturation, steadies, fabwatch.command()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--events", type=int, default=30_000, help="events of the saturation phase")
    parser.add_argument("--connections", type=int, default=128)
    parser.add_argument("--rate", type=float, action="append", dest="rates",
                        help="offered events/s of a fixed-rate phase (repeat for several; default 10000)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the fixed-rate phase")
    parser.add_argument("--durability", choices=("full", "normal"), default="full")
    parser.add_argument("--batch-max", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=120.0, help="bound of each phase")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin to CPUs 0 and 1")
    parser.add_argument("--via", choices=("events", "main"), default="events",
                        help="post to the events port (default) or to the main port's aiohttp route")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter that runs fabwatch, with its dependencies installed (default: this one)")
    a = parser.parse_args(argv)
    a.rates = a.rates or [10_000.0]
    if a.pin and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {1})
    results = []
    command: list[str] = []
    for run in range(a.runs):
        with tempfile.TemporaryDirectory(prefix="fabwatch-bench-listener-") as tmp:
            saturation, steadies, command = uvloop.run(one_run(a, Path(tmp)))
        results.append([saturation, *steadies])
        print(f"run {run + 1}: {saturation.rate:,.0f} events/s acked (p99 {saturation.quantile(0.99) * 1e3:.1f} ms, "
              f"{saturation.cpu_per_event * 1e6:.0f} µs CPU each); " + "; ".join(
                  f"at {rate:,.0f}/s offered: {p.rate:,.0f}/s, p50 {p.quantile(0.5) * 1e3:.1f} ms, "
                  f"p99 {p.quantile(0.99) * 1e3:.1f} ms" for rate, p in zip(a.rates, steadies, strict=True))
              + f"; failed {sum(p.failed for p in results[-1])}", flush=True)
    report(a, results, command)


def report(a: argparse.Namespace, results: list[list[Phase]], command: list[str]) -> None:
    def median(values: list[float]) -> float:
        return statistics.median(values)

    print()
    print(f"command: .venv/bin/python bench/{Path(__file__).name} {shlex.join(sys.argv[1:])}")
    print(f"fabwatch: {shlex.join(command)}")
    print(f"interpreter: {interpreter(a.python)}")
    print(f"load: this process{' on CPU 1' if a.pin else ''}, {a.connections} keep-alive connections, "
          f"posting to the {a.via} port, durability={a.durability}, batch_max={a.batch_max}, "
          f"median of {len(results)} runs")
    print()
    print("| phase | events | acked/s | p50 ms | p99 ms | max ms | fabwatch CPU µs/event | events per CPU-s |")
    print("|---|---|---|---|---|---|---|---|")
    labels = ["saturation", *(f"fixed {rate:,.0f}/s offered" for rate in a.rates)]
    for index, label in enumerate(labels):
        phases = [r[index] for r in results]
        print(f"| {label} | {phases[0].acked + phases[0].failed:,} | {median([p.rate for p in phases]):,.0f} | "
              f"{median([p.quantile(0.5) for p in phases]) * 1e3:.1f} | "
              f"{median([p.quantile(0.99) for p in phases]) * 1e3:.1f} | "
              f"{median([max(p.latencies) for p in phases]) * 1e3:.1f} | "
              f"{median([p.cpu_per_event for p in phases]) * 1e6:.0f} | "
              f"{median([1 / p.cpu_per_event for p in phases]):,.0f} |")


if __name__ == "__main__":
    main()
