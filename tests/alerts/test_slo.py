"""Burn-rate factors against the SRE Workbook, and the shape of the SLO rules."""

from __future__ import annotations

import pytest

from alerts.promql import window
from alerts.slo import burn_condition, burn_factor, burn_pairs, kpi_recordings
from collector.inventory.alerting import SloAlerting
from collector.inventory.models import SlaKpi

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
    (28 * DAY, [13.44, 5.6, 2.8, 1.0]),
    (7 * DAY, [3.36, 1.4, 1.0, 1.0]),
])
def test_factors_follow_the_slo_window_and_never_drop_under_1x(window: float, factors: list[float]) -> None:
    """Under 1x (a 28d SLO's 3d pair: 0.93x) a pair fires from 1x: a steady 2x burn must ticket."""
    assert [row[4] for row in pairs_of(window)] == pytest.approx(factors)
    assert [row[2:4] for row in pairs_of(window)] == [row[2:4] for row in WORKBOOK_30D]
    assert all(p.usable for p in burn_pairs(window, 0.95, SloAlerting()))


def test_a_scaled_pair_keeps_its_workbook_factor_and_spends_its_long_window_share() -> None:
    pair = burn_pairs(28 * DAY, 0.95, SloAlerting())[3]
    assert (pair.workbook_factor, pair.factor, pair.scaled) == (pytest.approx(28 / 30), 1.0, True)
    assert pair.share == pytest.approx(3 / 28)  # 1x over 3 days of 28
    assert burn_pairs(30 * DAY, 0.95, SloAlerting())[0].share == pytest.approx(0.02)


def test_factor_is_budget_share_times_window_over_long_window() -> None:
    assert burn_factor(30 * DAY, HOUR, 0.02) == pytest.approx(14.4)


@pytest.mark.parametrize(("objective", "reachable"), [(0.999, 4), (0.95, 4), (0.9, 3)])
def test_pairs_no_error_ratio_can_reach_are_flagged(objective: float, reachable: int) -> None:
    pairs = burn_pairs(30 * DAY, objective, SloAlerting())
    assert sum(p.reachable for p in pairs) == reachable


@pytest.mark.parametrize("pair", range(4))
def test_every_pair_requires_enough_valid_and_bad_events_and_a_burning_short_window(pair: int) -> None:
    chosen = burn_pairs(30 * DAY, 0.99, SloAlerting())[pair]
    text = burn_condition(chosen, {"process": "p", "kpi": "k"})
    long, short = window(chosen.long), window(chosen.short)
    assert f'process_kpi:fab_sla_valid:increase{long}{{process="p", kpi="k"}} >= 10' in text
    assert f'process_kpi:fab_sla_bad:increase{long}{{process="p", kpi="k"}} >= 3' in text
    assert (f'process_kpi:fab_sla_bad:increase{long}{{process="p", kpi="k"}} >= on (process, kpi) '
            f'{chosen.share:g} * process_kpi:fab_sla_error_budget:events') in text
    assert f'process_kpi:fab_sla_error:ratio_rate{short}{{process="p", kpi="k"}} > ' in text
    assert "== 0" not in text  # an empty short window never starts an alert


def test_min_events_zero_drops_the_guards() -> None:
    slo = SloAlerting(min_events=0, min_bad_events=0)
    text = burn_condition(burn_pairs(30 * DAY, 0.99, slo)[0], {"process": "p", "kpi": "k"})
    assert "fab_sla_valid:increase1h" not in text
    assert ">= 0" not in text


def test_long_windows_use_the_cheap_form_and_short_ones_the_counters() -> None:
    rules = {r.record: r.expr for r in kpi_recordings("p", "k", SlaKpi(kind="sla", objective=0.99), SloAlerting())}
    assert "increase(fab_sla_good_total" in rules["process_kpi:fab_sla_error:ratio_rate6h"]
    assert "sum_over_time(process_kpi:fab_sla_good:increase5m" in rules["process_kpi:fab_sla_error:ratio_rate1d"]
    assert "process_kpi:fab_sla_error:ratio_period" not in rules  # fabwatch's window sums say it
    # Each evaluation (1m) adds one 5m increase: the sum counts every event five times.
    assert rules["process_kpi:fab_sla_valid:increase3d"].endswith("* 60 / 300")
    assert rules["process_kpi:fab_sla_objective:ratio"] == "vector(0.99)"
    assert rules["process_kpi:fab_sla_error_budget:ratio"] == "vector(0.01)"
    assert "* 60 / 300" in rules["process_kpi:fab_sla_bad:increase3d"]
    assert "process_kpi:fab_sla_bad:increase5m" not in rules  # only long windows count bad events


def test_the_window_budget_comes_from_fabwatch_not_from_prometheus_history() -> None:
    """A Prometheus a few hours old holds a few hours of counters: fabwatch knows the whole window."""
    rules = {r.record: r.expr for r in kpi_recordings("p", "k", SlaKpi(kind="sla", objective=0.99), SloAlerting())}
    remaining = rules["process_kpi:fab_sla_error_budget_remaining:events"]
    assert 'max by (process, kpi) (fab_sla_window_valid{process="p", kpi="k"})' in remaining
    assert 'max by (process, kpi) (fab_kpi_value{process="p", kpi="k"}) - 0.99' in remaining
    assert "fab_sla_valid_total" not in remaining
    assert rules["process_kpi:fab_sla_burn_rate:period"].startswith("(1 - max by (process, kpi) (fab_kpi_value")
    assert rules["process_kpi:fab_sla_error_budget:events"].endswith("* 0.01")
