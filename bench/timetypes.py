"""fabwatch's steady cycle on epoch-second and on `timestamptz` time columns, and query-exporter, in one run.

One PostgreSQL 15, started by the peers' own `setup_pg.sh` in a temporary directory on a free
loopback port, holds per size two databases built from the same rows of the peers' workload
(../shared/bench/peers/WORKLOAD.md):

  kpi_<n>     the peers' `records` table: times as epoch seconds (DOUBLE PRECISION);
  kpi_<n>_tz  a copy of it (`CREATE DATABASE ... TEMPLATE`) whose created_at, resolved_at and due_at
              are turned into `timestamptz` by `ALTER TABLE ... TYPE timestamptz USING to_timestamp(x)`:
              same rows in the same physical order, the same four indexes (rebuilt on the new type).

fabwatch reads both with the same inventory (bench/kpi_workload.yaml), only the DSN differs: the
engine finds the column type on its first connection and binds its watermarks as `timestamptz`.
Then, per repetition:

  fabwatch on both databases  one fresh process (`timetypes.py pair`) runs the real engine on each
                              (bench/cycles.py's method: clock at the workload's NOW, first sample, then
                              --cycles steady cycles 15 s of clock apart), alternating the two cycle by
                              cycle (ABBA), so that the machine's load falls on both alike; database
                              time = time inside the driver's execute calls, round trips included;
  query-exporter and floor    the peers' run_bench.sh, unchanged (REPS=1, TARGETS="floor_pg qe_pg"),
                              on the epoch database: wall time of one collection of the 5 statements.

In the last repetition, each read of one steady cycle is also run 5 times under `EXPLAIN (ANALYZE,
BUFFERS)` on each database (server-side planning and execution time, and the plan's scans). Then the
completed-edge statement (cycle-time buckets, SLA, labour cost) runs on its steady edges and on the
full 7-day window (what the first sample and each reconcile read) as built for epoch columns, as
built for timestamptz (`EXTRACT(epoch ...)`), and rewritten with `date_part('epoch', ...)` or with
interval arithmetic, checking that all give the same rows. Prints a Markdown summary and writes
everything under --out. Every step is bounded by a timeout; a size whose
data cannot be built within --build-timeout is reported and skipped.

    .venv/bin/python bench/timetypes.py                              # 1M and 10M rows, 5 repetitions
    .venv/bin/python bench/timetypes.py --sizes 1000000 3000000 --reps 3
    .venv/bin/python bench/timetypes.py variants --port P --result OUT/kpi_1m/fabwatch.r5.json  # after --keep
"""

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from cycles import NOW, DbClock, explain, per_statement  # noqa: E402

from collector.engine import SourceSampler  # noqa: E402
from collector.inventory.load import load_inventory  # noqa: E402
from collector.state import StateStore  # noqa: E402

WEEK = 7 * 86400.0
_EXTRACT = r"CAST\(EXTRACT\(epoch FROM records\.(\w+)\) AS DOUBLE PRECISION\)"

PEERS = (ROOT / ".." / "shared" / "bench" / "peers").resolve()
PGBIN = Path("/usr/lib/postgresql/15/bin")
QE_VENV = Path(os.environ.get("VENV", "/tmp/qe"))
VARIANTS = ("epoch", "timestamptz")
TIME_COLUMNS = ("created_at", "resolved_at", "due_at")


def log(message: str) -> None:
    """Print a progress line with the UTC time."""
    print(f"[{time.strftime('%H:%M:%S', time.gmtime())}] {message}", flush=True)


def free_port() -> int:
    """A loopback TCP port that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kept_port(root: Path) -> int | None:
    """The port of a cluster setup_pg.sh made earlier in `root` (it writes it into postgresql.conf)."""
    conf = root / "data" / "postgresql.conf"
    if not conf.exists():
        return None
    ports = [line.split("=")[1].split("#")[0].strip() for line in conf.read_text().splitlines()
             if line.startswith("port =")]
    return int(ports[-1]) if ports else None


def db_name(rows: int) -> str:
    """The database name the peers' scripts give to a size."""
    return {1_000_000: "kpi_1m", 100_000: "kpi_100k"}.get(rows, f"kpi_{rows}")


