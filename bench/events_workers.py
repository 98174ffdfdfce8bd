"""`serve --workers N`: durable events/s of two workers against one, and one worker's CPU per
event against the floor, side by side in one run.

Each run measures, in turn (fresh store and server each time, `durability: full`):

- `floor http`: `bench/listener_floor.py`'s bare server (httptools on uvloop answering 201
  without reading the body), pinned to CPU 0, under the same load;
- `floor store`: the record store writing the same events, already parsed, 128 per commit, with
  no HTTP (`listener_floor.py --store-alone`), pinned to CPU 0; the floor is the sum of the two;
- `workers 1`: `fabwatch serve` (events port), pinned to CPU 0, the load from CPU 1;
- `workers 2`: `fabwatch serve --workers 2`, not pinned: its two workers need both cores, and the
  load generator shares them.

The load generator is `bench/loadgen.c` (compiled here with gcc): epoll, pre-encoded requests,
`--connections` keep-alive connections with one request in flight each. It costs a few µs of
CPU per request where the Python client of `bench/tmf_http.py` costs 20-40; its CPU is measured
and reported. Each configuration is loaded to saturation (`--events` events: acknowledged events
per second, the server's CPU per event from /proc, all its processes), then offered half its
saturation rate for `--seconds`, open loop (p50/p99 from the scheduled send time). The store must
hold exactly the acknowledged events afterwards. Medians of `--runs` runs.

`cores used` is the server's and the load generator's CPU per second of the saturation phase:
two workers and the load generator on two free cores would use nearly 2.0; on a machine shared
with other jobs it says how much of the two cores the run got. The last lines give the bound that
the CPU costs alone set on two cores: one worker is pinned with the load generator on the other
core, so it runs at 1 / (its µs per event); two workers share both cores with the load generator,
so at most 2 / (their µs + the load generator's) a second; the ratio of the two.

    .venv/bin/python bench/events_workers.py --runs 5
"""

import argparse
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from proc import cpu_seconds, interpreter  # noqa: E402
from tmf_http import post  # noqa: E402

from tests.sources.helpers import EVENT_PATH, FabwatchProcess, events_inventory, stored_events, ticket_event  # noqa: E402

HOST = "127.0.0.1"
TICKETS = 10_000
CONFIGS = ("floor http", "floor store", "workers 1", "workers 2")


@dataclass
class Load:
    """What one load phase measured."""

    acked: int
    failed: int
    seconds: float
    p50: float
    p99: float
    server_cpu: float = 0.0
    client_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.acked / self.seconds


@dataclass
class Result:
    saturation: Load
    half: Load | None = None
    extra: dict[str, float] = field(default_factory=dict)


def free_port() -> int:
    """A port the kernel picks: other benchmarks and test runs on this machine take theirs from
    the tests' range, from its start."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def build_loadgen(directory: Path) -> Path:
    binary = directory / "loadgen"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(ROOT / "bench" / "loadgen.c")], check=True)
    return binary


def requests_file(path: Path, port: int, first: int, count: int) -> Path:
    """`count` event POSTs numbered from `first`, NUL-separated: tickets and versions cycle, so
    later events update rows."""
    path.write_bytes(b"\0".join(post(HOST, port, EVENT_PATH, ticket_event(n, n % TICKETS, 1 + n // TICKETS))
                                for n in range(first, first + count)))
    return path


def run_load(a: argparse.Namespace, port: int, requests: Path, rate: float, pids: Sequence[int]) -> Load:
    """Run the load generator once; the servers' CPU over the phase from /proc, its own from wait4."""
    command = [str(a.loadgen), HOST, str(port), str(requests), str(a.connections), f"{rate:.3f}", str(a.timeout)]
    if a.client_cpu is not None:
        command = ["taskset", "-c", a.client_cpu, *command]
    before = sum(cpu_seconds(pid) for pid in pids)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    server = sum(cpu_seconds(pid) for pid in pids) - before
    if process.returncode != 0:
        raise SystemExit(f"loadgen failed ({process.returncode})")
    acked, failed, seconds, p50, p99, _ = output.split()
    return Load(int(acked), int(failed), float(seconds), float(p50), float(p99), server,
                usage.ru_utime + usage.ru_stime)


