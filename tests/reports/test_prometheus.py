"""The report's Prometheus backend against a real Prometheus holding the same history as the rollups.

A simulated operator runs from 2025-09-30 to 2025-11-01 (October in Europe/Berlin: 31 days, the
25-hour day of the autumn change); the engine samples it every simulated hour, the way a scrape would,
and each sample's /metrics exposition is written with its timestamp as OpenMetrics, backfilled into a
TSDB with `promtool tsdb create-blocks-from openmetrics` and served by a real Prometheus. The rollups
of the same records are computed from the final database. The month's figures from both backends
must match: exactly for the counts, money and the quantiles of the summed buckets; the open-item
gauges within what docs/reports.md documents.
"""

import asyncio
import json
import math
import shutil
import subprocess
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiohttp import web

from collector.engine.sampler import SourceSampler
from collector.inventory.load import load_inventory
from collector.inventory.models import Inventory
from collector.rollups import RollupStore, days_between, roll_sources, totals
from collector.state import StateStore
from exporters.prometheus import render
from reports.prometheus import (
    Connection,
    PrometheusError,
    QueryClient,
    mask,
    prometheus_notes,
    read_history,
    read_prometheus,
    runs,
)
from reports.summary import Month, Report, read_rollups, read_states, summarize
from simulator import Simulator
from tests.servers import free_port

pytestmark = pytest.mark.slow  # a simulated month sampled hourly: some 20 s

EXAMPLE = Path(__file__).parents[2] / "examples" / "operator.yaml"
BERLIN = "Europe/Berlin"
PROCESSES = ("interface", "order", "problem")
"""A volume, SLA, duration (mean, p50, p90), backlog, overdue, ratio, value and cost KPI each, fixed costs too."""
START = datetime(2025, 9, 30, tzinfo=ZoneInfo(BERLIN)).timestamp()
END = datetime(2025, 11, 1, 1, tzinfo=ZoneInfo(BERLIN)).timestamp()
SCRAPE = 3600.0
OCTOBER = Month(2025, 10)
NOW = END + 86400 * 30  # read long after: every day final


def operator(dsn: str) -> Inventory:
    found = load_inventory([EXAMPLE], {"FABWATCH_DEMO_DSN": dsn})
    # a reconcile once a week: the replay writes no late rows, and hourly samples stay cheap
    source = found.sources["operator"].model_copy(update={"reconcile": 7 * 86400.0})
    processes = {n: p for n, p in found.processes.items() if n in PROCESSES}
    return found.model_copy(update={"sources": {"operator": source}, "processes": processes})


READ = ("fab_items_created", "fab_items_completed", "fab_sla_good", "fab_sla_valid", "fab_cost",
        "fab_cycle_time_seconds", "fab_backlog_items", "fab_overdue_items", "fab_oldest_open_item_age_seconds")
"""The families the backend reads: the others are left out of the backfill, to keep it quick."""


def openmetrics(expositions: list[tuple[float, bytes]]) -> str:
    """The expositions of samples as one OpenMetrics text with timestamps, each family once and each
    series' samples together in time order (what the backfill reads)."""
    headers: dict[str, list[str]] = {}
    series: dict[str, dict[str, list[str]]] = {}
    for at, body in expositions:
        family = ""
        for line in body.decode().splitlines():
            if line.startswith(("# TYPE", "# HELP")):
                family = line.split()[2]
                if family in READ:
                    kept = headers.setdefault(family, [])
                    if line not in kept:
                        kept.append(line)
            elif line and not line.startswith("#") and family in READ:
                name, _, value = line.rpartition(" ")
                series.setdefault(family, {}).setdefault(name, []).append(f"{name} {value} {at:.3f}")
    out = []
    for family, lines in headers.items():
        out += lines
        for samples in series.get(family, {}).values():
            out += samples
    return "\n".join([*out, "# EOF", ""])


def backfill(expositions: list[tuple[float, bytes]], directory: Path, promtool: str) -> None:
    """Backfill the samples into TSDB blocks, one OpenMetrics file per UTC day: promtool reads its whole
    input once per 2-hour block, so one file for a month would be read 372 times."""
    days: dict[int, list[tuple[float, bytes]]] = {}
    for at, body in expositions:
        days.setdefault(int(at // 86400), []).append((at, body))
    for day, samples in days.items():
        path = directory / f"day-{day}.om"
        path.write_text(openmetrics(samples))
        made = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", "--quiet", str(path),
                               str(directory / "data")], capture_output=True, text=True, timeout=120, check=False)
        assert made.returncode == 0, made.stderr[-2000:]
        path.unlink()


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Replay the simulated month: the OpenMetrics of the hourly samples, and the rollups."""
    directory = tmp_path_factory.mktemp("replay")
    dsn = f"sqlite+aiosqlite:///{directory / 'operator.db'}"
    inventory = operator(dsn)
    settle = inventory.sources["operator"].settle  # type: ignore[union-attr]

    async def replay() -> list[tuple[float, bytes]]:
        sim = Simulator(dsn, seed=3, scale=0.03)
        await sim.create_schema()
        await sim.backfill(2, START)
        sampler = SourceSampler("operator", inventory.sources["operator"],  # type: ignore[arg-type]
                                inventory.processes, StateStore(directory / "state.db"))
        await sampler.open()
        out = []
        try:
            at = START
            while at <= END:
                await sim.step(at)
                # a scrape `settle` after the hour: the sample then counts the rows up to the hour
                sample = await sampler.sample(at + settle)
                out.append((at + settle, render(sample.families, "openmetrics")))
                at += SCRAPE
        finally:
            await sampler.close()
            await sim.close()
        store = RollupStore(directory / "rollups.db")
        days = days_between(date(2025, 9, 30), date(2025, 10, 31), BERLIN)
        await roll_sources(inventory.sources, inventory.processes, store, BERLIN, days)
        store.close()
        return out

    expositions = asyncio.run(replay())
    return {"dir": directory, "inventory": inventory, "expositions": expositions}


@pytest.fixture(scope="module")
def blocks(history: dict[str, Any], promtool: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The TSDB blocks of the replay's samples."""
    directory = tmp_path_factory.mktemp("blocks")
    backfill(history["expositions"], directory, promtool)
    return directory / "data"


