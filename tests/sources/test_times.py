"""RFC 3339 parsing and formatting: exact round trips, zones, and refusals."""

import itertools
import random
from datetime import datetime

import pytest

from collector.sources.times import _parse_general, format_time, maybe_time, parse_time


def test_formatted_times_parse_back_to_the_same_float() -> None:
    rng = random.Random(7)
    for _ in range(5000):
        epoch = rng.uniform(-86_400 * 400, 4_102_444_800)
        assert parse_time(format_time(epoch)) == epoch


@pytest.mark.parametrize("text", [
    "2026-01-01T00:00:01Z", "2026-03-01T23:59:59+02:00", "2024-02-29T12:00:00-05:30", "1969-12-31T23:59:59Z",
    "2026-06-30T08:15:00+0100", "2026-01-01t10:00:00z",
])
def test_zones_agree_with_datetime(text: str) -> None:
    normal = text.upper().replace("Z", "+00:00")
    if normal[-5] in "+-" and ":" not in normal[-5:]:
        normal = f"{normal[:-2]}:{normal[-2:]}"
    assert parse_time(text) == datetime.fromisoformat(normal).timestamp()


def test_no_zone_means_utc_and_fractions_are_exact() -> None:
    assert parse_time("2026-01-01 00:00:00") == 1_767_225_600.0
    assert parse_time("2026-01-01T00:00:00.125Z") == 1_767_225_600.125
    assert parse_time("1969-12-31T23:59:59.25Z") == -0.75


@pytest.mark.parametrize("text", [
    "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-01-01T24:00:00Z", "2026-01-01T10:60:00Z",
    "2026-01-01T10:00:60Z", "yesterday", "2026-01-01", "2026-01-01T10:00Z",
    "2026-13-01T00:00:00.5Z", "2026-02-30 10:00:00",  # the general parser's way to a day the calendar has not
])
def test_invalid_times_are_refused_naming_the_value(text: str) -> None:
    with pytest.raises(ValueError, match=f"^not an RFC 3339 date-time: {text!r}"):
        parse_time(text)


def test_maybe_time_passes_missing_values_and_refuses_other_types() -> None:
    assert maybe_time(None) is None
    assert maybe_time("") is None
    with pytest.raises(ValueError, match="date-time string"):
        maybe_time(1_767_225_600)


def test_the_fast_path_agrees_with_the_general_parser() -> None:
    """`YYYY-MM-DDTHH:MM:SSZ` takes a shortcut; it must accept and refuse exactly what the regex does."""
    rng = random.Random(11)
    good = "2026-03-31T23:59:59Z"
    texts = [format_time(float(rng.randrange(-86_400 * 400, 4_102_444_800))) for _ in range(2000)]
    for position in range(len(good)):  # one character changed, anywhere
        for char in "0a:-TZ ٣+\x00":
            texts.append(good[:position] + char + good[position + 1:])
    for first, second in itertools.combinations(range(len(good)), 2):  # two: a NUL and what it cuts short
        for pair in itertools.product("\x00Z:0", repeat=2):
            changed = list(good)
            changed[first], changed[second] = pair
            texts.append("".join(changed))
    for text in texts:
        try:
            expected: float | str = _parse_general(text)
        except ValueError:
            expected = "refused"
        try:
            got: float | str = parse_time(text)
        except ValueError:
            got = "refused"
        assert got == expected, text


@pytest.mark.parametrize("text", ["2026-01-01T10:00:Z\x00Z", "2026-01-01T10:Z\x00:00Z", "2026-01-01T10:Z\x00:٣٣Z"])
def test_a_nul_inside_the_common_form_is_refused(text: str) -> None:
    """`fromisoformat` (in C) stops at a NUL: with one where the seconds are, the 20 characters of the
    common form, separators in place, read as a shorter time (`10:00:Z` is 10:00 UTC to it)."""
    assert len(text) == 20
    assert text[4:20:3] == "--T::Z"
    with pytest.raises(ValueError, match=r"^not an RFC 3339 date-time: "):
        parse_time(text)
