"""OTLP export: what a real receiver decodes (official protobuf messages) equals `/metrics` at the same sample."""

import asyncio
import json
import logging
import math
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from prometheus_client.parser import text_string_to_metric_families

from app.service import EXPORTER, HEALTH, OTLP, SCHEDULER, build_app
from collector.health import HealthTracker
from collector.inventory.exporters import OtlpConfig
from collector.inventory.load import load_inventory
from collector.samples import Family, Histogram, SourceSample
from collector.state import StateStore
from exporters.otlp import OtlpExporter, OtlpSettings, OtlpSettingsError, otlp_settings, parse_pairs
from exporters.otlp_series import LEVELS_EVERY, Deltas, Starts, decumulate, unit_of
from tests.app.test_cli import ROOT, run_fabwatch, stop, wait_http
from tests.app.test_service import make_records, wait_ready, write_inventory
from tests.exporters.otlp_receiver import Receiver, attributes, metrics_of
from tests.exporters.otlp_receiver import receiver as _receiver
from tests.servers import free_port

Series = dict[frozenset[tuple[str, str]], Any]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from _receiver()


def otel_env(url: str, **more: str) -> dict[str, str]:
    return {"OTEL_METRICS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": url,
            "OTEL_METRIC_EXPORT_INTERVAL": "3600000", **more}


def prometheus_view(text: str) -> dict[str, tuple[str, Series]]:
    """Every family of a text exposition: name -> (kind, series -> value or (buckets, count, sum))."""
    view: dict[str, tuple[str, Series]] = {}
    for family in text_string_to_metric_families(text):
        series: Series = {}
        if family.type == "histogram":
            for sample in family.samples:
                labels = {k: v for k, v in sample.labels.items() if k != "le"}
                key = frozenset(labels.items())
                buckets, count, total = series.get(key, ((), 0.0, 0.0))
                if sample.name.endswith("_bucket"):
                    buckets = (*buckets, (float(sample.labels["le"]), sample.value))
                elif sample.name.endswith("_count"):
                    count = sample.value
                else:
                    total = sample.value
                series[key] = (buckets, count, total)
        else:
            series = {frozenset(s.labels.items()): s.value for s in family.samples}
        if series:
            view[family.name] = (family.type, series)
    return view


def otlp_view(request: Any) -> dict[str, tuple[str, Series]]:
    """The same view of an OTLP export, buckets re-cumulated with +Inf last."""
    view: dict[str, tuple[str, Series]] = {}
    for name, metric in metrics_of(request).items():
        kind = metric.WhichOneof("data")
        if kind == "histogram":
            series: Series = {}
            for point in metric.histogram.data_points:
                cumulative = [sum(point.bucket_counts[:i + 1]) for i in range(len(point.bucket_counts))]
                bounds = [*point.explicit_bounds, math.inf]
                series[frozenset(attributes(point.attributes).items())] = (
                    tuple(zip(bounds, map(float, cumulative), strict=True)), float(point.count), point.sum)
            view[name] = ("histogram", series)
        else:
            data = getattr(metric, kind)
            mapped = "counter" if kind == "sum" else "gauge"
            if kind == "sum":
                assert data.is_monotonic
            view[name] = (mapped, {frozenset(attributes(p.attributes).items()): p.as_double
                                   for p in data.data_points})
    return view


LIVE = {"fab_service_tasks"}
"""Read when each exposition is built, not sampled: the tasks alive then (a scrape's own included)."""


def sampled(view: dict[str, tuple[str, Series]]) -> dict[str, tuple[str, Series]]:
    """A view without the live readings, which differ between any two instants."""
    assert set(view) >= LIVE, "the live families are exported too"
    return {name: family for name, family in view.items() if name not in LIVE}


async def scrape(client: Any) -> str:
    response = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert response.status == 200
    return await response.text()


