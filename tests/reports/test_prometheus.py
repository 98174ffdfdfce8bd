"""The report's Prometheus backend against a real Prometheus holding the same history as the rollups.

A simulated operator runs for 15 days around the end of October 2025 in Europe/Berlin (the 25-hour
day of the autumn change, and a month boundary); the engine samples it every simulated hour, the way
a scrape would, and each sample's /metrics exposition is written with its timestamp as OpenMetrics,
backfilled into TSDB blocks with `promtool tsdb create-blocks-from openmetrics` and served by a real
Prometheus. The rollups of the same records are computed from the final database. Every day's figures
from both backends must match as docs/reports.md ("From Prometheus") says: exactly for the counts,
money and buckets of items completed once; a reopened item's completions within the tolerance the
page gives; the open-item gauges likewise.
"""

import asyncio
import json
import logging
import math
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiohttp import web

from app.cli import main
from collector.engine.sampler import SourceSampler
from collector.inventory.load import load_inventory
from collector.inventory.models import Inventory
from collector.logs import KeyValueFormatter
from collector.rollups import RollupStore, days_between, roll_sources, totals
from collector.state import StateStore
from exporters.prometheus import render
from reports.prometheus import (
    COUNTERS,
    GAUGES,
    Connection,
    History,
    PrometheusError,
    QueryClient,
    day_figures,
    mask,
    prometheus_notes,
    read_history,
    read_metric,
    read_prometheus,
)
from reports.summary import Month, buckets_of, kpi_value, span_totals, summarize
from simulator import Simulator
from tests.servers import closed_port, free_port

pytestmark = pytest.mark.slow  # 15 simulated days sampled hourly, then backfilled: some 50 s

EXAMPLE = Path(__file__).parents[2] / "examples" / "operator.yaml"
BERLIN = "Europe/Berlin"
PROCESSES = ("interface", "order", "problem")
"""Volume, SLA, duration (mean, p50, p90), backlog, overdue, ratio, value and cost KPIs, fixed costs,
and reopened tickets (problem)."""
FIRST, LAST = date(2025, 10, 19), date(2025, 11, 2)
START = datetime(2025, 10, 19, tzinfo=ZoneInfo(BERLIN)).timestamp()
END = datetime(2025, 11, 3, 1, tzinfo=ZoneInfo(BERLIN)).timestamp()
SCRAPE = 3600.0
RECONCILE = 6 * 3600.0
NOW = END + 86400 * 30  # read long after: every day final
REOPEN_TOLERANCE = 0.05
"""How far above the records' figure a day's completions (and what is booked on them) may be where
items were reopened: each completion counts in the counters, the last one in the records."""


def operator(dsn: str) -> Inventory:
    found = load_inventory([EXAMPLE], {"FABWATCH_DEMO_DSN": dsn})
    # a reconcile every 6 hours: the replay writes no late rows, and hourly samples stay cheap
    source = found.sources["operator"].model_copy(update={"reconcile": RECONCILE})
    # one dimension, not three: a tenth of the series to backfill, and series per dimension set still
    processes = {n: p.model_copy(update={"records": p.records.model_copy(update={
        "columns": p.records.columns.model_copy(update={"dimensions": ("priority",)})})})
        for n, p in found.processes.items() if n in PROCESSES}
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
        days = days_between(FIRST, LAST, BERLIN)
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


def read(prometheus: Any, inventory: Inventory, now: float = NOW) -> History:
    async def run() -> History:
        async with QueryClient(Connection(prometheus.url, lookback=SCRAPE)) as client:
            return await read_history(client, inventory, FIRST, LAST, now)

    return asyncio.run(run())


def reopened(history: dict[str, Any], table: str) -> int:
    """Items of a table the simulator reopened (from the records)."""
    with sqlite3.connect(history["dir"] / "operator.db") as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table} WHERE reopened > 0").fetchone()[0])


def close(got: float | None, want: float | None) -> bool:
    if got is None or want is None:
        return got is None and want is None
    return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-6)


def within(got: float, want: float) -> bool:
    """A completion measure where items were reopened: never below the records', at most the tolerance above."""
    return want - 1e-6 <= got <= want * (1 + REOPEN_TOLERANCE) + 1.0


COMPLETION = ("completed", "outcome.", "cost.", "completed.")


