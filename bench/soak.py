"""Soak: sampling, scrapes and events at a steady rate on accelerated simulated time.

Backfills `--days` of the simulated operator (SQLite) ending now, then starts `fabwatch serve` (a
real process) on the example inventory plus a ninth process fed by a `tmf_events` source, with its
clock running `--rate` times faster than the wall clock from now (`--clock-start`, `--clock-rate`):
at the default 2,016 a week passes every five minutes. For `--minutes` this process keeps the
simulated operator writing rows on that clock (one step a second), posts `--events` TMF events a
second to the events listener over one keep-alive connection, and scrapes `/metrics` twice a second.

Every 10 s it reads fabwatch's resident memory, open descriptors and threads from /proc, and its
asyncio tasks from `fab_service_tasks`. After the warm-up (the first quarter of the run) these
must stay flat: the last three readings' median against the first three after warm-up, under 5 %
growth. It also reports the scrape latency (p50, p99), how many samples each source took against
its schedule, and that the store holds every acknowledged event.

    .venv/bin/python bench/soak.py --minutes 10
"""

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tmf_http import connect, post  # noqa: E402

from simulator import Simulator  # noqa: E402
from tests.servers import free_port  # noqa: E402
from tests.sources.helpers import EVENT_PATH, stored_events, ticket_event  # noqa: E402

HOST = "127.0.0.1"
TICKETS = 5_000
"""Events cycle over this many tickets: the store's size levels off, as an operator's open tickets do."""
INTERVAL = 2.0
"""Seconds between two samples of each source (wall clock)."""
SAMPLES = re.compile(r'^fab_source_sample_duration_seconds_count\{source="([^"]+)"\} (\S+)$', re.M)
TASKS = re.compile(r"^fab_service_tasks (\S+)$", re.M)


@dataclass
class Reading:
    """One look at the fabwatch process."""

    at: float
    rss_mib: float
    fds: int
    threads: int
    tasks: float


@dataclass
class Soak:
    readings: list[Reading] = field(default_factory=list)
    scrapes: list[float] = field(default_factory=list)
    acked: int = 0
    refused: int = 0
    steps: int = 0
    rows: int = 0