def tree(pid: int) -> list[int]:
    """A process and its children (the workers)."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [pid, *(int(child) for child in children)]


def floor_http(a: argparse.Namespace, directory: Path) -> Result:
    port = free_port()
    command = ["taskset", "-c", "0", sys.executable, str(ROOT / "bench" / "listener_floor.py"), "--serve", "bare",
               "--port", str(port), "--dir", str(directory)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise SystemExit("the bare server did not start")
        a.client_cpu = "1"
        load = run_load(a, port, requests_file(directory / "floor.req", port, 0, a.events), 0, [server.pid])
    finally:
        server.kill()
        server.wait()
    return Result(load)


def floor_store(a: argparse.Namespace, directory: Path) -> Result:
    command = ["taskset", "-c", "0", sys.executable, str(ROOT / "bench" / "listener_floor.py"), "--store-alone",
               "--events", str(a.events), "--dir", str(directory)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=a.timeout, check=True)
    rate, cpu = (float(v) for v in done.stdout.split())
    seconds = a.events / rate
    return Result(Load(a.events, 0, seconds, float("nan"), float("nan"), cpu * a.events / 1e6, 0.0))


def fabwatch(a: argparse.Namespace, directory: Path, workers: int) -> Result:
    main_port, port = free_port(), free_port()
    inventory = events_inventory(directory, events_port=port)
    process = FabwatchProcess(inventory, main_port, cpu=0 if workers == 1 else None, log=directory / "fabwatch.log",
                              workers=workers)
    a.client_cpu = "1" if workers == 1 else None
    saturation_file = requests_file(directory / "saturation.req", port, 0, a.events)
    try:
        process.start()
    except RuntimeError:
        sys.stderr.write((directory / "fabwatch.log").read_text())
        raise
    try:
        assert process.process is not None
        time.sleep(0.5 * workers)  # the workers listen once `serve` answers; let them settle
        pids = tree(process.process.pid)
        if len(pids) != workers + (1 if workers > 1 else 0):
            raise SystemExit(f"expected {workers} workers, found processes {pids}")
        run_load(a, port, requests_file(directory / "warm.req", port, 10_000_000, 500), 0, pids)  # warm-up
        saturation = run_load(a, port, saturation_file, 0, pids)
        rate = saturation.rate / 2
        half_file = requests_file(directory / "half.req", port, a.events, int(rate * a.seconds))
        time.sleep(0.5)
        half = run_load(a, port, half_file, rate, pids)
    finally:
        process.stop()
    stored = stored_events(directory / "events.db") - 500
    if stored != saturation.acked + half.acked:
        raise SystemExit(f"store holds {stored} events, {saturation.acked + half.acked} were acknowledged")
    return Result(saturation, half)


def one_run(a: argparse.Namespace, config: str) -> Result:
    with tempfile.TemporaryDirectory(prefix="fabwatch-bench-workers-") as tmp:
        directory = Path(tmp)
        if config == "floor http":
            return floor_http(a, directory)
        if config == "floor store":
            return floor_store(a, directory)
        return fabwatch(a, directory, int(config.split()[1]))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--events", type=int, default=40_000, help="events of the saturation phase")
    parser.add_argument("--connections", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of the phase at half the saturation rate")
    parser.add_argument("--timeout", type=float, default=120.0, help="bound of each phase")
    parser.add_argument("--only", action="append", choices=CONFIGS,
                        help="measure only this configuration (repeat for several; default: all, for the ratios)")
    a = parser.parse_args(argv)
    configs = a.only or CONFIGS
    with tempfile.TemporaryDirectory(prefix="fabwatch-loadgen-") as tmp:
        a.loadgen = build_loadgen(Path(tmp))
        results: dict[str, list[Result]] = {config: [] for config in configs}
        for run in range(a.runs):
            for config in configs:
                results[config].append(one_run(a, config))
            print(f"run {run + 1}: " + "; ".join(_line(config, results[config][-1]) for config in configs),
                  flush=True)
    report(a, results)


def _line(config: str, result: Result) -> str:
    load = result.saturation
    return f"{config} {load.rate:,.0f}/s {load.server_cpu / load.acked * 1e6:.0f} µs"


def report(a: argparse.Namespace, results: dict[str, list[Result]]) -> None:
    def median(values: Sequence[float]) -> float:
        return statistics.median(values)

    def cpu(config: str) -> float:
        return median([r.saturation.server_cpu / r.saturation.acked * 1e6 for r in results[config]])

    print()
    print(f"command: .venv/bin/python bench/{Path(__file__).name} {shlex.join(sys.argv[1:])}")
    print(f"interpreter: {interpreter(sys.executable)}")
    print(f"load: bench/loadgen.c, {a.connections} keep-alive connections, {a.events:,} events at saturation, "
          f"then half the saturation rate for {a.seconds:g} s; durability full; median of {a.runs} runs")
    print()
    print("| configuration | acked/s | server CPU µs/event | client CPU µs/event | cores used | at half rate: acked/s "
          "| p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for config in results:
        rs = results[config]
        half = [r.half for r in rs if r.half is not None]
        tail = (f"{median([h.rate for h in half]):,.0f} | {median([h.p50 for h in half]) * 1e3:.1f} | "
                f"{median([h.p99 for h in half]) * 1e3:.1f}") if half else "- | - | -"
        client = median([r.saturation.client_cpu / r.saturation.acked * 1e6 for r in rs])
        cores = median([(r.saturation.server_cpu + r.saturation.client_cpu) / r.saturation.seconds for r in rs])
        print(f"| {config} | {median([r.saturation.rate for r in rs]):,.0f} | {cpu(config):.1f} | "
              f"{client:.1f} | {cores:.2f} | {tail} |")
    if set(results) != set(CONFIGS):
        return
    ratios = [w2.saturation.rate / w1.saturation.rate
              for w1, w2 in zip(results["workers 1"], results["workers 2"], strict=True)]
    floors = [(h.saturation.server_cpu / h.saturation.acked + s.saturation.server_cpu / s.saturation.acked) * 1e6
              for h, s in zip(results["floor http"], results["floor store"], strict=True)]
    over = [w1.saturation.server_cpu / w1.saturation.acked * 1e6 / floor
            for w1, floor in zip(results["workers 1"], floors, strict=True)]
    print()
    print(f"workers 2 / workers 1, acked/s: median {median(ratios):.2f} "
          f"(runs: {', '.join(f'{r:.2f}' for r in ratios)})")
    bounds = [2 * w1.saturation.server_cpu / w1.saturation.acked
              / ((w2.saturation.server_cpu + w2.saturation.client_cpu) / w2.saturation.acked)
              for w1, w2 in zip(results["workers 1"], results["workers 2"], strict=True)]
    print(f"at most on two free cores, from these CPU costs (2 x workers 1 server µs / (workers 2 server + client "
          f"µs)): median {median(bounds):.2f} (runs: {', '.join(f'{r:.2f}' for r in bounds)})")
    print(f"floor (http + store) {median(floors):.1f} µs/event; workers 1 CPU / floor: median {median(over):.2f} "
          f"(runs: {', '.join(f'{r:.2f}' for r in over)})")


if __name__ == "__main__":
    main()
