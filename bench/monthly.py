"""A month's report from a year of history at 1,000,000 and 10,000,000 records a year, and what the daily
rollups add to the steady sampling cycle, in one run.

For each size, on the simulated operator in SQLite (`examples/operator.yaml`, the simulator's eight
tables): the records are generated once into `--cache` (the simulator's `scale` sets the rate: scale 1
is about 1,000,000 records a year; a second run reuses them), the rollups are computed by the backfill
`fabwatch report --backfill` runs (timed: records and process-days a second), then, in rounds that
interleave them so both see the same machine load:

- the report of `--month` (read the daily rollups, summarize, render every format), timed with the
  templates compiled again, as each `fabwatch report` run does, and without;
- the steady sampling cycle at the example's interval, with the simulator writing the new rows
  between cycles (not timed), and the re-roll pass `serve` runs every `reconcile` period, on the same
  records and state. Their database time (fabwatch's statements, executed and fetched) and wall time,
  and the re-roll's share of an hour of sampling.

Prints JSON, medians of `--rounds`, and the ratios: the 10M report over the 1M report, and the
re-roll over an hour of sampling.

    .venv/bin/python bench/monthly.py --cache /var/tmp/fabwatch-monthly
"""

import argparse
import asyncio
import json
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from collector import db  # noqa: E402
from collector.engine import SourceSampler  # noqa: E402
from collector.inventory.load import load_inventory  # noqa: E402
from collector.inventory.models import Inventory, SqlSource  # noqa: E402
from collector.rollups import RollupStore, SourceRoller, day_of, days_between, late_of, reroll, roll_sources  # noqa: E402
from collector.state import StateStore  # noqa: E402
from reports.render import RENDERERS, _environment  # noqa: E402
from reports.summary import Month, history_span, read_rollups, read_states, summarize  # noqa: E402
from simulator.runner import Simulator  # noqa: E402
from simulator.store import TABLES  # noqa: E402

END = datetime(2026, 11, 16, tzinfo=UTC).timestamp()
"""Where the generated history ends: the report of October 2026 then has its 12 months and October 2025."""
YEAR = 365 * 86400.0


class DbClock:
    """The time spent in fabwatch's statements (`collector.db.AsyncConnection.execute`: executed, and the
    rows fetched, which is where SQLite does most of its work), added to the phase running."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self.phase: str | None = None
        execute = db.AsyncConnection.execute
        clock = self

        async def timed(conn: db.AsyncConnection, statement: Any, parameters: Any = None) -> Any:
            started = time.perf_counter()
            try:
                return await execute(conn, statement, parameters)
            finally:
                if clock.phase is not None:
                    clock.spent[clock.phase] += time.perf_counter() - started

        db.AsyncConnection.execute = timed  # type: ignore[method-assign]

    @contextmanager
    def measuring(self, phase: str) -> Iterator[None]:
        self.phase, self.spent[phase] = phase, 0.0
        try:
            yield
        finally:
            self.phase = None


def inventory_for(db: Path) -> Inventory:
    inventory = load_inventory([ROOT / "examples" / "operator.yaml"], {"FABWATCH_DEMO_DSN": f"sqlite+aiosqlite:///{db}"})
    source = inventory.sources["operator"]
    assert isinstance(source, SqlSource)
    # the first sample and a backfill's chunk read months of rows: the example's 10 s is for steady cycles
    inventory.sources["operator"] = source.model_copy(update={"timeout": 600.0})
    return inventory


def count_records(db: Path, since: float) -> tuple[int, int]:
    """All records, and those created in the year before `END`."""
    conn = sqlite3.connect(db)
    try:
        tables = [t.name for t in TABLES.values()]
        total = sum(conn.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables)
        year = sum(conn.execute(f'SELECT COUNT(*) FROM "{t}" WHERE created_at >= ?', (since,)).fetchone()[0]
                   for t in tables)
    finally:
        conn.close()
    return total, year


async def generate(cache: Path, size: int, per_million: float, days: float) -> tuple[Path, dict[str, Any]]:
    """The records of `size` a year, generated once (into a temporary file, renamed when complete)."""
    db = cache / f"operator-{size}.db"
    meta = cache / f"operator-{size}.json"
    if db.exists() and meta.exists():
        return db, json.loads(meta.read_text()) | {"cached": True}
    scale = size / 1_000_000 * per_million
    if db.exists():  # generated, not counted yet
        return db, count(db, {"scale": scale})
    partial = cache / f"operator-{size}.partial.db"
    for leftover in cache.glob(f"operator-{size}.partial.db*"):
        leftover.unlink()
    sim = Simulator(f"sqlite+aiosqlite:///{partial}", seed=1, scale=scale)
    started = time.perf_counter()
    try:
        await sim.backfill(days, END)
    finally:
        await sim.close()
    seconds = time.perf_counter() - started
    conn = sqlite3.connect(partial)
    try:
        conn.execute("ANALYZE")  # as an operator's database would have statistics
        conn.execute("PRAGMA journal_mode=DELETE")  # one file, renamed when complete
    finally:
        conn.close()
    partial.rename(db)
    return db, count(db, {"scale": scale, "days": days, "generate_s": round(seconds, 1)})


def count(db: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Count the records of a generated database and keep what is known of it beside it."""
    total, year = count_records(db, END - YEAR)
    info = info | {"records": total, "records_last_year": year, "bytes": db.stat().st_size}
    db.with_suffix(".json").write_text(json.dumps(info))
    return info


