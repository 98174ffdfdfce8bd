"""The daily rollups kept current while serving: a task per SQL source re-rolls today and the days
rows may still change in, every `reconcile` period, so late rows and reopened items heal their day.
A reload replaces the tasks with those of the new inventory.

On the first start (none of a source's processes has a day rolled up in the state file), a second task
per source rolls up the past days in the background, as `fabwatch report --backfill` would: from the
first of the same month a year ago to the day before the re-roll's first, newest month first, a few
days of one process a step, pausing as long as each step took, so sampling keeps the database most
of the time. The plan is kept in the state file: a restart continues with the days still missing.

On a PostgreSQL state shared by replicas, a source's days are re-rolled only by the replica holding
its lease (`HealthTracker.owned`), so two replicas never re-roll the same day at once; a replica
taking a lease over re-rolls at its next look (every `OWNED_POLL` seconds) from what is final."""

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from app.reload import processes_of
from collector.errors import SourceError
from collector.health import HealthTracker
from collector.inventory.models import Inventory, SqlSource
from collector.logs import log_event
from collector.rollups import (
    BackfillPlan,
    RollupStore,
    SourceRoller,
    backfill_since,
    day_of,
    final_through,
    late_of,
    reroll,
    sql_sources,
)
from collector.state import store_errors

_LOG = logging.getLogger("fabwatch.rollups")
BACKFILL_STEP_DAYS = 7
"""Days of one process a step of the first start's backfill rolls up (two edge statements and two
snapshot statements): bounded work between two pauses."""
BACKFILL_PAUSE = 1.0
"""After each backfill step, a pause this many times as long as the step took: at most half of the
time on the database goes to the backfill."""
BACKFILL_WAIT_READY = 60.0
"""Seconds the backfill waits at most for every source's first sample before it starts."""
BACKFILL_RETRY = 60.0
"""Seconds before a failed backfill step is tried again (at most the source's `reconcile` period)."""
OWNED_POLL = 1.0
"""Seconds between two looks at whether this replica holds a source's lease, while it does not."""


