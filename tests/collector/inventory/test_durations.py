"""Durations as Prometheus writes them, both ways."""

import pytest

from collector.inventory.durations import format_duration, parse_duration


@pytest.mark.parametrize(("seconds", "text"), [
    (0.25, "250ms"), (1.0, "1s"), (2.5, "2s500ms"), (90.0, "1m30s"), (90.5, "1m30s500ms"), (300.0, "5m"),
    (5400.0, "90m"), (86400.0, "1d"), (604800.0, "1w"), (90061.0, "1d1h1m1s"),
])
def test_a_duration_is_written_shortest_and_read_back_the_same(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "5x", "1h 30m", "-5m", "m5"])
def test_a_bad_duration_names_the_fix(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)
