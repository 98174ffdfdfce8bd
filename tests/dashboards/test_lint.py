"""Every generated dashboard passes the dashboard-linter rules; each rule catches its mistake."""

import copy
from typing import Any

import pytest

from tests.dashboards import lint


def _known(dashboards: dict[str, dict[str, Any]]) -> tuple[set[str], set[str]]:
    return set(dashboards), {tag for d in dashboards.values() for tag in d["tags"]}


def test_every_dashboard_is_clean(dashboards):
    uids, tags = _known(dashboards)
    problems = {uid: lint.lint(model, uids, tags) for uid, model in dashboards.items()}
    assert problems == {uid: [] for uid in dashboards}


def _first_panel(model: dict[str, Any]) -> dict[str, Any]:
    return next(lint.panels(model))


def _break_rate(model: dict[str, Any]) -> None:
    for panel in lint.panels(model):
        for target in panel["targets"]:
            target["expr"] = target["expr"].replace("[$__rate_interval]", "[5m]")


def _break_counter(model: dict[str, Any]) -> None:
    _first_panel(model)["targets"][0]["expr"] = 'sum(fab_items_created_total{process="order"})'


def _break_grid(model: dict[str, Any]) -> None:
    model["panels"][2]["gridPos"] = dict(model["panels"][1]["gridPos"])


def _break_ids(model: dict[str, Any]) -> None:
    model["panels"][2]["id"] = model["panels"][1]["id"]


def _break_unit(model: dict[str, Any]) -> None:
    del _first_panel(model)["fieldConfig"]["defaults"]["unit"]


def _break_datasource(model: dict[str, Any]) -> None:
    _first_panel(model)["targets"][0]["datasource"] = {"type": "prometheus", "uid": "prometheus"}


def _break_description(model: dict[str, Any]) -> None:
    _first_panel(model)["description"] = ""


def _break_link(model: dict[str, Any]) -> None:
    _first_panel(model)["fieldConfig"]["defaults"]["links"] = [{"title": "x", "url": "/d/nowhere"}]


def _break_thresholds(model: dict[str, Any]) -> None:
    _first_panel(model)["fieldConfig"]["defaults"]["thresholds"]["steps"][0]["value"] = 0


def _break_variable(model: dict[str, Any]) -> None:
    model["templating"]["list"] = [v for v in model["templating"]["list"] if v["name"] != "instance"]


@pytest.mark.parametrize("breaker", [_break_rate, _break_counter, _break_grid, _break_ids, _break_unit,
                                     _break_datasource, _break_description, _break_link, _break_thresholds,
                                     _break_variable])
def test_each_rule_catches_its_mistake(dashboards, breaker):
    model = copy.deepcopy(dashboards["fabwatch-overview"])
    breaker(model)
    assert lint.lint(model, *_known(dashboards))


def test_enclosing_call_finds_the_innermost_function():
    expr = "sum(rate(a_total{x=\"(\"}[1m])) / sum(b)"
    assert lint.enclosing_call(expr, expr.index("a_total")) == "rate"
    assert lint.enclosing_call(expr, expr.index("b)")) == "sum"


def test_only_a_burn_rates_sla_counters_may_have_a_fixed_window():
    """A burn rate is read over the window of the page it is drawn against: over `$__rate_interval`,
    one late item among a few read as a page."""
    burn = ('(1 - sum(increase(fab_sla_good_total{process="order"}[6h])) / '
            'sum(increase(fab_sla_valid_total{process="order"}[6h]))) / 0.1')
    assert lint.check_rate_intervals(burn) == []
    assert lint.check_rate_intervals('sum(increase(fab_items_created_total{process="order"}[6h]))')
    assert lint.check_rate_intervals('sum(rate(fab_sla_good_total{process="order"}[6h])) + '
                                     'sum(rate(fab_items_created_total{process="order"}[1h]))')