@pytest.fixture
def prometheus(blocks: Path, prometheus_factory: Callable[..., Any], tmp_path: Path) -> Any:
    """A real Prometheus on the backfilled blocks."""
    shutil.copytree(blocks, tmp_path / "prometheus-0" / "data")
    return prometheus_factory(args=["--storage.tsdb.retention.time=100y"])


def rollup_report(history: dict[str, Any]) -> Report:
    inventory = history["inventory"]
    store = RollupStore(history["dir"] / "rollups.db")
    try:
        return summarize(inventory, read_rollups(store, inventory, OCTOBER), OCTOBER,
                         read_states(store, inventory, OCTOBER))
    finally:
        store.close()


def close(got: float | None, want: float | None, rel: float = 1e-9) -> bool:
    if got is None or want is None:
        return got is None and want is None
    return math.isclose(got, want, rel_tol=rel, abs_tol=1e-6)


def test_the_month_from_prometheus_matches_the_rollups(history: dict[str, Any], prometheus: Any) -> None:
    inventory = history["inventory"]
    read = asyncio.run(read_prometheus(Connection(prometheus.url, lookback=SCRAPE), inventory, OCTOBER, NOW))
    got = summarize(inventory, read.rollups, OCTOBER, read.states)
    want = rollup_report(history)
    checked = 0
    for mine, theirs in zip(got.processes, want.processes, strict=True):
        assert mine.complete and theirs.complete, mine.name
        assert mine.final, mine.provisional_days
        assert (mine.created, mine.completed) == (theirs.created, theirs.completed), mine.name
        assert mine.created > 100
        assert mine.completed > 100
        assert mine.by_outcome == theirs.by_outcome, mine.name
        assert mine.cost_by_component.keys() == theirs.cost_by_component.keys()
        for component, cost in theirs.cost_by_component.items():
            assert close(mine.cost_by_component[component], cost), (mine.name, component)
        assert close(mine.cost_per_item, theirs.cost_per_item)
        for a, b in zip(mine.kpis, theirs.kpis, strict=True):
            if a.kind in ("ratio", "value"):  # no counter of them: the records only
                assert a.value is None, (mine.name, a.kpi)
                continue
            if a.kind in ("backlog", "overdue"):  # gauges at the month's end: see test_open_items_...
                continue
            assert close(a.value, b.value), (mine.name, a.kpi, a.value, b.value)
            assert a.met == b.met, (mine.name, a.kpi)
            assert [d for d, _ in a.worst_days] == [d for d, _ in b.worst_days], (mine.name, a.kpi)
            if a.kind == "sla":
                assert (a.good, a.valid) == (b.good, b.valid)
            checked += 1
    assert checked >= 12
    # a 25-hour day: its range query is a run of its own, its figures still exact
    assert any(len(r) == 1 for r in runs([d.end for d in days_between(OCTOBER.first, OCTOBER.last, BERLIN)]))


def test_every_day_counts_the_same_items(history: dict[str, Any], prometheus: Any) -> None:
    inventory = history["inventory"]

    async def read() -> Any:
        async with QueryClient(Connection(prometheus.url, lookback=SCRAPE)) as client:
            return await read_history(client, inventory, date(2025, 9, 30), date(2025, 10, 31), NOW)

    found = asyncio.run(read())
    store = RollupStore(history["dir"] / "rollups.db")
    try:
        for name in PROCESSES:
            want = store.read(name, date(2025, 9, 30), date(2025, 10, 31), BERLIN)
            got = found.rollups[name]
            assert set(got) == set(want) and len(got) == 32, name
            for day, rollup in want.items():
                expected = totals(rollup)
                measures = next(iter(got[day].values()))
                for measure, value in expected.items():
                    if measure.startswith(("created.ratio", "completed.ratio", "completed.driver", "open")):
                        continue  # not exported as counters, or gauges (below)
                    assert close(measures.get(measure, 0.0), value), (name, day, measure)
    finally:
        store.close()
    # one range query per metric and run of 24-hour days, not one per day
    assert found.queries <= 10 * 4


