"""What one sample of a source produces: plain values, no database or exporter types.

The KPI engine fills these; exporters (Prometheus, OTLP, JSON) read them. A `SourceSample`
is immutable once built, so a scrape can serve it while the next sample is being taken.
"""

from dataclasses import dataclass, field
from typing import Literal, Protocol

Labels = tuple[tuple[str, str], ...]
"""Label pairs in a fixed order, e.g. (("process", "problem"), ("priority", "high"))."""

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True, slots=True)
class Histogram:
    """A cumulative histogram: (upper bound, cumulative count) pairs ending with +Inf."""

    buckets: tuple[tuple[float, float], ...]
    sum: float
    count: float


@dataclass(slots=True)
class Family:
    """One metric family. `name` is the base name: a counter `fab_cost` is exposed as `fab_cost_total`."""

    name: str
    kind: Kind
    documentation: str
    samples: list[tuple[Labels, float]] = field(default_factory=list)
    histograms: list[tuple[Labels, Histogram]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class KpiReading:
    """The current value of one KPI over its window, with its target (for tables and reports)."""

    process: str
    kpi: str
    kind: str
    value: float | None
    target_min: float | None = None
    target_max: float | None = None

    @property
    def met(self) -> bool | None:
        """Whether the value is within its target; None without a target or a value."""
        if self.value is None or (self.target_min is None and self.target_max is None):
            return None
        if self.target_min is not None and self.value < self.target_min:
            return False
        return not (self.target_max is not None and self.value > self.target_max)


@dataclass(frozen=True, slots=True)
class SourceSample:
    source: str
    sampled_at: float
    duration_seconds: float
    families: tuple[Family, ...]
    kpis: tuple[KpiReading, ...]
    kpi_seconds: tuple[tuple[str, str, float], ...] = ()
    """(process, kpi, seconds) spent querying each KPI, for `fabwatch check`."""


class SampleSink(Protocol):
    """Where the scheduler hands each sample: the Prometheus exporter, and any other exporter."""

    def update(self, sample: SourceSample) -> None:
        """Take a new sample of its source."""

    def invalidate(self) -> None:
        """Forget what was rendered: a source's health changed without a new sample."""


class FanOut:
    """Hands each sample (and each health change) to several sinks: the exporter, the status board."""

    def __init__(self, *sinks: SampleSink) -> None:
        self._sinks = sinks

    def update(self, sample: SourceSample) -> None:
        """Give the sample to every sink."""
        for sink in self._sinks:
            sink.update(sample)

    def invalidate(self) -> None:
        """Tell every sink that a source's health changed."""
        for sink in self._sinks:
            sink.invalidate()
