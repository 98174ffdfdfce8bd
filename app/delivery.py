"""The scheduled monthly report while serving: at each run of `reports.schedule` (on the wall clock
of `service.timezone`), the previous calendar month's report is written into the reports directory
and mailed (`reports.delivery`).

A failed attempt is logged (which server, what failed; never a password), counted
(`fab_report_deliveries_total{result}`, `fab_report_delivery_failed_attempts`) and tried again after
`retry_after`, then twice as long each time, `retries` times at most and never past the next run.
The outcome of the last attempt at each month is kept in the state store: a month delivered is not
delivered again after a restart, a month whose delivery failed is tried again at start, and a run
missed while the service was down (less than `CATCH_UP` ago) is made up at start.

On a PostgreSQL state shared by replicas, every replica runs the schedule, and each month is claimed
in the shared store (`StateStore.claim_delivery`): the replica holding the claim writes and mails the
report, renewing its claim while it works; the others wait, and take the claim over when it lapses
(its holder died or hung before delivering) or stop when the month is delivered.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo

from collector.health import HealthTracker
from collector.inventory.cron import cron_trigger
from collector.inventory.models import Inventory
from collector.inventory.reports import ReportsConfig
from collector.logs import log_event
from collector.state import StateError, StateStore, open_state, store_errors
from collector.storeurl import postgres_url

if TYPE_CHECKING:  # the report code (jinja2, aiosmtplib) is imported when a report is due, not by every serve
    from reports.mail import DeliveryFailed
    from reports.summary import Month

_LOG = logging.getLogger("fabwatch.reports")
CATCH_UP = 86_400.0
"""A scheduled run missed while the service was down is made up at start when it is at most this old."""
_TICK = timedelta(microseconds=1)
POLL = 1.0
"""Real seconds between two looks at the clock while waiting (the service clock may run faster)."""
CLAIM = 60.0
"""Real seconds a replica's claim on a month's report lasts unless renewed (every third of it)."""
RESTART = 60.0
"""Seconds before the schedule starts again after the state store or a defect ended it."""
STOP_WAIT = 10.0
"""Seconds a stop waits at most for the schedule's task to end once cancelled."""


def reports_directory(config: ReportsConfig | None, state_path: str | Path) -> Path:
    """`reports.directory`, else `reports` beside the state file (in the working directory with a
    PostgreSQL state)."""
    if config is not None and config.directory is not None:
        return Path(config.directory)
    if postgres_url(str(state_path)) is not None:
        return Path("reports")
    return Path(state_path).parent / "reports"


def month_before(at: float, zone: str) -> Month:
    """The calendar month before the one `at` falls in, on the wall clock of `zone`."""
    from reports.summary import Month

    day = datetime.fromtimestamp(at, ZoneInfo(zone)).date()
    return Month(day.year, day.month).shift(-1)


