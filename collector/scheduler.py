"""Sample every source on its own schedule: one apscheduler job per source, never overlapping.

Each run calls `sampler.sample()` and hands the result to the health tracker and the exporter;
scrapes only read what the last run left. Runs of one source never overlap (`max_instances=1`)
and runs missed while the loop was busy collapse into one (`coalesce=True`).
"""

import asyncio
import functools
import logging
import math
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable
from zoneinfo import ZoneInfo

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger

from collector.errors import SourceError, StateFailed
from collector.health import HealthTracker
from collector.inventory.cron import _UTC, cron_trigger
from collector.inventory.models import Source
from collector.leases import Leases
from collector.logs import log_event
from collector.samples import SampleSink, SourceSample
from collector.state import StateError

_LOG = logging.getLogger("fabwatch.scheduler")
CRON_MISFIRE_GRACE = 300
"""A cron run may start up to 5 minutes late (busy loop, suspended host) before it is skipped."""


class Sampler(Protocol):
    """What the scheduler needs from a source sampler (`collector.engine.SourceSampler`)."""

    async def sample(self, now: float | None = None) -> SourceSample:
        """Take one sample; raise `SourceError` when the source cannot be sampled."""
        ...

    def abort(self) -> None:
        """Stop the statements of the sample running now, which is about to be cancelled."""
        ...


@runtime_checkable
class Resumable(Protocol):
    """A sampler that can read its saved state again (after another replica sampled its source)."""

    def resume(self) -> None:
        """Read the saved state again, forgetting what was followed in memory."""
        ...


MAX_LEASE = 60.0
"""The longest lease of a crontab source: its holder may die long before its next run."""


def lease_seconds(source: Source, timezone: str = "UTC") -> float:
    """How long a replica's lease on a source lasts without renewal: its interval (so that another
    replica takes it over within two), at most `MAX_LEASE` for a crontab, at least one second."""
    return max(1.0, source.interval if not source.cron else min(MAX_LEASE, schedule_gap(source, timezone)))


def trigger_for(source: Source, timezone: ZoneInfo) -> BaseTrigger:
    """Build the trigger of a source: its crontab if given, else its interval; with its jitter."""
    if source.cron:
        return cron_trigger(source.cron, timezone, source.jitter)
    return IntervalTrigger(seconds=source.interval, jitter=source.jitter, timezone=timezone)


CRON_GAP_FIRES = 10_000
"""Fire times of a crontab read to find its longest gap, at most (a year's at most)."""


def schedule_gap(source: Source, timezone: str = "UTC") -> float:
    """The longest time between two scheduled samples of a source: its interval, or the longest gap
    between consecutive fire times of its crontab over a year (weekends and DST changes included),
    read from a fixed start so that what is generated from it is the same on every run."""
    if not source.cron:
        return source.interval
    return _cron_gap(source.cron, timezone)


@functools.lru_cache(maxsize=64)
def _cron_gap(cron: str, timezone: str) -> float:
    zone = ZoneInfo(timezone)
    trigger = cron_trigger(cron, zone)
    start = datetime(2026, 1, 1, tzinfo=zone)
    end = start + timedelta(days=366)
    previous = trigger.get_next_fire_time(None, start)
    longest = 0.0
    for _ in range(CRON_GAP_FIRES):
        if previous is None or previous > end:
            break
        following = trigger.get_next_fire_time(previous, previous.astimezone(_UTC) + timedelta(seconds=1))
        if following is None:
            break
        longest = max(longest, following.timestamp() - previous.timestamp())  # real time, DST included
        previous = following
    return longest


def misfire_grace(source: Source) -> int:
    """How late a run may start (whole seconds): one interval, after which the next run is due
    anyway, or 5 minutes for cron."""
    return CRON_MISFIRE_GRACE if source.cron else max(1, math.ceil(source.interval))


STOP_GRACE = 10.0
"""Seconds the samples in flight get to finish when the service stops, before they are cancelled.

A sample is bounded by its source's timeout, which the database itself enforces, so it usually
ends on its own. Cancelling one mid-query is the last resort: the driver's connection is then
torn down the hard way, and with aiosqlite 0.22 that teardown can wait forever (the event loop
never closes and the process does not exit)."""