def test_every_day_has_the_figures_of_the_records(history: dict[str, Any], prometheus: Any) -> None:
    inventory = history["inventory"]
    found = read(prometheus, inventory)
    store = RollupStore(history["dir"] / "rollups.db")
    checked = above = 0
    worst: dict[str, float] = {}
    try:
        for name in PROCESSES:
            process = inventory.processes[name]
            exact = reopened(history, process.records.table) == 0
            want = store.read(name, FIRST, LAST, BERLIN)
            got = found.rollups[name]
            assert set(got) == set(want), name
            assert len(got) == 15
            for day, rollup in want.items():
                expected = totals(rollup)
                measures = next(iter(got[day].values()))
                assert measures["created"] == expected["created"], (name, day)
                for measure, value in expected.items():
                    if measure.startswith(("created.ratio", "completed.ratio", "completed.driver", "open")):
                        continue  # not exported as counters; the gauges: below
                    mine = measures.get(measure, 0.0)
                    if exact or not measure.startswith(COMPLETION):
                        assert close(mine, value), (name, day, measure, mine, value)
                    else:
                        assert mine >= value - 1e-6, (name, day, measure, mine, value)
                        above += mine > value + 1e-6
                        worst[measure] = max(worst.get(measure, 0.0), mine / value - 1 if value else 0.0)
                    checked += 1
    finally:
        store.close()
    print("worst day above the records where items were reopened:", json.dumps(worst))
    assert checked > 500
    assert above > 0  # the reopened tickets do show
    # one range query per metric and run of 24-hour days (two: the 25-hour day splits them), not one a day
    assert found.queries == len(COUNTERS + GAUGES) * 2


def test_the_kpis_of_the_period_match_the_records(history: dict[str, Any], prometheus: Any) -> None:
    """The summary's figures over the 15 days (what a month's are: sums of days) from either backend."""
    inventory = history["inventory"]
    found = read(prometheus, inventory)
    store = RollupStore(history["dir"] / "rollups.db")
    checked = 0
    try:
        for name in PROCESSES:
            process = inventory.processes[name]
            exact = reopened(history, process.records.table) == 0
            want = span_totals([store.read_totals(name, FIRST, LAST, BERLIN)[d] for d in sorted(found.rollups[name])])
            got = span_totals([found.rollups[name][d] for d in sorted(found.rollups[name])])
            for kpi_name, kpi in process.kpis.items():
                mine = kpi_value(kpi_name, kpi, got, buckets_of(process))
                theirs = kpi_value(kpi_name, kpi, want, buckets_of(process))
                if kpi.kind == "ratio":  # no counter of them: the records only (the summary shows n/a)
                    assert f"{getattr(kpi, 'of', '')}.ratio_{kpi_name}" not in got, (name, kpi_name)
                elif kpi.kind == "value":
                    assert mine is None
                elif kpi.kind in ("backlog", "overdue"):
                    continue  # gauges: below
                elif exact or (kpi.kind in ("volume",) and getattr(kpi, "of", "") == "created"):
                    assert close(mine, theirs), (name, kpi_name, mine, theirs)
                    checked += 1
                else:
                    assert mine is not None
                    assert theirs is not None
                    assert math.isclose(mine, theirs, rel_tol=REOPEN_TOLERANCE), (name, kpi_name, mine, theirs)
                    checked += 1
    finally:
        store.close()
    assert checked >= 14


def reopened_open_at(history: dict[str, Any], table: str, end: float) -> int:
    """Reopened items the records count open at `end` (created before it, last completed after it):
    whether they were open then, or between a first completion and their reopening, the records cannot tell."""
    with sqlite3.connect(history["dir"] / "operator.db") as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table} WHERE reopened > 0 AND created_at < ? AND "
                                "(completed_at IS NULL OR completed_at >= ?)", (end, end)).fetchone()[0])


