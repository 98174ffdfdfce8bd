"""Status page and API under load: does /metrics stay fast and sampling on schedule?

Backfills the simulated operator (`--days`), keeps it running live, and starts `fabwatch serve` on
the example inventory (examples/operator.yaml) sampling it every `--interval` seconds. Then two
phases of `--seconds` each, in the same run:

1. floor: a prober alone scrapes /metrics (one request at a time, every 50 ms);
2. load: the same prober while `--clients` concurrent clients loop over the status page and the
   API (/, /api/v1/processes, /api/v1/processes/{name}, /api/v1/kpis, /api/v1/slos,
   /api/v1/sources) as fast as they are answered (a stress: one event loop serves them all),
   each request bounded by a 10 s timeout;
3. paced load: the same clients, each waiting `--pace` seconds between its requests (50 clients
   at 1 s: 50 requests a second, ten times what 50 wall screens reloading every 5 s ask).

The prober and the load run in processes of their own, so that the load's client work does not
delay the prober's clock. Sampling on schedule: during each phase the prober also reads
`fab_source_last_success_timestamp_seconds`; the gaps between successive samples' ends should be
the interval. Prints the p50/p99/max of /metrics, the load's requests and errors, the sample
gaps and samples taken vs expected, and the goal (p99 < 50 ms).

    .venv/bin/python bench/status_load.py --seconds 60 --clients 50
"""

import argparse
import asyncio
import itertools
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
FABWATCH = str(ROOT / ".venv" / "bin" / "fabwatch")
LAST = re.compile(r'^fab_source_last_success_timestamp_seconds\{source="operator"\} (\S+)$', re.M)
PROCESSES = ("interface", "order", "problem", "retention", "qos_sla", "invoice", "payments", "bill_inquiry")
PATHS = ("/", "/api/v1/processes", "/api/v1/kpis", "/api/v1/slos", "/api/v1/sources",
         *(f"/api/v1/processes/{p}" for p in PROCESSES))
TIMEOUT = 10.0


async def probe(base: str, seconds: float) -> dict[str, object]:
    """Scrape /metrics one request at a time for `seconds`; latencies and the sample ends seen."""
    latencies: list[float] = []
    ends: list[float] = []
    failures = 0
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                async with session.get(f"{base}/metrics", headers={"Accept-Encoding": "gzip"}) as response:
                    body = await response.text()
                    ok = response.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ok, body = False, ""
            latencies.append(time.perf_counter() - started)
            failures += not ok
            match = LAST.search(body)
            if match and (not ends or float(match.group(1)) != ends[-1]):
                ends.append(float(match.group(1)))
            await asyncio.sleep(0.05)
    return {"latencies": latencies, "ends": ends, "failures": failures}


async def load(base: str, seconds: float, clients: int, pace: float) -> dict[str, object]:
    """`clients` concurrent loops over the page and the API for `seconds`, each pausing `pace`
    seconds between requests; requests and errors."""
    counts = {"requests": 0, "errors": 0}
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def client(session: aiohttp.ClientSession, rng: random.Random) -> None:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                async with session.get(base + rng.choice(PATHS)) as response:
                    await response.read()
                    counts["errors"] += response.status != 200
            except (aiohttp.ClientError, TimeoutError):
                counts["errors"] += 1
            counts["requests"] += 1
            latencies.append(time.perf_counter() - started)
            if pace:
                await asyncio.sleep(pace)

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT), connector=connector) as session:
        await asyncio.gather(*(client(session, random.Random(i)) for i in range(clients)))
    return {**counts, "latencies": latencies}


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run_child(role: str, base: str, seconds: float, clients: int, pace: float = 0.0) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, __file__, "--role", role, "--base", base, "--seconds", str(seconds),
                             "--clients", str(clients), "--pace", str(pace)], stdout=subprocess.PIPE, text=True)


def result_of(proc: subprocess.Popen[str], seconds: float) -> dict[str, object]:
    out, _ = proc.communicate(timeout=seconds + 60)
    return dict(json.loads(out))


