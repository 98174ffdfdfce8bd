"""Prometheus exposition of the latest sample of every source, plus the sources' health.

The exposition is rendered at most once per change (a new sample, a health change) and per
format, lazily on the first scrape after the change; every other scrape serves cached bytes.
Families of the same name from several sources are merged into one family.
"""

import gzip
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from collector.health import HealthTracker
from collector.logs import log_event
from collector.samples import Family, Labels, SourceSample

Format = Literal["text", "openmetrics"]
_CONTENT_TYPES: dict[Format, str] = {"text": CONTENT_TYPE_PLAIN_0_0_4,
                                     "openmetrics": OPENMETRICS_CONTENT_TYPE}
_LOG = logging.getLogger("fabwatch.exporter")


@dataclass(frozen=True, slots=True)
class Exposition:
    """A rendered exposition ready to send: body, content type, content encoding (or None)."""

    body: bytes
    content_type: str
    encoding: str | None


def to_metrics(families: Iterable[Family]) -> list[Metric]:
    """Convert families to prometheus-client metrics, merging families that share a name."""
    merged: dict[str, Metric] = {}
    for family in families:
        name = family.name.removesuffix("_total") if family.kind == "counter" else family.name
        metric = merged.get(name)
        if metric is None:
            metric = merged[name] = Metric(name, family.documentation, family.kind)
        elif metric.type != family.kind:
            log_event(_LOG, "family_kind_conflict", logging.WARNING, family=name,
                      kept=metric.type, dropped=family.kind)
            continue
        _add_samples(metric, family)
    return list(merged.values())


def _add_samples(metric: Metric, family: Family) -> None:
    suffix = "_total" if family.kind == "counter" else ""
    for labels, value in family.samples:
        metric.add_sample(metric.name + suffix, dict(labels), value)
    for labels, histogram in family.histograms:
        for bound, count in histogram.buckets:
            metric.add_sample(metric.name + "_bucket", _with_le(labels, bound), count)
        metric.add_sample(metric.name + "_count", dict(labels), histogram.count)
        metric.add_sample(metric.name + "_sum", dict(labels), histogram.sum)


def _with_le(labels: Labels, bound: float) -> dict[str, str]:
    result = dict(labels)
    result["le"] = str(floatToGoString(bound))  # type: ignore[no-untyped-call]
    return result


class FamiliesCollector(Collector):
    """A custom collector over families computed elsewhere (the KPI engine, the health tracker)."""

    def __init__(self, families: Callable[[], Iterable[Family]]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        """Yield the merged metric families."""
        yield from to_metrics(self._families())

    def describe(self) -> Iterator[Metric]:
        """Describe nothing, so registering never triggers a collect()."""
        return iter(())


class PrometheusExporter:
    """Holds the latest sample of each source and the exposition bytes rendered from them."""

    def __init__(self, health: HealthTracker | None = None, compresslevel: int = 6) -> None:
        self._samples: dict[str, SourceSample] = {}
        self._health = health
        self._collector = FamiliesCollector(self._families)
        self._rendered: dict[Format, bytes] = {}
        self._compressed: dict[Format, bytes] = {}
        self._compresslevel = compresslevel
        self.renders = 0
        """How many times an exposition was rendered (for tests and the self-check)."""
        self.generation = 0
        """Bumped on every change; a scrape between two changes serves the same bytes."""

    def update(self, sample: SourceSample) -> None:
        """Replace the latest sample of `sample.source`."""
        self._samples[sample.source] = sample
        self.invalidate()

    def invalidate(self) -> None:
        """Drop the cached exposition (after a new sample or a health change)."""
        self._rendered.clear()
        self._compressed.clear()
        self.generation += 1

    def latest(self, source: str) -> SourceSample | None:
        """The latest successful sample of `source`, if any."""
        return self._samples.get(source)

    def render(self, fmt: Format = "text", compressed: bool = False) -> bytes:
        """Return the exposition in `fmt`, rendering it only if it changed since the last call."""
        if compressed:
            body = self._compressed.get(fmt)
            if body is None:
                body = gzip.compress(self.render(fmt), compresslevel=self._compresslevel, mtime=0)
                self._compressed[fmt] = body
            return body
        body = self._rendered.get(fmt)
        if body is None:
            generate = generate_openmetrics if fmt == "openmetrics" else generate_latest
            body = generate(self._collector)
            self.renders += 1
            self._rendered[fmt] = body
        return body

    def respond(self, accept: str | None, accept_encoding: str | None) -> Exposition:
        """Pick the format and encoding from the request headers and return the cached bytes."""
        fmt = negotiate_format(accept)
        compressed = accepts_gzip(accept_encoding)
        return Exposition(self.render(fmt, compressed), _CONTENT_TYPES[fmt],
                          "gzip" if compressed else None)

    def _families(self) -> Iterator[Family]:
        for source in sorted(self._samples):
            yield from self._samples[source].families
        if self._health is not None:
            yield from self._health.families()


def _media_ranges(header: str | None) -> Iterator[tuple[str, dict[str, str]]]:
    """Yield (value, parameters) of each comma-separated element of an HTTP header."""
    for element in (header or "").split(","):
        value, *params = (part.strip() for part in element.split(";"))
        parsed = {}
        for param in params:
            key, _, val = param.partition("=")
            parsed[key.strip().lower()] = val.strip().strip('"')
        if value:
            yield value.lower(), parsed


def _accepted(params: dict[str, str]) -> bool:
    try:
        return float(params.get("q", "1")) > 0
    except ValueError:
        return False


def negotiate_format(accept: str | None) -> Format:
    """OpenMetrics when the client accepts `application/openmetrics-text`, else text 0.0.4."""
    for media, params in _media_ranges(accept):
        if media == "application/openmetrics-text" and _accepted(params):
            return "openmetrics"
    return "text"


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether `Accept-Encoding` allows gzip."""
    return any(coding in ("gzip", "x-gzip") and _accepted(params)
               for coding, params in _media_ranges(accept_encoding))