def test_open_items_at_the_end_of_each_day_within_the_documented_tolerance(history: dict[str, Any],
                                                                           prometheus: Any) -> None:
    """The gauges are the live backlog (open statuses) read at a scrape, the rollups count the items
    created before the day's end and not completed by it: docs/reports.md says how far apart."""
    inventory = history["inventory"]
    read = asyncio.run(read_prometheus(Connection(prometheus.url, lookback=SCRAPE), inventory, OCTOBER, NOW))
    store = RollupStore(history["dir"] / "rollups.db")
    worst: dict[str, float] = {}
    try:
        for name in PROCESSES:
            want = store.read_totals(name, OCTOBER.first, OCTOBER.last, BERLIN)
            for day, rollup in want.items():
                expected = next(iter(rollup.values()), {})
                measures = next(iter(read.rollups[name][day].values()))
                for measure in ("open", "open.overdue"):
                    diff = abs(measures.get(measure, 0.0) - expected.get(measure, 0.0))
                    worst[measure] = max(worst.get(measure, 0.0), diff / max(expected.get(measure, 0.0), 1.0))
                age = abs(measures.get("open.oldest_age", 0.0) - expected.get("open.oldest_age", 0.0))
                worst["open.oldest_age"] = max(worst.get("open.oldest_age", 0.0), age)
    finally:
        store.close()
    print(json.dumps(worst))
    assert worst["open"] <= 0.0, worst
    assert worst["open.overdue"] <= 0.0, worst
    assert worst["open.oldest_age"] <= 2.0 + 1e-6, worst  # the settle between the day's end and the scrape


def test_months_without_history_are_named(history: dict[str, Any], prometheus: Any) -> None:
    inventory = history["inventory"]
    november = Month(2025, 11)
    read = asyncio.run(read_prometheus(Connection(prometheus.url, lookback=SCRAPE), inventory, november, NOW))
    report = summarize(inventory, read.rollups, november, read.states)
    assert all(not p.complete for p in report.processes)
    notes = prometheus_notes(inventory, report, read, november)
    assert any(line.startswith("2025-11: Prometheus holds no reading of order") for line in notes), notes
    assert any("order: no complete history in Prometheus for 2024-11, " in line and "2025-09" in line
               for line in notes), notes
    assert any("order.fallout" in line and "problem.critical_unassigned" in line for line in notes), notes


# --- errors: a real HTTP server on loopback answering as a failing Prometheus would ------------------


async def answered(status: int, body: str, userinfo: str = "", **options: Any) -> tuple[str, dict[str, Any]]:
    """Start a server answering every query with `status` and `body`, run one range query against it;
    return the error message, with what the server saw (requests, the Authorization header)."""
    seen: dict[str, Any] = {"requests": 0, "auth": None}

    async def answer(request: web.Request) -> web.Response:
        seen["requests"] += 1
        seen["auth"] = request.headers.get("Authorization")
        return web.Response(status=status, text=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/api/v1/{endpoint}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        with pytest.raises(PrometheusError) as raised:
            await _query(f"http://{userinfo}127.0.0.1:{port}", **options)
    finally:
        await runner.cleanup()
    return str(raised.value), seen


async def _query(url: str, **options: Any) -> Any:
    async with QueryClient(Connection(url, backoff=0.01, **options)) as client:
        return await client.query_range("fab_items_created_total", 0.0, 86400.0, 86400.0)


def test_a_down_server_names_the_url_and_the_query() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PrometheusError) as raised:
        asyncio.run(_query(url, retries=1))
    message = str(raised.value)
    assert url in message
    assert "fab_items_created_total" in message
    assert "cannot connect (2 attempts)" in message


def test_a_5xx_is_retried_then_reported_with_what_came_back() -> None:
    message, seen = asyncio.run(answered(503, '{"status":"error","errorType":"unavailable","error":"overloaded"}',
                                         retries=2))
    assert "HTTP 503: unavailable: overloaded" in message
    assert seen["requests"] == 3


def test_a_4xx_is_not_retried_and_the_secrets_are_sent_never_shown(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    message, seen = asyncio.run(answered(401, "unauthorized", token_file=str(token)))
    assert seen["requests"] == 1
    assert seen["auth"] == "Bearer s3cret-token"
    assert "HTTP 401: unauthorized" in message
    assert "s3cret" not in message
    message, seen = asyncio.run(answered(400, '{"status":"error","errorType":"bad_data","error":"parse error"}',
                                         userinfo="admin:hunter2@"))
    assert seen["auth"] is not None
    assert seen["auth"].startswith("Basic ")
    assert "HTTP 400: bad_data: parse error" in message
    assert "hunter2" not in message
    assert "***@127.0.0.1" in message


def test_a_url_is_masked() -> None:
    assert mask("https://u:p@prom.example:9090/x") == "https://***@prom.example:9090/x"
    assert mask("http://prom:9090") == "http://prom:9090"
