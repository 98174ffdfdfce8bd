"""fabwatch's exposition at many series: render cost, and a server for scrape measurements.

    .venv/bin/python bench/exposition.py render --series 100000         # render times (text, OpenMetrics, gzip)
    .venv/bin/python bench/exposition.py serve --series 100000 --port P # /metrics through the service's handler

The series mirror ../shared/bench/peers/exposition_bench.py (one gauge family, labels process,
priority, series), so the figures compare with prometheus-client's generate_latest there.
"""

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiohttp import web  # noqa: E402

from app.service import EXPORTER, metrics  # noqa: E402
from collector.samples import Family, SourceSample  # noqa: E402
from exporters.prometheus import PrometheusExporter  # noqa: E402

PROCESSES = ["problem", "retention", "bill_inquiry", "order", "interface", "qos_sla", "payments", "invoice"]
PRIORITIES = ["critical", "high", "medium", "low"]


def sample(n: int, bump: float = 0.0) -> SourceSample:
    family = Family("kpi_value", "gauge", "Synthetic KPI gauge for the exposition benchmark", [
        ((("process", PROCESSES[i % 8]), ("priority", PRIORITIES[(i // 8) % 4]), ("series", f"s{i:06d}")),
         float(i) * 1.5 + 0.25 + bump) for i in range(n)])
    return SourceSample("bench", time.time(), 0.0, (family,), ())


def render(n: int, rounds: int) -> dict[str, object]:
    exporter = PrometheusExporter()
    out: dict[str, object] = {"series": n}
    for fmt, compressed in (("text", False), ("openmetrics", False), ("text", True)):
        times = []
        for r in range(rounds):
            exporter.update(sample(n, bump=r))  # a new sample each time: nothing cached
            t = time.perf_counter()
            body = exporter.render(fmt, compressed)  # type: ignore[arg-type]
            times.append(time.perf_counter() - t)
        out[f"{fmt}{'_gzip' if compressed else ''}_ms"] = 1000 * statistics.median(times)
        out[f"{fmt}{'_gzip' if compressed else ''}_bytes"] = len(body)
    return out


async def serve(n: int, port: int, max_seconds: float) -> None:
    exporter = PrometheusExporter()
    exporter.update(sample(n))
    exporter.render("text")
    app = web.Application()
    app[EXPORTER] = exporter
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await asyncio.sleep(max_seconds)
    finally:
        await runner.cleanup()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["render", "serve"])
    ap.add_argument("--series", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--port", type=int)
    ap.add_argument("--max-seconds", type=float, default=300.0)
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.mode == "serve":
        asyncio.run(serve(a.series, a.port, a.max_seconds))
        return 0
    result = render(a.series, a.rounds)
    print(json.dumps(result))
    if a.out:
        Path(a.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
