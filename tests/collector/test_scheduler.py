"""The sampling scheduler: first run at once, no overlap, coalescing, outcomes recorded."""

import asyncio
import itertools
import sqlite3
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from collector.engine import SourceSampler
from collector.errors import SourceTimeout
from collector.health import HealthTracker
from collector.inventory.cron import crontab_weekdays
from collector.inventory.models import Process, SqlSource
from collector.leases import Leases
from collector.samples import Family, SourceSample
from collector.scheduler import SamplingScheduler, misfire_grace, trigger_for
from collector.state import StateStore
from exporters.prometheus import PrometheusExporter
from tests.servers import PostgresServer


class ScriptedSampler:
    """Implements the sampler interface: sleeps `delay`, then returns a sample or raises."""

    def __init__(self, name: str, delay: float = 0.0, error: BaseException | None = None) -> None:
        self.name, self.delay, self.error = name, delay, error
        self.calls: list[float] = []
        self.active = 0
        self.max_active = 0
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True

    async def sample(self, now: float | None = None) -> SourceSample:
        self.calls.append(time.monotonic())
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.active -= 1
        if self.error is not None:
            raise self.error
        family = Family("fab_backlog_items", "gauge", "Open.", [((("process", "p"),), 1.0)])
        return SourceSample(self.name, time.time(), self.delay, (family,), ())


def source(interval: str = "60s", **extra) -> SqlSource:
    return SqlSource.model_validate({"kind": "sql", "dsn": "sqlite+aiosqlite://",
                                     "interval": interval, **extra})


def scheduler_for(sampler, src: SqlSource) -> tuple[SamplingScheduler, HealthTracker,
                                                    PrometheusExporter]:
    health = HealthTracker([sampler.name])
    exporter = PrometheusExporter(health)
    return SamplingScheduler({sampler.name: src}, {sampler.name: sampler}, health, exporter), \
        health, exporter


async def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_first_run_is_immediate_and_recorded():
    sampler = ScriptedSampler("crm")
    scheduler, health, exporter = scheduler_for(sampler, source("1h"))
    scheduler.start()
    try:
        await wait_for(lambda: health.is_up("crm"))
    finally:
        await scheduler.stop()
    assert len(sampler.calls) == 1
    assert exporter.latest("crm") is not None
    assert b'fab_source_up{source="crm"} 1.0' in exporter.render()


@pytest.mark.slow
async def test_slow_sampler_never_overlaps():
    sampler = ScriptedSampler("crm", delay=0.45)
    scheduler, _, _ = scheduler_for(sampler, source("100ms"))
    scheduler.start()
    try:
        await asyncio.sleep(1.2)
    finally:
        await scheduler.stop()
    assert sampler.max_active == 1
    assert 2 <= len(sampler.calls) <= 3
    assert scheduler.skipped["crm"] >= 3  # runs due while one was in flight were skipped


@pytest.mark.slow
async def test_runs_missed_while_the_loop_was_busy_coalesce_into_one():
    sampler = ScriptedSampler("crm")
    scheduler, _, _ = scheduler_for(sampler, source("100ms"))
    scheduler.start()
    try:
        await asyncio.sleep(0.25)
        time.sleep(1.0)  # block the loop: about ten run times pass
        unblocked = time.monotonic()
        await asyncio.sleep(0.05)
        after = [t for t in sampler.calls if t >= unblocked]
    finally:
        await scheduler.stop()
    assert 1 <= len(after) <= 2, f"{len(after)} runs right after the pause"


async def test_failures_are_recorded_by_reason_and_keep_the_last_sample():
    sampler = ScriptedSampler("crm")
    scheduler, health, exporter = scheduler_for(sampler, source("1h"))
    assert await scheduler.run_once("crm") is not None
    sampler.error = SourceTimeout("crm", "no answer within 1s")
    assert await scheduler.run_once("crm") is None
    sampler.error = ZeroDivisionError("bug")
    assert await scheduler.run_once("crm") is None
    assert not health.is_up("crm")
    assert health.errors("crm")["timeout"] == 1
    assert health.errors("crm")["internal"] == 1
    assert exporter.latest("crm") is not None
    text = exporter.render().decode()
    assert 'fab_source_errors_total{reason="internal",source="crm"} 1.0' in text
    assert 'fab_backlog_items{process="p"} 1.0' in text