class SamplingScheduler:
    """Owns the `AsyncIOScheduler` that samples every source; start and stop it inside the loop."""

    def __init__(self, sources: Mapping[str, Source], samplers: Mapping[str, Sampler],
                 health: HealthTracker, exporter: SampleSink, *,
                 timezone: str = "UTC",
                 stop_grace: float = STOP_GRACE, leases: Leases | None = None) -> None:
        """`leases`: with replicas on a shared state, a source is sampled only while this replica
        holds its lease, its saved state read again when the lease is a new one."""
        self._sources = dict(sources)
        self._leases = leases
        self._terms: dict[str, int] = {}
        self._samplers = dict(samplers)
        self._health = health
        self._exporter = exporter
        self._timezone = ZoneInfo(timezone)
        self._scheduler = AsyncIOScheduler(timezone=self._timezone)
        self._scheduler.add_listener(self._on_skip, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self.stop_grace = stop_grace
        self.runs: dict[str, int] = dict.fromkeys(self._sources, 0)
        self.skipped: dict[str, int] = dict.fromkeys(self._sources, 0)

    @property
    def running(self) -> bool:
        """Whether the scheduler has been started and not stopped."""
        return bool(self._scheduler.running) and not self._stopping

    def start(self, next_runs: Mapping[str, datetime] | None = None) -> None:
        """Add one job per source, each first run due now (or at its time in `next_runs`: a source
        kept across a reload keeps its schedule), and start (inside the running loop)."""
        now = datetime.now(self._timezone)
        for name, source in self._sources.items():
            self._scheduler.add_job(
                self._job, trigger_for(source, self._timezone), args=(name,), id=name,
                name=f"sample {name}", max_instances=1, coalesce=True,
                misfire_grace_time=misfire_grace(source), next_run_time=(next_runs or {}).get(name, now))
        self._scheduler.start()
        log_event(_LOG, "scheduler_started", sources=",".join(self._sources) or "-")

    def next_runs(self) -> dict[str, datetime]:
        """When each source is due next (for a reload to keep the schedules of the sources it keeps)."""
        return {str(job.id): job.next_run_time for job in self._scheduler.get_jobs()
                if job.next_run_time is not None}

    def wake(self, names: Iterable[str]) -> None:
        """Sample these sources now (their leases were just taken), then on their schedules."""
        now = datetime.now(self._timezone)
        for name in names:
            job = self._scheduler.get_job(name)
            if job is not None and not self._stopping:
                job.modify(next_run_time=now)

    async def stop(self, cause: str = "the service stopped") -> None:
        """Stop scheduling; let the samples in flight finish within `stop_grace` (their results
        are kept), cancel the ones still running after it, and wait until they have unwound.
        `cause` (why the scheduler stops: the service, a reload) is logged with a cancellation."""
        if self._stopping:
            return
        self._stopping = True
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        tasks = list(self._tasks)
        late: set[asyncio.Task[Any]] = set()
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self.stop_grace)
        for task in late:
            name = task.get_name().removeprefix("sample-")
            log_event(_LOG, "sample_cancelled", logging.WARNING, source=name, after_seconds=self.stop_grace,
                      why=f"still running when {cause}")
            self._samplers[name].abort()
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)  # let the scheduler's own shutdown callback run
        log_event(_LOG, "scheduler_stopped", finished=len(tasks) - len(late), cancelled=len(late))

    async def _job(self, name: str) -> None:
        if self._stopping:  # a run the scheduler had already queued when the service began to stop
            return
        task = asyncio.create_task(self.run_once(name), name=f"sample-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            await asyncio.shield(task)  # apscheduler's shutdown cancels this job: `stop` decides the sample's fate
        except asyncio.CancelledError:
            if not self._stopping:
                raise

    async def run_once(self, name: str) -> SourceSample | None:
        """Sample one source now; record the outcome; return the sample, None on failure (or when
        another replica holds its lease)."""
        if self._leases is not None and not self._leases.holds(name):
            return None
        self.runs[name] += 1
        started = time.perf_counter()
        try:
            await self._resume(name)
            sample = await self._samplers[name].sample()
        except SourceError as exc:
            self._failed(name, exc.reason, time.perf_counter() - started, str(exc))
            return None
        except Exception as exc:
            # A bug, not a source failure: keep serving, but with the traceback in the log.
            self._failed(name, "internal", time.perf_counter() - started, repr(exc), trace=True)
            return None
        seconds = time.perf_counter() - started
        if self._leases is not None and (self._leases.term(name) is None
                                         or self._leases.term(name) != self._terms.get(name)):
            # The lease lapsed during the sample (and may be held again, in a later term): another
            # replica may have sampled the source meanwhile, its counters ahead of these ones.
            log_event(_LOG, "sample_dropped", logging.WARNING, source=name, seconds=round(seconds, 4),
                      why="the lease lapsed while it ran")
            return None
        was_up = self._health.is_up(name)
        self._health.record_success(name, seconds, time.time())  # real time, even in a replay
        self._exporter.update(sample)
        level = logging.DEBUG if was_up else logging.INFO
        log_event(_LOG, "sample_done", level, source=name, seconds=round(seconds, 4),
                  families=len(sample.families))
        return sample

    async def _resume(self, name: str) -> None:
        """Under a new lease, read the source's state again: another replica may have moved it on."""
        if self._leases is None:
            return
        term = self._leases.term(name)
        sampler = self._samplers[name]
        if term is not None and term != self._terms.get(name):
            if isinstance(sampler, Resumable):
                try:
                    await asyncio.to_thread(sampler.resume)
                except StateError as exc:
                    raise StateFailed(name, f"cannot read the shared state: {exc}") from exc
            self._terms[name] = term

    def _failed(self, name: str, reason: str, seconds: float, error: str,
                trace: bool = False) -> None:
        self._health.record_failure(name, reason, seconds)
        self._exporter.invalidate()
        level = logging.ERROR if trace else logging.WARNING
        log_event(_LOG, "sample_failed", level, exc_info=trace, source=name, reason=reason,
                  seconds=round(seconds, 4), error=error)

    def _on_skip(self, event: JobEvent) -> None:
        name = str(event.job_id)
        if name in self.skipped:
            self.skipped[name] += 1
        skipped = event.code == EVENT_JOB_MAX_INSTANCES
        log_event(_LOG, "run_skipped_still_running" if skipped else "run_missed", logging.WARNING,
                  source=name)
