"""Long-term metrics: Prometheus remote-writes into a real VictoriaMetrics, which answers as it does.

A real Prometheus scrapes a real fabwatch (the example inventory's eight processes on the simulator,
sampled every second), evaluates the generated rule files every second and remote-writes everything
to a single-node VictoriaMetrics started by the test (`victoria-metrics`, Debian's package: the
same write and query API as its cluster version, Thanos receive and Mimir). Then, over a window of
scrapes that both hold, the raw `fab_` samples and the recording rules' samples read back from
VictoriaMetrics' query API (`/api/v1/query` with a range selector: raw samples; `/api/v1/query_range`)
equal those of the local Prometheus: the same series, the same timestamps, the same values.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from alerts.build import rule_files
from app.service import build_app
from collector.inventory.load import load_inventory
from collector.inventory.models import Inventory
from simulator import Simulator
from tests.servers import HOST, PrometheusServer, VictoriaMetricsServer, free_port, http_get

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "operator.yaml"
SPEED = 600.0
"""Simulated seconds per second: items arrive and complete between two scrapes, so counters move."""
WINDOW = 20
KEEP = "fab_.+|process_kpi:fab_.+|ALERTS|ALERTS_FOR_STATE"
"""The `write_relabel_configs` keep filter docs/long-term-storage.md proposes: fabwatch's series and rules only."""
DOCS = ROOT / "docs" / "long-term-storage.md"
"""Seconds of scrapes and rule evaluations compared (one a second each)."""


def example_inventory(tmp_path: Path, interval: str = "1s") -> Inventory:
    """The example inventory on the simulator's database in `tmp_path`, sampled and evaluated every `interval`."""
    document = yaml.safe_load(EXAMPLE.read_text())
    document["service"]["state_path"] = str(tmp_path / "state.db")
    document["sources"]["operator"].update(dsn=f"sqlite+aiosqlite:///{tmp_path / 'operator.db'}", interval=interval)
    document["alerting"]["slo"] = {**document["alerting"].get("slo", {}), "evaluation_interval": interval}
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(document))
    return load_inventory([path], environ={})