async def test_internal_errors_are_logged_with_traceback(caplog):
    sampler = ScriptedSampler("crm", error=ZeroDivisionError("bug"))
    scheduler, _, _ = scheduler_for(sampler, source("1h"))
    with caplog.at_level("ERROR", logger="fabwatch.scheduler"):
        await scheduler.run_once("crm")
    record = caplog.records[-1]
    assert record.getMessage() == "sample_failed"
    assert record.exc_info is not None
    assert record.exc_info[0] is ZeroDivisionError


async def test_stop_cancels_a_sample_still_running_after_the_grace():
    sampler = ScriptedSampler("crm", delay=30)
    scheduler, health, _ = scheduler_for(sampler, source("1h"))
    scheduler.stop_grace = 0.3
    scheduler.start()
    await wait_for(lambda: sampler.active == 1)
    started = time.monotonic()
    await scheduler.stop()
    assert 0.3 <= time.monotonic() - started < 1.5
    assert sampler.active == 0
    assert sampler.aborted  # its statements told to stop: a thread-bound SQLite query ignores cancel
    assert health.not_sampled() == ["crm"]  # a cancelled sample is neither success nor failure


async def test_stop_lets_a_sample_in_flight_finish_and_keeps_it():
    """Cancelling a sample mid-query tears its connection down the hard way (and can hang the
    loop's shutdown with aiosqlite 0.22): a sample that ends within the grace is not cancelled."""
    sampler = ScriptedSampler("crm", delay=0.4)
    scheduler, health, exporter = scheduler_for(sampler, source("1h"))
    scheduler.start()
    await wait_for(lambda: sampler.active == 1)
    await scheduler.stop()
    assert sampler.active == 0
    assert health.is_up("crm")  # the sample completed and was recorded
    assert b"fab_backlog_items" in exporter.render("text")


def test_crontab_weekdays_follow_cron_numbering():
    assert crontab_weekdays("1-5") == "mon,tue,wed,thu,fri"
    assert crontab_weekdays("0") == "sun"
    assert crontab_weekdays("7") == "sun"
    assert crontab_weekdays("*/2") == "sun,tue,thu,sat"
    assert crontab_weekdays("mon-fri") == "mon-fri"
    assert crontab_weekdays("*") == "*"
    with pytest.raises(ValueError, match="weekday"):
        crontab_weekdays("5-1")


def test_triggers_and_grace():
    from datetime import datetime
    from zoneinfo import ZoneInfo

    tz = ZoneInfo("Europe/Berlin")
    cron = source(cron="30 6 * * 1-5")
    trigger = trigger_for(cron, tz)
    saturday = datetime(2026, 1, 3, 12, 0, tzinfo=tz)
    fire = trigger.get_next_fire_time(None, saturday)
    assert (fire.weekday(), fire.hour, fire.minute) == (0, 6, 30)  # Monday 06:30
    assert misfire_grace(cron) == 300
    assert misfire_grace(source("15s")) == 15
    assert misfire_grace(source("100ms")) == 1


BERLIN = ZoneInfo("Europe/Berlin")


def fire_times(cron: str, start: datetime, end: datetime) -> list[datetime]:
    """Fire times of a crontab in Berlin from `start` to `end`, asked as the scheduler asks (the
    previous fire time, and `now` just after it); bounded."""
    trigger, times, previous, now = trigger_for(source(cron=cron), BERLIN), [], None, start
    for _ in range(1000):
        fire = trigger.get_next_fire_time(previous, now)
        if fire is None or fire >= end:
            break
        times.append(fire)
        previous, now = fire, fire.astimezone(ZoneInfo("UTC")) + timedelta(seconds=1)  # not on the wall clock
    return times


