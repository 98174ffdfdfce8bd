"""The record store on SQLite and on PostgreSQL, side by side in one run, on the same records.

1. Events/s acknowledged into each store: the same `--records` TMF621 events (whole tickets, as a
   hub sends them), written in group commits of `--batch` (`apply_events`: one transaction, durable
   when it returns) with no HTTP; the two stores take the batches alternately. SQLite runs with
   `synchronous=FULL` (a `durability: full` source), PostgreSQL with `fsync` and synchronous
   commit on (its defaults), both on this machine's disk.
2. The database time of the KPI engine's sampling cycles over each store (the example inventory's
   `problem` process: volume, backlog, overdue, durations, SLA, ratio, cost, a SQL value): one
   first sample, then `--cycles` steady cycles `--step` seconds of clock apart, `--arrivals` new
   events written to both stores before each (so the late-row check has arrivals to look at). The
   cycles alternate between the stores; the time inside the driver's execute calls is summed per
   cycle (`bench/cycles.py`'s `DbClock`), medians of the steady cycles.

Starts its own PostgreSQL (durable settings, a free loopback port, removed afterwards) unless
`--pg-url` is given. The PostgreSQL store is ANALYZEd once loaded (what autovacuum does within
a minute of so many changes).

    .venv/bin/python bench/store_backends.py --records 100000 --cycles 15 --out /tmp/stores.json
"""

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from cycles import DbClock, per_statement  # noqa: E402

from collector.engine import SourceSampler  # noqa: E402
from collector.inventory.sources import TmfEventsSource  # noqa: E402
from collector.sampling import store_source  # noqa: E402
from collector.sources.pgstore import schema_of  # noqa: E402
from collector.sources.records import open_records  # noqa: E402
from collector.sources.store import Event, Records  # noqa: E402
from collector.sources.tmf import APIS  # noqa: E402
from collector.state import StateStore  # noqa: E402
from tests.servers import (  # noqa: E402
    HOST,
    PostgresServer,
    free_port,
    make_pg_base,
    pg_initdb,
    pg_process_user,
    pg_setup_roles,
    postgres_bin_dir,
    wait_until,
)
from tests.sources.helpers import API_OF, example  # noqa: E402

NOW = 1_767_225_600.0
DAY = 86_400.0
TABLE = "trouble_ticket"
STATUSES = ("acknowledged", "inProgress", "pending", "held")


@contextlib.contextmanager
def durable_postgres() -> Iterator[str]:
    """A throwaway PostgreSQL with its durable defaults (fsync, synchronous commit); its owner's URL."""
    bin_dir, user_kw, base = postgres_bin_dir(), pg_process_user(), make_pg_base()
    try:
        pg_initdb(bin_dir, base, user_kw)
        server = PostgresServer(bin_dir, base, free_port())
        cmd = [str(bin_dir / "postgres"), "-D", str(base / "data"), "-p", str(server.port),
               "-c", f"listen_addresses={HOST}", "-c", f"unix_socket_directories={server.socket_dir}"]
        with (base / "postgres.log").open("wb") as out:
            proc = subprocess.Popen(cmd, cwd=base, stdout=out, stderr=subprocess.STDOUT, **user_kw)
        try:
            ready = [str(bin_dir / "pg_isready"), "-q", "-h", HOST, "-p", str(server.port)]
            wait_until(lambda: subprocess.run(ready).returncode == 0, proc, "postgres", base / "postgres.log")
            pg_setup_roles(server)
            yield server.dsn(driver="postgresql")
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def ticket(rng: random.Random, ident: str, updated: float) -> dict[str, Any]:
    """A whole ticket as a TMF621 event maps it: 30 days of history before NOW, most of it done."""
    created = updated - rng.uniform(0, 3 * DAY)
    done = rng.random() < 0.7
    return {"id": ident, "created_at": created, "updated_at": updated, "due_at": created + 2 * DAY,
            "completed_at": updated if done else None, "status": "resolved" if done else rng.choice(STATUSES),
            "priority": rng.choice(("low", "medium", "high", "critical")), "channel": rng.choice(("web", "phone")),
            "handling_minutes": rng.uniform(5, 120), "reopened": int(rng.random() < 0.03)}


def events(rng: random.Random, count: int, first: int, start: float, end: float) -> list[Event]:
    """`count` events: new tickets and updates of earlier ones, their versions from `start` to `end`."""
    out = []
    for n in range(count):
        updated = start + (end - start) * (n + 1) / count
        ident = f"TT-{first + n}" if n % 4 or first + n < 10 else f"TT-{rng.randrange(first + n)}"
        out.append(Event(f"E{first + n}", "change", TABLE, ticket(rng, ident, updated), ident, updated))
    return out


def open_store(location: str) -> Records:
    return open_records(location, "tickets", [TABLE], synchronous="FULL",
                        final_statuses={TABLE: APIS["tmf621"].finals})


