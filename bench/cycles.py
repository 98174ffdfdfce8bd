"""Database time of fabwatch's sampling cycles on the peers' workload (PostgreSQL or SQLite).

Runs the real engine (`collector.engine.SourceSampler`) on bench/kpi_workload.yaml with the
clock set to the workload's fixed NOW: one first sample (reads the full windows), then
`--cycles` steady-state cycles, each `--step` seconds of clock later (the sampling interval;
no waiting: the clock is advanced, as time would pass). Reports per cycle the wall time and
the time spent inside the driver's execute calls (round trips included), as JSON, with the median
per statement of the steady cycles. `--explain` (PostgreSQL) then runs `EXPLAIN (ANALYZE, BUFFERS)`
on each statement of the last steady cycle, with its own parameters, and reports the plan nodes.

    .venv/bin/python bench/cycles.py --dsn postgresql+asyncpg://postgres@127.0.0.1:55432/kpi_1m --out x.json
"""

import argparse
import asyncio
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import event, make_url  # noqa: E402

from collector.engine import SourceSampler  # noqa: E402
from collector.inventory.load import load_inventory  # noqa: E402
from collector.state import StateStore  # noqa: E402

NOW = 1767225600.0  # the workload's fixed instant (make_db.py / kpi_queries.py)


class DbClock:
    """Sums the time spent in cursor.execute, counts statements, and keeps the last cycle's statements."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.statements = 0
        self._started = 0.0
        self.executed: list[tuple[str, Any, float]] = []
        """(statement, parameters, seconds) of the cycle being timed."""

    def attach(self, sync_engine: Any) -> None:
        event.listen(sync_engine, "before_cursor_execute", self._before)
        event.listen(sync_engine, "after_cursor_execute", self._after)

    def _before(self, *_: Any) -> None:
        self._started = time.perf_counter()

    def _after(self, _conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        spent = time.perf_counter() - self._started
        self.seconds += spent
        self.statements += 1
        self.executed.append((statement, parameters, spent))

    def take(self) -> tuple[float, int, list[tuple[str, Any, float]]]:
        out = (self.seconds, self.statements, self.executed)
        self.seconds, self.statements, self.executed = 0.0, 0, []
        return out


def statement_key(statement: str) -> str:
    """A short, stable name for a statement: its first words and a digest of its text."""
    head = " ".join(statement.split())[:60]
    return f"{head}… #{hashlib.sha1(statement.encode()).hexdigest()[:8]}"


def per_statement(cycles: list[list[tuple[str, Any, float]]]) -> list[dict[str, Any]]:
    """The median time of each distinct statement over the steady cycles, in first-seen order."""
    times: dict[str, list[float]] = {}
    for executed in cycles:
        for statement, _params, spent in executed:
            times.setdefault(statement_key(statement), []).append(spent)
    return [{"statement": k, "calls": len(v), "median_ms": 1000 * statistics.median(v)} for k, v in times.items()]


async def explain(dsn: str, executed: list[tuple[str, Any, float]], runs: int = 5) -> list[dict[str, Any]]:
    """EXPLAIN ANALYZE each read of a cycle with its parameters, as the engine runs it (custom plans).

    Each statement runs `runs` times on one connection and the medians are kept: the first run on
    a new connection also fills PostgreSQL's catalog caches.
    """
    import asyncpg  # only PostgreSQL has this; imported here so that SQLite runs need no driver

    url = make_url(dsn)
    conn = await asyncpg.connect(host=url.host, port=url.port, user=url.username, database=url.database)
    out = []
    try:
        await conn.execute("SET plan_cache_mode = force_custom_plan")
        for statement, params, spent in executed:
            if not statement.lstrip().upper().startswith(("SELECT", "WITH")) or "set_config(" in statement:
                continue  # the transaction's settings, not a read
            plans = []
            for _ in range(runs):
                raw = await conn.fetchval("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, *(params or ()))
                plans.append((json.loads(raw) if isinstance(raw, str) else raw)[0])
            out.append({"statement": statement_key(statement), "sql": statement,
                        "params": [str(p) for p in params or ()], "driver_ms": 1000 * spent,
                        "execution_ms": statistics.median(p["Execution Time"] for p in plans),
                        "planning_ms": statistics.median(p["Planning Time"] for p in plans),
                        "scans": scans(plans[-1]["Plan"]), "text": await explain_text(conn, statement, params)})
    finally:
        await conn.close()
    return out


async def explain_text(conn: Any, statement: str, params: Any) -> str:
    """The plan as PostgreSQL prints it, for reading."""
    rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) " + statement, *(params or ()))
    return "\n".join(r[0] for r in rows)


def scans(node: dict[str, Any]) -> list[str]:
    """Every scan node of a plan: its type, relation and index, and the rows it returned."""
    found = []
    if "Scan" in node["Node Type"]:
        where = node.get("Index Name") or node.get("Relation Name") or ""
        found.append(f"{node['Node Type']} {where} rows={node.get('Actual Rows')} loops={node.get('Actual Loops')}")
    for child in node.get("Plans", []):
        found.extend(scans(child))
    return found


async def run(dsn: str, cycles: int, step: float, reconcile: float | None, max_seconds: float,
              with_explain: bool = False) -> dict[str, Any]:
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
        steady_statements: list[list[tuple[str, Any, float]]] = []
        try:
            for i in range(cycles + 1):
                if time.monotonic() > deadline:
                    break
                t = time.perf_counter()
                await sampler.sample(NOW + i * step)
                wall = time.perf_counter() - t
                db, statements, executed = clock.take()
                if i > 0:
                    steady_statements.append(executed)
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
        out["per_statement"] = per_statement(steady_statements)
        if with_explain:
            out["explain"] = await explain(dsn, steady_statements[-1])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--step", type=float, default=15.0, help="clock seconds between cycles (the interval)")
    ap.add_argument("--reconcile", type=float, help="override the source's reconcile period (seconds)")
    ap.add_argument("--max-seconds", type=float, default=120.0)
    ap.add_argument("--explain", action="store_true", help="EXPLAIN ANALYZE the last steady cycle (PostgreSQL)")
    ap.add_argument("--out")
    a = ap.parse_args()
    result = asyncio.run(run(a.dsn, a.cycles, a.step, a.reconcile, a.max_seconds, a.explain))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("cycles", "per_statement", "explain")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