def phase(name: str, base: str, seconds: float, clients: int, interval: float, pace: float = 0.0) -> dict[str, object]:
    """Run the prober (and the load when `clients`); summarise."""
    prober = run_child("probe", base, seconds, 0)
    loader = run_child("load", base, seconds, clients, pace) if clients else None
    probed = result_of(prober, seconds)
    loaded = result_of(loader, seconds) if loader else None
    ms = [x * 1000 for x in probed["latencies"]]  # type: ignore[attr-defined]
    ends: list[float] = probed["ends"]  # type: ignore[assignment]
    gaps = [b - a for a, b in itertools.pairwise(ends)]
    summary: dict[str, object] = {
        "phase": name, "scrapes": len(ms), "scrape_failures": probed["failures"],
        "metrics_p50_ms": round(statistics.median(ms), 2), "metrics_p99_ms": round(quantile(ms, 0.99), 2),
        "metrics_max_ms": round(max(ms), 2),
        "samples": len(ends), "samples_expected": round(seconds / interval, 1),
        "sample_gap_mean_s": round(statistics.mean(gaps), 3) if gaps else None,
        "sample_gap_max_s": round(max(gaps), 3) if gaps else None,
        "sample_lag_max_s": round(max(gaps) - interval, 3) if gaps else None,
    }
    if loaded is not None:
        lat = [x * 1000 for x in loaded["latencies"]]  # type: ignore[attr-defined]
        summary.update(load_requests=loaded["requests"], load_errors=loaded["errors"],
                       load_rps=round(loaded["requests"] / seconds, 1),  # type: ignore[operator]
                       load_p50_ms=round(statistics.median(lat), 1), load_p99_ms=round(quantile(lat, 0.99), 1))
    return summary


def wait_sampled(base: str, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("fabwatch never became ready")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--pace", type=float, default=1.0, help="seconds each client waits in the paced phase")
    ap.add_argument("--days", type=float, default=7.0)
    ap.add_argument("--port", type=int, default=19564)
    ap.add_argument("--role", choices=("probe", "load"), help=argparse.SUPPRESS)
    ap.add_argument("--base", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.role == "probe":
        print(json.dumps(asyncio.run(probe(a.base, a.seconds))))
        return 0
    if a.role == "load":
        print(json.dumps(asyncio.run(load(a.base, a.seconds, a.clients, a.pace))))
        return 0
    with tempfile.TemporaryDirectory(prefix="fabwatch-status-load-") as tmp:
        dsn = f"sqlite+aiosqlite:///{tmp}/operator.db"
        subprocess.run([FABWATCH, "simulate", "--dsn", dsn, "--days", str(a.days)], check=True, timeout=300,
                       capture_output=True)
        env = {**os.environ, "FABWATCH_DEMO_DSN": dsn, "FABWATCH_INTERVAL": f"{a.interval}s",
               "FABWATCH_LOG_LEVEL": "warning"}
        base = f"http://127.0.0.1:{a.port}"
        live = subprocess.Popen([FABWATCH, "simulate", "--dsn", dsn, "--live"], env=env)
        serve = subprocess.Popen([FABWATCH, "serve", "-c", str(ROOT / "examples" / "operator.yaml"),
                                  "--listen", f"127.0.0.1:{a.port}", "--state", f"{tmp}/state.db"], env=env)
        try:
            wait_sampled(base)
            time.sleep(a.interval)  # past the first (cold) samples
            results = [phase("floor", base, a.seconds, 0, a.interval),
                       phase(f"load ({a.clients} clients, no pause)", base, a.seconds, a.clients, a.interval),
                       phase(f"paced load ({a.clients} clients, {a.pace:g} s pause)", base, a.seconds, a.clients,
                             a.interval, a.pace)]
        finally:
            for proc in (serve, live):
                proc.terminate()
                proc.wait(timeout=30)
    for result in results:
        print(json.dumps(result))
    floor = results[0]
    for loaded in results[1:]:
        met = "met" if float(loaded["metrics_p99_ms"]) < 50 else "NOT met"  # type: ignore[arg-type]
        print(f"{loaded['phase']}: /metrics p99 {loaded['metrics_p99_ms']} ms (floor {floor['metrics_p99_ms']} ms; "
              f"goal < 50 ms: {met}); samples {loaded['samples']} of {loaded['samples_expected']} expected, "
              f"largest gap {loaded['sample_gap_max_s']} s for a {a.interval:g} s interval")
    return 0


if __name__ == "__main__":
    sys.exit(main())
