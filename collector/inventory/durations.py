"""Durations written as Prometheus does (`90s`, `5m`, `1h30m`, `30d`), as seconds."""

import math
import re
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

from collector.inventory.base import published_as

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
MAX_SECONDS = 3650 * 86400.0
"""Longer durations are mistakes (and overflow the scheduler's date arithmetic)."""
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
PATTERN = r"^\s*(\d+(\.\d+)?(ms|s|m|h|d|w))+\s*$"
"""A duration as text, for the JSON Schema (what `parse_duration` reads; ECMAScript syntax)."""


def parse_duration(text: object) -> float:
    """Return the number of seconds in a duration such as `1h30m`; plain numbers are seconds."""
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, int | float):
        seconds = float(text)
    elif isinstance(text, str):
        seconds = _parse_text(text.strip())
    else:
        raise ValueError(f"not a duration: {text!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"duration must be positive, got {text!r}")
    if seconds > MAX_SECONDS:
        raise ValueError(f"duration over 10 years, got {text!r}")
    return seconds


def _parse_text(text: str) -> float:
    parts = _PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"bad duration {text!r}: use a number and a unit (ms, s, m, h, d, w), e.g. 90s or 1h30m")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def format_duration(seconds: float) -> str:
    """Return the shortest Prometheus duration for a number of seconds (`86400` -> `1d`), to the
    millisecond (`2.5` -> `2s500ms`)."""
    millis = round(seconds * 1000)
    if millis == 0:
        return "0ms"
    for unit, size in (("w", 604_800_000), ("d", 86_400_000), ("h", 3_600_000), ("m", 60_000)):
        if millis % size == 0:
            return f"{millis // size}{unit}"
    out = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        if millis >= size:
            out.append(f"{millis // size}{unit}")
            millis %= size
    return "".join(out)


Duration = Annotated[float, BeforeValidator(parse_duration), PlainSerializer(format_duration), published_as("Duration")]
