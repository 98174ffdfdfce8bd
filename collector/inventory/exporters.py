"""Settings of the exporters beyond `/metrics`: OpenTelemetry (OTLP) push.

Every OTLP field left out falls back to its standard `OTEL_*` environment variable, then to the
OpenTelemetry default: a field given here wins over the environment (see `exporters.otlp`).
"""

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from collector.inventory.base import Model, examples
from collector.inventory.durations import Duration
from collector.inventory.sources import Url

HeaderName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9!#$%&'*+.^_~-]+$", max_length=128)]
"""An HTTP header name (an RFC 9110 token)."""


class OtlpConfig(Model):
    """Push the metrics `/metrics` serves to an OpenTelemetry Collector or vendor over OTLP."""

    model_config = examples({"endpoint": "http://otel-collector:4318/v1/metrics",
                             "headers": {"Authorization": "Bearer ${OTLP_TOKEN}"}, "interval": "60s",
                             "resource_attributes": {"deployment.environment.name": "prod"}})

    enabled: bool = True
    """Whether to push; `false` turns off an export that `OTEL_METRICS_EXPORTER=otlp` switched on."""
    endpoint: Url | None = None
    """The metrics URL, e.g. `http://collector:4318/v1/metrics` (default: `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`,
    else `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/metrics`, else `http://localhost:4318/v1/metrics`)."""
    protocol: Literal["http/protobuf", "grpc"] | None = None
    """OTLP transport (default: `OTEL_EXPORTER_OTLP_METRICS_PROTOCOL`, `OTEL_EXPORTER_OTLP_PROTOCOL`, else
    `http/protobuf`); `grpc` is refused with a clear error: only HTTP/protobuf is built in."""
    headers: dict[HeaderName, str] | None = None
    """HTTP headers sent with every export (an API key): give secrets as `${ENV}` or `${file:/path}`, never
    inline; never logged (default: `OTEL_EXPORTER_OTLP_METRICS_HEADERS`, `OTEL_EXPORTER_OTLP_HEADERS`)."""
    interval: Duration | None = None
    """Time between two exports (default: `OTEL_METRIC_EXPORT_INTERVAL` in ms, else 60s)."""
    timeout: Duration | None = None
    """How long one export may take, retries included (default: `OTEL_EXPORTER_OTLP_METRICS_TIMEOUT` /
    `OTEL_EXPORTER_OTLP_TIMEOUT` in ms, else 10s)."""
    temporality: Literal["cumulative", "delta"] | None = None
    """Counters and histograms as running totals (cumulative) or as the change since the previous export
    (delta) (default: `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`, else cumulative)."""
    service_name: Annotated[str, Field(min_length=1)] | None = None
    """The resource's `service.name` (default: `OTEL_SERVICE_NAME`, else `fabwatch`)."""
    resource_attributes: dict[str, str] | None = None
    """More resource attributes (`deployment.environment.name: prod`), over `OTEL_RESOURCE_ATTRIBUTES`."""


class ExportersConfig(Model):
    """Exporters pushing fabwatch's metrics elsewhere, beside the `/metrics` endpoint."""

    otlp: OtlpConfig | None = None
    """OpenTelemetry (OTLP) metrics export; left out, the standard `OTEL_*` variables alone can switch it on."""
