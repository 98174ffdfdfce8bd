"""Incidents on demand (slow, fallout, surge) and the knobs that apply them to the world."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast, get_args

from collector.inventory.durations import parse_duration
from simulator.profiles import PROCESSES

Kind = Literal["slow", "fallout", "surge"]
KINDS: tuple[str, ...] = get_args(Kind)

# What `fallout` multiplies in each process; qos_sla has no such flag.
FALLOUT_EFFECT = {
    "problem": "reopen share",
    "order": "fallout share",
    "interface": "abandonment share",
    "retention": "churn share",
    "invoice": "adjusted share",
    "payments": "write-off and late-payment share",
    "bill_inquiry": "share not resolved at first contact",
}


@dataclass(frozen=True)
class Incident:
    """A factor applied to one process for items created (or arriving) in [start, end)."""

    process: str
    kind: Kind
    factor: float
    start: float
    end: float = math.inf

    def __post_init__(self) -> None:
        problem = _check(self.process, self.kind, self.factor, self.start, self.end)
        if problem:
            raise ValueError(f"incident {self.process}:{self.kind}: {problem}")

    @classmethod
    def parse(cls, text: str, now: float) -> Incident:
        """Parse `process:kind:factor[:start_offset_s[:duration_s]]`, offsets relative to now."""
        parts = text.strip().split(":")
        if not 3 <= len(parts) <= 5:
            raise ValueError(f"incident {text!r}: expected process:kind:factor[:start_offset[:duration]]")
        process, kind = parts[0], parts[1]
        factor = _number(text, "factor", parts[2])
        offset = _offset(text, parts[3]) if len(parts) > 3 and parts[3] else 0.0
        duration = _duration(text, parts[4]) if len(parts) > 4 and parts[4] else math.inf
        problem = _check(process, kind, factor, 0.0, duration)
        if problem:
            raise ValueError(f"incident {text!r}: {problem}")
        return cls(process, cast(Kind, kind), factor, now + offset, now + offset + duration)

    def active(self, t: float) -> bool:
        """Return whether the incident applies at time t."""
        return self.start <= t < self.end


def _check(process: str, kind: str, factor: float, start: float, end: float) -> str | None:
    """Return what is wrong with an incident, or None."""
    if process not in PROCESSES:
        return f"unknown process {process!r} (known: {', '.join(PROCESSES)})"
    if kind not in KINDS:
        return f"unknown kind {kind!r} (known: {', '.join(KINDS)})"
    if not (factor > 0 and math.isfinite(factor)):
        return f"factor must be a positive number, got {factor!r}"
    if kind == "fallout" and process not in FALLOUT_EFFECT:
        return f"kind 'fallout' does not apply to {process} (use slow or surge)"
    if kind == "surge" and process == "payments":
        return "kind 'surge' does not apply to payments (payments follow bills: surge invoice)"
    if not end > start:
        return "duration must be positive"
    return None


def _number(text: str, what: str, value: str) -> float:
    """Parse a float or raise a ValueError naming the field."""
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"incident {text!r}: {what} {value!r} is not a number") from None


def _offset(text: str, value: str) -> float:
    """Parse a signed start offset (seconds or a duration such as -1h)."""
    sign = -1.0 if value.startswith("-") else 1.0
    body = value.lstrip("+-")
    if body in ("0", "0.0"):
        return 0.0
    try:
        return sign * parse_duration(float(body) if _is_number(body) else body)
    except ValueError as exc:
        raise ValueError(f"incident {text!r}: start offset {value!r}: {exc}") from None


def _duration(text: str, value: str) -> float:
    """Parse a positive duration (seconds or a duration such as 30m)."""
    try:
        return parse_duration(float(value) if _is_number(value) else value)
    except ValueError as exc:
        raise ValueError(f"incident {text!r}: duration {value!r}: {exc}") from None


def _is_number(value: str) -> bool:
    """Return whether a string is a plain number."""
    try:
        float(value)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Knobs:
    """How the world is bent: time acceleration, volume scale and incidents."""

    speed: float = 1.0
    scale: float = 1.0
    incidents: tuple[Incident, ...] = ()

    @classmethod
    def of(cls, speed: float, scale: float, incidents: Sequence[Incident]) -> Knobs:
        """Validate and build."""
        if not (speed > 0 and math.isfinite(speed)):
            raise ValueError(f"speed must be a positive number, got {speed!r}")
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        return cls(speed, scale, tuple(incidents))

    def factor(self, process: str, kind: Kind, t: float) -> float:
        """Return the product of the factors of the incidents active at t."""
        if not self.incidents:
            return 1.0
        result = 1.0
        for incident in self.incidents:
            if incident.process == process and incident.kind == kind and incident.active(t):
                result *= incident.factor
        return result

    def peak(self, process: str, kind: Kind) -> float:
        """Return an upper bound of factor() over all times (at least 1)."""
        result = 1.0
        for incident in self.incidents:
            if incident.process == process and incident.kind == kind:
                result *= max(incident.factor, 1.0)
        return result