@pytest.mark.parametrize(("cron", "missed"), [
    ("0 0 * * 1", datetime(2026, 3, 30, tzinfo=BERLIN)),  # the Monday after the change to summer time
    ("0 0 1 * *", datetime(2026, 4, 1, tzinfo=BERLIN)),
])
def test_a_crontab_does_not_skip_the_first_run_after_a_change_to_summer_time(cron: str, missed: datetime) -> None:
    """apscheduler 3's CronTrigger moves a day by 24 hours and skipped these."""
    assert missed in fire_times(cron, datetime(2026, 3, 1, tzinfo=BERLIN), datetime(2026, 5, 1, tzinfo=BERLIN))


def test_a_crontab_in_the_hour_autumn_repeats_runs_at_both_instants_and_moves_on() -> None:
    """apscheduler 3's CronTrigger answered 02:30 again and again in the repeated hour, before `now`:
    its scheduler loops forever on that, and the service hangs. A sample taken twice costs little;
    an hour without any (every 5 minutes) would raise FabSourceStale."""
    times = fire_times("30 2 * * *", datetime(2026, 10, 23, tzinfo=BERLIN), datetime(2026, 10, 28, tzinfo=BERLIN))
    assert [t.timestamp() for t in times] == sorted({t.timestamp() for t in times})
    assert [t.astimezone(ZoneInfo("UTC")).strftime("%d %H:%M") for t in times] == [
        "23 00:30", "24 00:30", "25 00:30", "25 01:30", "26 01:30", "27 01:30"]
    night = datetime(2026, 10, 25, 1, tzinfo=BERLIN), datetime(2026, 10, 25, 4, tzinfo=BERLIN)
    every5 = fire_times("*/5 * * * *", *night)
    gaps = {later.timestamp() - earlier.timestamp() for earlier, later in itertools.pairwise(every5)}
    assert (gaps, len(every5)) == ({300.0}, 48)  # four real hours between 01:00 and 04:00 that night


def test_a_wall_time_spring_skips_runs_at_the_change() -> None:
    times = fire_times("30 2 * * *", datetime(2026, 3, 28, tzinfo=BERLIN), datetime(2026, 3, 31, tzinfo=BERLIN))
    assert [t.astimezone(ZoneInfo("UTC")).strftime("%d %H:%M") for t in times] == ["28 01:30", "29 01:30",
                                                                                   "30 00:30"]


