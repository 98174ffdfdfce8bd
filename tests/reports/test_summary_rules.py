"""Rules of the monthly summary checked on small hand-made rollups (fast; the figures themselves are
checked against the records of a simulated year in test_summary.py): worst days with two bounds,
days not final, KPIs whose days were rolled under other definitions, costs not rolled up."""

from datetime import date, timedelta

import pytest

from collector.inventory.load import load_inventory
from collector.inventory.models import CostComponent, Inventory, Process, RatioKpi, SqlSource, Target
from collector.rollups import ALL, DayRollup, Rolled, definitions, late_of, midnight
from reports.render import render_html, render_json
from reports.summary import Month, ProcessSummary, Report, summarize, worst_days
from tests.reports.test_render import EXAMPLE, problem_rollups

MONTH = Month(2026, 11)


@pytest.fixture(scope="module")
def inventory() -> Inventory:
    return load_inventory([EXAMPLE], {"FABWATCH_DEMO_DSN": "sqlite+aiosqlite:///unused.db"})


def with_problem(inventory: Inventory, **update: object) -> Inventory:
    problem = inventory.processes["problem"].model_copy(update=update)
    return inventory.model_copy(update={"processes": {**inventory.processes, "problem": problem}})


def problem_of(report: Report) -> ProcessSummary:
    return next(p for p in report.processes if p.name == "problem")


def rolled_states(process: Process, rollups: dict[date, DayRollup], late_by: float = 7 * 86400.0,
                  **changed: str) -> dict[date, Rolled]:
    """Each day rolled `late_by` seconds after its end, under the process's definitions but `changed`."""
    kept = definitions(process) | changed
    return {d: Rolled(midnight(d + timedelta(days=1), "Europe/Berlin") + late_by, kept) for d in rollups}


def ratio_days(good: dict[int, float], usual: float = 80.0) -> dict[date, DayRollup]:
    """100 items completed each day, `good[day]` (else `usual`) of them good for the ratio `fcr`."""
    return {d: {ALL: {"completed": 100.0, "completed.ratio_fcr": good.get(d.day, usual)}} for d in MONTH.days()}


def test_worst_days_of_a_two_sided_target_are_those_outside_it_then_nearest_the_violated_bound() -> None:
    kpi = RatioKpi(kind="ratio", good="x = 1", target=Target(min=0.7, max=1.0))
    rollups = ratio_days({1: 50, 2: 90, 3: 95, 4: 99, 7: 65})
    # outside [0.7, 1]: day 1 (0.2 below), day 7 (0.05 below); then the days nearest 0.7 (0.8, the
    # earliest first), never the best days 3 and 4
    assert worst_days("fcr", kpi, kpi.target, rollups, MONTH, ()) == [
        ("2026-11-01", 0.5), ("2026-11-07", 0.65), ("2026-11-05", 0.8)]


def test_worst_days_of_a_two_sided_target_violated_above() -> None:
    kpi = RatioKpi(kind="ratio", good="x = 1", target=Target(min=0.1, max=0.3))
    rollups = ratio_days({1: 50, 2: 90, 3: 15, 9: 29}, usual=20.0)
    assert worst_days("fcr", kpi, kpi.target, rollups, MONTH, ()) == [
        ("2026-11-02", 0.9), ("2026-11-01", 0.5), ("2026-11-09", 0.29)]


def test_worst_days_with_one_bound_are_the_lowest_under_a_minimum() -> None:
    kpi = RatioKpi(kind="ratio", good="x = 1", target=Target(min=0.7))
    rollups = ratio_days({1: 50, 2: 90, 3: 95, 4: 99, 7: 65, 8: 75})
    assert worst_days("fcr", kpi, kpi.target, rollups, MONTH, ()) == [
        ("2026-11-01", 0.5), ("2026-11-07", 0.65), ("2026-11-08", 0.75)]


