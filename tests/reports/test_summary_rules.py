"""Rules of the monthly summary checked on small hand-made rollups (fast; the figures themselves are
checked against the records of a simulated year in test_summary.py): worst days with two bounds,
days not final, KPIs whose days were rolled under other definitions, costs not rolled up."""

from datetime import date

from collector.inventory.models import RatioKpi, Target
from collector.rollups import ALL, DayRollup
from reports.summary import Month, worst_days

MONTH = Month(2026, 11)


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