async def test_an_export_equals_metrics_at_the_same_sample(receiver, aiohttp_client, tmp_path):
    records = tmp_path / "records.db"
    make_records(records)
    app = build_app(load_inventory([write_inventory(tmp_path, records)]),
                    environ=otel_env(receiver.url, OTEL_RESOURCE_ATTRIBUTES="deployment.environment.name=test"))
    client = await aiohttp_client(app)
    await wait_ready(client)
    text = await scrape(client)
    assert await app[OTLP].export()
    [received] = receiver.received

    expected, pushed = sampled(prometheus_view(text)), sampled(otlp_view(received.request))
    assert pushed == expected
    kinds = {kind for kind, _ in expected.values()}
    assert kinds == {"counter", "gauge", "histogram"}
    assert "fab_items_created" in pushed
    assert "fab_cycle_time_seconds" in pushed
    assert pushed["fab_export_errors"] == ("counter", {frozenset({("exporter", "otlp")}): 0.0})

    metrics = metrics_of(received.request)
    assert metrics["fab_cycle_time_seconds"].unit == "s"
    assert metrics["fab_source_last_success_timestamp_seconds"].unit == "s"
    assert metrics["fab_items_created"].unit == ""
    cumulative = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    assert metrics["fab_items_created"].sum.aggregation_temporality == cumulative
    assert metrics["fab_items_created"].description == "Work items created."
    cycle = metrics["fab_cycle_time_seconds"].histogram.data_points[0]
    assert list(cycle.explicit_bounds) == [3600.0, 14400.0, 86400.0]  # the KPI's buckets, +Inf implied
    resource = attributes(received.request.resource_metrics[0].resource.attributes)
    assert resource["service.name"] == "fabwatch"
    assert resource["service.version"] == app[HEALTH].version
    assert resource["deployment.environment.name"] == "test"
    assert received.headers["Content-Type"] == "application/x-protobuf"


def add_tickets(records: Path, count: int) -> None:
    """Add `count` tickets created and resolved just now (after the last sample's watermark)."""
    now = time.time()
    db = sqlite3.connect(records, timeout=30)  # the service reads the records meanwhile
    db.executemany("INSERT INTO trouble_ticket VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                   [(f"new{i}", now - 1, now - 0.5, now + 3600, now - 0.5, "resolved", "resolved", "high", "web",
                     0.0, 0, 5.0) for i in range(count)])
    db.commit()
    db.close()


def counter_values(text: str, name: str) -> Series:
    return prometheus_view(text)[name][1]


@pytest.mark.slow
async def test_delta_temporality_sends_the_change_since_the_last_export(receiver, aiohttp_client, tmp_path):
    records = tmp_path / "records.db"
    make_records(records)
    env = otel_env(receiver.url, OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE="delta")
    # no first-start backfill: its reads of the records would hold the file while the test writes to it
    app = build_app(load_inventory([write_inventory(tmp_path, records)]), environ=env, backfill=False)
    client = await aiohttp_client(app)
    await wait_ready(client)
    before = await scrape(client)
    assert await app[OTLP].export()  # the baseline: gauges only
    first = metrics_of(receiver.received[0].request)
    assert "fab_backlog_items" in first
    assert "fab_items_created" not in first

    add_tickets(records, 4)
    await asyncio.sleep(2.1)  # past the source's `settle`, so that the new rows count
    assert await app[SCHEDULER].run_once("crm") is not None
    after = await scrape(client)
    assert await app[OTLP].export()
    second = metrics_of(receiver.received[1].request)

    created = second["fab_items_created"].sum
    assert created.aggregation_temporality == AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
    old, new = counter_values(before, "fab_items_created"), counter_values(after, "fab_items_created")
    deltas = {frozenset(attributes(p.attributes).items()): p.as_double for p in created.data_points}
    assert deltas == {key: value - old.get(key, 0.0) for key, value in new.items() if key in old}
    assert sum(deltas.values()) == 4
    first_time = {p.time_unix_nano for m in first.values() for p in m.gauge.data_points}
    assert {p.start_time_unix_nano for p in created.data_points} == first_time  # the previous export
    cycle = second["fab_cycle_time_seconds"].histogram
    assert cycle.aggregation_temporality == AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
    assert [p.count for p in cycle.data_points] == [4]
    assert sum(cycle.data_points[0].bucket_counts) == 4


