"""What fabwatch's series cost in VictoriaMetrics: disk bytes per sample and per series, and the
remote write's network bytes per sample, for retention sizing.

The pipeline of tests/test_remote_write.py, run longer: the bundled operator inventory
(examples/operator.yaml, eight processes) on the simulator, sampled by fabwatch every `--interval`
seconds; a real Prometheus scrapes it and evaluates the generated rules at the same interval and
remote-writes everything to a single-node VictoriaMetrics (Debian's `victoria-metrics`). After
`--seconds`, VictoriaMetrics is flushed and its own metrics read: `vm_data_size_bytes` over `vm_rows`
(samples) for the data, the index over the series count; then again after a forced merge (the
compaction a store does over hours, on its own). Every sample changes between two scrapes here
(the simulator runs `SPEED` times faster than real time), the worst case for compression.

    .venv/bin/python bench/remote_write_size.py --seconds 300 --out /tmp/remote_write_size.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alerts.build import rule_files  # noqa: E402
from tests.servers import (  # noqa: E402
    PrometheusServer,
    VictoriaMetricsServer,
    http_get,
    start_prometheus,
    start_victoriametrics,
)
from tests.test_remote_write import example_inventory, operator, own_metric, prometheus_config  # noqa: E402

MERGE_TIMEOUT = 120.0


def storage(vm: VictoriaMetricsServer) -> dict[str, float]:
    """VictoriaMetrics' data and index sizes, its sample (row) count and its series count."""
    own = vm.own_metrics()
    series = vm.query('count({__name__=~".+"})')
    return {
        "data_bytes": sum(v for k, v in own.items() if k.startswith('vm_data_size_bytes{type="storage/')),
        "index_bytes": own['vm_data_size_bytes{type="indexdb"}'],
        "samples": sum(v for k, v in own.items() if k.startswith('vm_rows{type="storage/')),
        "series": float(series[0]["value"][1]) if series else 0.0,
    }


def per_sample(sizes: dict[str, float]) -> dict[str, float]:
    """Bytes per sample (data) and per series (index)."""
    return {**sizes, "data_bytes_per_sample": sizes["data_bytes"] / sizes["samples"],
            "index_bytes_per_series": sizes["index_bytes"] / sizes["series"]}


def merged(vm: VictoriaMetricsServer) -> dict[str, float]:
    """Force a merge of every partition, wait until no merge runs, and measure again."""
    http_get(f"{vm.url}/internal/force_merge", timeout=MERGE_TIMEOUT)
    deadline = time.monotonic() + MERGE_TIMEOUT
    while time.monotonic() < deadline:
        own = vm.own_metrics()
        if not sum(v for k, v in own.items() if k.startswith("vm_active_merges")):
            break
        time.sleep(1.0)
    vm.flush()
    return per_sample(storage(vm))


def sent(prometheus: PrometheusServer) -> dict[str, float]:
    """Samples and compressed bytes Prometheus' remote write sent."""
    return {"samples_sent": sum(own_metric(prometheus, "prometheus_remote_storage_samples_total")),
            "bytes_sent": sum(own_metric(prometheus, "prometheus_remote_storage_bytes_total"))}


async def run(seconds: float, interval: str, workdir: Path) -> dict[str, Any]:
    inventory = example_inventory(workdir, interval)
    files = {f"rules/{name}.yml": yaml.safe_dump(f.to_dict()) for name, f in rule_files(inventory).items()}
    vm = start_victoriametrics(workdir / "victoriametrics", ())
    try:
        async with operator(workdir, inventory) as fabwatch:
            prometheus = start_prometheus(workdir / "prometheus", prometheus_config(fabwatch, vm.write_url, interval),
                                          files, ())
            try:
                await asyncio.sleep(seconds)
                network = sent(prometheus)
            finally:
                prometheus.stop()  # flushes its remote-write queue first
        vm.flush()
        flushed = per_sample(storage(vm))
        return {"seconds": seconds, "interval": interval, **network,
                "network_bytes_per_sample": network["bytes_sent"] / network["samples_sent"],
                "flushed": flushed, "merged": merged(vm)}
    finally:
        vm.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300.0, help="how long Prometheus remote-writes")
    parser.add_argument("--interval", default="1s", help="fabwatch's sampling, the scrape and rule interval")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fabwatch-rw-size-") as tmp:
        result = asyncio.run(run(args.seconds, args.interval, Path(tmp)))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