def test_open_items_at_the_end_of_each_day_within_the_documented_tolerance(history: dict[str, Any],
                                                                           prometheus: Any) -> None:
    """The gauges are the live backlog read at a scrape `settle` after the day's end, its oldest item
    recounted every `reconcile`; the rollups count the items created before the day's end and not
    completed by it, as the records tell at the end."""
    inventory = history["inventory"]
    source = inventory.sources["operator"]
    found = read(prometheus, inventory)
    store = RollupStore(history["dir"] / "rollups.db")
    exact = stale = unsure = 0
    try:
        for name in PROCESSES:
            table = inventory.processes[name].records.table
            want = store.read_totals(name, FIRST, LAST, BERLIN)
            for day, end in ((d.day, d.end) for d in days_between(FIRST, LAST, BERLIN)):
                expected = next(iter(want[day].values()), {})
                measures = next(iter(found.rollups[name][day].values()))
                doubt = reopened_open_at(history, table, end)
                unsure += doubt
                for measure in ("open", "open.overdue"):
                    records, live = expected.get(measure, 0.0), measures.get(measure, 0.0)
                    assert records - doubt <= live <= records, (name, day, measure, live, records, doubt)
                if doubt or not expected.get("open"):
                    continue
                gauge, records = measures["open.oldest_age"], expected["open.oldest_age"]
                if math.isclose(gauge, records + source.settle, abs_tol=1e-3):  # type: ignore[union-attr]
                    exact += 1
                    continue
                # else the oldest item was completed since the last recount: the gauge still shows its age
                assert completed_since_recount(history, table, end + source.settle - gauge, end), (name, day)  # type: ignore[union-attr]
                stale += 1
    finally:
        store.close()
    print(f"oldest age: {exact} days exact (+ settle), {stale} the age of an item completed since the recount")
    assert unsure > 0  # the reopened tickets do show
    assert exact > 10 * stale


def completed_since_recount(history: dict[str, Any], table: str, created: float, end: float) -> bool:
    """Whether the records hold an item created at `created` and completed within the reconcile before `end`."""
    with sqlite3.connect(history["dir"] / "operator.db") as conn:
        found = conn.execute(f"SELECT count(*) FROM {table} WHERE abs(created_at - ?) < 0.001 AND "
                             "completed_at >= ? AND completed_at < ?", (created, end - RECONCILE, end)).fetchone()[0]
    return bool(found)


