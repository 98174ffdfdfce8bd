"""What the first start's backfill of the daily rollups costs the sampling: `fabwatch serve` (a real process)
on a simulated operator's year of history, started with a fresh state file (it backfills in the
background) and with one whose backfill is done (it does not), alternately, in one run.

For each start: the seconds from the process start to `/readyz` answering ready (every source sampled
once), the first sample's duration, and the mean duration of the samples taken in the `--watch`
seconds after it (from `fab_source_sample_duration_seconds`), with how many days the backfill still
had to do at the end (`fab_rollup_backfill_pending`). Prints JSON with the medians and ratios.

    .venv/bin/python bench/first_start.py --db /var/tmp/fabwatch-monthly/operator-1000000.db
"""

import argparse
import json
import os
import re
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from collector.rollups import RollupStore  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            return str(response.read().decode())
    except (urllib.error.URLError, OSError):
        return None


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def value(text: str, name: str) -> float | None:
    match = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def cursor(db: Path) -> float:
    """Where the simulated history ends: the serve's clock starts there."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return float(conn.execute("SELECT value FROM sim_state WHERE key = 'cursor'").fetchone()[0])


def start(db: Path, state: Path, clock: float, watch: float, timeout: float) -> dict[str, Any]:
    port = free_port()
    env = os.environ | {"FABWATCH_DEMO_DSN": f"sqlite+aiosqlite:///{db}", "FABWATCH_LOG_LEVEL": "warning"}
    started = time.monotonic()
    proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "fabwatch"), "serve", "-c",
                             str(ROOT / "examples" / "operator.yaml"), "--listen", f"127.0.0.1:{port}",
                             "--state", str(state), "--clock-start", str(clock)], env=env)
    try:
        while not ready(port):
            if time.monotonic() - started > timeout or proc.poll() is not None:
                raise RuntimeError(f"serve not ready in {timeout:g} s (exit {proc.poll()})")
            time.sleep(0.05)
        to_ready = time.monotonic() - started
        first = scrape(port) or ""
        count0 = value(first, "fab_source_sample_duration_seconds_count") or 0.0
        sum0 = value(first, "fab_source_sample_duration_seconds_sum") or 0.0
        time.sleep(watch)
        last = scrape(port) or ""
        count = (value(last, "fab_source_sample_duration_seconds_count") or 0.0) - count0
        spent = (value(last, "fab_source_sample_duration_seconds_sum") or 0.0) - sum0
        return {"ready_s": round(to_ready, 3), "first_sample_s": round(sum0 / count0, 3) if count0 else None,
                "samples_watched": int(count), "sample_mean_s": round(spent / count, 4) if count else None,
                "backfill_days_remaining": value(last, "fab_rollup_backfill_pending")}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def done_state(path: Path, clock: float) -> None:
    """A state file whose first-start backfill is done: the serve does not backfill."""
    store = RollupStore(path)
    try:
        store.plan_backfill("operator", "Europe/Berlin", date(2000, 1, 1), date(2000, 1, 1), clock)
        store.backfill_done("operator", clock)
    finally:
        store.close()


def median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r[key] is not None]
    return round(statistics.median(values), 4) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--db", required=True, help="a simulated operator's SQLite file (bench/monthly.py makes them)")
    parser.add_argument("--repeat", type=int, default=3, help="starts of each kind, alternated")
    parser.add_argument("--watch", type=float, default=60.0, help="seconds watched after ready")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for ready")
    args = parser.parse_args()
    db = Path(args.db)
    clock = cursor(db)
    runs: dict[str, list[dict[str, Any]]] = {"backfill": [], "none": []}
    for _ in range(args.repeat):
        for kind in runs:
            with tempfile.TemporaryDirectory() as tmp:
                state = Path(tmp) / "state.db"
                if kind == "none":
                    done_state(state, clock)
                runs[kind].append(start(db, state, clock, args.watch, args.timeout))
    out: dict[str, Any] = {"runs": runs}
    for key in ("ready_s", "first_sample_s", "sample_mean_s"):
        with_, without = median(runs["backfill"], key), median(runs["none"], key)
        out[key] = {"backfill": with_, "none": without,
                    "ratio": round(with_ / without, 3) if with_ and without else None}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