def make_records(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE trouble_ticket (id TEXT PRIMARY KEY, created_at REAL NOT NULL,
            completed_at REAL, updated_at REAL NOT NULL, status TEXT NOT NULL, priority TEXT);
    """)
    now = time.time()
    db.executemany("INSERT INTO trouble_ticket VALUES (?, ?, ?, ?, ?, ?)",
                   [(f"t{i}", now - 600 * i, None, now, "open", "high") for i in range(1, 5)])
    db.commit()
    db.close()


async def test_a_real_sampler_blocked_by_a_lock_is_not_run_twice(tmp_path):
    records = tmp_path / "records.db"
    make_records(records)
    src = source("100ms", dsn=f"sqlite+aiosqlite:///{records}", timeout="10s")
    process = Process.model_validate({
        "etom": "1.3.1.3", "name": "Problem", "team": "ops",
        "records": {"source": "crm", "table": "trouble_ticket", "open_statuses": ["open"],
                    "columns": {"dimensions": ["priority"]}},
        "kpis": {"backlog": {"kind": "backlog"}}})
    state = StateStore(tmp_path / "state.db")
    sampler = SourceSampler("crm", src, {"problem": process}, state)
    await sampler.open()
    health = HealthTracker(["crm"])
    exporter = PrometheusExporter(health)
    scheduler = SamplingScheduler({"crm": src}, {"crm": sampler}, health, exporter)
    lock = sqlite3.connect(records, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # readers wait (busy timeout) until it is released
    try:
        scheduler.start()
        await asyncio.sleep(0.8)
        assert scheduler.runs["crm"] == 1
        assert scheduler.skipped["crm"] >= 3
        assert health.not_sampled() == ["crm"]
        lock.execute("COMMIT")
        await wait_for(lambda: health.is_up("crm"))
        assert b'fab_backlog_items{priority="high",process="problem"} 4.0' in exporter.render()
    finally:
        lock.close()
        await scheduler.stop()
        await sampler.close()
        state.close()


class ResumingSampler(ScriptedSampler):
    """A scripted sampler that counts how often it read its saved state again."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.resumed = 0

    def resume(self) -> None:
        self.resumed += 1


async def test_with_leases_a_source_is_sampled_only_while_held_and_resumed_under_a_new_lease(
        postgres: PostgresServer) -> None:
    url = postgres.dsn(database=postgres.create_database(), driver="postgresql")
    mine, theirs = Leases(url, "a", {"crm": 30.0}), Leases(url, "b", {"crm": 30.0})
    sampler = ResumingSampler("crm")
    health = HealthTracker(["crm"])
    scheduler = SamplingScheduler({"crm": source()}, {"crm": sampler}, health, PrometheusExporter(health),
                                  leases=mine)
    assert await scheduler.run_once("crm") is None  # not held: not sampled
    assert sampler.calls == []
    mine._apply(await asyncio.to_thread(mine.round))
    assert await scheduler.run_once("crm") is not None
    assert await scheduler.run_once("crm") is not None
    assert sampler.resumed == 1  # once per lease, before its first sample
    # another replica holds it for a while, then this one takes it back: its state is read again
    await asyncio.to_thread(mine._give_back, ["crm"])
    theirs._apply(await asyncio.to_thread(theirs.round))
    mine._apply(await asyncio.to_thread(mine.round))
    assert await scheduler.run_once("crm") is None
    await asyncio.to_thread(theirs._give_back, ["crm"])
    mine._apply(await asyncio.to_thread(mine.round))
    assert await scheduler.run_once("crm") is not None
    assert sampler.resumed == 2
    assert len(sampler.calls) == 3
    for leases in (mine, theirs):
        leases._close()


async def test_a_sample_that_outlived_its_lease_is_not_kept_for_export_under_a_later_lease(
        postgres: PostgresServer) -> None:
    """A slow sample that ends after its lease went to another replica (and the lease came back)
    must not be exported: its counters are older than the other replica's, and Prometheus would
    read the drop as a reset and count the whole total again."""
    url = postgres.dsn(database=postgres.create_database(), driver="postgresql")
    mine, theirs = Leases(url, "a", {"crm": 30.0}), Leases(url, "b", {"crm": 30.0})
    sampler = ScriptedSampler("crm", delay=0.5)
    health = HealthTracker(["crm"])
    health.lease("a", mine.holds)
    exporter = PrometheusExporter(health)
    mine.on_lost = exporter.forget  # as the service wires it: a lost source's series go
    scheduler = SamplingScheduler({"crm": source()}, {"crm": sampler}, health, exporter, leases=mine)
    mine._apply(await asyncio.to_thread(mine.round))
    slow = asyncio.create_task(scheduler.run_once("crm"))
    await wait_for(lambda: sampler.active == 1)
    await asyncio.to_thread(mine._give_back, ["crm"])  # lost while the sample runs ...
    mine._apply(await asyncio.to_thread(mine.round))
    theirs._apply(await asyncio.to_thread(theirs.round))  # ... another replica samples it ...
    await asyncio.to_thread(theirs._give_back, ["crm"])
    mine._apply(await asyncio.to_thread(mine.round))  # ... and this one takes it back
    assert mine.holds("crm")
    assert await slow is None
    assert exporter.latest("crm") is None
    assert b"fab_backlog_items" not in exporter.render()
    for leases in (mine, theirs):
        leases._close()
