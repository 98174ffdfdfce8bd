"""RFC 3339 date-times <-> epoch seconds, exact: a formatted float parses back to the same float.

TMF APIs carry times as `date-time` strings; the record store keeps epoch seconds (DOUBLE). A
fraction of up to 18 digits is written when needed, so a time read through a TMF API equals the
one in the source system to the last bit and KPIs agree exactly with a direct SQL read.
"""

import functools
import re
from datetime import UTC, date, datetime
from decimal import Decimal, localcontext

_RFC3339 = re.compile(
    r"^(\d{4}-\d\d-\d\d)[Tt ](\d\d:\d\d:\d\d)(?:\.(\d{1,18}))?([Zz]|[+-]\d\d:?\d\d)?$", re.ASCII)
"""RFC 3339 digits are ASCII: without `re.ASCII`, `\\d` would take any Unicode digit."""


def format_time(epoch: float) -> str:
    """Return `epoch` as an RFC 3339 UTC date-time with the fewest fraction digits that round-trip."""
    for digits in (0, 3, 6, 9, 12, 15, 18):
        text = _format(epoch, digits)
        if parse_time(text) == epoch:
            return text
    return _format(epoch, 18)


def _format(epoch: float, digits: int) -> str:
    with localcontext() as ctx:
        ctx.prec = 60
        scaled = round(Decimal(epoch) * (10**digits))
    whole, frac = divmod(scaled, 10**digits)
    stamp = datetime.fromtimestamp(int(whole), UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{int(frac):0{digits}d}Z" if digits else f"{stamp}Z"


def parse_time(text: str) -> float:
    """Return the epoch seconds of an RFC 3339 date-time; no zone means UTC."""
    if len(text) == 20 and text[4:20:3] == "--T::Z" and "\0" not in text:  # separators at 4, 7, 10, 13, 16, 19
        # The common `YYYY-MM-DDTHH:MM:SSZ`, parsed in C. Not cached: an event's times are mostly
        # new ones, and a cache miss costs twice this parse. Not with a NUL: `fromisoformat` stops
        # reading there, and takes `2026-01-01T10:00:Z\0Z` for 10:00 UTC.
        try:
            return datetime.fromisoformat(text).timestamp()
        except ValueError as exc:
            raise ValueError(f"not an RFC 3339 date-time: {text!r} ({exc})") from None
    return _parse_general(text)


@functools.lru_cache(maxsize=4096)
def _parse_general(text: str) -> float:
    """Fractions, offsets, a space for `T`, no zone (cached: the regex path is the slow one)."""
    match = _RFC3339.match(text.strip())
    if match is None:
        raise ValueError(f"not an RFC 3339 date-time: {text!r}")
    day, clock, frac, zone = match.groups()
    hour, minute, second = int(clock[:2]), int(clock[3:5]), int(clock[6:])
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"not an RFC 3339 date-time: {text!r}")
    try:
        start = _day_start(day)
    except ValueError as exc:  # a day the calendar has not: 2026-02-30, month 13
        raise ValueError(f"not an RFC 3339 date-time: {text!r} ({exc})") from None
    whole = start + hour * 3600 + minute * 60 + second - _offset(zone)
    if not frac:
        return float(whole)
    # float() of a decimal string rounds correctly, like float(Decimal(whole) + Decimal("0.frac")).
    return float(f"{whole}.{frac}") if whole >= 0 else float(Decimal(whole) + Decimal(f"0.{frac}"))


@functools.lru_cache(maxsize=4096)
def _day_start(day: str) -> int:
    """Epoch seconds of 00:00 UTC of a `YYYY-MM-DD` day (cached: events cluster on few days)."""
    return (date.fromisoformat(day).toordinal() - _EPOCH_DAY) * 86_400


def _offset(zone: str | None) -> int:
    """Seconds east of UTC of `Z`, `+hh:mm`, `-hhmm` (no zone: UTC)."""
    if zone is None or zone in "Zz":
        return 0
    digits = zone[1:].replace(":", "")
    seconds = int(digits[:2]) * 3600 + int(digits[2:]) * 60
    return -seconds if zone[0] == "-" else seconds


_EPOCH_DAY = date(1970, 1, 1).toordinal()


def maybe_time(value: object) -> float | None:
    """Parse a date-time string; None for a missing value."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected a date-time string, got {type(value).__name__}")
    return parse_time(value)
