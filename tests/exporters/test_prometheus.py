"""The Prometheus exporter: family merging, cached rendering, content negotiation, promtool."""

import gzip
import math
import re
import subprocess
from types import SimpleNamespace

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from collector.health import COMMIT_BUCKETS, DurationHistogram, HealthTracker
from collector.samples import Family, Histogram, SourceSample
from collector.sources.listener import RESULTS
from exporters.prometheus import (
    PER_REPLICA,
    PrometheusExporter,
    accepts_gzip,
    negotiate_format,
    render,
    to_metrics,
)


def make_sample(source: str, process: str, created: float = 3.0) -> SourceSample:
    created_family = Family("fab_items_created", "counter", "Work items created.", [
        ((("process", process), ("priority", "high")), created),
        ((("process", process), ("channel", "web"), ("priority", "low")), 1.0),
    ])
    backlog = Family("fab_backlog_items", "gauge", "Open work items.",
                     [((("process", process),), 7.0)])
    cycle = Family("fab_cycle_time_seconds", "histogram", "Created to completed.", histograms=[
        ((("process", process),), Histogram(((60.0, 1.0), (3600.0, 4.0), (float("inf"), 5.0)),
                                           9000.0, 5.0)),
    ])
    return SourceSample(source, 1_700_000_000.0, 0.01, (created_family, backlog, cycle), ())


def test_families_of_two_sources_merge_by_name():
    exporter = PrometheusExporter()
    exporter.update(make_sample("crm", "problem"))
    exporter.update(make_sample("billing", "invoice"))
    text = exporter.render("text").decode()
    assert text.count("# TYPE fab_items_created_total counter") == 1
    assert text.count("# TYPE fab_cycle_time_seconds histogram") == 1
    assert 'fab_items_created_total{priority="high",process="problem"} 3.0' in text
    assert 'fab_items_created_total{priority="high",process="invoice"} 3.0' in text
    assert 'fab_items_created_total{channel="web",priority="low",process="problem"} 1.0' in text
    assert 'fab_cycle_time_seconds_bucket{le="+Inf",process="invoice"} 5.0' in text
    assert 'fab_cycle_time_seconds_bucket{le="3600.0",process="problem"} 4.0' in text


def test_conflicting_kinds_keep_the_first_family():
    metrics = to_metrics([Family("fab_x", "gauge", "x", [((), 1.0)]),
                          Family("fab_x", "counter", "x", [((), 2.0)])])
    assert len(metrics) == 1
    assert metrics[0].type == "gauge"
    assert [s.value for s in metrics[0].samples] == [1.0]


def test_renders_once_per_change_and_serves_the_same_bytes():
    exporter = PrometheusExporter(HealthTracker(["crm"]))
    exporter.update(make_sample("crm", "problem"))
    first = exporter.render("text")
    assert exporter.render("text") is first
    assert exporter.respond(None, None).body is first
    assert exporter.renders == 1
    gz = exporter.render("text", compressed=True)
    assert exporter.render("text", compressed=True) is gz
    assert gzip.decompress(gz) == first
    assert exporter.renders == 1  # gzip reuses the rendered text
    om = exporter.render("openmetrics")
    assert exporter.render("openmetrics") is om
    assert exporter.renders == 2
    exporter.update(make_sample("crm", "problem", created=4.0))
    assert exporter.render("text") is not first
    assert b'fab_items_created_total{priority="high",process="problem"} 4.0' in exporter.render("text")
    assert exporter.renders == 3


def test_openmetrics_exposition_parses():
    exporter = PrometheusExporter(HealthTracker(["crm"], version="1.2.3"))
    exporter.update(make_sample("crm", "problem"))
    body = exporter.render("openmetrics").decode()
    assert body.endswith("# EOF\n")
    families = {f.name: f for f in text_string_to_metric_families(body)}
    assert families["fab_items_created"].type == "counter"
    assert families["fab_cycle_time_seconds"].type == "histogram"
    assert families["fab_build_info"].samples[0].labels == {"version": "1.2.3"}


@pytest.mark.parametrize(("accept", "expected"), [
    (None, "text"),
    ("text/plain;version=0.0.4", "text"),
    ("application/openmetrics-text", "openmetrics"),
    ("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3",
     "openmetrics"),
    ("application/openmetrics-text;q=0, text/plain", "text"),
    ("*/*", "text"),
])
def test_negotiate_format(accept, expected):
    assert negotiate_format(accept) == expected


@pytest.mark.parametrize(("header", "expected"), [
    (None, False), ("", False), ("gzip", True), ("deflate, gzip;q=1.0, br", True),
    ("identity", False), ("gzip;q=0", False),
])
def test_accepts_gzip(header, expected):
    assert accepts_gzip(header) is expected


