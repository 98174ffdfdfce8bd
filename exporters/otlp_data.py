"""Fabwatch's families as the OpenTelemetry SDK's `MetricsData`: imported only when OTLP export is on.

Counters become monotonic sums, gauges gauges, histograms explicit-bucket histograms with the
Prometheus bounds (`+Inf` implied) and the counts de-cumulated; labels become attributes.
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    HistogramDataPoint,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.metrics.export import Histogram as OtelHistogram
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from collector.samples import Family, Histogram, Labels
from exporters.otlp import Deltas, decumulate, unit_of
from exporters.prometheus import merge

DELTA, CUMULATIVE = AggregationTemporality.DELTA, AggregationTemporality.CUMULATIVE


@dataclass(slots=True)
class Converter:
    """Builds the SDK's `MetricsData` from merged families (in the export thread)."""

    resource: Resource
    version: str
    """fabwatch's version: the instrumentation scope's."""
    started: int
    """When the exporter started (ns): the start time of cumulative series."""
    deltas: Deltas | None
    now: int = 0

    def metrics_data(self, families: Iterable[Family], now: int) -> MetricsData:
        self.now = now
        metrics = [metric for family in merge(families) if (metric := self._metric(family)) is not None]
        scope = InstrumentationScope("fabwatch", self.version)
        return MetricsData([ResourceMetrics(self.resource, [ScopeMetrics(scope, metrics, "")], "")])

    def _metric(self, family: Family) -> Metric | None:
        temporality = DELTA if self.deltas is not None else CUMULATIVE
        data: Any
        if family.kind == "gauge":
            data = Gauge([self._gauge_point(labels, value) for labels, value in family.samples])
        elif family.kind == "counter":
            sums = [p for labels, value in family.samples if (p := self._sum_point(family.name, labels, value))]
            data = Sum(sums, temporality, is_monotonic=True)
        else:
            spreads = [q for labels, h in family.histograms if (q := self._histogram_point(family.name, labels, h))]
            data = OtelHistogram(spreads, temporality)
        if not data.data_points:
            return None
        return Metric(family.name, family.documentation, unit_of(family.name), data)

    def _gauge_point(self, labels: Labels, value: float) -> NumberDataPoint:
        return NumberDataPoint(dict(labels), 0, self.now, value)

    def _sum_point(self, name: str, labels: Labels, value: float) -> NumberDataPoint | None:
        start = self.started
        if self.deltas is not None:
            change = self.deltas.number(name, labels, value, self.now)
            if change is None:
                return None
            value, start = change
        return NumberDataPoint(dict(labels), start, self.now, value)

    def _histogram_point(self, name: str, labels: Labels, histogram: Histogram) -> HistogramDataPoint | None:
        bounds = tuple(bound for bound, _ in histogram.buckets if not math.isinf(bound))
        counts = decumulate(histogram)
        total, count, start = histogram.sum, histogram.count, self.started
        if self.deltas is not None:
            change = self.deltas.histogram(name, labels, counts, total, count, self.now)
            if change is None:
                return None
            counts, total, count, start = change
        return HistogramDataPoint(dict(labels), start, self.now, int(count), total, [int(n) for n in counts],
                                  list(bounds), None, None)  # type: ignore[arg-type]  # min, max: unknown