class Postgres:
    """The peers' throw-away PostgreSQL, in our own directory and on our own port."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        self.env = {**os.environ, "PGROOT": str(root), "PGPORT": str(port), "PY": sys.executable}

    def load(self, rows: int, timeout: float) -> None:
        """Start the server if needed and load the epoch table (the peers' setup_pg.sh)."""
        subprocess.run(["bash", str(PEERS / "setup_pg.sh")], env={**self.env, "ROWS": str(rows)},
                       check=True, timeout=timeout)

    def psql(self, db: str, sql: str, timeout: float = 60) -> str:
        """Run SQL through psql; return its unaligned output."""
        done = subprocess.run([str(PGBIN / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                               "-d", db, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql],
                              capture_output=True, text=True, check=True, timeout=timeout)
        return done.stdout.strip()

    def stop(self) -> None:
        """Stop the server (setup_pg.sh stop: by its postmaster PID)."""
        subprocess.run(["bash", str(PEERS / "setup_pg.sh"), "stop"], env=self.env, timeout=60, check=False)

    def dsn(self, db: str) -> str:
        """The SQLAlchemy URL fabwatch reads a database by."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{db}"


def build_tz(pg: Postgres, db: str, rows: int, timeout: float) -> float:
    """Copy `db` to `db`_tz with timestamptz time columns; return the seconds it took (0 when kept)."""
    tz = f"{db}_tz"
    have = pg.psql("postgres", f"SELECT 1 FROM pg_database WHERE datname = '{tz}'")
    if have == "1":
        kind = pg.psql(tz, "SELECT data_type FROM information_schema.columns "
                           "WHERE table_name = 'records' AND column_name = 'created_at'")
        if kind == "timestamp with time zone" and pg.psql(tz, "SELECT count(*) FROM records") == str(rows):
            log(f"{tz}: already built")
            return 0.0
    started = time.monotonic()
    pg.psql("postgres", f"DROP DATABASE IF EXISTS {tz}")
    pg.psql("postgres", f"CREATE DATABASE {tz} TEMPLATE {db}", timeout)
    alter = ", ".join(f"ALTER {c} TYPE timestamptz USING to_timestamp({c})" for c in TIME_COLUMNS)
    pg.psql(tz, f"ALTER TABLE records {alter}", timeout)
    pg.psql(tz, "VACUUM ANALYZE records", timeout)
    took = time.monotonic() - started
    log(f"{tz}: built in {took:.0f} s")
    return took


def describe_tables(pg: Postgres, db: str) -> dict[str, Any]:
    """Column types, indexes and sizes, to show that the two tables differ only in the time types."""
    columns = pg.psql(db, "SELECT string_agg(column_name || ' ' || data_type, ', ' ORDER BY ordinal_position) "
                          "FROM information_schema.columns WHERE table_name = 'records'")
    indexes = pg.psql(db, "SELECT string_agg(indexdef, '; ' ORDER BY indexname) FROM pg_indexes "
                          "WHERE tablename = 'records'")
    size = pg.psql(db, "SELECT pg_size_pretty(pg_table_size('records')) || ' table, ' || "
                       "pg_size_pretty(pg_indexes_size('records')) || ' indexes'")
    return {"columns": columns, "indexes": indexes, "size": size}


async def pair(dsns: dict[str, str], cycles: int, step: float, with_explain: bool) -> dict[str, Any]:
    """Run the engine on each database, steady cycles alternating between them (ABBA)."""
    out: dict[str, Any] = {"dsns": dsns, "step_s": step}
    with tempfile.TemporaryDirectory(prefix="fabwatch-tz-") as tmp:
        samplers: dict[str, SourceSampler] = {}
        clocks: dict[str, DbClock] = {}
        states: list[StateStore] = []
        try:
            for variant, dsn in dsns.items():
                inventory = load_inventory([ROOT / "bench" / "kpi_workload.yaml"], {"FABWATCH_BENCH_DSN": dsn})
                states.append(StateStore(Path(tmp) / f"{variant}.db"))
                samplers[variant] = SourceSampler("kpi", inventory.sources["kpi"], inventory.processes, states[-1])
                await samplers[variant].open()
                clocks[variant] = DbClock()
                assert samplers[variant]._engine is not None
                clocks[variant].attach(samplers[variant]._engine.sync_engine)
            runs: dict[str, list[dict[str, Any]]] = {v: [] for v in dsns}
            executed: dict[str, list[list[tuple[str, Any, float]]]] = {v: [] for v in dsns}
            order = list(dsns)
            for i in range(cycles + 1):
                for variant in order if i % 2 == 0 else order[::-1]:
                    started = time.perf_counter()
                    await samplers[variant].sample(NOW + i * step)
                    wall = time.perf_counter() - started
                    db, statements, done = clocks[variant].take()
                    runs[variant].append({"i": i, "wall_s": wall, "db_s": db, "statements": statements})
                    if i > 0:
                        executed[variant].append(done)
        finally:
            for sampler in samplers.values():
                await sampler.close()
            for state in states:
                state.close()
    for variant in dsns:
        steady = runs[variant][1:]
        out[variant] = {"cycles": runs[variant], "first_db_ms": 1000 * runs[variant][0]["db_s"],
                        "steady_db_ms": 1000 * statistics.median(c["db_s"] for c in steady),
                        "steady_wall_ms": 1000 * statistics.median(c["wall_s"] for c in steady),
                        "statements": steady[0]["statements"], "per_statement": per_statement(executed[variant])}
        if with_explain:
            out[variant]["explain"] = await explain(dsns[variant], executed[variant][-1])
    a, b = list(dsns)
    out["cycle_ratios"] = [tb["db_s"] / ta["db_s"] for ta, tb in zip(runs[a][1:], runs[b][1:], strict=True)]
    return out


def run_pair(pg: Postgres, dbs: dict[str, str], cycles: int, out: Path, with_explain: bool) -> dict[str, Any] | None:
    """One repetition of fabwatch on both databases, in a fresh process."""
    cmd = [sys.executable, __file__, "pair", "--cycles", str(cycles), "--out", str(out)]
    cmd += [f"--{variant}={pg.dsn(db)}" for variant, db in dbs.items()] + (["--explain"] if with_explain else [])
    try:
        subprocess.run(cmd, check=True, timeout=600)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        log(f"fabwatch pair failed: {exc}")
        return None
    return dict(json.loads(out.read_text()))


def run_peers(pg: Postgres, db: str, out: Path) -> dict[str, float]:
    """query-exporter and the floor on the epoch database, measured by the peers' run_bench.sh."""
    env = {**pg.env, "DB": db, "REPS": "1", "TARGETS": "floor_pg qe_pg", "OUT": str(out), "BUDGET_S": "400",
           "QE_PORT": str(free_port())}
    try:
        subprocess.run(["bash", str(PEERS / "run_bench.sh")], env=env, timeout=500, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        log(f"run_bench.sh on {db} timed out")
    got = {}
    for target, name in (("qe_pg", "qe_pg.collect.r1.json"), ("floor_pg", "floor_pg.floor.r1.json")):
        path = out / name
        if path.exists():
            got[target] = float(json.loads(path.read_text())["collect_ms"])
        else:
            log(f"{target} on {db}: no result (see {out}/run.log)")
    return got


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def fmt(s: dict[str, float] | None, digits: int = 1) -> str:
    """`median (min-max)`."""
    if not s:
        return "-"
    return f"{s['median']:,.{digits}f} ({s['min']:,.{digits}f}-{s['max']:,.{digits}f})"


def measure_size(pg: Postgres, rows: int, reps: int, cycles: int, out: Path) -> dict[str, Any]:
    """Every repetition at one size, fabwatch and the peers alternating; the per-size summary."""
    db = db_name(rows)
    dbs = {"epoch": db, "timestamptz": f"{db}_tz"}
    pairs: list[dict[str, Any]] = []
    peers: list[dict[str, float]] = []
    for r in range(1, reps + 1):
        log(f"{db} repetition {r}/{reps}")
        for step in ("fabwatch", "peers") if r % 2 else ("peers", "fabwatch"):
            if step == "fabwatch":
                pairs.append(run_pair(pg, dbs, cycles, out / f"fabwatch.r{r}.json", r == reps) or {})
            else:
                peers.append(run_peers(pg, db, out / f"peers.r{r}"))
    done = [p for p in pairs if p]
    summary: dict[str, Any] = {"rows": rows, "databases": dbs, "repetitions": reps, "cycles": cycles,
                               "tables": {v: describe_tables(pg, dbs[v]) for v in VARIANTS}}
    if done:
        for variant in VARIANTS:
            summary[variant] = {key: spread([d[variant][key] for d in done])
                                for key in ("steady_db_ms", "steady_wall_ms", "first_db_ms")}
            last = done[-1][variant]
            summary[variant].update(statements=last["statements"], per_statement=last["per_statement"],
                                    explain=last.get("explain", []))
            if last.get("explain"):
                summary[variant]["server_ms"] = sum(e["planning_ms"] + e["execution_ms"] for e in last["explain"])
        summary["ratio_tz_epoch"] = spread([d["timestamptz"]["steady_db_ms"] / d["epoch"]["steady_db_ms"]
                                            for d in done])
        summary["ratio_per_cycle"] = spread([x for d in done for x in d["cycle_ratios"]])
        summary["ratio_first"] = spread([d["timestamptz"]["first_db_ms"] / d["epoch"]["first_db_ms"] for d in done])
    for target in ("qe_pg", "floor_pg"):
        values = [p[target] for p in peers if target in p]
        if values:
            summary[target] = spread(values)
    return summary


def report(sizes: list[dict[str, Any]]) -> str:
    """The Markdown summary: one table, then the plans of the edge statements."""
    lines = ["| rows | steady cycle, epoch, ms | steady cycle, timestamptz, ms | timestamptz / epoch (goal ≤ 1.5) | "
             "same, cycle by cycle | query-exporter collection, ms | timestamptz / query-exporter (goal ≤ 0.1) | "
             "floor (psycopg), ms | server time per steady cycle, EXPLAIN ANALYZE, epoch / timestamptz, ms | "
             "first sample, epoch / timestamptz, ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in sizes:
        if "skipped" in s:
            lines.append(f"| {s['rows']:,} | skipped: {s['skipped']} |" + " |" * 8)
            continue
        e, t = s.get("epoch", {}), s.get("timestamptz", {})
        vs_qe = f"{t['steady_db_ms']['median'] / s['qe_pg']['median']:.4f}" if t and "qe_pg" in s else "-"
        server = f"{e['server_ms']:.2f} / {t['server_ms']:.2f}" if "server_ms" in e and "server_ms" in t else "-"
        first = (f"{fmt(e['first_db_ms'], 0)} / {fmt(t['first_db_ms'], 0)}" if e and t else "-")
        lines.append(f"| {s['rows']:,} | {fmt(e.get('steady_db_ms'), 2)} | {fmt(t.get('steady_db_ms'), 2)} | "
                     f"{fmt(s.get('ratio_tz_epoch'), 2)} | {fmt(s.get('ratio_per_cycle'), 2)} | "
                     f"{fmt(s.get('qe_pg'))} | {vs_qe} | {fmt(s.get('floor_pg'))} | {server} | {first} |")
    for s in sizes:
        if "variants" in s:
            lines.append(f"\n{s['rows']:,} rows: server time of the completed-edge statement (median of 3)\n")
            lines.append(s["variants"])
        for variant in VARIANTS:
            plans = s.get(variant, {}).get("explain", [])
            if plans:
                lines.append(f"\n{s['rows']:,} rows, {variant}: EXPLAIN ANALYZE of one steady cycle (median of 5)")
                for p in plans:
                    lines.append(f"- {p['statement']}: planning {p['planning_ms']:.2f} ms, execution "
                                 f"{p['execution_ms']:.2f} ms (driver in the cycle {p['driver_ms']:.2f} ms); "
                                 + "; ".join(p["scans"]))
    return "\n".join(lines)


def rewrites(sql: str) -> dict[str, str]:
    """The engine's timestamptz statement as it is, and written the two cheaper ways proposed for it."""
    date_part = re.sub(_EXTRACT, r"date_part('epoch', records.\1)", sql)
    duration = _EXTRACT + " - " + _EXTRACT
    interval = re.sub(r"sum\(" + duration + r"\) AS dur_sum",
                      r"sum(date_part('epoch', records.\1 - records.\2)) AS dur_sum", sql)
    interval = re.sub(duration + r" <= (\$\d+)::FLOAT", r"records.\1 - records.\2 <= make_interval(secs => \3::FLOAT)",
                      interval)
    return {"EXTRACT(epoch ...) (as built today)": sql, "date_part('epoch', ...)": date_part,
            "interval arithmetic": interval}


def typed(params: list[str], sql: str, full_window: bool, tz: bool) -> list[Any]:
    """The logged parameters as values again; with `full_window`, part 0 reads the whole 7-day window."""
    out: list[Any] = []
    for text in params:
        if re.match(r"^\d{4}-\d\d-\d\d ", text):
            out.append(datetime.fromisoformat(text))
        elif re.match(r"^-?\d+$", text):
            out.append(int(text))
        elif re.match(r"^-?\d+\.\d*(e[+-]?\d+)?$", text):
            out.append(float(text))
        else:
            out.append(text)
    if full_window:
        lo = int(re.search(r"resolved_at > \$(\d+)", sql).group(1)) - 1  # type: ignore[union-attr]
        hi = int(re.search(r"resolved_at <= \$(\d+)", sql).group(1)) - 1  # type: ignore[union-attr]
        bounds = (NOW - WEEK, NOW)
        out[lo], out[hi] = (datetime.fromtimestamp(b, UTC) for b in bounds) if tz else bounds
    return out


async def variants(port: int, result: Path, runs: int) -> str:
    """Server time of the completed-edge statement: epoch table, and timestamptz written three ways."""
    import asyncpg

    done = json.loads(result.read_text())
    dbs = done["dsns"]
    lines = ["| statement (completed edge: cycle-time buckets, SLA, labour) | rows read | planning ms | "
             "execution ms | result |", "|---|---|---|---|---|"]
    for full in (False, True):
        reference: list[Any] | None = None
        epoch = next(e for e in done["epoch"]["explain"] if "dur_sum" in e["sql"])
        tz = next(e for e in done["timestamptz"]["explain"] if "dur_sum" in e["sql"])
        cases = [("epoch", "epoch columns (as built today)", epoch)]
        cases += [("timestamptz", f"timestamptz, {name}", {**tz, "sql": sql})
                  for name, sql in rewrites(tz["sql"]).items()]
        for variant, name, stmt in cases:
            url = dbs[variant].rsplit("/", 1)[1]
            conn = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database=url)
            try:
                await conn.execute("SET plan_cache_mode = force_custom_plan")
                args = typed(stmt["params"], stmt["sql"], full, variant == "timestamptz")
                got = sorted(tuple(r) for r in await conn.fetch(stmt["sql"], *args))
                plans = [json.loads(await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + stmt["sql"], *args))[0]
                         for _ in range(runs)]
            finally:
                await conn.close()
            same = "reference" if reference is None else ("same" if close(got, reference) else "DIFFERENT")
            reference = reference if reference is not None else got
            lines.append(f"| {name} | {'7-day window' if full else 'steady edges'} | "
                         f"{statistics.median(p['Planning Time'] for p in plans):.2f} | "
                         f"{statistics.median(p['Execution Time'] for p in plans):.2f} | {same} |")
    return "\n".join(lines)


def close(a: list[Any], b: list[Any]) -> bool:
    """Equal rows; floats (sums of durations) to 1e-9 relative."""
    def same(x: Any, y: Any) -> bool:
        if isinstance(x, float) and isinstance(y, float):
            return abs(x - y) <= 1e-9 * max(1.0, abs(y))
        return bool(x == y)
    return len(a) == len(b) and all(len(r) == len(q) and all(map(same, r, q)) for r, q in zip(a, b, strict=True))


def main_pair(argv: list[str]) -> int:
    """`timetypes.py pair`: one repetition of fabwatch on both databases (run by `main`)."""
    ap = argparse.ArgumentParser(prog="timetypes.py pair")
    for variant in VARIANTS:
        ap.add_argument(f"--{variant}", required=True, help="DSN")
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--step", type=float, default=15.0)
    ap.add_argument("--explain", action="store_true")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    dsns = {v: str(getattr(a, v)) for v in VARIANTS}
    result = asyncio.run(pair(dsns, a.cycles, a.step, a.explain))
    Path(a.out).write_text(json.dumps(result, indent=1))
    return 0


def main_variants(argv: list[str]) -> int:
    """`timetypes.py variants`: the completed-edge statement written three ways (see the docstring)."""
    ap = argparse.ArgumentParser(prog="timetypes.py variants")
    ap.add_argument("--port", type=int, required=True, help="the PostgreSQL a run left with --keep")
    ap.add_argument("--result", required=True, help="a fabwatch.r<N>.json with plans (the last repetition)")
    ap.add_argument("--runs", type=int, default=7)
    a = ap.parse_args(argv)
    print(asyncio.run(variants(a.port, Path(a.result), a.runs)))
    return 0


def main() -> int:
    if sys.argv[1:2] == ["pair"]:
        return main_pair(sys.argv[2:])
    if sys.argv[1:2] == ["variants"]:
        return main_variants(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--cycles", type=int, default=40, help="steady cycles per database and repetition")
    ap.add_argument("--build-timeout", type=float, default=900, help="seconds to build one size's two tables")
    ap.add_argument("--pg-root", help="keep PostgreSQL here (and reuse its tables next time); default: a temp dir")
    ap.add_argument("--port", type=int, help="default: a free loopback port")
    ap.add_argument("--keep", action="store_true", help="leave PostgreSQL running at the end")
    ap.add_argument("--out", default=f"/tmp/fabwatch-bench/timetypes-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    a = ap.parse_args()
    if not (QE_VENV / "bin" / "query-exporter").exists():
        print(f"query-exporter not found in {QE_VENV}; see {PEERS}/WORKLOAD.md", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(a.pg_root) if a.pg_root else Path(tempfile.mkdtemp(prefix="fabwatch-tz-pg-"))
    pg = Postgres(root, a.port or kept_port(root) or free_port())
    log(f"PostgreSQL in {root} on 127.0.0.1:{pg.port}; results in {out}")
    sizes: list[dict[str, Any]] = []
    try:
        for rows in a.sizes:
            started = time.monotonic()
            try:
                pg.load(rows, a.build_timeout)
                build_tz(pg, db_name(rows), rows, max(60.0, a.build_timeout - (time.monotonic() - started)))
            except subprocess.TimeoutExpired:
                log(f"{rows:,} rows: not built within {a.build_timeout:.0f} s; skipped")
                sizes.append({"rows": rows, "skipped": f"not built within {a.build_timeout:.0f} s"})
                continue
            except subprocess.CalledProcessError as exc:
                log(f"{rows:,} rows: build failed ({exc}); skipped")
                sizes.append({"rows": rows, "skipped": f"build failed: {exc}"})
                continue
            log(f"{rows:,} rows: both tables ready after {time.monotonic() - started:.0f} s")
            size_out = out / db_name(rows)
            size_out.mkdir(exist_ok=True)
            sizes.append(measure_size(pg, rows, a.reps, a.cycles, size_out))
            last = size_out / f"fabwatch.r{a.reps}.json"
            if last.exists():
                log(f"{rows:,} rows: the completed-edge statement written three ways")
                sizes[-1]["variants"] = asyncio.run(variants(pg.port, last, 3))
            (out / "summary.json").write_text(json.dumps(sizes, indent=1))
    finally:
        if not a.keep:
            pg.stop()
            if not a.pg_root:
                shutil.rmtree(root, ignore_errors=True)
    text = report(sizes)
    (out / "summary.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
