"""The monthly summary against an independent computation from the raw records of a simulated
year: exact counts, money and ratios to 1e-9, in months of 28, 29, 30 and 31 days, across both
daylight saving changes of Europe/Berlin and in a zone west of UTC."""

import asyncio
import math
import sqlite3
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from collector.inventory.load import load_inventory
from collector.inventory.models import Inventory
from collector.rollups import RollupStore, days_between, roll_sources
from reports.summary import Month, Report, read_rollups, summarize
from simulator import Simulator
from tests.collector.kpi_oracle import Row
from tests.reports.report_oracle import bounds, figures, line_forecast, month_bounds

pytestmark = pytest.mark.slow  # a simulated 14 months per time zone: seconds to build

EXAMPLE = Path(__file__).parents[2] / "examples" / "operator.yaml"
END = 1741132800.0  # 2025-03-05T00:00:00Z: history from 2024-01-11
FIRST, LAST = date(2024, 1, 12), date(2025, 3, 3)
MONTHS = {
    "2024-02": "29 days (a leap year)",
    "2024-03": "31 days, spring change to summer time in Europe/Berlin and America/New_York",
    "2024-04": "30 days",
    "2024-10": "31 days, autumn change back in Europe/Berlin",
    "2024-11": "30 days, autumn change back in America/New_York",
    "2025-02": "28 days, a year after 2024-02",
}
ZONES = ("Europe/Berlin", "America/New_York")


