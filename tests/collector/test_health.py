"""Per-source health: up, last success, durations and errors by reason."""

from dataclasses import dataclass, field
from pathlib import Path

from collector.health import (
    COMMIT_BUCKETS,
    DELIVERY_RESULTS,
    DURATION_BUCKETS,
    REASONS,
    DurationHistogram,
    HealthTracker,
)


def families(tracker: HealthTracker) -> dict[str, object]:
    return {family.name: family for family in tracker.families()}


def test_a_source_is_down_until_its_first_sample():
    tracker = HealthTracker(["crm"], version="9.9")
    found = families(tracker)
    assert found["fab_source_up"].samples == [((("source", "crm"),), 0.0)]
    assert found["fab_source_last_success_timestamp_seconds"].samples == []
    assert {labels[1][1] for labels, _ in found["fab_source_errors"].samples} == set(REASONS)
    assert found["fab_build_info"].samples == [((("version", "9.9"),), 1.0)]
    assert tracker.not_sampled() == ["crm"]


def test_success_then_failure():
    tracker = HealthTracker(["crm"])
    tracker.record_success("crm", 0.003, 1000.0)
    tracker.record_failure("crm", "timeout", 61.0)
    found = families(tracker)
    assert found["fab_source_up"].samples[0][1] == 0.0
    assert found["fab_source_last_success_timestamp_seconds"].samples[0][1] == 1000.0
    errors = {labels[1][1]: value for labels, value in found["fab_source_errors"].samples}
    assert errors["timeout"] == 1.0
    assert errors["connection"] == 0.0
    (_, histogram), = found["fab_source_sample_duration_seconds"].histograms
    assert len(histogram.buckets) == len(DURATION_BUCKETS) + 1
    assert dict(histogram.buckets)[0.005] == 1.0  # 3 ms
    assert dict(histogram.buckets)[60.0] == 1.0  # 61 s only in +Inf
    assert histogram.buckets[-1] == (float("inf"), 2.0)
    assert histogram.sum == 61.003
    assert tracker.not_sampled() == []
    assert tracker.last_reason("crm") == "timeout"


@dataclass
class _Listener:
    received: dict[str, int]
    last_received: float
    commits: DurationHistogram = field(default_factory=lambda: DurationHistogram(COMMIT_BUCKETS))


def test_listener_counts_are_exported_live_and_only_when_there_are_listeners():
    tracker = HealthTracker(["crm", "tickets"])
    assert "fab_events_received" not in families(tracker)
    assert "fab_events_last_received_timestamp_seconds" not in families(tracker)
    listener = _Listener({"accepted": 0, "duplicate": 0}, 1_700_000_000.0)
    tracker.intake["tickets"] = listener
    listener.received["accepted"] += 3  # the listener's own state: it shows at the next render
    listener.last_received += 60
    found = families(tracker)["fab_events_received"]
    assert found.kind == "counter"
    assert found.samples == [((("source", "tickets"), ("result", "accepted")), 3.0),
                             ((("source", "tickets"), ("result", "duplicate")), 0.0)]
    last = families(tracker)["fab_events_last_received_timestamp_seconds"]
    assert (last.kind, last.samples) == ("gauge", [((("source", "tickets"),), 1_700_000_060.0)])
    listener.commits.observe(0.0007)
    listener.commits.observe(12.0)  # over the last bound: only in +Inf
    commits = families(tracker)["fab_events_commit_duration_seconds"]
    assert commits.kind == "histogram"
    (labels, histogram), = commits.histograms
    assert labels == (("source", "tickets"),)
    assert dict(histogram.buckets)[0.0005] == 0.0
    assert dict(histogram.buckets)[0.001] == 1.0
    assert dict(histogram.buckets)[10.0] == 1.0
    assert histogram.buckets[-1] == (float("inf"), 2.0)
    assert (histogram.sum, histogram.count) == (12.0007, 2.0)


def test_a_syncing_source_exports_every_reason_its_errors_can_have_from_the_start():
    """`increase()` cannot see the first error of a series that appears already above 0."""
    import collector.sources.http  # noqa: F401  (defines the HTTP sources' errors)
    from collector.errors import SourceError
    from collector.health import SYNC_REASONS

    def subclasses(cls: type) -> list[type]:
        return [cls, *(s for sub in cls.__subclasses__() for s in subclasses(sub))]

    reasons = {cls.reason for cls in subclasses(SourceError)} - {SourceError.reason}
    assert reasons <= set(REASONS) | set(SYNC_REASONS)
    tracker = HealthTracker(["crm", "tickets"], syncing=["tickets"])
    exported = {}
    for labels, _ in families(tracker)["fab_source_errors"].samples:
        exported.setdefault(dict(labels)["source"], set()).add(dict(labels)["reason"])
    assert exported == {"crm": set(REASONS), "tickets": {*REASONS, *SYNC_REASONS}}


def test_the_service_tasks_are_left_out_without_a_loop():
    assert "fab_service_tasks" not in families(HealthTracker(["crm"]))  # `fabwatch check`, a test


async def test_the_service_tasks_are_counted_in_the_loop():
    import asyncio

    tracker = HealthTracker(["crm"])
    idle = [asyncio.create_task(asyncio.sleep(60)) for _ in range(3)]
    try:
        (count,) = [v for _, v in families(tracker)["fab_service_tasks"].samples]
        assert count == len(asyncio.all_tasks()) >= 4  # the three, and this test's own
    finally:
        for task in idle:
            task.cancel()


def test_export_errors_family_only_with_a_push_exporter():
    health = HealthTracker(["crm"])
    assert "fab_export_errors" not in {f.name for f in health.families()}
    health.track_exporter("otlp")
    health.record_export_error("otlp")
    [family] = [f for f in health.families() if f.name == "fab_export_errors"]
    assert (family.kind, family.samples) == ("counter", [((("exporter", "otlp"),), 1.0)])


def test_every_health_metric_is_in_the_metrics_reference() -> None:
    reference = (Path(__file__).parents[2] / "docs" / "reference" / "metrics.md").read_text(encoding="utf-8")
    tracker = HealthTracker(["crm"])
    tracker.reload_succeeded(1.0)
    tracker.track_exporter("otlp")
    tracker.track_rollups(["crm"])
    tracker.record_rollup("crm", 2.0)
    tracker.track_reports(3.0)
    names = [f.name + ("_total" if f.kind == "counter" else "") for f in tracker.families()]
    assert "fab_report_deliveries_total" in names
    assert [name for name in names if f"`{name}`" not in reference] == []


def test_report_deliveries_count_by_result_and_failures_in_a_row() -> None:
    tracker = HealthTracker([])
    assert not any(f.name.startswith("fab_report") for f in tracker.families())
    tracker.track_reports(None)
    for result in ("auth", "auth", "tls"):
        tracker.record_delivery(result, 10.0)
    families = {f.name: f for f in tracker.families()}
    assert dict((dict(labels)["result"], v) for labels, v in families["fab_report_deliveries"].samples) == {
        **dict.fromkeys(DELIVERY_RESULTS, 0.0), "auth": 2.0, "tls": 1.0}
    assert families["fab_report_delivery_failed_attempts"].samples == [((), 3.0)]
    assert "fab_report_last_success_timestamp_seconds" not in families
    tracker.record_delivery("delivered", 20.0)
    families = {f.name: f for f in tracker.families()}
    assert families["fab_report_delivery_failed_attempts"].samples == [((), 0.0)]
    assert families["fab_report_last_success_timestamp_seconds"].samples == [((), 20.0)]