def inventory(directory: Path) -> Path:
    """The example inventory with a ninth process, `problem_events`, fed by TMF621 events."""
    document = yaml.safe_load((ROOT / "examples" / "operator.yaml").read_text())
    problem = document["processes"]["problem"]
    events = {**problem, "name": "Problem Management (TMF621 events)",
              "records": {**problem["records"], "source": "events"},
              "kpis": {k: v for k, v in problem["kpis"].items() if v["kind"] not in ("value", "cost")}}
    events.pop("costs", None)
    document["processes"]["problem_events"] = events
    document["sources"]["events"] = {"kind": "tmf_events", "api": "tmf621", "version": 4,
                                     "store": str(directory / "events.db"), "interval": f"{INTERVAL:g}s"}
    document["service"] = {**document.get("service", {}), "state_path": str(directory / "state.db")}
    path = directory / "inventory.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def status(pid: int) -> tuple[float, int, int]:
    """Resident MiB, open descriptors and threads of `pid` (Linux /proc)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    rss = int(fields["VmRSS"].split()[0]) / 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd")), int(fields["Threads"])


def scrape(url: str) -> tuple[str, float]:
    started = time.perf_counter()
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as reply:
        body = reply.read().decode()
    return body, time.perf_counter() - started


async def load(a: argparse.Namespace, url: str, port: int, pid: int, dsn: str, start: float) -> Soak:
    """Drive the simulator, the events and the scrapes for `a.minutes`; read the process every 10 s.

    The simulator's clock starts at `start` when fabwatch was started; fabwatch's own starts a moment
    later, so it runs a little behind and rows reach it before their time, never late."""
    soak = Soak()
    clock = lambda: start + (time.time() - start) * a.rate  # noqa: E731
    simulator = Simulator(dsn, seed=7)
    connection = await connect(HOST, port)
    deadline = time.monotonic() + a.minutes * 60
    next_step = next_scrape = next_look = time.monotonic()
    sent = 0
    try:
        while time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_step:
                soak.rows += await simulator.step(clock())
                soak.steps += 1
                next_step += 1.0
            if now >= next_scrape:
                body, seconds = await asyncio.to_thread(scrape, url)
                soak.scrapes.append(seconds)
                next_scrape += 0.5
                if now >= next_look:
                    rss, fds, threads = status(pid)
                    tasks = TASKS.search(body)
                    soak.readings.append(Reading(now - deadline + a.minutes * 60, rss, fds, threads,
                                                 float(tasks.group(1)) if tasks else float("nan")))
                    next_look += 10.0
            due = int((now - (deadline - a.minutes * 60)) * a.events)
            while sent < due:
                code = await connection.request(post(HOST, port, EVENT_PATH,
                                                     ticket_event(sent, sent % TICKETS, 1 + sent // TICKETS)))
                soak.acked += code in (200, 201)
                soak.refused += code not in (200, 201)
                sent += 1
            await asyncio.sleep(0.02)
    finally:
        connection.close()
        await simulator.close()
    return soak


def growth(values: Sequence[float], warm: int) -> float:
    """Growth of the median of the last three readings over the median of the first three after warm-up."""
    after = values[warm:]
    if len(after) < 6:
        return float("nan")
    first, last = statistics.median(after[:3]), statistics.median(after[-3:])
    return (last - first) / first if first else float("nan")


def report(a: argparse.Namespace, soak: Soak, samples: dict[str, float], stored: int, command: list[str]) -> None:
    warm = len(soak.readings) // 4
    print(f"soak: {a.minutes:g} min wall, clock x{a.rate:g} = {a.minutes * a.rate / 1440:.1f} simulated days; "
          f"{soak.steps} simulator steps ({soak.rows} rows), {soak.acked} events acknowledged "
          f"({soak.refused} refused), {len(soak.scrapes)} scrapes")
    print(f"  command: {' '.join(command)}")
    print(f"  {'at s':>6} {'RSS MiB':>8} {'fds':>5} {'threads':>7} {'tasks':>6}")
    for r in soak.readings:
        print(f"  {r.at:6.0f} {r.rss_mib:8.1f} {r.fds:5d} {r.threads:7d} {r.tasks:6.0f}")
    for name, values in (("RSS", [r.rss_mib for r in soak.readings]), ("descriptors", [r.fds for r in soak.readings])):
        change = growth([float(v) for v in values], warm)
        print(f"  {name:>12} after warm-up: {change:+.1%} (goal: under +5 %)")
    third = max(1, (len(soak.readings) - warm) // 3)
    for name, counts in (("threads", [float(r.threads) for r in soak.readings[warm:]]),
                         ("tasks", [r.tasks for r in soak.readings[warm:]])):
        # small counts that move with what is in flight: flat means the peak does not climb
        print(f"  {name:>12} after warm-up: at most {max(counts[:third]):.0f} in the first third, "
              f"{max(counts[-third:]):.0f} in the last")
    ordered = sorted(soak.scrapes)
    print(f"  /metrics: p50 {statistics.median(ordered) * 1000:.1f} ms, "
          f"p99 {ordered[int(0.99 * (len(ordered) - 1))] * 1000:.1f} ms")
    expected = a.minutes * 60 / INTERVAL
    counts = ", ".join(f"{k} {v:.0f}" for k, v in samples.items())
    print(f"  samples per source (expected ~{expected:.0f}): {counts}")
    print(f"  events stored {stored} / acknowledged {soak.acked}: {'every one' if stored >= soak.acked else 'LOST'}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="wall minutes of load (default 10)")
    parser.add_argument("--rate", type=float, default=2016.0, help="simulated seconds per real second (default 2016)")
    parser.add_argument("--days", type=float, default=35.0,
                        help="days of history backfilled first (default 35: every 30-day window full from the start)")
    parser.add_argument("--events", type=float, default=20.0, help="TMF events posted per second (default 20)")
    a = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fabwatch-soak-") as tmp:
        directory = Path(tmp)
        dsn = f"sqlite+aiosqlite:///{directory / 'operator.db'}"
        start = time.time()
        simulator = Simulator(dsn, seed=7)

        async def backfill() -> int:
            try:
                await simulator.create_schema()
                return await simulator.backfill(a.days, start)
            finally:
                await simulator.close()

        print(f"backfilled {asyncio.run(backfill())} rows over {a.days:g} days", flush=True)
        port = free_port()
        url = f"http://{HOST}:{port}"
        clock_start = time.time()
        command = [sys.executable, "-m", "app.cli", "serve", "-c", str(inventory(directory)),
                   "--listen", f"{HOST}:{port}", "--clock-start", f"{clock_start:.3f}", "--clock-rate", f"{a.rate:g}"]
        env = {**os.environ, "FABWATCH_DEMO_DSN": dsn, "FABWATCH_INTERVAL": f"{INTERVAL:g}s"}
        with open(directory / "fabwatch.log", "wb") as log:
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
        try:
            ready = time.monotonic() + 60
            while time.monotonic() < ready:
                try:
                    with urllib.request.urlopen(f"{url}/readyz", timeout=1) as reply:
                        if reply.status == 200:
                            break
                except OSError:
                    time.sleep(0.2)
            else:
                raise SystemExit(f"fabwatch not ready in 60 s; log: {(directory / 'fabwatch.log').read_text()[-2000:]}")
            soak = asyncio.run(load(a, url, port, process.pid, dsn, clock_start))
            body, _ = scrape(url)
            samples = {name: float(value) for name, value in SAMPLES.findall(body)}
        finally:
            process.terminate()
            process.wait(30)
        report(a, soak, samples, stored_events(directory / "events.db"), command)


if __name__ == "__main__":
    main()