def in_zone(inventory: Inventory, zone: str) -> Inventory:
    return inventory.model_copy(update={"service": inventory.service.model_copy(update={"timezone": zone})})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A simulated 14 months, rolled up in both zones (one state file each)."""
    directory = tmp_path_factory.mktemp("year")
    dsn = f"sqlite+aiosqlite:///{directory / 'operator.db'}"

    async def build() -> None:
        sim = Simulator(dsn, seed=5, scale=0.03)
        await sim.create_schema()
        await sim.backfill((END - 1704931200.0) / 86400, END)
        await sim.close()
        for zone in ZONES:
            inventory = in_zone(load_inventory([EXAMPLE], {"FABWATCH_DEMO_DSN": dsn}), zone)
            store = RollupStore(directory / f"{zone.replace('/', '_')}.state")
            await roll_sources(inventory.sources, inventory.processes, store, zone, days_between(FIRST, LAST, zone))
            store.close()

    asyncio.run(build())
    base = load_inventory([EXAMPLE], {"FABWATCH_DEMO_DSN": dsn})
    with sqlite3.connect(directory / "operator.db") as conn:
        conn.row_factory = sqlite3.Row
        rows = {p.records.table: [dict(r) for r in conn.execute(f"SELECT * FROM {p.records.table}")]
                for p in base.processes.values()}
    return {"dir": directory, "base": base, "rows": rows}


def report_of(world: dict[str, Any], zone: str, month: str) -> tuple[Inventory, Report]:
    inventory = in_zone(world["base"], zone)
    store = RollupStore(world["dir"] / f"{zone.replace('/', '_')}.state")
    try:
        return inventory, summarize(inventory, read_rollups(store, inventory, Month.parse(month)), Month.parse(month))
    finally:
        store.close()


def close(got: float | None, want: float | None) -> bool:
    if got is None or want is None:
        return got is None and want is None
    return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize("month", list(MONTHS))
def test_every_figure_of_a_month_matches_the_records(world: dict[str, Any], zone: str, month: str) -> None:
    inventory, report = report_of(world, zone, month)
    lo, hi = month_bounds(month, zone)
    checked = 0
    for summary in report.processes:
        process = inventory.processes[summary.name]
        rows: list[Row] = world["rows"][process.records.table]
        want = figures(process, rows, lo, hi)
        assert summary.complete
        assert (summary.created, summary.completed) == (want.created, want.completed), summary.name
        assert summary.by_outcome == dict(want.outcomes), summary.name
        assert summary.cost_by_component.keys() == want.costs.keys()
        assert all(close(summary.cost_by_component[c], want.costs[c]) for c in want.costs), summary.name
        assert close(summary.cost_total, sum(want.costs.values()))
        assert close(summary.cost_per_item, sum(want.costs.values()) / want.completed if want.completed else None)
        for kpi in summary.kpis:
            assert close(kpi.value, want.kpis[kpi.kpi]), (summary.name, kpi.kpi, kpi.value, want.kpis[kpi.kpi])
            checked += kpi.value is not None
            if kpi.kind == "sla":
                assert (kpi.good, kpi.valid) == (want.good[kpi.kpi], want.valid[kpi.kpi])
                objective = process.kpis[kpi.kpi].objective  # type: ignore[union-attr]
                bad = want.valid[kpi.kpi] - want.good[kpi.kpi]
                assert close(kpi.budget_used, bad / (want.valid[kpi.kpi] * (1 - objective)))
    assert checked > 40


@pytest.mark.parametrize("zone", ZONES)
def test_changes_trend_and_forecast_match_the_records(world: dict[str, Any], zone: str) -> None:
    inventory, report = report_of(world, zone, "2025-02")
    months = [str(Month(2024, 3).shift(i)) for i in range(12)]
    for summary in report.processes:
        process = inventory.processes[summary.name]
        rows = world["rows"][process.records.table]
        monthly = {m: figures(process, rows, *month_bounds(m, zone)).kpis for m in [*months, "2024-02"]}
        for kpi in summary.kpis:
            want_trend = [monthly[m][kpi.kpi] for m in months]
            assert [m for m, _ in kpi.trend] == months
            assert all(close(g, w) for (_, g), w in zip(kpi.trend, want_trend, strict=True)), kpi.kpi
            assert close(kpi.previous, monthly["2025-01"][kpi.kpi])
            assert close(kpi.last_year, monthly["2024-02"][kpi.kpi])  # history exists: a year-on-year change
            expected = line_forecast(want_trend)
            if expected is None:
                assert kpi.forecast is None
                continue
            assert kpi.forecast is not None
            assert kpi.forecast.month == "2025-03"
            value, half = expected
            assert math.isclose(kpi.forecast.value, value, rel_tol=1e-6, abs_tol=1e-9)
            assert math.isclose(kpi.forecast.high - kpi.forecast.value, half, rel_tol=1e-6, abs_tol=1e-9)
            assert math.isclose(kpi.forecast.value - kpi.forecast.low, half, rel_tol=1e-6, abs_tol=1e-9)


def test_worst_days_are_the_days_furthest_on_the_wrong_side(world: dict[str, Any]) -> None:
    inventory, report = report_of(world, "Europe/Berlin", "2024-03")
    problem = next(p for p in report.processes if p.name == "problem")
    sla = next(k for k in problem.kpis if k.kind == "sla")
    process = inventory.processes["problem"]
    rows = world["rows"][process.records.table]
    daily = []
    for day in Month(2024, 3).days():
        lo, hi = bounds(day, day, "Europe/Berlin")
        value = figures(process, rows, lo, hi).kpis[sla.kpi]
        if value is not None:
            daily.append((day.isoformat(), value))
    want = sorted(daily, key=lambda item: (item[1], item[0]))[:3]  # an SLA has a minimum: lowest is worst
    assert [d for d, _ in sla.worst_days] == [d for d, _ in want]
    assert all(close(g, w) for (_, g), (_, w) in zip(sla.worst_days, want, strict=True))


def test_a_month_with_missing_days_has_no_value(world: dict[str, Any]) -> None:
    _, report = report_of(world, "Europe/Berlin", "2024-01")  # rolled from the 12th only
    for summary in report.processes:
        assert not summary.complete
        assert all(k.value is None for k in summary.kpis)
