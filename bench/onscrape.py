"""fabwatch in a run-on-scrape harness, to time its sampling cycles as run_bench.sh times
query-exporter's (EXT_ONSCRAPE_CMD): every GET /metrics runs one sampling cycle, then renders.

The first sample (the full windows) runs at start; each scrape then advances the clock by
`--step` seconds (the sampling interval) and samples: the steady-state cycle of `fabwatch serve`.
The time spent in the driver's execute calls per cycle is appended to `--db-log` (JSON lines).
Measurement only: `fabwatch serve` never queries on scrape.

    .venv/bin/python bench/onscrape.py --port 19561 --db kpi_1m --db-log /tmp/x.jsonl
"""

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from aiohttp import web  # noqa: E402
from cycles import NOW, DbClock  # noqa: E402

from collector.engine import SourceSampler  # noqa: E402
from collector.inventory.load import load_inventory  # noqa: E402
from collector.state import StateStore  # noqa: E402
from exporters.prometheus import PrometheusExporter  # noqa: E402


async def main(a: argparse.Namespace) -> None:
    dsn = f"postgresql+asyncpg://postgres@127.0.0.1:{a.pgport}/{a.db}"
    inventory = load_inventory([ROOT / "bench" / "kpi_workload.yaml"], {"FABWATCH_BENCH_DSN": dsn})
    with tempfile.TemporaryDirectory(prefix="fabwatch-onscrape-") as tmp:
        state = StateStore(Path(tmp) / "state.db")
        sampler = SourceSampler("kpi", inventory.sources["kpi"], inventory.processes, state)
        await sampler.open()
        assert sampler._engine is not None
        clock = DbClock()
        clock.attach(sampler._engine.sync_engine)
        exporter = PrometheusExporter()
        exporter.update(await sampler.sample(NOW))
        clock.take()
        cycle = [0]
        log = open(a.db_log, "a")  # noqa: SIM115

        async def metrics(_: web.Request) -> web.Response:
            cycle[0] += 1
            started = time.perf_counter()
            exporter.update(await sampler.sample(NOW + cycle[0] * a.step))
            body = exporter.render("text")
            db, statements = clock.take()
            log.write(json.dumps({"cycle": cycle[0], "db_s": db, "statements": statements,
                                  "wall_s": time.perf_counter() - started}) + "\n")
            log.flush()
            return web.Response(body=body, content_type="text/plain")

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", a.port).start()
        try:
            await asyncio.sleep(a.max_seconds)
        finally:
            await runner.cleanup()
            await sampler.close()
            state.close()
            log.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--pgport", type=int, default=55432)
    ap.add_argument("--step", type=float, default=15.0)
    ap.add_argument("--db-log", required=True)
    ap.add_argument("--max-seconds", type=float, default=300.0, help="exit after this long in any case")
    asyncio.run(main(ap.parse_args()))