def load(stores: dict[str, Records], batches: list[list[Event]]) -> dict[str, float]:
    """Write every batch into each store, alternately; events/s acknowledged into each."""
    spent = dict.fromkeys(stores, 0.0)
    for batch in batches:
        for name, store in stores.items():
            started = time.perf_counter()
            store.apply_events(batch)
            spent[name] += time.perf_counter() - started
    total = sum(len(b) for b in batches)
    return {name: total / seconds for name, seconds in spent.items()}


async def cycles(stores: dict[str, Records], args: argparse.Namespace, tmp: Path, first: int,
                 rng: random.Random) -> dict[str, Any]:
    """The engine's sampling cycles over each store, alternately; per store the DB time of each."""
    source = TmfEventsSource(kind="tmf_events", api="tmf621")
    inventory = example({"tickets": {"kind": "tmf_events", "api": "tmf621"}},
                        dict.fromkeys(API_OF, "tickets"), tmp / "state.db")
    processes = {"problem": inventory.processes["problem"]}
    samplers, clocks, states = {}, {}, []
    for name, store in stores.items():
        state = StateStore(tmp / f"state-{name}.db")
        states.append(state)
        sampler = SourceSampler(name, store_source(source, store), processes, state, late_every_sample=True)
        await sampler.open()
        assert sampler._engine is not None
        clocks[name] = DbClock()
        clocks[name].attach(sampler._engine.sync_engine)
        samplers[name] = sampler
    timed: dict[str, list[float]] = {name: [] for name in stores}
    executed: dict[str, list[Any]] = {name: [] for name in stores}
    values: dict[str, list[Any]] = {name: [] for name in stores}
    try:
        for i in range(args.cycles + 1):
            now = NOW + i * args.step
            if i:
                arrivals = events(rng, args.arrivals, first, now - args.step, now - 1)
                first += args.arrivals
                for store in stores.values():
                    store.apply_events(arrivals)
            for name, sampler in samplers.items():
                clocks[name].take()
                sample = await sampler.sample(now)
                seconds, _, statements = clocks[name].take()
                timed[name].append(seconds)
                if i:
                    executed[name].append(statements)
                values[name].append(sorted((k.kpi, round(k.value or 0.0, 6)) for k in sample.kpis))
    finally:
        for sampler in samplers.values():
            await sampler.close()
        for state in states:
            state.close()
    names = list(stores)
    agree = all(values[names[0]][i] == values[names[1]][i] for i in range(len(values[names[0]])))
    out: dict[str, Any] = {"kpis_agree": agree, "kpis": values[names[0]][-1]}
    for name in names:
        out[f"{name}_first_db_ms"] = 1000 * timed[name][0]
        out[f"{name}_steady_db_ms"] = 1000 * statistics.median(timed[name][1:])
        out[f"{name}_statements"] = per_statement(executed[name])
    return out


def analyze(pg_url: str) -> None:
    """ANALYZE the PostgreSQL store once loaded, as autovacuum does within a minute of so many
    changes (SQLite's planner has no statistics to refresh: the store never runs ANALYZE there)."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True, options=f"-c search_path={schema_of('tickets')}") as db:
        db.execute("ANALYZE")


async def run(args: argparse.Namespace, pg_url: str) -> dict[str, Any]:
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="fabwatch-stores-") as tmp:
        stores = {"sqlite": open_store(str(Path(tmp) / "records.db")), "postgres": open_store(pg_url)}
        try:
            history = events(rng, args.records, 0, NOW - 30 * DAY, NOW - 60)
            batches = [history[i:i + args.batch] for i in range(0, len(history), args.batch)]
            rates = load(stores, batches)
            analyze(pg_url)
            out: dict[str, Any] = {"records": args.records, "batch": args.batch, "rows": stores["sqlite"].count(TABLE)}
            out.update({f"{name}_events_per_s": rate for name, rate in rates.items()})
            out["events_per_s_ratio_pg_over_sqlite"] = rates["postgres"] / rates["sqlite"]
            out.update(await cycles(stores, args, Path(tmp), args.records, rng))
            out["steady_db_ratio_pg_over_sqlite"] = out["postgres_steady_db_ms"] / out["sqlite_steady_db_ms"]
            out["first_db_ratio_pg_over_sqlite"] = out["postgres_first_db_ms"] / out["sqlite_first_db_ms"]
            return out
        finally:
            for store in stores.values():
                store.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=100_000, help="events written before the cycles")
    ap.add_argument("--batch", type=int, default=128, help="events per group commit")
    ap.add_argument("--cycles", type=int, default=15, help="steady sampling cycles per store")
    ap.add_argument("--step", type=float, default=60.0, help="clock seconds between cycles (the interval)")
    ap.add_argument("--arrivals", type=int, default=200, help="events written to both stores before each cycle")
    ap.add_argument("--pg-url", help="a PostgreSQL URL to use instead of starting one (its database is written)")
    ap.add_argument("--out", help="write the JSON result here too")
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        pg_url = args.pg_url or stack.enter_context(durable_postgres())
        result = asyncio.run(run(args, pg_url))
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
