"""Arrival times: non-homogeneous Poisson streams (thinning) and periodic bill runs."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from simulator.incidents import Knobs
from simulator.profiles import DAY, DIURNAL, HOUR, Profile

_MEAN = sum(DIURNAL) / len(DIURNAL)
_CURVE = tuple(w / _MEAN for w in DIURNAL)


class LocalClock:
    """Local hour of day and weekday of epoch times, DST-aware, cached per hour."""

    def __init__(self, timezone: str) -> None:
        self._zone = ZoneInfo(timezone)
        self._offsets: dict[int, float] = {}

    def local(self, t: float) -> float:
        """Return t shifted to local time (seconds since the local epoch)."""
        hour = int(t // HOUR)
        offset = self._offsets.get(hour)
        if offset is None:
            delta = datetime.fromtimestamp(hour * HOUR, UTC).astimezone(self._zone).utcoffset()
            offset = delta.total_seconds() if delta else 0.0
            self._offsets[hour] = offset
        return t + offset


def weekly_weights(profile: Profile) -> tuple[float, ...]:
    """Return Monday..Sunday weights with mean 1."""
    raw = (1.0, 1.0, 1.0, 1.0, 1.0, *profile.weekend)
    mean = sum(raw) / 7
    return tuple(w / mean for w in raw)


def poisson(rng: random.Random, mean: float) -> int:
    """Draw a Poisson count (normal approximation for large means)."""
    if mean > 50:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


class PoissonStream:
    """Arrivals of one process with a diurnal and weekly rate, thinned from a peak rate."""

    def __init__(self, profile: Profile, rng: random.Random, start: float, knobs: Knobs, clock: LocalClock) -> None:
        self._profile, self._rng, self._knobs, self._clock = profile, rng, knobs, clock
        self._weekly = weekly_weights(profile)
        self._base = profile.per_day * knobs.scale * knobs.speed / DAY
        self._peak = self._base * max(self._shape_peak(), 1e-9) * knobs.peak(profile.process, "surge")
        self._next = start + rng.expovariate(self._peak) if self._peak > 0 else math.inf

    def _shape_peak(self) -> float:
        """Return the maximum of the diurnal times weekly shape."""
        strength = self._profile.diurnal_strength
        return (1 + strength * (max(_CURVE) - 1)) * max(self._weekly)

    def rate(self, t: float) -> float:
        """Return the arrival rate (items per second) at t."""
        local = self._clock.local(t)
        hour = (local % DAY) / HOUR
        index = int(hour)
        frac = hour - index
        curve = _CURVE[index] * (1 - frac) + _CURVE[(index + 1) % 24] * frac
        shape = 1 + self._profile.diurnal_strength * (curve - 1)
        weekday = (int(local // DAY) + 3) % 7  # the epoch was a Thursday
        surge = self._knobs.factor(self._profile.process, "surge", t)
        return self._base * shape * self._weekly[weekday] * surge

    def until(self, end: float) -> Iterator[float]:
        """Yield the arrival times up to end (inclusive), continuing where the last call stopped."""
        while self._next <= end:
            t = self._next
            accept = self._rng.random() * self._peak < self.rate(t)
            self._next = t + self._rng.expovariate(self._peak)
            if accept:
                yield t


class BatchStream:
    """Bill runs every `run_every / speed` seconds (aligned to the epoch), a Poisson batch each."""

    def __init__(self, profile: Profile, rng: random.Random, start: float, knobs: Knobs) -> None:
        self._profile, self._rng, self._knobs = profile, rng, knobs
        self._period = getattr(profile, "run_every", DAY) / knobs.speed
        self._index = math.floor(start / self._period) + 1

    def until(self, end: float) -> Iterator[float]:
        """Yield the creation time of each bill of the runs up to end (inclusive)."""
        while self._index * self._period <= end:
            t = self._index * self._period
            self._index += 1
            mean = self._profile.per_day * self._knobs.scale * self._period * self._knobs.speed / DAY
            mean *= self._knobs.factor(self._profile.process, "surge", t)
            for _ in range(poisson(self._rng, mean)):
                yield t