async def backfill(inventory: Inventory, state: Path, since: Month, records: int) -> dict[str, Any]:
    """Roll up every day from `since` to the end of the history, as `fabwatch report --backfill` does."""
    for leftover in state.parent.glob(state.name + "*"):
        leftover.unlink()
    zone = inventory.service.timezone
    days = days_between(since.first, day_of(END, zone), zone)
    store = RollupStore(state)
    started = time.perf_counter()
    try:
        await roll_sources(inventory.sources, inventory.processes, store, zone, days)
    finally:
        store.close()
    seconds = time.perf_counter() - started
    process_days = len(days) * len(inventory.processes)
    return {"backfill_s": round(seconds, 1), "process_days": process_days,
            "process_days_per_s": round(process_days / seconds, 1), "records_per_s": round(records / seconds),
            "state_bytes": state.stat().st_size}


def report_once(inventory: Inventory, state: Path, month: Month, cold: bool) -> float:
    """Read the rollups a month's report needs, summarize, render every format: the seconds it took;
    `cold`: with the templates compiled again, as each `fabwatch report` does once."""
    if cold:
        _environment.cache_clear()
    started = time.perf_counter()
    store = RollupStore(state)
    try:
        report = summarize(inventory, read_rollups(store, inventory, month), month,
                           read_states(store, inventory, month))
    finally:
        store.close()
    for render in RENDERERS.values():
        render(report)
    return time.perf_counter() - started


def rollup_rows(state: Path, month: Month) -> int:
    """The rows of daily totals a month's report reads."""
    first, last = history_span(month)
    with sqlite3.connect(state) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM daily_total WHERE day BETWEEN ? AND ?",
                                (first.isoformat(), last.isoformat())).fetchone()[0])