class ReportSchedule:
    """Writes and mails the monthly report on the schedule of the running inventory's `reports` section."""

    def __init__(self, inventory: Inventory, state_path: str | Path | None, clock: Callable[[], float],
                 health: HealthTracker, on_change: Callable[[], None] = lambda: None,
                 replica: Callable[[], str | None] = lambda: None) -> None:
        """`on_change`: called after each attempt has been counted in `health` (the exposition is cached).
        `replica`: this replica's id once sampling started (the holder of its claims on months)."""
        self._inventory = inventory
        self._on_change = on_change
        self._replica = replica
        self._state_path: str | Path = state_path or inventory.service.state_path
        self.directory = reports_directory(inventory.reports, self._state_path)
        """Where the reports are written and served from (fixed at start: a reload keeps it)."""
        self._clock = clock
        self._health = health
        self._store: StateStore | None = None
        self._task: asyncio.Task[Any] | None = None

    def start(self) -> None:
        """Open the state store and start the schedule (inside the running loop), if there is one."""
        self._store = open_state(self._state_path)
        self._spawn()

    def replace_inventory(self, new: Inventory) -> None:
        """After a reload: follow the new `reports` section (schedule, formats, mail server)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._inventory = new
        if self._store is not None:
            self._spawn()

    def _spawn(self) -> None:
        config = self._inventory.reports
        if config is None:
            return
        assert self._store is not None
        self._health.track_reports(self._store.last_delivered())
        self._on_change()
        self._task = asyncio.create_task(self._run(config), name="reports")

    async def stop(self) -> None:
        """Stop the schedule and close the state store."""
        if self._task is not None:
            self._task.cancel()
            done, _ = await asyncio.wait({self._task}, timeout=STOP_WAIT)
            if not done:  # a stop of the service never hangs on the schedule
                log_event(_LOG, "report_schedule_stop_timeout", logging.WARNING, seconds=STOP_WAIT)
            self._task = None
        if self._store is not None:
            self._store.close()
            self._store = None

    async def _run(self, config: ReportsConfig) -> None:
        """The schedule, started again `RESTART` seconds after anything ends it (the state store
        unreachable or full, a defect): logged with its traceback and counted as a failed attempt
        (`internal`), so that `FabReportDeliveryFailing` fires if it keeps failing, never silent."""
        while True:
            try:
                await self._schedule(config)
            except Exception:
                log_event(_LOG, "report_schedule_failed", logging.ERROR, exc_info=True, state=self._where(),
                          retry_in=RESTART)
                self._health.record_delivery("internal", self._clock())
                self._on_change()
                await asyncio.sleep(RESTART)

    async def _schedule(self, config: ReportsConfig) -> None:
        zone = self._inventory.service.timezone
        trigger = cron_trigger(config.schedule, ZoneInfo(zone))

        def next_run(after: float) -> float:
            """The first run strictly after `after` (the trigger answers a run at `after` itself)."""
            fire = trigger.get_next_fire_time(None, datetime.fromtimestamp(after, UTC) + _TICK)
            return float("inf") if fire is None else float(fire.timestamp())

        now = self._clock()
        missed = next_run(now - CATCH_UP)
        month = month_before(missed if missed <= now else now, zone)
        if self._due_at_start(str(month), missed <= now):
            await self.deliver_with_retries(config, month, next_run(now))
        while True:
            at = next_run(self._clock())
            await self._wait_until(at)
            await self.deliver_with_retries(config, month_before(at, zone), next_run(at))

    def _due_at_start(self, month: str, missed: bool) -> bool:
        """A month whose last attempt failed, or whose run was missed while down, is due at start."""
        assert self._store is not None
        record = self._store.delivery(month)
        if record is not None:
            if not record[0]:
                log_event(_LOG, "report_retry_after_restart", month=month, last_error=record[2])
            return not record[0]
        return missed

    async def _wait_until(self, at: float) -> None:
        while self._clock() < at:
            await asyncio.sleep(min(POLL, max(at - self._clock(), 0.01)))

    async def deliver_with_retries(self, config: ReportsConfig, month: Month, until: float) -> bool:
        """Deliver `month`'s report unless it was; on failure retry with exponential backoff, at most
        `retries` times and not past `until` (the next run). Return whether it is delivered."""
        assert self._store is not None
        record = self._store.delivery(str(month))
        if record is not None and record[0]:
            log_event(_LOG, "report_already_delivered", month=str(month))
            return True
        holder = self._replica() or f"{uuid.uuid4()}"
        claim = await self._claim(str(month), holder, until)
        if claim != "mine":
            return claim == "delivered"
        renewing = asyncio.create_task(self._renew(str(month), holder), name="report-claim")
        try:
            return await self._attempts(config, month, until, holder)
        finally:
            renewing.cancel()
            await asyncio.gather(renewing, return_exceptions=True)

    async def _claim(self, month: str, holder: str, until: float) -> Literal["mine", "delivered", "later"]:
        """Wait until this replica holds the claim on `month` ("mine"), or another one delivered it
        ("delivered"), or the next run `until` is near ("later")."""
        assert self._store is not None
        waiting = False
        while True:
            try:
                if await asyncio.to_thread(self._store.claim_delivery, month, holder, CLAIM):
                    return "mine"
                record = await asyncio.to_thread(self._store.delivery, month)
            except StateError as exc:
                log_event(_LOG, "report_claim_failed", logging.WARNING, month=month, error=str(exc))
                record = None
            if record is not None and record[0]:
                log_event(_LOG, "report_delivered_elsewhere", month=month)
                return "delivered"
            if self._clock() + CLAIM / 3 >= until:  # back to the schedule before its next run
                return "later"
            if not waiting:
                log_event(_LOG, "report_claimed_elsewhere", month=month, replica=holder)
                waiting = True
            await asyncio.sleep(CLAIM / 3)

    async def _renew(self, month: str, holder: str) -> None:
        """Renew the claim on `month` every third of its length while this replica works on it."""
        assert self._store is not None
        while True:
            await asyncio.sleep(CLAIM / 3)
            try:
                if not await asyncio.to_thread(self._store.claim_delivery, month, holder, CLAIM):
                    log_event(_LOG, "report_claim_lost", logging.WARNING, month=month, replica=holder)
            except StateError as exc:
                log_event(_LOG, "report_claim_failed", logging.WARNING, month=month, error=str(exc))

    async def _attempts(self, config: ReportsConfig, month: Month, until: float, holder: str) -> bool:
        assert self._store is not None
        wait = config.retry_after
        for attempt in range(1, config.retries + 2):
            error = await self._attempt(config, month, attempt)
            if error is None:
                return True
            retry_at = self._clock() + wait
            if attempt > config.retries or retry_at >= until:
                log_event(_LOG, "report_delivery_given_up", logging.ERROR, month=str(month), attempts=attempt,
                          reason=error.reason, error=str(error),
                          next="the next scheduled run" if until != float("inf") else "a restart")
                await self._hold(str(month), holder, until)
                return False
            log_event(_LOG, "report_retry_scheduled", month=str(month), attempt=attempt + 1,
                      in_seconds=round(wait, 3))
            await self._wait_until(retry_at)
            wait *= 2
        return False

    async def _hold(self, month: str, holder: str, until: float) -> None:
        """Keep the claim on a month given up until the next run (real time: the claim's clock)."""
        assert self._store is not None
        try:
            await asyncio.to_thread(self._store.hold_delivery, month, holder,
                                    time.time() + max(0.0, until - self._clock()))
        except StateError as exc:
            log_event(_LOG, "report_claim_failed", logging.WARNING, month=month, error=str(exc))

    async def _attempt(self, config: ReportsConfig, month: Month, attempt: int) -> DeliveryFailed | None:
        """One attempt: summarize, write, mail; record the outcome. Return the failure, or None."""
        from app.report import month_report
        from reports.delivery import deliver
        from reports.mail import DeliveryFailed

        assert self._store is not None
        started = time.monotonic()
        try:
            try:
                report = await asyncio.to_thread(month_report, self._inventory, self._state_path, month)
            except store_errors() as exc:
                raise DeliveryFailed("internal", f"cannot read the daily rollups in {self._where()}: {exc}") \
                    from None
            delivered = await deliver(report, self.directory, config.formats, config.email)
        except DeliveryFailed as exc:
            return self._failed(config, month, attempt, exc)
        except Exception as exc:  # a defect (a template, a renderer): logged with its traceback, the schedule goes on
            log_event(_LOG, "report_delivery_crashed", logging.ERROR, exc_info=True, month=str(month))
            return self._failed(config, month, attempt, DeliveryFailed("internal", f"{type(exc).__name__}: {exc}"))
        now = self._clock()
        self._health.record_delivery("delivered", now)
        self._on_change()
        self._store.record_delivery(str(month), True, now, "delivered")
        for note in delivered.notes:
            log_event(_LOG, "report_delivery_note", logging.WARNING, month=str(month), note=note)
        log_event(_LOG, "report_delivered", month=str(month), attempt=attempt, files=len(delivered.paths),
                  directory=str(self.directory), mailed_to=",".join(delivered.mailed_to) or "-",
                  seconds=round(time.monotonic() - started, 3))
        return None

    def _where(self) -> str:
        return self._store.where if self._store is not None else str(self._state_path)

    def _failed(self, config: ReportsConfig, month: Month, attempt: int, exc: DeliveryFailed) -> DeliveryFailed:
        """Count, remember and log a failed attempt."""
        from reports.mail import server_of

        assert self._store is not None
        now = self._clock()
        self._health.record_delivery(exc.reason, now)
        self._on_change()
        self._store.record_delivery(str(month), False, now, f"{exc.reason}: {exc}")
        log_event(_LOG, "report_delivery_failed", logging.WARNING, month=str(month), attempt=attempt,
                  reason=exc.reason, server=server_of(config.email) if config.email else "-", error=str(exc))
        return exc

