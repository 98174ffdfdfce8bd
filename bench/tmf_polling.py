"""TMF polling throughput: resources per second synced from the simulator's TMF server.

Backfills a simulated operator (SQLite, `--days` at `--scale`, seed 7) once, serves it with
`python -m simulator.tmf` (a real process, pinned with `taskset -c 1`), and has fabwatch's
`TmfPoller` (this process, pinned to CPU 0) make a full sync of each API into a fresh record store
(offset/limit paging, `fields=`), then an incremental sync with nothing new. Medians of `--runs`;
bounded by `--timeout` per sync; loopback only.

    .venv/bin/python bench/tmf_polling.py --runs 5
"""

import argparse
import asyncio
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from proc import cpu_seconds  # noqa: E402

from collector.inventory.sources import TmfSource  # noqa: E402
from collector.sampling import open_store  # noqa: E402
from collector.sources.http import HttpClient, Limits  # noqa: E402
from collector.sources.polling import TmfPoller  # noqa: E402
from collector.sources.tmf import APIS  # noqa: E402
from simulator import Simulator  # noqa: E402
from tests.servers import free_port  # noqa: E402
from tests.sources.helpers import API_OF, example  # noqa: E402

START = 1_767_225_600.0
CASES = (("problem", 4), ("problem", 5), ("order", 4), ("interface", 5))
"""(process, TMF version) synced in each run."""


def serve_command(dsn: str, port: int, pin: bool) -> list[str]:
    command = [sys.executable, "-m", "simulator.tmf", "--dsn", dsn, "--listen", f"127.0.0.1:{port}",
               "--tick", "3600"]
    return ["taskset", "-c", "1", *command] if pin and shutil.which("taskset") else command


def wait_until_up(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"the TMF server did not answer on {url}")


Result = tuple[int, float, float, float, float]
"""resources, full sync s, incremental sync s, poller CPU s and TMF server CPU s of the full sync."""


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def sync_once(url: str, process: str, version: int, page_size: int, directory: Path,
                    timeout: float, server: int) -> Result:
    """Full sync then incremental sync into a fresh store."""
    api, ticket_type = API_OF[process]
    inventory = example({"x": {"kind": "sql", "dsn": "sqlite+aiosqlite:///unused.db"}},
                        dict.fromkeys(API_OF, "x"), directory / "state.db")
    store_file = directory / f"poll-{process}-{version}.db"
    store_file.unlink(missing_ok=True)
    source = TmfSource(kind=api, base_url=url + APIS[api].base_paths[version], version=version,  # type: ignore[arg-type]
                       query=f"ticketType={ticket_type}" if ticket_type else "", page_size=page_size,
                       store=str(store_file))
    store = open_store(process, source, {process: inventory.processes[process]}, directory / "state.db")
    client = HttpClient(process, Limits(timeout, 0, 0.1, 1 << 28))
    try:
        poller = TmfPoller(process, source, client, store)
        cpu, server_cpu, started = own_cpu(), cpu_seconds(server), time.perf_counter()
        count = await asyncio.wait_for(poller.sync(), timeout)
        full = time.perf_counter() - started
        cpu, server_cpu = own_cpu() - cpu, cpu_seconds(server) - server_cpu
        started = time.perf_counter()
        await asyncio.wait_for(poller.sync(), timeout)
        incremental = time.perf_counter() - started
    finally:
        await client.close()
        store.close()
    return count, full, incremental, cpu, server_cpu


async def backfill(dsn: str, days: float, scale: float) -> None:
    simulator = Simulator(dsn, seed=7, scale=scale)
    try:
        await simulator.create_schema()
        await simulator.backfill(days, START + days * 86_400)
    finally:
        await simulator.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--page-size", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=120.0, help="bound of each sync")
    parser.add_argument("--no-pin", dest="pin", action="store_false")
    a = parser.parse_args(argv)
    if a.pin and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {0})
    with tempfile.TemporaryDirectory(prefix="fabwatch-bench-polling-") as tmp:
        directory = Path(tmp)
        dsn = f"sqlite+aiosqlite:///{directory / 'operator.db'}"
        asyncio.run(backfill(dsn, a.days, a.scale))
        port = free_port()
        command = serve_command(dsn, port, a.pin)
        server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        results: dict[tuple[str, int], list[Result]] = {case: [] for case in CASES}
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_up(f"{url}/tmf-api/troubleTicket/v4/troubleTicket?limit=1")
            for run in range(a.runs):
                for process, version in CASES:
                    result = asyncio.run(sync_once(url, process, version, a.page_size, directory, a.timeout,
                                                    server.pid))
                    results[(process, version)].append(result)
                    print(f"run {run + 1} {process} v{version}: {result[0]:,} resources in {result[1]:.2f} s "
                          f"({result[0] / result[1]:,.0f}/s), incremental {result[2] * 1e3:.0f} ms; CPU poller "
                          f"{result[3]:.2f} s, server {result[4]:.2f} s", flush=True)
        finally:
            server.terminate()
            server.wait(10)
    print()
    print(f"command: .venv/bin/python bench/{Path(__file__).name} {shlex.join(sys.argv[1:])}")
    print(f"TMF server: {shlex.join(command)}")
    print(f"poller: this process{' on CPU 0' if a.pin else ''}, page size {a.page_size}, fields=, "
          f"median of {a.runs} runs")
    print()
    print("| API (process) | version | resources | full sync s | resources/s | incremental sync ms "
          "| poller CPU µs/resource | server CPU µs/resource |")
    print("|---|---|---|---|---|---|---|---|")
    for (process, version), rows in results.items():
        api = API_OF[process][0]
        print(f"| {api} ({process}) | v{version} | {rows[0][0]:,} | {statistics.median(r[1] for r in rows):.2f} | "
              f"{statistics.median(r[0] / r[1] for r in rows):,.0f} | "
              f"{statistics.median(r[2] for r in rows) * 1e3:.0f} | "
              f"{statistics.median(r[3] / r[0] for r in rows) * 1e6:.0f} | "
              f"{statistics.median(r[4] / r[0] for r in rows) * 1e6:.0f} |")


if __name__ == "__main__":
    main()
