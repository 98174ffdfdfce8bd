"""The status view: KPI states, SLA budgets and burn rates over the alert windows, the history."""

import pytest

from collector.health import HealthTracker
from collector.inventory.alerting import BurnWindow
from collector.inventory.models import BacklogKpi, Inventory, RatioKpi, SlaKpi
from collector.samples import Family, KpiReading, SourceSample
from exporters.schema import Target
from exporters.status import (
    COUNTER_SPACING,
    CounterPoint,
    StatusBoard,
    budget,
    burn_rate,
    burn_rates,
    is_share,
    kpi_state,
    safe_link,
    target_of,
    worst,
)

HOUR = 3600.0


def inventory(**alerting: object) -> Inventory:
    return Inventory.model_validate({
        "sources": {"crm": {"kind": "sql", "dsn": "sqlite+aiosqlite:///x.db"}},
        "processes": {"problem": {
            "etom": "1.3.1.3", "name": "Problem <b>Management</b>", "team": "assurance",
            "runbook": "javascript:alert(1)",
            "records": {"source": "crm", "table": "t", "open_statuses": ["open"]},
            "kpis": {"backlog": {"kind": "backlog", "target": {"max": 100}},
                     "inflow": {"kind": "volume"},
                     "in_time": {"kind": "sla", "objective": 0.9, "window": "30d"}}}},
        "alerting": alerting,
    })


def sample(at: float, backlog: float | None, good: float, valid: float, ratio: float | None,
           window_valid: float) -> SourceSample:
    labels = (("process", "problem"), ("kpi", "in_time"))
    families = (Family("fab_sla_good", "counter", "", [(labels, good)]),
                Family("fab_sla_valid", "counter", "", [(labels, valid)]),
                Family("fab_sla_window_valid", "gauge", "", [(labels, window_valid)]))
    kpis = (KpiReading("problem", "backlog", "backlog", backlog, None, 100.0),
            KpiReading("problem", "inflow", "volume", 12.0),
            KpiReading("problem", "in_time", "sla", ratio, 0.9, None))
    return SourceSample("crm", at, 0.01, families, kpis)


@pytest.mark.parametrize(("value", "target", "state"), [
    (None, Target(min=None, max=100), "no_data"),
    (5.0, None, "ok"),
    (101.0, Target(min=None, max=100), "breached"),
    (100.0, Target(min=None, max=100), "at_risk"),   # on the bound: within target, no margin left
    (90.5, Target(min=None, max=100), "at_risk"),    # within 10 % of the max
    (90.0, Target(min=None, max=100), "ok"),
    (0.6, Target(min=0.65, max=None), "breached"),
    (0.7, Target(min=0.65, max=None), "at_risk"),    # 0.7 < 0.65 x 1.1
    (0.72, Target(min=0.65, max=None), "ok"),
])
def test_kpi_states_against_the_target(value, target, state):
    assert kpi_state(value, target) == state


def test_the_worst_state_wins_and_no_data_is_worse_than_ok():
    assert worst(["ok", "no_data"]) == "no_data"
    assert worst(["no_data", "at_risk", "ok"]) == "at_risk"
    assert worst(["at_risk", "breached"]) == "breached"
    assert worst([]) == "ok"


def test_budget_in_events_and_ratios():
    availability, spent = budget(0.9, 0.95, 200.0)
    assert availability.errors == pytest.approx(10.0)
    assert spent.total == pytest.approx(20.0)  # 10 % of 200 valid events may be bad
    assert spent.remaining == pytest.approx(10.0)
    assert spent.remaining_ratio == pytest.approx(0.5)
    assert spent.burn_rate == pytest.approx(0.5)
    _, overspent = budget(0.9, 0.85, 200.0)
    assert overspent.remaining == pytest.approx(-10.0)
    assert overspent.remaining_ratio == pytest.approx(-0.5)


def test_burn_rate_over_a_window_reads_the_counters_at_its_edges():
    points = [CounterPoint(0.0, 0.0, 0.0), CounterPoint(HOUR, 90.0, 100.0), CounterPoint(2 * HOUR, 150.0, 200.0)]
    # The last hour: 100 valid, 60 good -> error ratio 0.4, with a 10 % budget a 4x burn.
    rate, covered = burn_rate(points, 2 * HOUR, HOUR, 0.9)
    assert rate == pytest.approx(4.0)
    assert covered == HOUR
    # Six hours asked, two covered: the history says so.
    rate, covered = burn_rate(points, 2 * HOUR, 6 * HOUR, 0.9)
    assert rate == pytest.approx((50 / 200) / 0.1)
    assert covered == 2 * HOUR
    assert burn_rate(points[:1], 0.0, HOUR, 0.9) == (None, 0.0)


def test_a_pair_burns_when_both_windows_exceed_its_factor():
    kpi = SlaKpi(kind="sla", objective=0.9, window=30 * 86400)
    pair = BurnWindow(severity="critical", long=HOUR, short=300, budget_share=0.02)
    steady = [CounterPoint(t, t / 60 * 0.5, t / 60) for t in range(0, 3601, 60)]  # 50 % bad throughout
    (rate,) = burn_rates(steady, 3600.0, kpi, [pair])
    assert rate.factor == pytest.approx(0.02 * 30 * 24)  # 14.4: 2 % of 30 days' budget in 1 h
    assert rate.long_rate == pytest.approx(5.0)
    assert not rate.burning  # 5x < 14.4x
    bad = [CounterPoint(t, 0.0, t / 60) for t in range(0, 3601, 60)]  # every event bad: 10x
    (fast,) = burn_rates(bad, 3600.0, kpi, [pair.model_copy(update={"budget_share": 0.01})])
    assert fast.factor == pytest.approx(7.2)
    assert fast.burning