def test_a_kpi_added_after_its_days_were_rolled_has_no_value_verdict_or_finding(inventory: Inventory) -> None:
    problem = inventory.processes["problem"]
    added = with_problem(inventory, kpis={**problem.kpis, "escalated_share": RatioKpi(
        kind="ratio", good="escalated = 0", target=Target(min=0.8))})
    report = summarize(added, {"problem": problem_rollups()}, MONTH)
    summary = problem_of(report)
    kpi = next(k for k in summary.kpis if k.kpi == "escalated_share")
    assert (kpi.value, kpi.met, kpi.needs_backfill) == (None, None, True)
    assert all(v is None for _, v in kpi.trend)
    assert kpi.worst_days == []
    assert not [f for f in summary.findings if f.kpi == "escalated_share"]
    assert summary.needs_backfill == ["escalated_share"]
    assert "fabwatch report --backfill" in render_html(report)
    reopen = next(k for k in summary.kpis if k.kpi == "reopen_rate")  # its measure is there: unaffected
    assert reopen.value is not None
    assert not reopen.needs_backfill


def test_a_kpi_changed_after_its_days_were_rolled_counts_them_as_not_rolled(inventory: Inventory) -> None:
    problem = inventory.processes["problem"]
    rollups = problem_rollups()
    current = summarize(inventory, {"problem": rollups}, MONTH, {"problem": rolled_states(problem, rollups)})
    assert current == summarize(inventory, {"problem": rollups}, MONTH)
    old = rolled_states(problem, rollups, cost_per_ticket="0123456789abcdef")
    # the fourth-last month rolled under the current definitions: only the three months after it lack a value
    old |= {d: rolled_states(problem, {d: {}})[d] for d in MONTH.shift(-3).days()}
    report = summarize(inventory, {"problem": rollups}, MONTH, {"problem": old})
    summary = problem_of(report)
    cost = next(k for k in summary.kpis if k.kpi == "cost_per_ticket")
    assert (cost.value, cost.met, cost.needs_backfill) == (None, None, True)
    assert [m for m, v in cost.trend if v is not None] == [str(MONTH.shift(-3))]
    assert not [f for f in summary.findings if f.kpi == "cost_per_ticket"]  # a persistent miss on current rollups
    assert [f.kpi for f in problem_of(current).findings if f.kpi == "cost_per_ticket"] == ["cost_per_ticket"]
    backlog = next(k for k in summary.kpis if k.kpi == "backlog")
    assert backlog == next(k for k in problem_of(current).kpis if k.kpi == "backlog")


def test_a_month_with_days_rolled_before_their_late_window_passed_is_provisional(inventory: Inventory) -> None:
    problem = inventory.processes["problem"]
    rollups = problem_rollups()
    source = inventory.sources[problem.records.source]
    assert isinstance(source, SqlSource)
    late = late_of(source)
    states = rolled_states(problem, rollups, late_by=late)
    final = summarize(inventory, {"problem": rollups}, MONTH, {"problem": states})
    assert problem_of(final).provisional_days == []
    assert problem_of(final).final
    states[MONTH.last] = rolled_states(problem, {MONTH.last: {}}, late_by=late - 1)[MONTH.last]
    report = summarize(inventory, {"problem": rollups}, MONTH, {"problem": states})
    assert problem_of(report).provisional_days == [MONTH.last.isoformat()]
    assert '"final": false' in render_json(report)
    assert "Provisional" in render_html(report)


def test_costs_from_a_cost_csv_are_na_and_make_the_cost_partial(inventory: Inventory) -> None:
    problem = inventory.processes["problem"]
    csv = with_problem(inventory, costs={**problem.costs, "outsourcing": CostComponent(monthly_from="finance")})
    plain = problem_of(summarize(inventory, {"problem": problem_rollups()}, MONTH))
    summary = problem_of(summarize(csv, {"problem": problem_rollups()}, MONTH))
    assert summary.cost_by_component == {**plain.cost_by_component, "outsourcing": None}
    assert summary.cost_partial
    assert not plain.cost_partial
    assert (summary.cost_total, summary.cost_per_item) == (plain.cost_total, plain.cost_per_item)
    cost = next(k for k in summary.kpis if k.kpi == "cost_per_ticket")
    assert (cost.partial, cost.met) == (True, None)
    assert cost.forecast is not None
    assert cost.forecast.will_meet is None
    assert not [f for f in summary.findings if f.kpi == "cost_per_ticket"]
