"""Prometheus exposition of the latest sample of every source, plus the sources' health.

The exposition is rendered by this module's own writer (no per-series objects), once per change
(a new sample, a health change): eagerly, in a worker thread, for the format and encoding the
last scrape asked for (what the next scrape will ask for), lazily for any other. Scrapes serve
the cached bytes, so their cost does not grow with the number of series beyond sending them.
Families of the same name from several sources are merged into one family.
"""

import asyncio
import gzip
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from collector.health import HealthTracker
from collector.logs import log_event
from collector.samples import Family, Labels, SourceSample

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

Format = Literal["text", "openmetrics"]
CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
_CONTENT_TYPES: dict[Format, str] = {"text": CONTENT_TYPE_TEXT, "openmetrics": CONTENT_TYPE_OPENMETRICS}
_LOG = logging.getLogger("fabwatch.exporter")
_INF, _MINUS_INF = math.inf, -math.inf
LabelCache = dict[tuple[Labels, str | None], str]


PER_REPLICA = ("fab_build_info", "fab_service_tasks", "fab_config_.+", "fab_events_.+", "fab_records_incomplete",
               "fab_records_completed_total", "fab_export_errors_total")
"""The series each replica exports of itself (its build, its events port, its reloads); every other
`fab_` series belongs to a source and is exported by the replica holding that source's lease only."""
SHARED_INSTANCE = "fabwatch"


def replica_relabeling(instance: str = SHARED_INSTANCE) -> list[dict[str, object]]:
    """The `metric_relabel_configs` of a scrape job over replicas: a source's series get one
    `instance` whichever replica exports them, so that Prometheus sees one counter going on from the
    shared state when the source moves to another replica (`increase()` and `sum` exact: no reset,
    no second series starting at the running total); the per-replica series keep their instance."""
    return [
        {"source_labels": ["__name__"], "regex": "|".join(PER_REPLICA), "target_label": "__tmp_per_replica",
         "replacement": "1"},
        {"source_labels": ["__tmp_per_replica", "__name__"], "regex": ";fab_.+", "target_label": "instance",
         "replacement": instance},
        {"regex": "__tmp_per_replica", "action": "labeldrop"},
    ]


@dataclass(frozen=True, slots=True)
class Exposition:
    """A rendered exposition ready to send: body, content type, content encoding (or None)."""

    body: bytes
    content_type: str
    encoding: str | None


def merge(families: Iterable[Family]) -> list[Family]:
    """Merge families that share an exposed name; on a kind conflict keep the first one."""
    merged: dict[str, Family] = {}
    for family in families:
        name = family.name.removesuffix("_total") if family.kind == "counter" else family.name
        first = merged.get(name)
        if first is None:
            merged[name] = Family(name, family.kind, family.documentation,
                                  list(family.samples), list(family.histograms))
        elif first.kind != family.kind:
            log_event(_LOG, "family_kind_conflict", logging.WARNING, family=name,
                      kept=first.kind, dropped=family.kind)
        else:
            first.samples.extend(family.samples)
            first.histograms.extend(family.histograms)
    return list(merged.values())


def to_metrics(families: Iterable[Family]) -> "list[Metric]":
    """Convert families to prometheus-client metrics (for interoperability; not used to serve)."""
    from prometheus_client.metrics_core import Metric

    metrics = []
    for family in merge(families):
        metric = Metric(family.name, family.documentation, family.kind)
        suffix = "_total" if family.kind == "counter" else ""
        for labels, value in family.samples:
            metric.add_sample(family.name + suffix, dict(labels), value)
        for labels, histogram in family.histograms:
            for bound, count in histogram.buckets:
                metric.add_sample(family.name + "_bucket", {**dict(labels), "le": go_float(bound)}, count)
            metric.add_sample(family.name + "_count", dict(labels), histogram.count)
            metric.add_sample(family.name + "_sum", dict(labels), histogram.sum)
        metrics.append(metric)
    return metrics


def go_float(value: float) -> str:
    """Format a sample value as Prometheus' Go code (and prometheus-client) does."""
    if value == _INF:
        return "+Inf"
    if value == _MINUS_INF:
        return "-Inf"
    if value != value:
        return "NaN"
    text = repr(float(value))
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go switches to exponents sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return text


