"""OpenTelemetry (OTLP) push of the snapshot `/metrics` serves.

The exporter is a `SampleSink` beside the Prometheus exporter: it keeps the latest sample of each
source (the very objects `/metrics` renders) and, every interval, converts them with the sources'
health to an OTLP request (`exporters.otlp_data`: the message the SDK's encoder would build from its
`MetricsData`, at a quarter of the CPU) and sends it with the SDK's OTLP/HTTP exporter, in a thread
of its own: sampling and scrapes never wait for a collector. One export runs at a time; the SDK's retries are
bounded by the export timeout, so a dead collector costs one blocked thread, never a pile of them.

Names keep the Prometheus base name (`fab_items_created`, `_total` dropped), so that a collector
translating back to Prometheus gives the names `/metrics` has; the unit comes from the name's suffix
(`exporters.otlp_series.unit_of`). opentelemetry is imported only when an exporter is built: `serve` without OTLP never
loads it.
"""

import asyncio
import logging
import math
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote

from collector.health import HealthTracker, fabwatch_version
from collector.inventory.exporters import OtlpConfig
from collector.inventory.models import Inventory
from collector.logs import log_event, mask_secrets, safe_dsn
from collector.samples import Family, SourceSample
from collector.state import StateError, StateStore, open_state
from exporters.otlp_series import Deltas, Starts

if TYPE_CHECKING:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics.export import MetricExportResult

Temporality = Literal["cumulative", "delta"]
EXPORTER = "otlp"
"""The `exporter` label of `fab_export_errors_total`."""
DEFAULT_ENDPOINT = "http://localhost:4318/v1/metrics"
_LOG = logging.getLogger("fabwatch.otlp")


class OtlpSettingsError(ValueError):
    """An OTLP setting (inventory or `OTEL_*` variable) that cannot be used."""


@dataclass(frozen=True, slots=True)
class OtlpSettings:
    """What the OTLP exporter does, resolved from the inventory over the `OTEL_*` environment."""

    endpoint: str
    interval: float
    timeout: float
    temporality: Temporality
    resource: tuple[tuple[str, str], ...]
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    """May carry an API key: kept out of `repr`, never logged."""


def otlp_settings(config: OtlpConfig | None, environ: Mapping[str, str]) -> OtlpSettings | None:
    """Resolve the OTLP settings, the inventory's fields over the `OTEL_*` variables; None when off.

    On when the inventory has `exporters.otlp` (unless `enabled: false`), or when
    `OTEL_METRICS_EXPORTER` names `otlp`.
    """
    wanted = {part.strip() for part in environ.get("OTEL_METRICS_EXPORTER", "").split(",")}
    if (config is None and "otlp" not in wanted) or (config is not None and not config.enabled):
        return None
    cfg = config or OtlpConfig()
    protocol = cfg.protocol or _env(environ, "PROTOCOL") or "http/protobuf"
    if protocol != "http/protobuf":
        raise OtlpSettingsError(f"OTLP protocol {protocol!r} is not supported: fabwatch exports over "
                                "http/protobuf (set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf and port 4318)")
    endpoint = cfg.endpoint or _endpoint(environ)
    if not endpoint.lower().startswith(("http://", "https://")):
        raise OtlpSettingsError(f"the OTLP endpoint must be an http:// or https:// URL, got {safe_dsn(endpoint)!r}")
    return OtlpSettings(
        endpoint=endpoint,
        interval=cfg.interval or _millis(environ, ("OTEL_METRIC_EXPORT_INTERVAL",), 60_000),
        timeout=cfg.timeout or _millis(environ, ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"),
                                       10_000),
        temporality=cfg.temporality or _temporality(environ),
        resource=_resource(cfg, environ),
        headers=tuple({**parse_pairs(_env(environ, "HEADERS")), **(cfg.headers or {})}.items()),
    )


def _env(environ: Mapping[str, str], setting: str) -> str:
    """`OTEL_EXPORTER_OTLP_METRICS_<setting>`, else `OTEL_EXPORTER_OTLP_<setting>`, else empty."""
    return (environ.get(f"OTEL_EXPORTER_OTLP_METRICS_{setting}") or environ.get(f"OTEL_EXPORTER_OTLP_{setting}")
            or "").strip()


def _endpoint(environ: Mapping[str, str]) -> str:
    """The metrics URL: the signal's variable as it is, the general one with `/v1/metrics` appended."""
    if signal := environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "").strip():
        return signal
    if base := environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
        return base.rstrip("/") + "/v1/metrics"
    return DEFAULT_ENDPOINT


def _millis(environ: Mapping[str, str], names: tuple[str, ...], default: float) -> float:
    """The first of `names` set, a duration in milliseconds, returned in seconds."""
    name = next((n for n in names if environ.get(n, "").strip()), names[0])
    raw = environ.get(name, "").strip()
    try:
        millis = float(raw) if raw else default
    except ValueError:
        raise OtlpSettingsError(f"{name} must be a number of milliseconds, got {raw!r}") from None
    if not millis > 0 or math.isinf(millis):
        raise OtlpSettingsError(f"{name} must be a positive number of milliseconds, got {raw!r}")
    return millis / 1000