def prometheus_config(fabwatch: str, write_url: str, interval: str = "1s") -> str:
    """Scrape fabwatch and evaluate the rules every `interval`; remote-write what the documented filter
    keeps, sent within a second."""
    return yaml.safe_dump({
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": ["rules/*.yml"],
        "scrape_configs": [{"job_name": "fabwatch", "static_configs": [{"targets": [fabwatch]}]}],
        "remote_write": [{"url": write_url, "queue_config": {"batch_send_deadline": "1s"},
                          "write_relabel_configs": [{"source_labels": ["__name__"], "regex": KEEP,
                                                     "action": "keep"}]}],
    })


@asynccontextmanager
async def operator(tmp_path: Path, inventory: Inventory) -> AsyncIterator[str]:
    """Run the simulator live (six hours of history first) and fabwatch serving it; yield fabwatch's address."""
    simulator = Simulator(inventory.sources["operator"].dsn, speed=SPEED)  # type: ignore[union-attr]
    await simulator.create_schema()
    await simulator.backfill(0.25, time.time())
    stop = asyncio.Event()
    live = asyncio.create_task(simulator.run(stop, 0.5))
    runner = web.AppRunner(build_app(inventory))
    port = free_port()
    try:
        await runner.setup()
        await web.TCPSite(runner, HOST, port).start()
        yield f"{HOST}:{port}"
    finally:
        await runner.cleanup()
        stop.set()
        await live
        await simulator.close()


def recorded_names(inventory: Inventory) -> list[str]:
    """Every series name the generated recording rules write."""
    return sorted({rule.record for f in rule_files(inventory).values() for g in f.groups for rule in g.rules
                   if rule.record})


def raw_samples(server: PrometheusServer, selector: str, at: float) -> dict[tuple[tuple[str, str], ...],
                                                                           list[tuple[float, float]]]:
    """The raw samples of every series matching `selector` in the `WINDOW` seconds up to `at`."""
    data = server.api("query", query=f"{selector}[{WINDOW}s]", time=f"{at:.3f}")
    assert data["resultType"] == "matrix", data
    return {tuple(sorted(r["metric"].items())): [(float(t), float(v)) for t, v in r["values"]]
            for r in data["result"]}


def range_samples(server: PrometheusServer, expr: str, start: float, end: float
                  ) -> dict[tuple[tuple[str, str], ...], list[tuple[float, float]]]:
    """`expr` evaluated every second from `start` to `end` (`/api/v1/query_range`)."""
    data = server.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step="1")
    return {tuple(sorted(r["metric"].items())): [(float(t), float(v)) for t, v in r["values"]]
            for r in data["result"]}


RELATIVE = 1e-11
"""VictoriaMetrics stores a value as a decimal of 12 significant digits (whole numbers, such as the item
counters, exactly): 0.3076923076923077 reads back as 0.307692307692, a relative error of 1.0e-12; a
12-digit decimal is off by less than one unit of its last digit, at most 1e-11 of the value."""


def same(a: float, b: float) -> bool:
    """Equal as VictoriaMetrics stores values: whole numbers exactly, others to `RELATIVE`."""
    return a == b if a.is_integer() else math.isclose(a, b, rel_tol=RELATIVE)


def numbers(series: dict[Any, list[tuple[float, float]]]) -> dict[Any, list[tuple[float, float]]]:
    """The samples that are numbers: VictoriaMetrics drops NaN samples (a ratio of empty windows,
    0/0) as it receives them, so a series that is NaN throughout is not there at all."""
    kept = {key: [(t, v) for t, v in samples if not math.isnan(v)] for key, samples in series.items()}
    return {key: samples for key, samples in kept.items() if samples}


def differences(local: dict[Any, list[tuple[float, float]]], remote: dict[Any, list[tuple[float, float]]]
                ) -> list[str]:
    """Every series missing on one side, and every sample that differs in time or value."""
    out = [f"only in Prometheus: {dict(k)}" for k in local.keys() - remote.keys()]
    out += [f"only in VictoriaMetrics: {dict(k)}" for k in remote.keys() - local.keys()]
    for key in sorted(local.keys() & remote.keys()):
        mine, theirs = local[key], remote[key]
        if [t for t, _ in mine] != [t for t, _ in theirs]:
            out.append(f"{dict(key)}: timestamps {[t for t, _ in mine]} != {[t for t, _ in theirs]}")
        else:
            out += [f"{dict(key)} at {t}: {a!r} != {b!r}" for (t, a), (_, b) in zip(mine, theirs, strict=True)
                    if not same(a, b)]
    return out


def names(series: Iterable[tuple[tuple[str, str], ...]]) -> set[str]:
    return {dict(key)["__name__"] for key in series}


def own_metric(server: PrometheusServer, name: str) -> list[float]:
    """The values of one of a server's own metrics, read from its /metrics page."""
    status, body = http_get(f"{server.url}/metrics")
    assert status == 200, status
    return [float(line.rpartition(" ")[2]) for line in body.decode().splitlines()
            if line.startswith((f"{name}{{", f"{name} "))]


async def wait_sent(prometheus: PrometheusServer, at: float, timeout: float = 30.0) -> None:
    """Wait until Prometheus has remote-written every sample up to `at` (its newest sent timestamp)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sent = await asyncio.to_thread(own_metric, prometheus,
                                       "prometheus_remote_storage_queue_highest_sent_timestamp_seconds")
        if sent and min(sent) >= at:
            return
        await asyncio.sleep(0.5)
    pytest.fail(f"Prometheus had not sent the samples up to {at} after {timeout}s")


async def test_victoriametrics_answers_what_the_local_prometheus_answers(
        tmp_path: Path, prometheus_factory: Callable[..., PrometheusServer],
        victoriametrics_factory: Callable[..., VictoriaMetricsServer]) -> None:
    inventory = example_inventory(tmp_path)
    records = recorded_names(inventory)
    files = {f"rules/{name}.yml": yaml.safe_dump(f.to_dict()) for name, f in rule_files(inventory).items()}
    vm = victoriametrics_factory()
    async with operator(tmp_path, inventory) as fabwatch:
        prometheus = prometheus_factory(prometheus_config(fabwatch, vm.write_url), files=files)
        enough = f"count_over_time(process_kpi:fab_sla_error:ratio_rate5m[{WINDOW + 2}s]) >= {WINDOW + 2}"
        await prometheus.wait_for_async(enough, timeout=WINDOW + 40)
        end = math.floor(time.time()) - 1.0
        await wait_sent(prometheus, end + 2)  # shards send in parallel: a second more for the slowest
        vm.flush()
        raw = "{__name__=~\"fab_.+\"}"
        rules = "{__name__=~\"" + "|".join(records) + "\"}"
        local_raw, remote_raw = raw_samples(prometheus, raw, end), raw_samples(vm, raw, end)
        local_rules, remote_rules = raw_samples(prometheus, rules, end), raw_samples(vm, rules, end)
        ranged = {name: (range_samples(prometheus, name, end - WINDOW + 5, end),
                         range_samples(vm, name, end - WINDOW + 5, end)) for name in records}
    # NaN on either side: 0/0 ratios, and the staleness markers Prometheus writes (and sends) for every
    # series of a scrape that failed on a loaded machine, hidden by its own queries, kept by VictoriaMetrics
    local_raw, local_rules = numbers(local_raw), numbers(local_rules)
    remote_raw, remote_rules = numbers(remote_raw), numbers(remote_rules)
    assert len(local_raw) > 500
    assert {"fab_items_created_total", "fab_cycle_time_seconds_bucket", "fab_kpi_value",
            "fab_cost_total"} <= names(local_raw)
    assert names(local_rules) == set(records)  # every recording rule has numbers to compare
    assert names(remote_rules) == set(records)  # and the documented filter lets every one through
    assert names(remote_raw) == names(local_raw)
    assert not [n for n in names(raw_samples(vm, '{__name__=~".+"}', end)) if not re.fullmatch(KEEP, n)]
    assert sum(map(len, local_raw.values())) > 500 * (WINDOW - 5)
    assert differences(local_raw, remote_raw) == []
    assert differences(local_rules, remote_rules) == []
    for name, (local, remote) in ranged.items():
        assert local, name
        assert differences(numbers(local), numbers(remote)) == [], name


def test_the_documented_filter_is_the_tested_one() -> None:
    assert f'regex: "{KEEP}"' in DOCS.read_text()