class Rolling:
    """One re-roll task per SQL source of the running inventory, on the state file's rollup tables."""

    def __init__(self, inventory: Inventory, state_path: str | Path | None, clock: Callable[[], float],
                 health: HealthTracker | None = None, changed: Callable[[], None] | None = None,
                 backfill: bool = True) -> None:
        """`health`: where failed passes, the last final day of each source and the days the backfill has
        left are counted; `changed`: called when those change (the exposition is rendered again);
        `backfill=False`: no first-start backfill."""
        self._inventory = inventory
        self._health = health or HealthTracker([])
        self._changed = changed or (lambda: None)
        self._backfill = backfill
        self._state_path = state_path or inventory.service.state_path  # the service section waits for a restart
        self._clock = clock
        self._store: RollupStore | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self) -> None:
        """Open the rollup tables and start re-rolling (inside the running loop)."""
        self._store = RollupStore(self._state_path)
        self._spawn(self._inventory)

    def replace_inventory(self, new: Inventory) -> None:
        """After a reload: stop the old tasks (each closes its connections) and re-roll the new sources."""
        for task in self._tasks:
            task.cancel()
        self._inventory = new
        if self._store is not None:
            self._spawn(new)

    def _spawn(self, inventory: Inventory) -> None:
        assert self._store is not None
        rolled = {name: source for name, source in sql_sources(inventory.sources).items()
                  if processes_of(inventory, name)}
        self._health.track_rollups(rolled)
        zone = inventory.service.timezone
        for name, source in rolled.items():
            processes = processes_of(inventory, name)
            plan = self._backfill_plan(name, source, list(processes), zone) if self._backfill else None
            roller = SourceRoller(name, source, processes, self._store, zone)
            self._task(_reroll_every(roller, self._clock, self._health, self._changed), f"rollups-{name}")
            if plan is not None:
                backfiller = SourceRoller(name, source, processes, self._store, zone)
                progress = BackfillProgress(self._health, self._changed)
                self._task(_backfill(backfiller, plan, self._clock, progress), f"rollups-backfill-{name}")

    def _task(self, work: Any, name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _backfill_plan(self, name: str, source: SqlSource, processes: list[str], zone: str) -> BackfillPlan | None:
        """The backfill still to run for a source: the one planned before and not done, else a new one when
        none of its processes has a day rolled up (a fresh state file); None: nothing to backfill."""
        assert self._store is not None
        plan = self._store.backfill_plan(name)
        if plan is not None:
            return plan if plan.done_at is None and plan.timezone == zone else None
        if self._store.any_rolled(processes, zone):
            return None
        now = self._clock()
        last = day_of(now - late_of(source), zone) - timedelta(days=1)  # the re-roll rolls the days after it
        first = backfill_since(day_of(now, zone))
        if first > last:
            return None
        plan = self._store.plan_backfill(name, zone, first, last, now)
        log_event(_LOG, "rollup_backfill_planned", logging.INFO, source=name, first=first.isoformat(),
                  last=last.isoformat(), processes=len(processes))
        return plan

    async def stop(self) -> None:
        """Stop every task, wait until they have closed their connections, close the tables."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._store is not None:
            self._store.close()
            self._store = None


async def _reroll_every(roller: SourceRoller, clock: Callable[[], float], health: HealthTracker,
                        changed: Callable[[], None]) -> None:
    """Recompute the days not final yet (at start, a missed day too), then wait the source's `reconcile`
    period, until cancelled; count failed passes and the last final day in `health`."""
    errors = store_errors()
    try:
        while True:
            if not health.owned(roller.name):  # another replica holds the source: it re-rolls its days
                await asyncio.sleep(OWNED_POLL)
                continue
            started = time.monotonic()
            try:
                days = await reroll(roller, clock())
            except SourceError as exc:
                health.record_rollup_error(roller.name)
                log_event(_LOG, "rollup_failed", logging.WARNING, source=roller.name, reason=exc.reason,
                          error=str(exc))
            except errors as exc:  # the state: full, locked, read-only, unreachable
                health.record_rollup_error(roller.name)
                log_event(_LOG, "rollup_failed", logging.WARNING, source=roller.name, reason="state", error=str(exc))
            else:
                health.record_rollup(roller.name, final_through(roller.store, roller.processes, roller.zone,
                                                                late_of(roller.source)))
                log_event(_LOG, "rollup_done", logging.DEBUG, source=roller.name, days=len(days),
                          seconds=round(time.monotonic() - started, 3))
            changed()
            await asyncio.sleep(roller.source.reconcile)
    finally:
        await roller.close()


class BackfillProgress:
    """The days a backfill has left, in the health metrics; the exposition is rendered again at the start,
    at each month done and at the end, not at every step."""

    def __init__(self, health: HealthTracker, changed: Callable[[], None]) -> None:
        self.health = health
        self.changed = changed

    def left(self, source: str, remaining: int, show: bool = False) -> None:
        self.health.record_backfill(source, remaining)
        if show:
            self.changed()


async def _backfill(roller: SourceRoller, plan: BackfillPlan, clock: Callable[[], float],
                    progress: BackfillProgress) -> None:
    """Roll up the days of `plan` not rolled up yet, a step at a time, pausing after each as long as it
    took; log each month done; export what remains; mark the plan done at the end. A failed step is
    retried after `BACKFILL_RETRY` seconds; a cancelled backfill continues at the next start."""
    errors = store_errors()
    try:
        await _wait_ready(progress.health)
        while True:
            while not progress.health.owned(plan.source):  # another replica holds the source: it backfills
                await asyncio.sleep(OWNED_POLL)
            try:
                await _backfill_pass(roller, plan, clock, progress)
            except SourceError as exc:
                reason = exc.reason
            except errors:  # the state: full, locked, read-only, unreachable
                reason = "state"
            else:
                roller.store.backfill_done(plan.source, clock())
                progress.left(plan.source, 0, show=True)
                log_event(_LOG, "rollup_backfill_done", logging.INFO, source=plan.source)
                return
            progress.health.record_rollup_error(plan.source)
            progress.changed()
            log_event(_LOG, "rollup_backfill_failed", logging.WARNING, source=plan.source, reason=reason)
            await asyncio.sleep(min(BACKFILL_RETRY, roller.source.reconcile))
    finally:
        await roller.close()


async def _wait_ready(health: HealthTracker) -> None:
    """Let every source take its first sample first (the readiness), `BACKFILL_WAIT_READY` seconds at most."""
    deadline = time.monotonic() + BACKFILL_WAIT_READY
    while health.not_sampled() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


async def _backfill_pass(roller: SourceRoller, plan: BackfillPlan, clock: Callable[[], float],
                         progress: BackfillProgress) -> None:
    steps = plan.missing(roller.store, roller.processes, BACKFILL_STEP_DAYS)
    remaining = sum(len(days) for _, days in steps)
    progress.left(plan.source, remaining, show=True)
    month, done, month_started = None, 0, time.monotonic()
    for name, days in steps:
        step_month = days[0].day.strftime("%Y-%m")
        if month is not None and step_month != month:
            _log_month(plan.source, month, done, month_started, remaining)
            progress.changed()
            done, month_started = 0, time.monotonic()
        month = step_month
        started = time.monotonic()
        await roller.roll_process(name, days, clock)
        took = time.monotonic() - started
        done += len(days)
        remaining -= len(days)
        progress.left(plan.source, remaining)
        await asyncio.sleep(took * BACKFILL_PAUSE)
    if month is not None:
        _log_month(plan.source, month, done, month_started, remaining)


def _log_month(source: str, month: str, days: int, started: float, remaining: int) -> None:
    seconds = time.monotonic() - started
    log_event(_LOG, "rollup_backfill_month", logging.INFO, source=source, month=month, days=days,
              seconds=round(seconds, 1), days_per_second=round(days / seconds, 1) if seconds > 0 else None,
              remaining=remaining)