def _escape_label(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def _label_text(labels: Labels, le: str | None) -> str:
    pairs = sorted(labels if le is None else (*labels, ("le", le)))
    if not pairs:
        return ""
    return "{" + ",".join(f'{name}="{_escape_label(value)}"' for name, value in pairs) + "}"


class _Writer:
    """Writes the exposition lines of merged families; label strings are reused across renders."""

    def __init__(self, old: LabelCache) -> None:
        self._old = old
        self.cache: LabelCache = {}

    def labels(self, labels: Labels, le: str | None = None) -> str:
        key = (labels, le)
        text = self.cache.get(key)
        if text is None:
            text = self._old.get(key)
            if text is None:
                text = _label_text(labels, le)
            self.cache[key] = text
        return text

    def render(self, families: Iterable[Family], fmt: Format) -> bytes:
        out: list[str] = []
        for family in merge(families):
            self._family(out, family, fmt)
        if fmt == "openmetrics":
            out.append("# EOF\n")
        return "".join(out).encode()

    def _family(self, out: list[str], family: Family, fmt: Format) -> None:
        name = family.name
        suffix = "_total" if family.kind == "counter" else ""
        header = name + suffix if fmt == "text" else name
        doc = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
        if fmt == "openmetrics":
            doc = doc.replace('"', r"\"")
        out.append(f"# HELP {header} {doc}\n# TYPE {header} {family.kind}\n")
        sample_name = name + suffix
        labels = self.labels
        out.extend(f"{sample_name}{labels(series)} {go_float(v)}\n" for series, v in family.samples)
        for series, histogram in family.histograms:
            out.extend(f"{name}_bucket{labels(series, go_float(b))} {go_float(c)}\n" for b, c in histogram.buckets)
            plain = labels(series)
            out.append(f"{name}_count{plain} {go_float(histogram.count)}\n")
            out.append(f"{name}_sum{plain} {go_float(histogram.sum)}\n")


def render(families: Iterable[Family], fmt: Format = "text") -> bytes:
    """Render families (merged by name) in the text 0.0.4 or OpenMetrics 1.0 format."""
    return _Writer({}).render(families, fmt)


class PrometheusExporter:
    """Holds the latest sample of each source and the exposition bytes rendered from them."""

    def __init__(self, health: HealthTracker | None = None, compresslevel: int = 6) -> None:
        self._samples: dict[str, SourceSample] = {}
        self._health = health
        self._rendered: dict[Format, bytes] = {}
        self._compressed: dict[Format, bytes] = {}
        self._compresslevel = compresslevel
        self._labels: LabelCache = {}
        self._wanted: tuple[Format, bool] | None = None
        self._pending: asyncio.Future[None] | None = None
        self.renders = 0
        """How many times an exposition was rendered (for tests and the self-check)."""
        self.generation = 0
        """Bumped on every change; a scrape between two changes serves the same bytes."""
        self._owned: frozenset[str] = frozenset()
        """The sources this replica held when the exposition was rendered (replicas on a shared state)."""

    def update(self, sample: SourceSample) -> None:
        """Replace the latest sample of `sample.source`."""
        self._samples[sample.source] = sample
        self.invalidate()

    def forget(self, sources: Iterable[str]) -> None:
        """Drop the samples of sources no longer configured (a reload): their series end now instead
        of lingering with their last values."""
        dropped = [self._samples.pop(name) for name in sources if name in self._samples]
        if dropped:
            self.invalidate()

    def invalidate(self) -> None:
        """Drop the cached exposition (after a new sample or a health change); re-render it in the
        background for the format last served when an event loop runs."""
        self._rendered.clear()
        self._compressed.clear()
        self.generation += 1
        if self._wanted is not None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._pending = loop.create_task(self._prerender(self.generation, *self._wanted))

    async def ready(self) -> None:
        """Wait for a background render in flight, so that a scrape never renders it twice."""
        pending = self._pending
        if pending is not None and not pending.done():
            await asyncio.shield(pending)

    def latest(self, source: str) -> SourceSample | None:
        """The latest successful sample of `source`, if any."""
        return self._samples.get(source)

    def render(self, fmt: Format = "text", compressed: bool = False) -> bytes:
        """Return the exposition in `fmt`, rendering it only if it changed since the last call."""
        if compressed:
            body = self._compressed.get(fmt)
            if body is None:
                body = self._compress(self.render(fmt))
                self._compressed[fmt] = body
            return body
        body = self._rendered.get(fmt)
        if body is None:
            body = self._render(list(self._families()), fmt)
            self._rendered[fmt] = body
        return body

    def respond(self, accept: str | None, accept_encoding: str | None) -> Exposition:
        """Pick the format and encoding from the request headers and return the cached bytes."""
        if self._owned != self._owned_now():  # a lease lapsed (a replica paused past it) or was taken
            self.invalidate()
        fmt = negotiate_format(accept)
        compressed = accepts_gzip(accept_encoding)
        self._wanted = (fmt, compressed)
        return Exposition(self.render(fmt, compressed), _CONTENT_TYPES[fmt],
                          "gzip" if compressed else None)

    def _render(self, families: list[Family], fmt: Format) -> bytes:
        writer = _Writer(self._labels)
        body = writer.render(families, fmt)
        self._labels = writer.cache
        self.renders += 1
        return body

    def _compress(self, body: bytes) -> bytes:
        return gzip.compress(body, compresslevel=self._compresslevel, mtime=0)

    async def _prerender(self, generation: int, fmt: Format, compressed: bool) -> None:
        """Render (and compress) one format off the event loop; keep it if nothing changed since."""
        families = list(self._families())  # snapshot in the loop thread
        try:
            body = await asyncio.to_thread(self._render, families, fmt)
            packed = await asyncio.to_thread(self._compress, body) if compressed else None
        except Exception as exc:  # never lose the service over a render; scrapes render lazily
            log_event(_LOG, "render_failed", logging.ERROR, error=repr(exc))
            return
        if generation == self.generation:
            self._rendered.setdefault(fmt, body)
            if packed is not None:
                self._compressed.setdefault(fmt, packed)

    def _owned_now(self) -> frozenset[str]:
        """The sources whose series this replica exports now: all of them unless replicas lease them."""
        if self._health is None or self._health.replica is None:
            return frozenset()
        return frozenset(filter(self._health.owned, self._health.sources))

    def _families(self) -> Iterator[Family]:
        self._owned = owned = self._owned_now()
        leased = self._health is not None and self._health.replica is not None
        for source in sorted(self._samples):
            if not leased or source in owned:  # only the holder of a source exports its series
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
