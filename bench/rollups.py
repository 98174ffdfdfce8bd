"""Cost of the daily rollups beside the sampling they ride along with, and of a report, in one run.

On a simulated operator in SQLite (the demo's database, or `--db` of your own simulation), measured
side by side: the wall time of a steady sampling cycle of the example inventory (the clock advanced
by `--interval` each cycle), the wall time of the re-roll `serve` runs every `reconcile` period
(today and the late window), and, on a state file that a backfill filled (`--state`), the wall time
of a month's report from the rollups (read, summarize, render all four formats). Prints JSON with
the re-roll's share of an hour of sampling.

    .venv/bin/python bench/rollups.py --db .fabwatch-demo/operator.db --now 1772668800 \\
        --state fabwatch-state.db --month 2026-02
"""

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from collector.engine import SourceSampler  # noqa: E402
from collector.inventory.load import load_inventory  # noqa: E402
from collector.rollups import RollupStore, SourceRoller, late_of, reroll  # noqa: E402
from collector.state import StateStore  # noqa: E402
from reports.render import RENDERERS  # noqa: E402
from reports.summary import Month, read_rollups, summarize  # noqa: E402


async def measure(args: argparse.Namespace) -> dict[str, object]:
    inventory = load_inventory([ROOT / "examples" / "operator.yaml"],
                               {"FABWATCH_DEMO_DSN": f"sqlite+aiosqlite:///{args.db}"})
    source = inventory.sources["operator"]
    tmp = Path(tempfile.mkdtemp())
    sampler = SourceSampler("operator", source, inventory.processes, StateStore(tmp / "state.db"))  # type: ignore[arg-type]
    store = RollupStore(tmp / "rollups.db")
    roller = SourceRoller("operator", source, inventory.processes, store, inventory.service.timezone)  # type: ignore[arg-type]
    now = args.now
    await sampler.sample(now)  # the first sample reads whole windows: not a steady cycle
    await reroll(roller, now)  # the first re-roll detects the time columns: not a steady one
    cycles, rerolls = [], []
    for _round in range(args.rounds):  # interleaved, so both see the same machine load
        for _ in range(args.cycles):
            now += args.interval
            started = time.perf_counter()
            await sampler.sample(now)
            cycles.append(time.perf_counter() - started)
        started = time.perf_counter()
        await reroll(roller, now)
        rerolls.append(time.perf_counter() - started)
    await sampler.close()
    await roller.close()
    store.close()
    cycle, rolled = statistics.median(cycles), statistics.median(rerolls)
    hourly_sampling = 3600 / args.interval * cycle
    hourly_rollups = 3600 / source.reconcile * rolled  # type: ignore[union-attr]
    out: dict[str, object] = {
        "sampling_cycle_s": round(cycle, 4), "reroll_s": round(rolled, 4),
        "reroll_days": round(late_of(source) / 86400 + 1, 2),  # type: ignore[arg-type]
        "rollups_share_of_sampling_per_hour": round(hourly_rollups / hourly_sampling, 4)}
    if args.state and args.month:
        report_store = RollupStore(args.state)
        month = Month.parse(args.month)
        times = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            report = summarize(inventory, read_rollups(report_store, inventory, month), month)
            for render in RENDERERS.values():
                render(report)
            times.append(time.perf_counter() - started)
        report_store.close()
        out["report_s"] = round(statistics.median(times), 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="the simulated operator's SQLite file")
    parser.add_argument("--now", type=float, required=True, help="the instant the simulation ends at (epoch s)")
    parser.add_argument("--interval", type=float, default=15.0, help="sampling interval (the demo's 15 s)")
    parser.add_argument("--cycles", type=int, default=20, help="steady cycles per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--state", help="a state file filled by `fabwatch report --backfill`")
    parser.add_argument("--month", help="the month to report, YYYY-MM")
    print(json.dumps(asyncio.run(measure(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