def _temporality(environ: Mapping[str, str]) -> Temporality:
    name = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"
    value = environ.get(name, "").strip().lower() or "cumulative"
    if value == "cumulative":
        return "cumulative"
    if value in ("delta", "lowmemory"):  # lowmemory: delta for counters and histograms, what fabwatch has
        return "delta"
    raise OtlpSettingsError(f"{name} must be cumulative or delta, got {value!r}")


def _resource(config: OtlpConfig, environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    attributes = parse_pairs(environ.get("OTEL_RESOURCE_ATTRIBUTES", ""))
    attributes.update(config.resource_attributes or {})
    attributes["service.name"] = (config.service_name or environ.get("OTEL_SERVICE_NAME", "").strip()
                                  or attributes.get("service.name") or "fabwatch")
    attributes["service.version"] = fabwatch_version()
    return tuple(sorted(attributes.items()))


def parse_pairs(text: str) -> dict[str, str]:
    """Parse `key=value,key2=value2` as the OTEL_*_HEADERS and OTEL_RESOURCE_ATTRIBUTES variables hold
    them (values percent-encoded); an element without `=` is skipped."""
    pairs = {}
    for element in text.split(","):
        key, sep, value = element.partition("=")
        if sep and key.strip():
            pairs[unquote(key.strip())] = unquote(value.strip())
    return pairs


class _MaskSecrets(logging.Filter):
    """Masks credential-like query values in the SDK exporter's own log lines, which quote the
    request's URL (`... url: /v1/metrics?api_key=...`) when a transport error is retried."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


_SDK_LOGGER = logging.getLogger("opentelemetry.exporter.otlp.proto.http.metric_exporter")
_SDK_FILTER = _MaskSecrets()


def _recording_session() -> Any:
    """A `requests.Session` (the SDK exporter's public `session` argument) that remembers how its last
    request ended: the SDK's `export` returns only FAILURE, the log line needs the reason."""
    import requests

    class RecordingSession(requests.Session):
        last: str | None = None

        def request(self, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
            try:
                response = super().request(*args, **kwargs)
            except requests.RequestException as exc:
                self.last = _cause(exc)
                raise
            self.last = f"HTTP {response.status_code} {response.reason}"
            return response

    return RecordingSession()


def _cause(exc: BaseException) -> str:
    """The gist of a transport error: `[Errno 111] Connection refused`, `timed out`, else its text."""
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\][^'\")]*", text)
    if errno:
        return errno[0].strip()
    return "timed out" if "timed out" in text.lower() else f"{type(exc).__name__}: {text}"


class OtlpExporter:
    """A `SampleSink` that pushes the latest sample of every source, with the sources' health, over OTLP."""

    def __init__(self, settings: OtlpSettings, health: HealthTracker, *,
                 on_error: Callable[[], None] = lambda: None,
                 clock: Callable[[], int] = time.time_ns, state_path: str | Path | None = None) -> None:
        """`on_error` runs (in the event loop) after a failed export counted in `health`: the
        Prometheus exporter's `invalidate`, so that `/metrics` shows the new count. `state_path`, the
        state store, keeps the start times of cumulative series across restarts (without it, in memory)."""
        self.settings = settings
        self._state_path = state_path
        self._store: StateStore | None = None
        self._starts: Starts | None = None
        self._health = health
        self._on_error = on_error
        self._clock = clock
        self._samples: dict[str, SourceSample] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="otlp-export")
        self._sdk: OTLPMetricExporter | None = None
        self._convert: Callable[[list[Family], int], Callable[[], MetricExportResult]] | None = None
        self._session: Any = None
        self._deltas: Deltas | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.exports = 0
        """Exports attempted so far (for tests and the benchmark)."""
        health.track_exporter(EXPORTER)

    def update(self, sample: SourceSample) -> None:
        """Keep the latest sample of `sample.source` for the next export."""
        self._samples[sample.source] = sample

    def invalidate(self) -> None:
        """Nothing to drop: each export reads the health as it is then."""

    def forget(self, sources: Iterable[str]) -> None:
        """Drop the samples of sources a reload removed or reopened, as `/metrics` does: a process
        moved to another source is not pushed twice."""
        for name in sources:
            self._samples.pop(name, None)

    def reloaded(self, inventory: Inventory) -> None:
        """Drop the samples of sources a reload removed, as `/metrics` does (the OTLP settings themselves
        are read at start only)."""
        for name in set(self._samples) - set(inventory.sources):
            del self._samples[name]

    def snapshot(self) -> list[Family]:
        """The families `/metrics` serves now: every source's latest sample, then the health."""
        return self._sampled() + list(self._health.families())

    def _sampled(self) -> list[Family]:
        """The latest samples' families; with replicas, of the sources this one holds now (by its own
        clock, as `/metrics`: a lease lapsed during a pause is not pushed before the next lease round)."""
        leased = self._health.replica is not None
        return [family for source in sorted(self._samples) if not leased or self._health.owned(source)
                for family in self._samples[source].families]

    async def start(self) -> None:
        """Build the SDK exporter (importing opentelemetry) and start exporting every interval."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._build)
        self._task = asyncio.create_task(self._every_interval(), name="otlp-export")
        log_event(_LOG, "otlp_started", endpoint=safe_dsn(self.settings.endpoint),
                  interval=self.settings.interval, temporality=self.settings.temporality)

    async def stop(self) -> None:
        """Stop the interval, push one last time (what sampling left last), and shut the SDK exporter down."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
            await self.export()
        if self._sdk is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._sdk.shutdown)
        if self._store is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, partial(self._save_starts, everything=True))
            await loop.run_in_executor(self._executor, self._store.close)
            self._store = None
        self._executor.shutdown(wait=True)

    async def export(self) -> bool:
        """Push the current snapshot now (after any export in flight); True when the receiver took it."""
        async with self._lock:
            health = self._health.families()  # in the loop's thread: the samples of this instant
            families = self._sampled() + list(health)
            if self._starts is not None:
                self._starts.volatile = frozenset(family.name for family in health)
            self.exports += 1
            reason = await asyncio.get_running_loop().run_in_executor(self._executor, self._push, families)
        if reason is not None:
            self._health.record_export_error(EXPORTER)
            self._on_error()
            log_event(_LOG, "export_failed", logging.WARNING, exporter=EXPORTER,
                      endpoint=safe_dsn(self.settings.endpoint), reason=reason)
        return reason is None

    async def _every_interval(self) -> None:
        while True:
            await asyncio.sleep(self.settings.interval)
            await self.export()

    def _build(self) -> None:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.resources import Resource

        from exporters.otlp_data import Converter, Encoder

        settings = self.settings
        self._session = _recording_session()
        _SDK_LOGGER.addFilter(_SDK_FILTER)  # the same filter object: added once however many exporters
        self._sdk = OTLPMetricExporter(endpoint=settings.endpoint, headers=dict(settings.headers),
                                       timeout=settings.timeout, session=self._session)
        resource = Resource(dict(settings.resource))
        deltas = self._deltas = Deltas() if settings.temporality == "delta" else None
        starts = self._starts = self._load_starts()
        sdk = self._sdk
        if hasattr(sdk, "_export_batch"):  # the SDK's export() less its encoder: encode 4x cheaper, send the same
            encoder = Encoder(resource, self._health.version, starts, deltas)
            self._convert = lambda families, now: partial(sdk._export_batch, encoder.request(families, now))
        else:  # an SDK without that step: the public path, all SDK
            converter = Converter(resource, self._health.version, starts, deltas)
            self._convert = lambda families, now: partial(sdk.export, converter.metrics_data(families, now))

    def _load_starts(self) -> Starts:
        """The start times of cumulative series, those of earlier runs from the state store."""
        if self.settings.temporality == "cumulative" and self._state_path is not None:
            try:
                self._store = open_state(self._state_path)
                return Starts(self._clock(), self._store.otlp_series())
            except (sqlite3.Error, OSError, StateError) as exc:
                log_event(_LOG, "otlp_starts_unsaved", logging.WARNING, path=safe_dsn(str(self._state_path)),
                          error=str(exc))
                self._store = None
        return Starts(self._clock())

    def _save_starts(self, everything: bool = False) -> None:
        """Save the start times set or moved by the request just built, and the last values when due or
        with `everything` (in the export thread)."""
        if self._store is None or self._starts is None:
            return
        try:
            self._store.save_otlp_series(self._starts.drain(self._clock(), everything))
        except (sqlite3.Error, OSError, StateError) as exc:  # the export goes on; the next one saves them again
            log_event(_LOG, "otlp_starts_unsaved", logging.WARNING, path=safe_dsn(str(self._state_path)),
                      error=str(exc))

    def _push(self, families: list[Family]) -> str | None:
        """Convert and send (in the export thread); the reason of a failure, None on success."""
        from opentelemetry.sdk.metrics.export import MetricExportResult

        assert self._convert is not None, "start() builds the exporter"
        self._session.last = None
        try:
            send = self._convert(families, self._clock())
            self._save_starts()
            result = send()
        except Exception as exc:  # a bug (the SDK catches its own errors): counted, traced, and the next interval runs
            log_event(_LOG, "export_crashed", logging.ERROR, exc_info=True, exporter=EXPORTER)
            return f"internal: {type(exc).__name__}"
        if result is MetricExportResult.SUCCESS:
            if self._deltas is not None:
                self._deltas.commit()
            return None
        return _short(self._session.last or "export failed (see the SDK's log line)")


def _short(message: str) -> str:
    """The SDK's message on one line, credential-like query values masked, cut to a readable length."""
    return mask_secrets(re.sub(r"\s+", " ", message))[:300]
