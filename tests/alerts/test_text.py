"""The Python twins of Prometheus' humanize functions, and the alert links."""

from __future__ import annotations

import pytest

from alerts.text import dashboard_url, humanize, humanize_duration, humanize_percentage, render


@pytest.mark.parametrize(("value", "text"), [
    (0, "0"), (20, "20"), (1234, "1.234k"), (1_500_000, "1.5M"), (0.05, "50m"), (-2500, "-2.5k")])
def test_humanize(value: float, text: str) -> None:
    assert humanize(value) == text


@pytest.mark.parametrize(("value", "text"), [(1, "100%"), (0.05, "5%"), (0.123456, "12.35%")])
def test_humanize_percentage(value: float, text: str) -> None:
    assert humanize_percentage(value) == text


@pytest.mark.parametrize(("value", "text"), [
    (600, "10m 0s"), (7200, "2h 0m 0s"), (694800, "8d 1h 0m 0s"), (42, "42s")])
def test_humanize_duration(value: float, text: str) -> None:
    assert humanize_duration(value) == text


def test_cost_reads_with_its_currency() -> None:
    assert render("cost", 14.0, "EUR") == "14 EUR"


def test_dashboard_links_use_the_stable_uids() -> None:
    assert dashboard_url("http://g:3000/", "order") == "http://g:3000/d/fabwatch-process-order?var-process=order"
    assert dashboard_url("http://g:3000", None) == "http://g:3000/d/fabwatch-overview"
