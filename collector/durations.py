"""Durations written as Prometheus does (`90s`, `5m`, `1h30m`, `30d`), as seconds."""

import math
import re
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
MAX_SECONDS = 3650 * 86400.0
"""Longer durations are mistakes (and overflow the scheduler's date arithmetic)."""
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


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
    """Return the shortest Prometheus duration for a number of seconds (`86400` -> `1d`)."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = int(seconds)
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if whole % size == 0:
            return f"{whole // size}{unit}"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            out.append(f"{whole // size}{unit}")
            whole %= size
    return "".join(out)


Duration = Annotated[float, BeforeValidator(parse_duration), PlainSerializer(format_duration)]
