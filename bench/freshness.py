"""Freshness: how long until a new row shows in /metrics, with `fabwatch serve` on the real clock.

Builds a small workload database whose timestamps end now (the peers' make_db.py --now), starts
`fabwatch serve` on it (bench/kpi_workload.yaml, `--interval` and `--settle` as given), then
`--rows` times, at a random moment of the sampling cycle, inserts one open row and polls /metrics
(every 20 ms, bounded) until it shows: in the backlog gauge and in the created counter (both read
up to `now - settle`). Prints the delays and the goal (interval + 1 s).

    .venv/bin/python bench/freshness.py --interval 5 --settle 1 --rows 5
"""

import argparse
import json
import os
import random
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT.parent / "shared" / "bench" / "peers"
BACKLOG = re.compile(r'^fab_backlog_items\{priority="critical",process="problem"\} (\S+)$', re.M)
CREATED = re.compile(r'^fab_items_created_total\{priority="critical",process="problem"\} (\S+)$', re.M)


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def value(pattern: re.Pattern[str], body: str) -> float:
    match = pattern.search(body)
    return float(match.group(1)) if match else 0.0


def wait_change(url: str, before: tuple[float, float], limit: float) -> tuple[float | None, float | None]:
    """Seconds until the backlog and the created counter grew, None for a timeout."""
    started = time.monotonic()
    seen: list[float | None] = [None, None]
    while time.monotonic() - started < limit and None in seen:
        body = scrape(url)
        for i, pattern in enumerate((BACKLOG, CREATED)):
            if seen[i] is None and value(pattern, body) > before[i]:
                seen[i] = time.monotonic() - started
        time.sleep(0.02)
    return seen[0], seen[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--settle", type=float, default=1.0)
    ap.add_argument("--rows", type=int, default=5)
    ap.add_argument("--port", type=int, default=19563)
    ap.add_argument("--out")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fabwatch-fresh-") as tmp:
        db = Path(tmp) / "kpi.sqlite"
        subprocess.run([sys.executable, str(PEERS / "make_db.py"), str(db), "--rows", "20000",
                        "--now", repr(time.time())], check=True, capture_output=True, timeout=120)
        env = {**os.environ, "FABWATCH_BENCH_DSN": f"sqlite+aiosqlite:///{db}", "FABWATCH_STATE": f"{tmp}/state.db",
               "FABWATCH_INTERVAL": f"{a.interval}s", "FABWATCH_SETTLE": str(a.settle), "FABWATCH_LOG_LEVEL": "warning"}
        url = f"http://127.0.0.1:{a.port}/metrics"
        proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "fabwatch"), "serve", "-c",
                                 str(ROOT / "bench" / "kpi_workload.yaml"), "--listen", f"127.0.0.1:{a.port}"], env=env)
        delays = []
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and "fab_kpi_value" not in _try(url):
                time.sleep(0.2)
            conn = sqlite3.connect(db)
            for i in range(a.rows):
                time.sleep(random.uniform(0, a.interval))
                body = scrape(url)
                before = (value(BACKLOG, body), value(CREATED, body))
                now = time.time()
                conn.execute("INSERT INTO records VALUES (?, 'problem', 'open', 'critical', 'web', ?, NULL, ?, 10, 0)",
                             (10_000_000 + i, now, now + 3600))
                conn.commit()
                backlog, created = wait_change(url, before, 3 * (a.interval + a.settle) + 5)
                delays.append({"backlog_s": backlog, "created_s": created})
                print(json.dumps(delays[-1]), flush=True)
            conn.close()
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    summary = {"interval_s": a.interval, "settle_s": a.settle, "goal_s": a.interval + 1,
               "backlog_max_s": max((d["backlog_s"] or 1e9) for d in delays),
               "backlog_median_s": statistics.median((d["backlog_s"] or 1e9) for d in delays),
               "created_max_s": max((d["created_s"] or 1e9) for d in delays),
               "created_median_s": statistics.median((d["created_s"] or 1e9) for d in delays)}
    print(json.dumps(summary))
    if a.out:
        Path(a.out).write_text(json.dumps({"summary": summary, "rows": delays}, indent=1))
    return 0


def _try(url: str) -> str:
    try:
        return scrape(url)
    except OSError:
        return ""


if __name__ == "__main__":
    sys.exit(main())