@pytest.mark.slow
async def test_a_failing_endpoint_is_counted_and_does_not_hold_sampling_or_scrapes(receiver, aiohttp_client,
                                                                                   tmp_path, caplog):
    records = tmp_path / "records.db"
    make_records(records)
    receiver.status, receiver.delay = 503, 0.5  # slow, then unavailable: retried until the timeout
    env = otel_env(receiver.url + "?api_key=s3cr3t", OTEL_EXPORTER_OTLP_TIMEOUT="3000")  # 2 tries
    app = build_app(load_inventory([write_inventory(tmp_path, records)]), environ=env)
    client = await aiohttp_client(app)
    await wait_ready(client)
    caplog.set_level(logging.WARNING, "fabwatch.otlp")

    export = asyncio.create_task(app[OTLP].export())
    await asyncio.sleep(0.1)
    started = time.perf_counter()
    text = await scrape(client)
    assert await app[SCHEDULER].run_once("crm") is not None
    assert time.perf_counter() - started < 1.0  # neither waited for the export
    assert not export.done()
    assert 'fab_export_errors_total{exporter="otlp"} 0.0' in text
    assert not await asyncio.wait_for(export, 10)
    assert 'fab_export_errors_total{exporter="otlp"} 1.0' in await scrape(client)

    [line] = [r for r in caplog.records if r.getMessage() == "export_failed"]
    fields = line.fabwatch_fields
    assert fields["endpoint"].startswith(receiver.url)
    assert "api_key=***" in fields["endpoint"]
    assert "s3cr3t" not in str(fields)
    assert fields["reason"] == "HTTP 503 Service Unavailable"

    closed = f"http://127.0.0.1:{free_port()}/v1/metrics"
    refused = build_app(load_inventory([write_inventory(tmp_path, records)]),
                        environ=otel_env(closed, OTEL_EXPORTER_OTLP_TIMEOUT="500"))
    refused_client = await aiohttp_client(refused)
    await wait_ready(refused_client)
    assert not await refused[OTLP].export()
    assert refused[HEALTH].export_errors("otlp") == 1
    assert "refused" in str([r.fabwatch_fields["reason"] for r in caplog.records
                             if r.getMessage() == "export_failed"][-1]).lower()


async def test_the_inventory_wins_over_the_environment(receiver, aiohttp_client, tmp_path):
    records = tmp_path / "records.db"
    make_records(records)
    path = write_inventory(tmp_path, records)
    document = yaml.safe_load(path.read_text())
    document["exporters"] = {"otlp": {"endpoint": receiver.url, "service_name": "fab-inv", "interval": "1h",
                                      "headers": {"X-Api-Key": "${OTLP_KEY}"},
                                      "resource_attributes": {"team": "noc"}}}
    path.write_text(yaml.safe_dump(document))
    inventory = load_inventory([path], {"OTLP_KEY": "k-123"})
    env = {"OTEL_METRICS_EXPORTER": "none", "OTEL_SERVICE_NAME": "fab-env",
           "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
           "OTEL_RESOURCE_ATTRIBUTES": "team=env,site=a",
           "OTEL_EXPORTER_OTLP_HEADERS": "X-Api-Key=env,X-Other=1"}
    app = build_app(inventory, environ=env)
    client = await aiohttp_client(app)
    await wait_ready(client)
    assert await app[OTLP].export()
    [received] = receiver.received
    resource = attributes(received.request.resource_metrics[0].resource.attributes)
    assert (resource["service.name"], resource["team"], resource["site"]) == ("fab-inv", "noc", "a")
    assert received.headers["X-Api-Key"] == "k-123"
    assert received.headers["X-Other"] == "1"
    assert "k-123" not in repr(app[OTLP].settings)

    document["exporters"] = {"otlp": {"enabled": False}}
    path.write_text(yaml.safe_dump(document))
    off = build_app(load_inventory([path]), environ=otel_env(receiver.url))
    assert OTLP not in off