def test_what_prometheus_lacks_is_named(history: dict[str, Any], prometheus: Any) -> None:
    inventory = history["inventory"]
    october = Month(2025, 10)
    found = asyncio.run(read_prometheus(Connection(prometheus.url, lookback=SCRAPE), inventory, october, NOW))
    # 2024-10 to 2025-10, three changes of time: four runs of 24-hour days, a range query each per metric
    assert found.queries == len(COUNTERS + GAUGES) * 4
    report = summarize(inventory, found.rollups, october, found.states)
    assert all(not p.complete for p in report.processes)
    assert all(k.value is None for p in report.processes for k in p.kpis)
    notes = prometheus_notes(inventory, report, found, october)
    assert "2025-10: Prometheus holds no reading of order at the ends of 18 of its days (2025-10-01 to " \
           "2025-10-18): no figures for the month" in notes, notes
    assert any(line.startswith("order: no complete history in Prometheus for 2024-10, 2024-11, ")
               and line.count(", ") == 11 for line in notes), notes
    assert any("order.fallout" in line and "problem.critical_unassigned" in line for line in notes), notes
    # process names with a regular expression's metacharacters are matched literally
    async def odd_names() -> Any:
        async with QueryClient(Connection(prometheus.url, lookback=SCRAPE)) as client:
            return await read_metric(client, GAUGES[-1], ["order", 'no-such.process"x', "ord.r"], [END], SCRAPE)

    assert set(asyncio.run(odd_names())) == {"order"}
    # read an hour after the last day: the days within the late window are provisional
    early = read(prometheus, inventory, END + 3600)
    provisional = [d for d, state in early.states["order"].items() if not state.final(d, BERLIN, RECONCILE)]
    assert provisional == [LAST]  # its late window (the reconcile, 6 h) not passed an hour after it


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """main() installs its log handler on the root logger; take it off after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_the_report_command_reads_prometheus(history: dict[str, Any], prometheus: Any, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """`fabwatch report --prometheus` on the example inventory (eight processes; Prometheus holds three)."""
    status = main(["report", "-c", str(EXAMPLE), "--prometheus", prometheus.url, "--prometheus-lookback", "1h",
                   "--month", "2025-10", "--format", "json,md", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 0, err
    assert "fabwatch: 2025-10: Prometheus holds no reading of order at the ends of 18 of its days" in err
    assert "fabwatch: 2025-10: Prometheus holds no reading of payments at the ends of 31 of its days" in err
    assert "backfill" not in err
    data = json.loads((tmp_path / "fabwatch-report-2025-10.json").read_text())
    assert data["source"] == "prometheus"
    interface = next(p for p in data["processes"] if p["name"] == "interface")
    assert interface["days_rolled"] == 13
    assert interface["needs_backfill"] == []
    assert {k["kpi"] for k in interface["kpis"] if k["records_only"]} == {"abandonment", "first_contact_resolution",
                                                                         "digital_share"}
    assert "(records only)" in (tmp_path / "fabwatch-report-2025-10.md").read_text()


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
    with closed_port() as port:
        url = f"http://127.0.0.1:{port}"
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


def test_a_4xx_is_not_retried_and_the_secrets_are_sent_never_shown(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="fabwatch.report")
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
    logged = "\n".join(KeyValueFormatter().format(r) for r in caplog.records)
    assert "prometheus_query" in logged
    assert "***@127.0.0.1" in logged
    assert "hunter2" not in logged
    assert "s3cret" not in logged


def test_a_server_that_aligns_ranges_to_its_step_is_asked_each_instant() -> None:
    """A range query answered at other instants than asked (VictoriaMetrics rounds a range's start down
    to a multiple of its step by default): each day's end is then read by an instant query."""
    asked: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        endpoint = request.match_info["endpoint"]
        asked.append(endpoint)
        series = {"__name__": "fab_items_created_total", "process": "order"}
        if endpoint == "query_range":
            start, end, step = (float(request.query[k]) for k in ("start", "end", "step"))
            aligned = start - start % step
            values = [[aligned + i * step, str(i)] for i in range(int((end - aligned) // step) + 1)]
            data = {"resultType": "matrix", "result": [{"metric": series, "values": values}]}
        else:
            at = float(request.query["time"])
            data = {"resultType": "vector", "result": [{"metric": series, "value": [at, str(at % 1000)]}]}
        return web.json_response({"status": "success", "data": data})

    async def run() -> Any:
        app = web.Application()
        app.router.add_get("/api/v1/{endpoint}", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            async with QueryClient(Connection(f"http://127.0.0.1:{port}")) as client:
                return await read_metric(client, COUNTERS[0], ["order"], times, 300.0)
        finally:
            await runner.cleanup()

    times = [d.end + 2.0 for d in days_between(date(2025, 10, 1), date(2025, 10, 5), BERLIN)]
    found = asyncio.run(run())
    assert asked == ["query_range"] + ["query"] * len(times)
    values = next(iter(found["order"].values()))
    assert values == {round(t, 3): t % 1000 for t in times}


def test_a_counter_that_drops_or_appears_counts_its_new_reading() -> None:
    """Day by day from readings at the day ends: a drop is a restart that lost the count (its reading is
    the day's increase), a series that appears counts from 0, a gauge is its reading at the day's end."""
    inventory = operator("sqlite+aiosqlite:///unused.db")
    days = days_between(date(2025, 10, 25), date(2025, 10, 27), BERLIN)  # the middle day has 25 hours
    ends = [days[0].start, *(d.end for d in days)]
    steady = (("process", "order"),)
    late = (("outcome", "done"), ("process", "order"))
    readings = {steady: {round(ends[0], 3): 10.0, round(ends[1], 3): 15.0, round(ends[2], 3): 4.0,
                         round(ends[3], 3): 9.0},
                late: {round(ends[2], 3): 3.0, round(ends[3], 3): 7.0}}
    created = day_figures(COUNTERS[0], readings, inventory.processes["order"], days, 0.0)
    assert [created[d.day].get("created") for d in days] == [5.0, 4.0 + 3.0, 5.0 + 4.0]
    backlog = day_figures(GAUGES[0], readings, inventory.processes["order"], days, 0.0)
    assert [backlog[d.day].get("open") for d in days] == [15.0, 4.0 + 3.0, 9.0 + 7.0]


def test_a_url_is_masked() -> None:
    assert mask("https://u:p@prom.example:9090/x") == "https://***@prom.example:9090/x"
    assert mask("http://prom:9090") == "http://prom:9090"