def test_respond_picks_format_and_encoding():
    exporter = PrometheusExporter()
    exporter.update(make_sample("crm", "problem"))
    answer = exporter.respond("application/openmetrics-text; version=1.0.0", "gzip")
    assert answer.content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert answer.encoding == "gzip"
    assert gzip.decompress(answer.body).endswith(b"# EOF\n")
    plain = exporter.respond("text/plain", None)
    assert plain.content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert plain.encoding is None


@pytest.mark.integration
def test_promtool_accepts_the_exposition(promtool):
    health = HealthTracker(["crm", "down"])
    exporter = PrometheusExporter(health)
    exporter.update(make_sample("crm", "problem"))
    health.record_success("crm", 0.2, 1_700_000_000.0)
    health.record_failure("down", "connection", 0.01)
    commits = DurationHistogram(COMMIT_BUCKETS)
    commits.observe(0.003)
    health.intake["tickets"] = SimpleNamespace(received=dict.fromkeys(RESULTS, 0), last_received=1_700_000_000.0,
                                               commits=commits)
    exporter.invalidate()
    body = exporter.render("text")
    assert b'fab_events_received_total{result="accepted",source="tickets"} 0.0' in body
    assert b'fab_events_last_received_timestamp_seconds{source="tickets"} 1.7e+09' in body
    assert b'fab_events_commit_duration_seconds_bucket{le="0.0025",source="tickets"} 0.0' in body
    assert b'fab_events_commit_duration_seconds_bucket{le="0.005",source="tickets"} 1.0' in body
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert result.stdout.strip() == b"", result.stdout.decode()


def test_the_replica_relabeling_tells_per_replica_series_from_a_sources_series() -> None:
    """Every family a replica exports whether or not it holds a source is kept per replica by the
    scrape config; every family of a held source gets the shared instance."""
    health = HealthTracker(["crm"], syncing=["crm"])
    health.intake["crm"] = SimpleNamespace(received={"created": 1}, last_received=1.0,  # type: ignore[assignment]
                                           commits=DurationHistogram(COMMIT_BUCKETS))
    health.completions["crm"] = SimpleNamespace(incomplete=1, completed={"api": 1})  # type: ignore[assignment]
    health.track_exporter("otlp")
    health.track_rollups(["crm"])
    held = {"crm"}
    health.lease("r1", lambda source: source in held)
    kpi = Family("fab_items_created", "counter", "Items.", [((("process", "p"),), 1.0)])
    cycle = Family("fab_cycle_time_seconds", "histogram", "Cycle.", [],
                   [((("process", "p"),), Histogram(((1.0, 1.0), (math.inf, 1.0)), 1.0, 0.5))])

    def names(families: list[Family]) -> set[str]:
        return set(re.findall(r"^(fab_[a-z_]+)", render(families).decode(), re.MULTILINE))

    per_replica = re.compile("|".join(PER_REPLICA))
    held.clear()
    mine = names(list(health.families())) - {"fab_source_leader"}
    held.add("crm")
    sources = names([kpi, cycle, *health.families()]) - mine
    assert {"fab_events_received_total", "fab_build_info", "fab_records_incomplete"} <= mine
    assert {"fab_source_up", "fab_items_created_total", "fab_cycle_time_seconds_bucket"} <= sources
    assert all(per_replica.fullmatch(name) for name in mine), mine
    assert not any(per_replica.fullmatch(name) for name in sources), sources


def test_a_replica_exports_only_the_sources_it_holds_checked_at_each_scrape() -> None:
    """A lease that lapsed while nothing changed (the replica was paused past it) hides the source's
    series from the very next scrape, though the exposition was cached while it held the source."""
    held = {"crm", "billing"}
    health = HealthTracker(["crm", "billing"])
    health.lease("r1", lambda source: source in held)
    exporter = PrometheusExporter(health)
    for sample in (make_sample("crm", "order"), make_sample("billing", "invoice")):
        exporter.update(sample)
        health.record_success(sample.source, 0.1, 1.0)
    before = exporter.respond(None, None).body.decode()
    assert 'process="order"' in before
    assert 'fab_source_up{source="crm"} 1.0' in before
    assert 'fab_source_leader{replica="r1",source="crm"} 1.0' in before
    held.discard("crm")  # its lease lapsed: no new sample, no invalidation
    after = exporter.respond(None, None).body.decode()
    assert 'process="order"' not in after
    assert 'source="crm"' not in after.replace('fab_source_leader{replica="r1",source="crm"} 0.0', "")
    assert 'fab_source_leader{replica="r1",source="crm"} 0.0' in after
    assert 'process="invoice"' in after  # the source it still holds