@pytest.mark.slow
def test_the_standard_variables_alone_switch_it_on(tmp_path, receiver):
    records = tmp_path / "records.db"
    make_records(records)
    inventory = write_inventory(tmp_path, records)
    port = free_port()
    env = {"OTEL_METRICS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
           "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_METRIC_EXPORT_INTERVAL": "300",
           "OTEL_SERVICE_NAME": "fab-env", "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20t0ken"}
    proc = run_fabwatch("serve", "-c", str(inventory), "--listen", f"127.0.0.1:{port}", env=env)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc)
        received = receiver.wait_for(2)
    finally:
        code, _, err = stop(proc)
    assert code == 0, err
    assert "event=otlp_started" in err
    assert "t0ken" not in err
    last = received[-1]
    assert last.headers["Authorization"] == "Bearer t0ken"
    assert attributes(last.request.resource_metrics[0].resource.attributes)["service.name"] == "fab-env"
    assert "fab_items_created" in metrics_of(last.request)


def test_grpc_is_refused_with_a_clear_error(tmp_path):
    records = tmp_path / "records.db"
    make_records(records)
    proc = run_fabwatch("serve", "-c", str(write_inventory(tmp_path, records)), "--listen",
                        f"127.0.0.1:{free_port()}", env={"OTEL_METRICS_EXPORTER": "otlp",
                                                           "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "OTLP protocol 'grpc' is not supported" in err


def test_serve_without_otlp_never_imports_opentelemetry(tmp_path):
    records = tmp_path / "records.db"
    make_records(records)
    code = ("import sys; from app.service import build_app; from collector.inventory.load import load_inventory; "
            f"build_app(load_inventory([{str(write_inventory(tmp_path, records))!r}]), environ={{}}); "
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_settings_resolution():
    assert otlp_settings(None, {}) is None
    assert otlp_settings(None, {"OTEL_METRICS_EXPORTER": "prometheus"}) is None
    settings = otlp_settings(None, {"OTEL_METRICS_EXPORTER": "console,otlp"})
    assert settings is not None
    assert (settings.endpoint, settings.interval, settings.timeout, settings.temporality) == (
        "http://localhost:4318/v1/metrics", 60.0, 10.0, "cumulative")
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/", "OTEL_METRIC_EXPORT_INTERVAL": "1500",
           "OTEL_EXPORTER_OTLP_TIMEOUT": "2000", "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": "3000"}
    settings = otlp_settings(OtlpConfig(), env)
    assert settings is not None
    assert (settings.endpoint, settings.interval, settings.timeout) == ("http://c:4318/v1/metrics", 1.5, 3.0)
    for bad in ({"OTEL_METRIC_EXPORT_INTERVAL": "soon"}, {"OTEL_METRIC_EXPORT_INTERVAL": "0"},
                {"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "sideways"},
                {"OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/json"},
                {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}):
        with pytest.raises(OtlpSettingsError):
            otlp_settings(OtlpConfig(), bad)
    with pytest.raises(OtlpSettingsError, match="grpc"):
        otlp_settings(OtlpConfig(protocol="grpc"), {})
    assert parse_pairs("a=1, b = x%2Cy ,broken,=v") == {"a": "1", "b": "x,y"}


def test_units_from_the_name_suffix():
    assert unit_of("fab_cycle_time_seconds") == "s"
    assert unit_of("fab_events_last_received_timestamp_seconds") == "s"
    assert unit_of("fab_payload_bytes") == "By"
    assert unit_of("fab_good_ratio") == "1"
    assert unit_of("fab_backlog_items") == ""


def test_buckets_are_decumulated_with_inf_last():
    assert decumulate(Histogram(((1.0, 2.0), (5.0, 7.0), (math.inf, 9.0)), 30.0, 9.0)) == (2.0, 5.0, 2.0)
    assert decumulate(Histogram(((1.0, 2.0),), 3.0, 4.0)) == (2.0, 2.0)


def test_deltas_set_a_baseline_then_send_changes_and_survive_a_reset():
    deltas, labels = Deltas(), (("process", "p"),)
    deltas.begin()
    assert deltas.number("c", labels, 10.0, 1) is None
    assert deltas.histogram("h", labels, (1.0, 2.0), 5.0, 3.0, (1.0,), 1) is None
    deltas.commit()
    deltas.begin()
    assert deltas.number("c", labels, 13.0, 2) == (3.0, 1)
    assert deltas.histogram("h", labels, (2.0, 4.0), 9.0, 6.0, (1.0,), 2) == ((1.0, 2.0), 4.0, 3.0, 1)
    deltas.commit()
    deltas.begin()
    assert deltas.number("c", labels, 2.0, 3) == (2.0, 2)  # lower: counted from zero again


def test_deltas_forget_a_series_missing_from_an_export():
    deltas, labels = Deltas(), (("process", "p"),)
    deltas.begin()
    assert deltas.number("c", labels, 10.0, 1) is None
    deltas.commit()
    deltas.begin()  # an export without the series (its dimension set expired)
    deltas.commit()
    deltas.begin()
    assert deltas.number("c", labels, 12.0, 3) is None  # a new baseline, not 2 over two exports


async def test_stop_pushes_a_last_time(receiver, aiohttp_client, tmp_path):
    records = tmp_path / "records.db"
    make_records(records)
    app = build_app(load_inventory([write_inventory(tmp_path, records)]), environ=otel_env(receiver.url))
    client = await aiohttp_client(app)
    await wait_ready(client)
    assert app[EXPORTER].latest("crm") is not None
    assert receiver.received == []
    await client.close()
    assert len(receiver.received) == 1
    assert "fab_items_created" in metrics_of(receiver.received[0].request)


async def test_attributes_are_bounded_by_the_series_cap_of_metrics(receiver, aiohttp_client, tmp_path):
    records = tmp_path / "records.db"
    make_records(records)  # 3 priorities x 2 channels = 6 dimension sets
    path = write_inventory(tmp_path, records)
    document = yaml.safe_load(path.read_text())
    document["service"]["max_series_per_process"] = 2
    path.write_text(yaml.safe_dump(document))
    app = build_app(load_inventory([path]), environ=otel_env(receiver.url))
    client = await aiohttp_client(app)
    await wait_ready(client)
    text = await scrape(client)
    assert await app[OTLP].export()
    pushed = sampled(otlp_view(receiver.received[0].request))
    assert pushed == sampled(prometheus_view(text))
    created = pushed["fab_items_created"][1]
    dimension_sets = {(dict(key)["priority"], dict(key)["channel"]) for key in created}
    assert len(dimension_sets) == 3  # two kept, the rest folded into ("other", "other")
    assert ("other", "other") in dimension_sets


@pytest.mark.slow
@pytest.mark.parametrize("temporality", ["cumulative", "delta"])
async def test_the_encoder_builds_what_the_sdk_encodes(receiver, aiohttp_client, tmp_path, temporality):
    from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
    from opentelemetry.sdk.resources import Resource

    from exporters.otlp_data import Converter, Encoder
    from exporters.otlp_series import Deltas, Starts

    records = tmp_path / "records.db"
    make_records(records)
    app = build_app(load_inventory([write_inventory(tmp_path, records)]), environ=otel_env(receiver.url))
    client = await aiohttp_client(app)
    await wait_ready(client)
    resource = Resource({"service.name": "fabwatch", "site": "a"})
    delta = temporality == "delta"
    encoder = Encoder(resource, "1.2.3", Starts(1000), Deltas() if delta else None)
    converter = Converter(resource, "1.2.3", Starts(1000), Deltas() if delta else None)
    first = app[OTLP].snapshot()
    add_tickets(records, 3)
    await asyncio.sleep(2.1)
    assert await app[SCHEDULER].run_once("crm") is not None
    for now, families in ((2000, first), (3000, app[OTLP].snapshot())):
        ours, sdks = encoder.request(families, now), encode_metrics(converter.metrics_data(families, now))
        assert ours == sdks
        assert len(ours.resource_metrics[0].scope_metrics[0].metrics) > (8 if delta and now == 2000 else 15)
        for deltas in (encoder.deltas, converter.deltas):
            if deltas is not None:
                deltas.commit()  # the collector took it


def test_a_reload_drops_the_samples_of_removed_sources(tmp_path):
    records = tmp_path / "records.db"
    make_records(records)
    inventory = load_inventory([write_inventory(tmp_path, records)])
    settings = otlp_settings(OtlpConfig(), {})
    assert settings is not None
    otlp = OtlpExporter(settings, HealthTracker(["crm"]))
    kept = Family("fab_backlog_items", "gauge", "Open.", [((("process", "problem"),), 1.0)])
    gone = Family("fab_backlog_items", "gauge", "Open.", [((("process", "order"),), 2.0)])
    otlp.update(SourceSample("crm", 1.0, 0.1, (kept,), ()))
    otlp.update(SourceSample("removed", 1.0, 0.1, (gone,), ()))
    otlp.reloaded(inventory)
    backlog = [family for family in otlp.snapshot() if family.name == "fab_backlog_items"]
    assert backlog == [kept]


def one_source(items: float, buckets: tuple[tuple[float, float], ...], total: float | None = None) -> SourceSample:
    """A sample of source `crm` with one counter series and one histogram series of process `p`."""
    labels = (("process", "p"),)
    spread = Histogram(buckets, buckets[-1][1] if total is None else total, buckets[-1][1])
    return SourceSample("crm", 0.0, 0.0, (Family("fab_items_created", "counter", "Created.", [(labels, items)]),
                                          Family("fab_cycle_time_seconds", "histogram", "Cycle.", [],
                                                 [(labels, spread)])), ())


def pushed_points(received: list[Any], name: str) -> list[Any]:
    """The data points of metric `name` in each request, in order (empty where it was absent)."""
    points = []
    for request in received:
        metric = metrics_of(request.request).get(name)
        points.append([] if metric is None else list(getattr(metric, metric.WhichOneof("data")).data_points))
    return points


def export_time(received: Any) -> int:
    """The time of an export: its gauges' (every export has the health gauges)."""
    return next(p.time_unix_nano for m in metrics_of(received.request).values() if m.WhichOneof("data") == "gauge"
                for p in m.gauge.data_points)


async def delta_exporter(receiver: Receiver, **more: Any) -> OtlpExporter:
    settings = OtlpSettings(endpoint=receiver.url, interval=3600, timeout=2, temporality="delta",
                            resource=(("service.name", "t"),))
    otlp = OtlpExporter(settings, HealthTracker(["crm"]), **more)
    await otlp.start()
    return otlp


async def test_a_failed_delta_export_loses_nothing(receiver):
    otlp = await delta_exporter(receiver)
    try:
        for items, status in ((10.0, 200), (15.0, 400), (20.0, 200)):
            receiver.status = status
            otlp.update(one_source(items, ((1.0, items), (math.inf, items))))
            assert await otlp.export() == (status == 200)
    finally:
        receiver.status = 200
        await otlp.stop()
    sent = pushed_points(receiver.received, "fab_items_created")
    assert sent[0] == []  # the baseline
    assert [p.as_double for p in sent[1]] == [5.0]  # refused by the receiver
    assert [p.as_double for p in sent[2]] == [10.0]  # both intervals: the refused one is not lost
    assert sent[2][0].start_time_unix_nano == export_time(receiver.received[0])  # the last one taken


@pytest.mark.parametrize(("buckets", "total", "why"), [
    (((1.0, 19.0), (math.inf, 20.0)), 20.0, "one item moved from <=1 to +Inf: the first bucket went down"),
    (((1.0, 20.0), (math.inf, 20.0)), 5.0, "the sum went down"),
    (((2.0, 20.0), (math.inf, 20.0)), 20.0, "other bounds"),
])
async def test_a_histogram_going_down_is_a_reset_not_a_crash(receiver, buckets, total, why):
    otlp = await delta_exporter(receiver)
    try:
        otlp.update(one_source(20.0, ((1.0, 20.0), (math.inf, 20.0)), 20.0))
        assert await otlp.export()  # the baseline
        otlp.update(one_source(20.0, buckets, total))
        assert await otlp.export(), why
    finally:
        await otlp.stop()
    spreads = pushed_points(receiver.received, "fab_cycle_time_seconds")
    point = spreads[1][0]
    assert list(point.bucket_counts) == [int(n) for n in decumulate(Histogram(buckets, total, 20.0))], why
    assert (point.sum, point.count) == (total, 20), why
    assert list(point.explicit_bounds) == [buckets[0][0]], why
    assert point.start_time_unix_nano == export_time(receiver.received[0])


def test_deltas_keep_the_baseline_of_a_failed_export():
    deltas, labels = Deltas(), (("process", "p"),)
    deltas.begin()
    assert deltas.number("c", labels, 10.0, 1) is None
    deltas.commit()
    deltas.begin()
    assert deltas.number("c", labels, 15.0, 2) == (5.0, 1)  # not committed: the export failed
    deltas.begin()
    assert deltas.number("c", labels, 20.0, 3) == (10.0, 1)


def test_deltas_treat_any_histogram_bucket_or_sum_going_down_as_a_reset():
    deltas, labels, bounds = Deltas(), (("process", "p"),), (1.0,)
    deltas.begin()
    assert deltas.histogram("h", labels, (2.0, 2.0), 9.0, 4.0, bounds, 1) is None
    deltas.commit()
    deltas.begin()
    assert deltas.histogram("h", labels, (1.0, 3.0), 9.0, 4.0, bounds, 2) == ((1.0, 3.0), 9.0, 4.0, 1)
    deltas.commit()
    deltas.begin()
    assert deltas.histogram("h", labels, (1.0, 3.0), 8.0, 4.0, bounds, 3) == ((1.0, 3.0), 8.0, 4.0, 2)
    deltas.commit()
    deltas.begin()
    assert deltas.histogram("h", labels, (1.0, 3.0), 8.0, 4.0, (2.0,), 4) == ((1.0, 3.0), 8.0, 4.0, 3)
    deltas.commit()
    deltas.begin()
    assert deltas.histogram("h", labels, (2.0, 3.0), 9.0, 5.0, (2.0,), 5) == ((1.0, 0.0), 1.0, 1.0, 4)


S = 1_000_000_000


class Clock:
    """The exporter's clock (ns), set by the test: runs of fabwatch days apart."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


async def cumulative_run(receiver: Receiver, state: Path, clock: Clock,
                         samples: list[SourceSample]) -> None:
    """One run of fabwatch's OTLP exporter on the state file `state`: one export per sample, a minute apart."""
    settings = OtlpSettings(endpoint=receiver.url, interval=3600, timeout=2, temporality="cumulative",
                            resource=(("service.name", "t"),))
    otlp = OtlpExporter(settings, HealthTracker(["crm"]), clock=clock, state_path=state)
    await otlp.start()
    try:
        for sample in samples:
            clock.now += 60 * S
            otlp.update(sample)
            assert await otlp.export()
    finally:
        await otlp.stop()


def starts_and_times(receiver: Receiver, name: str) -> list[tuple[int, int]]:
    return [(p.start_time_unix_nano // S, p.time_unix_nano // S)
            for points in pushed_points(receiver.received, name) for p in points]


async def test_cumulative_start_times_survive_a_restart(receiver, tmp_path):
    state, buckets = tmp_path / "state.db", lambda n: ((1.0, n), (math.inf, n))
    await cumulative_run(receiver, state, Clock(1000 * S), [one_source(250_000.0, buckets(9.0)),
                                                            one_source(250_010.0, buckets(10.0))])
    await cumulative_run(receiver, state, Clock(5000 * S), [one_source(250_020.0, buckets(11.0))])
    # the values carry on from the saved state: so does the start, the first run's
    items = starts_and_times(receiver, "fab_items_created")
    assert items == [(1000, 1060), (1000, 1120), (1000, 1120), (1000, 5060), (1000, 5060)]  # stop pushes again
    assert {start for start, _ in starts_and_times(receiver, "fab_cycle_time_seconds")} == {1000}
    # a health counter lives in memory: it starts with the run
    errors = [p.start_time_unix_nano // S for points in pushed_points(receiver.received, "fab_export_errors")
              for p in points]
    assert set(errors[:3]) == {1000}
    assert set(errors[3:]) == {5000}


async def test_a_value_going_down_moves_the_start_time_on(receiver, tmp_path):
    state = tmp_path / "state.db"
    await cumulative_run(receiver, state, Clock(1000 * S), [
        one_source(100.0, ((1.0, 5.0), (math.inf, 10.0))),
        one_source(3.0, ((1.0, 4.0), (math.inf, 10.0))),  # counts started again; one bucket went down
    ])
    assert [s for s, _ in starts_and_times(receiver, "fab_items_created")] == [1000, 1060, 1060]
    assert [s for s, _ in starts_and_times(receiver, "fab_cycle_time_seconds")] == [1000, 1060, 1060]
    # reset while fabwatch was down (a changed mapping counts a process again): seen at the next start
    await cumulative_run(receiver, state, Clock(5000 * S), [one_source(1.0, ((1.0, 4.0), (math.inf, 10.0)))])
    assert [s for s, _ in starts_and_times(receiver, "fab_items_created")][3:] == [1120, 1120]
    assert [s for s, _ in starts_and_times(receiver, "fab_cycle_time_seconds")][3:] == [1060, 1060]


async def test_the_service_keeps_start_times_in_its_state_file(receiver, aiohttp_client, tmp_path):
    records = tmp_path / "records.db"
    make_records(records)
    app = build_app(load_inventory([write_inventory(tmp_path, records)]), environ=otel_env(receiver.url))
    client = await aiohttp_client(app)
    await wait_ready(client)
    assert await app[OTLP].export()
    await client.close()
    store = StateStore(tmp_path / "state.db")  # the inventory's `service.state_path`
    try:
        saved = {json.loads(key)[0] for key in store.otlp_series()}
    finally:
        store.close()
    assert {"fab_items_created", "fab_cycle_time_seconds"} <= saved
    assert "fab_export_errors" not in saved  # counted in memory: starts with each run


def test_start_times_are_saved_at_once_and_values_every_few_minutes():
    starts, labels = Starts(1000), (("process", "p"),)
    starts.begin()
    assert starts.number("c", labels, 5.0, 2000) == 1000
    assert [(key, start) for key, start, _, _ in starts.drain(2000)] == [('["c",[["process","p"]]]', 1000)]
    starts.begin()
    assert starts.number("c", labels, 6.0, 3000) == 1000
    assert starts.drain(3000) == []  # grown only: saved later
    starts.begin()
    assert starts.number("c", labels, 7.0, 1000 + LEVELS_EVERY) == 1000
    assert [json.loads(level) for _, _, level, _ in starts.drain(1000 + LEVELS_EVERY)] == [[7.0]]
    starts.begin()
    assert starts.number("c", labels, 2.0, 2000 + LEVELS_EVERY) == 1000 + LEVELS_EVERY  # a reset: saved at once
    assert [(start, json.loads(level)) for _, start, level, _ in starts.drain(2000 + LEVELS_EVERY)] == [
        (1000 + LEVELS_EVERY, [2.0])]


def test_with_replicas_only_the_sources_held_now_are_pushed():
    """As `/metrics`: a replica whose lease lapsed by its own clock (paused past it) pushes nothing of
    the source, even before its next lease round tells it so; the holder's series alone go on."""
    settings = otlp_settings(OtlpConfig(), {})
    assert settings is not None
    health = HealthTracker(["crm"])
    held = {"crm"}
    health.lease("a", held.__contains__)
    otlp = OtlpExporter(settings, health)
    otlp.update(one_source(5.0, ((1.0, 1.0),)))
    assert "fab_items_created" in {family.name for family in otlp.snapshot()}
    held.clear()  # the lease lapsed
    assert "fab_items_created" not in {family.name for family in otlp.snapshot()}