class Steady:
    """The steady sampling cycle and the re-roll pass of one database, the simulator writing in between."""

    def __init__(self, db: Path, inventory: Inventory, state: Path, scale: float, clock: DbClock,
                 interval: float) -> None:
        source = inventory.sources["operator"]
        assert isinstance(source, SqlSource)
        self.source = source
        self.tmp = Path(tempfile.mkdtemp())
        self.sampler = SourceSampler("operator", source, inventory.processes, StateStore(self.tmp / "state.db"))
        self.store = RollupStore(state)
        self.roller = SourceRoller("operator", source, inventory.processes, self.store, inventory.service.timezone)
        self.sim = Simulator(f"sqlite+aiosqlite:///{db}", seed=1, scale=scale)
        self.clock = clock
        self.interval = interval
        self.now = 0.0
        self.cycles: list[tuple[float, float]] = []
        self.rerolls: list[tuple[float, float]] = []
        self.reroll_days: list[int] = []

    async def start(self) -> None:
        self.now = (await self.sim.cursor()) or END
        await self.sampler.sample(self.now)  # the first sample reads whole windows: not a steady cycle
        await reroll(self.roller, self.now)  # the first re-roll detects the time columns: not a steady one

    async def cycle(self) -> None:
        self.now += self.interval
        await self.sim.step(self.now)
        self.cycles.append(await self._timed("sampling", self.sampler.sample(self.now)))

    async def reroll(self) -> None:
        days: list[Any] = []

        async def run() -> None:
            days.extend(await reroll(self.roller, self.now))

        self.rerolls.append(await self._timed("reroll", run()))
        self.reroll_days.append(len(days))

    async def _timed(self, phase: str, work: Any) -> tuple[float, float]:
        started = time.perf_counter()
        with self.clock.measuring(phase):
            await work
        return time.perf_counter() - started, self.clock.spent[phase]

    async def close(self) -> None:
        await self.sampler.close()
        await self.roller.close()
        await self.sim.close()
        self.store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def figures(self) -> dict[str, Any]:
        cycle_wall, cycle_db = (statistics.median(x) for x in zip(*self.cycles, strict=True))
        reroll_wall, reroll_db = (statistics.median(x) for x in zip(*self.rerolls, strict=True))
        per_hour = 3600 / self.interval
        rerolls_per_hour = 3600 / self.source.reconcile
        return {"cycle_db_s": round(cycle_db, 5), "cycle_wall_s": round(cycle_wall, 5),
                "reroll_db_s": round(reroll_db, 5), "reroll_wall_s": round(reroll_wall, 5),
                "reroll_days": statistics.median(self.reroll_days), "late_window_s": late_of(self.source),
                "cycles_per_hour": per_hour, "rerolls_per_hour": rerolls_per_hour,
                "reroll_share_of_hourly_sampling_db": round(rerolls_per_hour * reroll_db / (per_hour * cycle_db), 4),
                "reroll_share_of_hourly_sampling_wall": round(rerolls_per_hour * reroll_wall
                                                              / (per_hour * cycle_wall), 4)}


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    clock = DbClock()
    month = Month.parse(args.month)
    since = Month.parse(args.since) if args.since else month.shift(-12)
    out: dict[str, Any] = {"month": str(month), "since": str(since), "sizes": {}}
    runs: dict[int, tuple[Inventory, Path, Steady]] = {}
    for size in args.sizes:
        db, info = await generate(cache, size, args.scale_per_million, args.days)
        inventory = inventory_for(db)
        state = cache / f"state-{size}.db"
        figures = dict(info)
        if args.reuse_rollups and state.exists():
            figures["backfill"] = "reused"
        else:
            figures |= await backfill(inventory, state, since, info["records"])
        figures["rollup_rows_read"] = rollup_rows(state, month)
        out["sizes"][size] = figures
        runs[size] = inventory, state, Steady(db, inventory, state, info["scale"], clock, args.interval)
    reports: dict[int, list[float]] = {size: [] for size in runs}
    warm: dict[int, list[float]] = {size: [] for size in runs}
    try:
        for _inventory, _state, steady in runs.values():
            await steady.start()
        for _round in range(args.rounds):  # interleaved: every size and phase sees the same machine load
            for size, (inventory, state, steady) in runs.items():
                reports[size].append(report_once(inventory, state, month, cold=True))
                warm[size].append(report_once(inventory, state, month, cold=False))
                for _ in range(args.cycles):
                    await steady.cycle()
                await steady.reroll()
    finally:
        for _inventory, _state, steady in runs.values():
            await steady.close()
    for size, (_inventory, _state, steady) in runs.items():
        out["sizes"][size] |= {"report_s": round(statistics.median(reports[size]), 4),
                               "report_runs_s": [round(t, 4) for t in reports[size]],
                               "report_templates_compiled_s": round(statistics.median(warm[size]), 4)
                               } | steady.figures()
    if len(args.sizes) > 1:
        small, large = min(args.sizes), max(args.sizes)
        ratio = out["sizes"][large]["report_s"] / out["sizes"][small]["report_s"]
        out[f"report_{large}_over_{small}"] = round(ratio, 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cache", required=True, help="directory the generated records and rollups are kept in")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000], help="records a year")
    parser.add_argument("--scale-per-million", type=float, default=0.95,
                        help="simulator scale that writes 1,000,000 records a year")
    parser.add_argument("--days", type=float, default=411.0,
                        help="days of history generated up to 2026-11-16 (from 2025-10-01)")
    parser.add_argument("--month", default="2026-10", help="the month reported")
    parser.add_argument("--since", help="first month backfilled (default: 12 months before --month)")
    parser.add_argument("--reuse-rollups", action="store_true", help="keep the rollups a previous run computed")
    parser.add_argument("--interval", type=float, default=15.0, help="sampling interval (the example's 15 s)")
    parser.add_argument("--cycles", type=int, default=20, help="steady sampling cycles per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (medians are reported)")
    print(json.dumps(asyncio.run(measure(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
