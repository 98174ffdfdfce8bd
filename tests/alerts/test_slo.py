"""Burn-rate factors against the SRE Workbook, and the shape of the SLO rules."""

from __future__ import annotations

import pytest

from alerts.config import SloAlerting
from alerts.slo import burn_condition, burn_factor, burn_pairs, kpi_recordings
from collector.schema import SlaKpi

DAY, HOUR, MINUTE = 86400.0, 3600.0, 60.0

# SRE Workbook, chapter 5, table 5-8: budget consumed, long and short windows, burn rate (30 days).
WORKBOOK_30D = [
    ("critical", 0.02, HOUR, 5 * MINUTE, 14.4),
    ("critical", 0.05, 6 * HOUR, 30 * MINUTE, 6.0),
    ("warning", 0.10, DAY, 2 * HOUR, 3.0),
    ("warning", 0.10, 3 * DAY, 6 * HOUR, 1.0),
]


def pairs_of(window: float, objective: float = 0.999) -> list[tuple[str, float, float, float, float]]:
    return [(p.severity, p.budget_share, p.long, p.short, p.factor)
            for p in burn_pairs(window, objective, SloAlerting())]


def test_default_pairs_are_the_workbook_table_for_30_days() -> None:
    assert pairs_of(30 * DAY) == [pytest.approx(row) for row in WORKBOOK_30D]


@pytest.mark.parametrize(("window", "factors"), [
    (28 * DAY, [13.44, 5.6, 2.8, 28 / 30]),
    (7 * DAY, [3.36, 1.4, 0.7, 7 / 30]),
])
def test_factors_follow_the_slo_window(window: float, factors: list[float]) -> None:
    assert [row[4] for row in pairs_of(window)] == pytest.approx(factors)
    assert [row[2:4] for row in pairs_of(window)] == [row[2:4] for row in WORKBOOK_30D]


def test_factor_is_budget_share_times_window_over_long_window() -> None:
    assert burn_factor(30 * DAY, HOUR, 0.02) == pytest.approx(14.4)


@pytest.mark.parametrize(("objective", "reachable"), [(0.999, 4), (0.95, 4), (0.9, 3)])
def test_pairs_no_error_ratio_can_reach_are_flagged(objective: float, reachable: int) -> None:
    pairs = burn_pairs(30 * DAY, objective, SloAlerting())
    assert sum(p.reachable for p in pairs) == reachable


def test_burn_condition_requires_enough_events_and_tolerates_an_empty_short_window() -> None:
    pair = burn_pairs(30 * DAY, 0.99, SloAlerting())[0]
    text = burn_condition(pair, {"process": "p", "kpi": "k"})
    assert 'process_kpi:fab_sla_valid:increase1h{process="p", kpi="k"} >= 10' in text
    assert 'process_kpi:fab_sla_valid:increase5m{process="p", kpi="k"} == 0' in text
    assert "(14.4 * 0.01)" in text


def test_min_events_zero_drops_the_guard() -> None:
    slo = SloAlerting(min_events=0)
    text = burn_condition(burn_pairs(30 * DAY, 0.99, slo)[0], {"process": "p", "kpi": "k"})
    assert "increase1h" not in text


def test_long_windows_use_the_cheap_form_and_short_ones_the_counters() -> None:
    rules = {r.record: r.expr for r in kpi_recordings("p", "k", SlaKpi(kind="sla", objective=0.99), SloAlerting())}
    assert "increase(fab_sla_good_total" in rules["process_kpi:fab_sla_error:ratio_rate6h"]
    assert "sum_over_time(process_kpi:fab_sla_good:increase5m" in rules["process_kpi:fab_sla_error:ratio_rate1d"]
    assert "sum_over_time" in rules["process_kpi:fab_sla_error:ratio_period"]
    assert "[30d]" in rules["process_kpi:fab_sla_error:ratio_period"]
    # Each evaluation (1m) adds one 5m increase: the sum counts every event five times.
    assert rules["process_kpi:fab_sla_valid:increase3d"].endswith("* 60 / 300")
    assert rules["process_kpi:fab_sla_objective:ratio"] == "vector(0.99)"
    assert rules["process_kpi:fab_sla_error_budget:ratio"] == "vector(0.01)"
