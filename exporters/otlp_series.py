"""Series bookkeeping of the OTLP export, in plain Python (no OpenTelemetry): each metric's unit,
the start time of each cumulative series (kept across restarts in the state file, moved only by a
reset), the baselines of delta temporality, and a histogram's buckets de-cumulated.

`exporters.otlp` (the exporter) and `exporters.otlp_data` (the request it sends) both use it.
"""

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from collector.samples import Histogram, Labels

_UNITS = (("_timestamp_seconds", "s"), ("_seconds", "s"), ("_bytes", "By"), ("_ratio", "1"))
"""Name suffix -> UCUM unit, the first match wins; any other name has no unit (counts of items)."""


def unit_of(name: str) -> str:
    """The OpenTelemetry unit of a fabwatch metric, from its name's suffix (`_seconds` -> `s`)."""
    return next((unit for suffix, unit in _UNITS if name.endswith(suffix)), "")


Spread = tuple[tuple[float, ...], float, float]
"""A histogram's (bucket counts, sum, count)."""


class Deltas:
    """Turns cumulative values into the change since the last export the receiver took, per series.

    A series seen for the first time sets its baseline and is not sent: fabwatch's counters carry the
    history from before the process started, which is no interval's change. A value lower than its
    baseline (a source whose state was reset) counts from zero again; so does a histogram one of whose
    buckets, or its sum, went down, or whose bounds changed.

    The baselines an export computes are staged, and become the baselines only when the receiver took
    it (`commit`): after a failed export, the next one covers both intervals from the old start time.
    """

    def __init__(self) -> None:
        self._numbers: dict[tuple[str, Labels], tuple[float, int]] = {}
        self._histograms: dict[tuple[str, Labels], tuple[Spread, tuple[float, ...], int]] = {}
        self._staged_numbers = dict(self._numbers)
        self._staged_histograms = dict(self._histograms)

    def begin(self) -> None:
        """Start an export: stage the baselines of this export's series only, so that those of series gone
        from `/metrics` (expired dimension sets) do not pile up."""
        self._staged_numbers, self._staged_histograms = {}, {}

    def commit(self) -> None:
        """The receiver took the export: its values are the baselines of the next one."""
        self._numbers, self._histograms = self._staged_numbers, self._staged_histograms

    def number(self, name: str, labels: Labels, value: float, now: int) -> tuple[float, int] | None:
        """(change, start time) of a counter series, None on its first export."""
        previous = self._numbers.get((name, labels))
        self._staged_numbers[(name, labels)] = (value, now)
        if previous is None:
            return None
        before, start = previous
        return (value - before if value >= before else value), start

    def histogram(self, name: str, labels: Labels, counts: tuple[float, ...], total: float, count: float,
                  bounds: tuple[float, ...], now: int) -> tuple[tuple[float, ...], float, float, int] | None:
        """(bucket counts, sum, count, start time) of the change of a histogram series, None at first."""
        previous = self._histograms.get((name, labels))
        self._staged_histograms[(name, labels)] = ((counts, total, count), bounds, now)
        if previous is None:
            return None
        old, old_bounds, start = previous
        if old_bounds != bounds or went_down(old, (counts, total, count)):
            return counts, total, count, start
        old_counts, old_total, old_count = old
        changes = tuple(n - o for n, o in zip(counts, old_counts, strict=True))
        return changes, total - old_total, count - old_count, start


def went_down(old: Spread, new: Spread) -> bool:
    """Whether any bucket, the sum or the count of a histogram is lower than before (or the number of
    buckets changed): a reset, whose whole value is the change."""
    (old_counts, old_total, old_count), (counts, total, count) = old, new
    return (len(old_counts) != len(counts) or total < old_total or count < old_count
            or any(n < o for n, o in zip(counts, old_counts, strict=True)))


Saved = tuple[int, str, int]
"""A series as the state store keeps it: (start time, its level as JSON, when that level was seen)."""


LEVELS_EVERY = 300 * 1_000_000_000
"""How often (ns) the last values of the cumulative series are saved (and at stop); a start time set
or moved is saved with the export that sends it."""


@dataclass(slots=True)
class _Seen:
    key: str
    """The series in the state store."""
    start: int
    level: list[Any]
    """[value] of a counter; [bounds, bucket counts, sum, count] of a histogram (as JSON has them)."""
    at: int
    durable: bool
    """Saved in the state store (not a health family)."""


