"""Database time of fabwatch's sampling cycles on the peers' workload (PostgreSQL or SQLite).

Runs the real engine (`collector.engine.SourceSampler`) on bench/kpi_workload.yaml with the
clock set to the workload's fixed NOW: one first sample (reads the full windows), then
`--cycles` steady-state cycles, each `--step` seconds of clock later (the sampling interval;
no waiting: the clock is advanced, as time would pass). Reports per cycle the wall time and
the time spent inside the driver's execute calls (round trips included), as JSON.

    .venv/bin/python bench/cycles.py --dsn postgresql+asyncpg://postgres@127.0.0.1:55432/kpi_1m --out x.json
"""

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import event  # noqa: E402

from collector.engine import SourceSampler  # noqa: E402
from collector.inventory import load_inventory  # noqa: E402
from collector.state import StateStore  # noqa: E402

NOW = 1767225600.0  # the workload's fixed instant (make_db.py / kpi_queries.py)


class DbClock:
    """Sums the time spent in cursor.execute, and counts statements."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.statements = 0
        self._started = 0.0

    def attach(self, sync_engine: Any) -> None:
        event.listen(sync_engine, "before_cursor_execute", self._before)
        event.listen(sync_engine, "after_cursor_execute", self._after)

    def _before(self, *_: Any) -> None:
        self._started = time.perf_counter()

    def _after(self, *_: Any) -> None:
        self.seconds += time.perf_counter() - self._started
        self.statements += 1

    def take(self) -> tuple[float, int]:
        out = (self.seconds, self.statements)
        self.seconds, self.statements = 0.0, 0
        return out


async def run(dsn: str, cycles: int, step: float, reconcile: float | None, max_seconds: float) -> dict[str, Any]:
    inventory = load_inventory([ROOT / "bench" / "kpi_workload.yaml"], {"FABWATCH_BENCH_DSN": dsn})
    source = inventory.sources["kpi"]
    if reconcile is not None:
        source = source.model_copy(update={"reconcile": reconcile})
    with tempfile.TemporaryDirectory(prefix="fabwatch-cycles-") as tmp:
        state = StateStore(Path(tmp) / "state.db")
        sampler = SourceSampler("kpi", source, inventory.processes, state)
        await sampler.open()
        clock = DbClock()
        assert sampler._engine is not None
        clock.attach(sampler._engine.sync_engine)
        out: dict[str, Any] = {"dsn": dsn, "step_s": step, "reconcile_s": source.reconcile, "cycles": []}
        deadline = time.monotonic() + max_seconds
        try:
            for i in range(cycles + 1):
                if time.monotonic() > deadline:
                    break
                t = time.perf_counter()
                await sampler.sample(NOW + i * step)
                wall = time.perf_counter() - t
                db, statements = clock.take()
                out["cycles"].append({"i": i, "wall_s": wall, "db_s": db, "statements": statements})
        finally:
            await sampler.close()
            state.close()
    steady = [c for c in out["cycles"][1:]]
    if steady:
        out["first_db_ms"] = 1000 * out["cycles"][0]["db_s"]
        out["steady_db_ms"] = 1000 * statistics.median(c["db_s"] for c in steady)
        out["steady_wall_ms"] = 1000 * statistics.median(c["wall_s"] for c in steady)
        out["mean_db_ms"] = 1000 * statistics.fmean(c["db_s"] for c in steady)
        out["statements"] = steady[0]["statements"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--step", type=float, default=15.0, help="clock seconds between cycles (the interval)")
    ap.add_argument("--reconcile", type=float, help="override the source's reconcile period (seconds)")
    ap.add_argument("--max-seconds", type=float, default=120.0)
    ap.add_argument("--out")
    a = ap.parse_args()
    result = asyncio.run(run(a.dsn, a.cycles, a.step, a.reconcile, a.max_seconds))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "cycles"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