def test_only_http_links_are_kept():
    assert safe_link("https://wiki.example/a") == "https://wiki.example/a"
    assert safe_link("javascript:alert(1)") is None
    assert safe_link(None) is None


def test_the_board_builds_process_kpi_and_slo_states_from_samples():
    inv = inventory(grafana_url="https://grafana.example")
    health = HealthTracker(inv.sources)
    latest: dict[str, SourceSample] = {}
    board = StatusBoard(inv, health, latest.get)
    assert board.processes()["problem"].state == "no_data"

    first = sample(1000.0, 50.0, 950.0, 1000.0, 0.95, 400.0)
    latest["crm"] = first
    health.record_success("crm", 0.01, 1000.0)
    board.update(first)
    status = board.processes()["problem"]
    kpis = {k.kpi: k for k in status.kpis}
    assert kpis["backlog"].state == "ok"
    assert kpis["inflow"].target is None
    assert kpis["in_time"].state == "ok"  # half the budget left
    (slo,) = status.slos
    assert slo.budget.total == pytest.approx(40.0)
    assert slo.budget.remaining == pytest.approx(20.0)
    assert status.state == "ok"
    assert status.runbook is None  # javascript: is no link
    assert status.dashboard == "https://grafana.example/d/fabwatch-process-problem?var-process=problem"
    assert status.source.up

    # The backlog passes its target, the SLA falls under its objective.
    second = sample(1000.0 + COUNTER_SPACING, 150.0, 950.0, 1100.0, 0.85, 500.0)
    latest["crm"] = second
    board.update(second)
    status = board.processes()["problem"]
    kpis = {k.kpi: k for k in status.kpis}
    assert kpis["backlog"].state == "breached"
    assert kpis["in_time"].state == "breached"
    assert [p.value for p in kpis["backlog"].trend] == [50.0, 150.0]
    assert status.state == "breached"
    assert status.states["breached"] == 2
    # 100 valid, none good in the last minute: the history gives the short windows' burn rate.
    short = status.slos[0].burn_rates[0]
    assert short.short_rate == pytest.approx(10.0)
    assert short.covered_seconds == COUNTER_SPACING


def test_the_view_is_rebuilt_once_per_change():
    inv = inventory()
    latest = {"crm": sample(1000.0, 50.0, 0.0, 0.0, None, 0.0)}
    board = StatusBoard(inv, HealthTracker(inv.sources), latest.get)
    board.update(latest["crm"])
    first = board.processes()
    assert board.processes() is first
    assert first["problem"].dashboard is None  # no grafana_url in the inventory
    assert {k.kpi: k.state for k in first["problem"].kpis}["in_time"] == "no_data"
    board.invalidate()
    assert board.processes() is not first


def test_counter_history_is_thinned_and_bounded():
    inv = inventory(slo={"windows": [{"severity": "critical", "long": "1h", "short": "5m", "budget_share": 0.02}]})
    board = StatusBoard(inv, HealthTracker(inv.sources), lambda _: None)
    for second in range(0, 4 * 3600, 15):
        board.update(sample(float(second), 1.0, float(second), float(second), 1.0, 1.0))
    points = board._counters["problem", "in_time"]
    assert len(points) <= (3600 + COUNTER_SPACING) / COUNTER_SPACING + 2
    assert points[-1].at == 4 * 3600 - 15  # the newest sample is always kept
    assert points[0].at >= points[-1].at - 3600 - COUNTER_SPACING


def test_a_pair_does_not_burn_before_the_history_covers_its_long_window():
    kpi = SlaKpi(kind="sla", objective=0.9, window=30 * 86400)
    pair = BurnWindow(severity="critical", long=HOUR, short=300, budget_share=0.01)  # 7.2x
    bad = [CounterPoint(t, 0.0, t / 60) for t in range(0, 1801, 60)]  # every event bad for 30 min: 10x
    (rate,) = burn_rates(bad, 1800.0, kpi, [pair])
    assert rate.long_rate == pytest.approx(10.0)  # shown...
    assert rate.short_rate == pytest.approx(10.0)
    assert rate.covered_seconds == 1800.0
    assert not rate.burning  # ...but half an hour is not the hour the alert rule reads
    longer = bad + [CounterPoint(t, 0.0, t / 60) for t in range(1860, 3601, 60)]
    (full,) = burn_rates(longer, 3600.0, kpi, [pair])
    assert full.burning


@pytest.mark.parametrize(("value", "target", "state"), [
    (0.97, Target(min=0.95, max=None), "ok"),        # 0.95 + 10 % of the 0.05 headroom = 0.955
    (0.954, Target(min=0.95, max=None), "at_risk"),
    (0.94, Target(min=0.95, max=None), "breached"),
    (0.0905, Target(min=None, max=0.1), "at_risk"),  # a max bound: above 0.1 - 10 % of 0.1
    (0.089, Target(min=None, max=0.1), "ok"),
])
def test_the_margin_of_a_share_is_a_tenth_of_its_headroom(value, target, state):
    assert kpi_state(value, target, share=True) == state


def test_a_ratio_kpi_comfortably_over_its_minimum_is_ok():
    ratio = RatioKpi(kind="ratio", good="reopened = 0", target={"min": 0.95})
    assert kpi_state(0.97, target_of(ratio), share=is_share(ratio)) == "ok"  # 0.97 < 0.95 x 1.1 was at risk
    backlog = BacklogKpi(kind="backlog", target={"max": 500})
    assert not is_share(backlog)
    assert kpi_state(455.0, target_of(backlog), share=is_share(backlog)) == "at_risk"  # 10 % of the target
