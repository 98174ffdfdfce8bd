"""Per-source health: up, last success, sample durations and errors by reason.

The tracker keeps plain numbers and renders them as `samples.Family` objects, like the KPI
engine does, so exporters treat health and KPIs the same way.
"""

import asyncio
import bisect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Protocol

from collector.samples import Family, Histogram, Labels

REASONS = ("timeout", "connection", "query", "permission", "state", "internal")
"""Every `fab_source_errors_total` reason of a SQL source, exported at 0 from the start so
`increase()` works."""
SYNC_REASONS = ("http_status", "rate_limited", "auth", "tls", "invalid_json", "oversize", "schema")
"""The reasons a syncing source (TMF, HTTP JSON, cost files) adds, also exported at 0 from the start."""

DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                    1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
"""Upper bounds (seconds) of `fab_source_sample_duration_seconds`: 1 ms .. 60 s."""
DELIVERY_RESULTS = ("delivered", "connection", "tls", "auth", "refused", "timeout", "write", "internal")
"""Every `result` of `fab_report_deliveries_total`: delivered, or why an attempt failed (the mail server
unreachable, its TLS, its login, a 4xx/5xx answer, too slow; the report directory), exported at 0."""
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of `fab_events_commit_duration_seconds`: 0.5 ms (an fsync on a fast
disk) .. 10 s (hubs time out long before)."""


class DurationHistogram:
    """Counts of durations by bucket, rendered as a cumulative Prometheus histogram."""

    def __init__(self, buckets: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        """Add one duration."""
        index = bisect.bisect_left(self.buckets, seconds)
        if index < len(self.buckets):
            self.counts[index] += 1
        self.count += 1
        self.sum += seconds

    def histogram(self) -> Histogram:
        """Return the cumulative histogram (`+Inf` last)."""
        cumulative, running = [], 0
        for bound, count in zip(self.buckets, self.counts, strict=True):
            running += count
            cumulative.append((bound, float(running)))
        cumulative.append((float("inf"), float(self.count)))
        return Histogram(tuple(cumulative), self.sum, float(self.count))


class Intake(Protocol):
    """What a TMF events listener shows of its intake (`collector.sources.listener.Listener`)."""

    @property
    def received(self) -> Mapping[str, int]:
        """Events received so far, by result."""

    @property
    def last_received(self) -> float:
        """Unix time of the last event stored or redelivered, or of the start when there is none."""

    @property
    def commits(self) -> DurationHistogram:
        """How long each group commit took (`COMMIT_BUCKETS`)."""


class Completions(Protocol):
    """What a TMF events listener shows of the resources events spoke of before they were whole."""

    @property
    def incomplete(self) -> int:
        """Resources waiting in the record store for the API or a later event to complete them."""

    @property
    def completed(self) -> Mapping[str, int]:
        """Incomplete resources completed (or given up), by how: api, event, failed."""


def _always(source: str) -> bool:
    return True


class Workers(Protocol):
    """The worker processes of `serve --workers N` that serve the events port."""

    @property
    def running(self) -> int:
        """Workers started and not exited."""

    @property
    def restarts(self) -> int:
        """Workers started again after one exited on its own (died) while the service ran."""


def fabwatch_version() -> str:
    """Return the installed fabwatch version, or `unknown` when run from a bare checkout."""
    try:
        return metadata.version("fabwatch")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class _SourceHealth:
    up: bool = False
    sampled: bool = False
    last_success: float | None = None
    last_reason: str | None = None
    durations: DurationHistogram = field(default_factory=DurationHistogram)
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))


class HealthTracker:
    """Health of every configured source; a source not sampled yet is down."""

    def __init__(self, sources: Iterable[str], version: str | None = None, syncing: Iterable[str] = ()) -> None:
        """`syncing`: the sources that are not SQL, whose errors have more reasons (`SYNC_REASONS`)."""
        self._sources = {name: _SourceHealth() for name in sources}
        for name in syncing:
            self._sources[name].errors.update(dict.fromkeys(SYNC_REASONS, 0))
        self.version = version or fabwatch_version()
        self.intake: dict[str, Intake] = {}
        """The listener of each `tmf_events` source: its live counts by result, its last event."""
        self.completions: dict[str, Completions] = {}
        """The listener of each `tmf_events` source: its incomplete resources."""
        self.workers: Workers | None = None
        """The worker processes serving the events port (`serve --workers N`), when there are some."""
        self.reload_ok = True
        """Whether the last reload of the inventory succeeded (`fab_config_last_reload_successful`)."""
        self.reload_at: float | None = None
        """When the inventory was last loaded successfully, at start or by a reload (Unix time)."""
        self._export_errors: dict[str, int] = {}
        self._rollup_errors: dict[str, int] = {}
        self._rollup_final: dict[str, float] = {}
        self._backfill_remaining: dict[str, float] = {}
        self._deliveries: dict[str, int] = {}
        self._failed_in_a_row = 0
        self._delivered_at: float | None = None
        self.replica: str | None = None
        """This replica's id, with replicas on a shared state (`fab_source_leader`); None alone."""
        self.owned: Callable[[str], bool] = _always
        """Whether this replica samples a source now (holds its lease): only then are its health
        series exported, so that a replica not holding a source does not show it as down."""

    def lease(self, replica: str, owned: Callable[[str], bool]) -> None:
        """Export only the health of the sources `owned` says this replica holds, and who holds what."""
        self.replica, self.owned = replica, owned

    def track(self, sources: Iterable[str], syncing: Iterable[str] = ()) -> None:
        """Track `sources` from now on (a reload): the health of the ones tracked already is kept,
        new ones start not sampled, and the ones no longer configured are forgotten, series and all."""
        syncs = set(syncing)
        tracked = {}
        for name in sources:
            tracked[name] = self._sources.get(name) or _SourceHealth()
            if name in syncs:
                for reason in SYNC_REASONS:
                    tracked[name].errors.setdefault(reason, 0)
        self._sources = tracked

    def reload_succeeded(self, at: float) -> None:
        """Record that the inventory was loaded (at start) or reloaded at `at` (Unix time)."""
        self.reload_ok, self.reload_at = True, at

    def reload_failed(self) -> None:
        """Record that a reload was refused: the last good inventory still runs."""
        self.reload_ok = False

    @property
    def sources(self) -> tuple[str, ...]:
        """Names of the tracked sources, in configuration order."""
        return tuple(self._sources)

    def record_success(self, source: str, seconds: float, at: float) -> None:
        """Record a successful sample that took `seconds` and finished at `at` (epoch)."""
        health = self._sources[source]
        health.up, health.sampled, health.last_success, health.last_reason = True, True, at, None
        health.durations.observe(seconds)

    def record_failure(self, source: str, reason: str, seconds: float) -> None:
        """Record a failed sample; `reason` is a `SourceError.reason` or `internal`."""
        health = self._sources[source]
        health.up, health.sampled, health.last_reason = False, True, reason
        health.errors[reason] = health.errors.get(reason, 0) + 1
        health.durations.observe(seconds)

    def is_up(self, source: str) -> bool:
        """Whether the last sample of `source` succeeded."""
        return self._sources[source].up

    def last_reason(self, source: str) -> str | None:
        """The reason of the last failure of `source`, None after a success or before any sample."""
        return self._sources[source].last_reason

    def errors(self, source: str) -> dict[str, int]:
        """Failures of `source` by reason so far."""
        return dict(self._sources[source].errors)

    def track_exporter(self, exporter: str) -> None:
        """Export `fab_export_errors_total{exporter}` for a push exporter (OTLP), at 0 from the start."""
        self._export_errors.setdefault(exporter, 0)

    def record_export_error(self, exporter: str) -> None:
        """Count one failed push of `exporter` (after its own retries)."""
        self._export_errors[exporter] = self._export_errors.get(exporter, 0) + 1

    def export_errors(self, exporter: str) -> int:
        """Failed pushes of `exporter` so far."""
        return self._export_errors.get(exporter, 0)

    def track_rollups(self, sources: Iterable[str]) -> None:
        """Export `fab_rollup_errors_total{source}` for the SQL sources whose days are rolled up, at 0 from
        the start; sources no longer rolled up are forgotten (a reload)."""
        names = list(sources)
        self._rollup_errors = {name: self._rollup_errors.get(name, 0) for name in names}
        self._rollup_final = {n: v for n, v in self._rollup_final.items() if n in self._rollup_errors}
        self._backfill_remaining = {n: v for n, v in self._backfill_remaining.items() if n in self._rollup_errors}

    def record_backfill(self, source: str, remaining: int) -> None:
        """The process-days the first start's backfill of `source` still has to roll up (0: done)."""
        self._backfill_remaining[source] = float(remaining)

    def backfill_remaining(self, source: str) -> float | None:
        """What `record_backfill` last recorded for `source` (None: no backfill)."""
        return self._backfill_remaining.get(source)

    def record_rollup(self, source: str, final_through: float | None) -> None:
        """Record a re-roll pass of `source` that succeeded; `final_through`: the end of its last final day."""
        if final_through is not None:
            self._rollup_final[source] = final_through

    def record_rollup_error(self, source: str) -> None:
        """Count one failed re-roll pass of `source`."""
        self._rollup_errors[source] = self._rollup_errors.get(source, 0) + 1

    def rollup_errors(self, source: str) -> int:
        """Failed re-roll passes of `source` so far."""
        return self._rollup_errors.get(source, 0)

    def track_reports(self, delivered_at: float | None) -> None:
        """Export the scheduled report's delivery metrics, every result at 0 from the start;
        `delivered_at`: when a report was last delivered (kept in the state store), if ever."""
        for result in DELIVERY_RESULTS:
            self._deliveries.setdefault(result, 0)
        if delivered_at is not None:
            self._delivered_at = max(delivered_at, self._delivered_at or 0.0)

    def record_delivery(self, result: str, at: float) -> None:
        """Count one attempt at delivering the scheduled report: `delivered` at `at`, else why it failed
        (failed attempts count in a row until one succeeds)."""
        self._deliveries[result] = self._deliveries.get(result, 0) + 1
        self._failed_in_a_row = 0 if result == "delivered" else self._failed_in_a_row + 1
        if result == "delivered":
            self._delivered_at = at

    def deliveries(self) -> dict[str, int]:
        """Attempts at delivering the scheduled report so far, by result."""
        return dict(self._deliveries)

    @property
    def deliveries_failed_in_a_row(self) -> int:
        """Attempts at delivering the scheduled report that failed since the last one that succeeded."""
        return self._failed_in_a_row

    def not_sampled(self) -> list[str]:
        """Sources not sampled yet (neither a success nor a failure so far)."""
        return [name for name, health in self._sources.items() if not health.sampled]

    def families(self) -> tuple[Family, ...]:
        """Render the health of every source as metric families."""
        up = Family("fab_source_up", "gauge",
                    "1 if the last sample of the source succeeded, else 0.")
        last = Family("fab_source_last_success_timestamp_seconds", "gauge",
                      "When the last successful sample of the source finished (Unix time).")
        durations = Family("fab_source_sample_duration_seconds", "histogram",
                           "Time taken by each sample of the source, successful or not.")
        errors = Family("fab_source_errors", "counter", "Failed samples of the source, by reason.")
        leader = Family("fab_source_leader", "gauge",
                        "1 if this replica samples the source now (holds its lease), else 0.")
        for name, health in self._sources.items():
            labels: Labels = (("source", name),)
            owned = self.owned(name)
            if self.replica is not None:
                leader.samples.append(((*labels, ("replica", self.replica)), 1.0 if owned else 0.0))
            if not owned:
                continue
            up.samples.append((labels, 1.0 if health.up else 0.0))
            if health.last_success is not None:
                last.samples.append((labels, health.last_success))
            durations.histograms.append((labels, health.durations.histogram()))
            for reason, count in sorted(health.errors.items()):
                errors.samples.append(((("source", name), ("reason", reason)), float(count)))
        info = Family("fab_build_info", "gauge",
                      "fabwatch build information; the value is always 1.",
                      [((("version", self.version),), 1.0)])
        leading = (leader,) if self.replica is not None else ()
        return (up, last, durations, errors, *leading, info, *_task_families(), *self._reload_families(),
                *self._intake_families(), *self._worker_families(), *self._completion_families(),
                *self._export_families(), *self._rollup_families(), *self._delivery_families())

    def _reload_families(self) -> tuple[Family, ...]:
        """`fab_config_last_reload_successful` and its timestamp, named as Prometheus names its own."""
        if self.reload_at is None:  # not serving (check, tests of the engine alone)
            return ()
        ok = Family("fab_config_last_reload_successful", "gauge",
                    "1 if the last reload of the inventory succeeded, 0 if it was refused (the last good "
                    "inventory still runs).", [((), 1.0 if self.reload_ok else 0.0)])
        at = Family("fab_config_last_reload_success_timestamp_seconds", "gauge",
                    "When the inventory was last loaded successfully, at start or by a reload (Unix time).",
                    [((), self.reload_at)])
        return (ok, at)

    def _export_families(self) -> tuple[Family, ...]:
        """`fab_export_errors_total{exporter}`, when a push exporter is configured."""
        if not self._export_errors:
            return ()
        return (Family("fab_export_errors", "counter",
                       "Pushes of an exporter (otlp) that failed after its retries: refused, timed out, or an "
                       "error status from the receiver.",
                       [((("exporter", name),), float(count)) for name, count in sorted(self._export_errors.items())]),)

    def _rollup_families(self) -> tuple[Family, ...]:
        """`fab_rollup_errors_total{source}`, `fab_rollup_last_day_timestamp_seconds{source}` and
        `fab_rollup_backfill_pending{source}`, when serving rolls up days."""
        if not self._rollup_errors:
            return ()
        # with replicas, of the sources this one holds (re-rolls) only
        errors = Family("fab_rollup_errors", "counter",
                        "Re-roll passes of the daily rollups of the source's processes that failed (source "
                        "error, or the state file).",
                        [((("source", name),), float(count)) for name, count in sorted(self._rollup_errors.items())
                         if self.owned(name)])
        final = Family("fab_rollup_last_day_timestamp_seconds", "gauge",
                       "End of the last day whose rollup is final for every process of the source, rolled after "
                       "its late window had passed (Unix time).",
                       [((("source", name),), at) for name, at in sorted(self._rollup_final.items())
                        if self.owned(name)])
        backfill = Family("fab_rollup_backfill_pending", "gauge",
                          "Days the first start's backfill of the daily rollups still has to roll up, a day of "
                          "each of the source's processes counting one (0: done).",
                          [((("source", name),), n) for name, n in sorted(self._backfill_remaining.items())
                           if self.owned(name)])
        return (errors, final, backfill)

    def _delivery_families(self) -> tuple[Family, ...]:
        """`fab_report_deliveries_total{result}`, `fab_report_delivery_failed_attempts` and the last delivery's
        time, when `serve` writes reports on a schedule."""
        if not self._deliveries:
            return ()
        attempts = Family("fab_report_deliveries", "counter",
                          "Attempts at delivering the scheduled monthly report (writing it, then mailing it), by "
                          "result: delivered, or why the attempt failed.",
                          [((("result", name),), float(count)) for name, count in sorted(self._deliveries.items())])
        failing = Family("fab_report_delivery_failed_attempts", "gauge",
                         "Attempts at delivering the scheduled report that failed in a row since the last one that "
                         "succeeded (0: the last attempt delivered it, or none failed since the start).",
                         [((), float(self._failed_in_a_row))])
        if self._delivered_at is None:
            return (attempts, failing)
        last = Family("fab_report_last_success_timestamp_seconds", "gauge",
                      "When the scheduled report was last delivered (Unix time).", [((), self._delivered_at)])
        return (attempts, failing, last)

    def _completion_families(self) -> tuple[Family, ...]:
        """`fab_records_incomplete` and `fab_records_completed_total{how}`, when there are listeners."""
        if not self.completions:
            return ()
        waiting = Family("fab_records_incomplete", "gauge",
                         "Resources TMF events of the source spoke of partially, not stored yet: they count in "
                         "no KPI until the API or a later event completes them.")
        done = Family("fab_records_completed", "counter",
                      "Incomplete resources of the source completed from the API, by a later event, or given up "
                      "(failed: the API does not know them).")
        for name, listener in self.completions.items():
            waiting.samples.append(((("source", name),), float(listener.incomplete)))
            done.samples.extend(((("source", name), ("how", how)), float(listener.completed.get(how, 0)))
                                for how in ("api", "event", "failed"))
        return (waiting, done)

    def _worker_families(self) -> tuple[Family, ...]:
        """`fab_events_workers` and `fab_events_worker_restarts_total`, with `serve --workers N`."""
        if self.workers is None:
            return ()
        running = Family("fab_events_workers", "gauge",
                         "Worker processes serving the events port (serve --workers N) that are running.",
                         [((), float(self.workers.running))])
        restarts = Family("fab_events_worker_restarts", "counter",
                          "Worker processes of the events port started again after one exited on its own.",
                          [((), float(self.workers.restarts))])
        return (running, restarts)

    def _intake_families(self) -> tuple[Family, ...]:
        """`fab_events_received_total` (every result from 0 on), the time of the last event and the
        group commits' durations, when there are listeners."""
        if not self.intake:
            return ()
        received = Family("fab_events_received", "counter",
                          "TMF events the listener of the source received, by result: accepted, duplicate, "
                          "or the code of the refusal.")
        last = Family("fab_events_last_received_timestamp_seconds", "gauge",
                      "Unix time of the last event the listener of the source stored or got again (a "
                      "redelivery); of the listener's start when its store holds none.")
        commits = Family("fab_events_commit_duration_seconds", "histogram",
                         "Time each group commit of the listener of the source took, from writing its batch to "
                         "the end of the commit (its fsync): what the batch's events wait for before their 201.")
        for name, listener in self.intake.items():
            received.samples.extend(((("source", name), ("result", result)), float(count))
                                    for result, count in listener.received.items())
            last.samples.append(((("source", name),), listener.last_received))
            commits.histograms.append(((("source", name),), listener.commits.histogram()))
        return (received, last, commits)


def _task_families() -> tuple[Family, ...]:
    """`fab_service_tasks`: the asyncio tasks alive in the loop rendering the exposition, if one runs."""
    try:
        tasks = len(asyncio.all_tasks(asyncio.get_running_loop()))
    except RuntimeError:  # rendered outside a loop (a test, `fabwatch check`)
        return ()
    return (Family("fab_service_tasks", "gauge",
                   "Asyncio tasks alive in the service when the exposition was last rendered; a number that "
                   "keeps growing at a steady load is a leak.", [((), float(tasks))]),)