class Starts:
    """The start time of each cumulative series: the start of the counting its value comes from.

    fabwatch's counters carry on across restarts (the state store keeps them), so their start time
    must too: a series takes the exporter's start the first time it is ever exported, and keeps it in
    the state store (`saved`, then `drain`) across restarts. Only a value going down (a reset: the
    source's counts started again) moves it on, to when the value before was last seen; for a
    histogram, any bucket, the sum or the count going down, or other bounds. The last values are
    saved too (every `LEVELS_EVERY` and at stop), so that a reset while fabwatch was down is seen at
    the next start. The families named in `volatile` (the health's, counted in memory from this
    run's start) are kept in memory only.
    """

    def __init__(self, started: int, saved: Mapping[str, Saved] | None = None) -> None:
        self.started = started
        self.volatile: frozenset[str] = frozenset()
        self._saved = dict(saved or {})
        self._seen: dict[tuple[str, Labels], _Seen] = {}
        self._previous: dict[tuple[str, Labels], _Seen] = {}
        self._moved: dict[str, _Seen] = {}
        """Series whose start was set or moved since the last `drain`."""
        self._grown: dict[str, _Seen] = {}
        """Series whose value changed since their last save."""
        self._levels_saved = started

    def begin(self) -> None:
        """Start an export: only the series of the previous one stay in memory (the store has the rest)."""
        self._previous, self._seen = self._seen, {}

    def number(self, name: str, labels: Labels, value: float, now: int) -> int:
        """The start time of a counter series at `value`."""
        key = (name, labels)
        seen = self._previous.get(key)
        if seen is not None and value >= seen.level[0]:  # the common case, without a reset: kept short
            if value != seen.level[0]:
                seen.level = [value]
                if seen.durable:
                    self._grown[seen.key] = seen
            seen.at = now
            self._seen[key] = seen
            return seen.start
        return self._start(name, labels, [value], now, lambda old: value < old[0])

    def histogram(self, name: str, labels: Labels, counts: tuple[float, ...], total: float, count: float,
                  bounds: tuple[float, ...], now: int) -> int:
        """The start time of a histogram series."""
        level = [list(bounds), list(counts), total, count]
        return self._start(name, labels, level, now, lambda old: old[0] != level[0] or went_down(
            (tuple(old[1]), old[2], old[3]), (counts, total, count)))

    def drain(self, now: int, everything: bool = False) -> list[tuple[str, int, str, int]]:
        """The rows to save (key, start, last value, seen at): the series whose start was set or moved,
        and every `LEVELS_EVERY` (or with `everything`) those whose value changed."""
        chosen = self._moved
        if everything or now - self._levels_saved >= LEVELS_EVERY:
            chosen = {**self._grown, **self._moved}
            self._grown, self._levels_saved = {}, now
        self._moved = {}
        rows = [(key, seen.start, json.dumps(seen.level), seen.at) for key, seen in chosen.items()]
        self._saved.update((key, (start, level, at)) for key, start, level, at in rows)
        return rows

    def _start(self, name: str, labels: Labels, level: list[Any], now: int, reset: Callable[[list[Any]], bool]) -> int:
        key = (name, labels)
        seen = self._seen.get(key) or self._previous.get(key) or self._restore(name, labels)
        if seen is None:
            seen = _Seen(_series_key(name, labels), self.started, level, now, name not in self.volatile)
            if seen.durable:
                self._moved[seen.key] = seen
        else:
            if reset(seen.level):
                seen.start = seen.at
                if seen.durable:
                    self._moved[seen.key] = seen
            if seen.durable and seen.level != level:
                self._grown[seen.key] = seen
            seen.level, seen.at = level, now
        self._seen[key] = seen
        return seen.start

    def _restore(self, name: str, labels: Labels) -> _Seen | None:
        if name in self.volatile:
            return None
        key = _series_key(name, labels)
        if (saved := self._saved.get(key)) is None:
            return None
        start, level, at = saved
        return _Seen(key, start, json.loads(level), at, durable=True)


def _series_key(name: str, labels: Labels) -> str:
    return json.dumps([name, labels], separators=(",", ":"))


def decumulate(histogram: Histogram) -> tuple[float, ...]:
    """The count of each bucket alone (OTLP's `bucket_counts`), the `+Inf` bucket last, from the
    cumulative Prometheus buckets; a histogram without a `+Inf` bucket gets one from its count."""
    counts, below = [], 0.0
    for _, cumulative in histogram.buckets:
        counts.append(cumulative - below)
        below = cumulative
    if not histogram.buckets or not math.isinf(histogram.buckets[-1][0]):
        counts.append(histogram.count - below)
    return tuple(counts)
