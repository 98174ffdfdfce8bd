"""The rollups kept current while serving, and replaced by a reload."""

import asyncio
import copy
import logging
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from app.report import month_report
from app.rolling import OWNED_POLL, Rolling
from app.service import HEALTH, build_app
from collector.health import HealthTracker
from collector.inventory.load import load_inventory
from collector.inventory.models import SqlSource
from collector.rollups import RollupStore, backfill_since, days_between, late_of, midnight, totals
from reports.summary import Month
from tests.app.test_service import make_records, write_inventory


def created_today(records: Path) -> int:
    today = datetime.now(UTC).date()
    start = datetime(today.year, today.month, today.day, tzinfo=UTC).timestamp()
    with sqlite3.connect(records) as db:
        return int(db.execute("SELECT COUNT(*) FROM trouble_ticket WHERE created_at >= ?", (start,)).fetchone()[0])


async def rolled_created(state: Path | str, want: int, timeout: float = 20.0, process: str = "problem") -> float:
    """Wait until today's rollup of `process` counts `want` created items; return what it counts."""
    today = datetime.now(UTC).date()
    store = RollupStore(state)
    deadline = time.monotonic() + timeout
    try:
        while True:
            days = store.read(process, today, today, "UTC")
            got = totals(days[today]).get("created", 0.0) if days else -1.0
            if got == want or time.monotonic() > deadline:
                return got
            await asyncio.sleep(0.05)
    finally:
        store.close()


async def test_a_reload_rolls_up_the_new_inventorys_records(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    make_records(first / "records.db")
    make_records(second / "records.db", count=10)
    # five or six more today, so that the two databases differ today whatever the time of day
    more = 5 if created_today(second / "records.db") + 5 != created_today(first / "records.db") else 6
    with sqlite3.connect(second / "records.db") as db:
        now = time.time()
        db.executemany("INSERT INTO trouble_ticket (id, created_at, updated_at, status) VALUES (?, ?, ?, 'inProgress')",
                       [(f"new{i}", now - 60, now - 60) for i in range(more)])
    old = load_inventory([write_inventory(first, first / "records.db")])
    new = load_inventory([write_inventory(second, second / "records.db")])
    state = tmp_path / "state.db"
    rolling = Rolling(old, state, time.time)
    rolling.start()
    try:
        assert await rolled_created(state, created_today(first / "records.db")) == created_today(first / "records.db")
        rolling.replace_inventory(new)
        want = created_today(second / "records.db")
        assert want != created_today(first / "records.db")
        assert await rolled_created(state, want) == want
    finally:
        await rolling.stop()
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("rollups-")]


def rollup_samples(health: HealthTracker, family: str) -> dict[str, float]:
    found = next((f for f in health.families() if f.name == family), None)
    return {} if found is None else {dict(labels)["source"]: value for labels, value in found.samples}


async def test_the_last_final_day_and_failed_passes_are_exported(tmp_path: Path) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    make_records(good / "records.db")
    sqlite3.connect(bad / "records.db").close()  # no table: every pass fails
    inventory = load_inventory([write_inventory(good, good / "records.db")])
    broken = load_inventory([write_inventory(bad, bad / "records.db")])
    source = inventory.sources["crm"]
    assert isinstance(source, SqlSource)
    now = time.time()
    today = datetime.fromtimestamp(now, UTC).date()
    state = tmp_path / "state.db"
    store = RollupStore(state)  # three days ago final: the serve resumes from the day after
    store.save("problem", {today - timedelta(days=3): {}}, "UTC", {}, now)
    store.close()
    ends = [midnight(today - timedelta(days=i), "UTC") for i in range(3)]
    want = max(end for end in ends if end + late_of(source) <= now)
    health = HealthTracker([])
    rolling = Rolling(inventory, state, lambda: now, health)
    rolling.start()
    try:
        assert rollup_samples(health, "fab_rollup_errors") == {"crm": 0.0}  # at 0 from the start
        deadline = time.monotonic() + 20
        while "crm" not in rollup_samples(health, "fab_rollup_last_day_timestamp_seconds"):
            assert time.monotonic() < deadline, "no final day after 20 s"
            await asyncio.sleep(0.05)
        assert rollup_samples(health, "fab_rollup_last_day_timestamp_seconds") == {"crm": want}
        rolling.replace_inventory(broken)
        while health.rollup_errors("crm") < 1:
            assert time.monotonic() < deadline, "no failed pass counted after 20 s"
            await asyncio.sleep(0.05)
        assert rollup_samples(health, "fab_rollup_errors") == {"crm": 1.0}
    finally:
        await rolling.stop()


# --- the first start's backfill ----------------------------------------------------------------


def anchor_now() -> float:
    """Noon UTC on the 15th of this month: last month and its late window are well in the past."""
    today = datetime.now(UTC)
    return datetime(today.year, today.month, 15, 12, tzinfo=UTC).timestamp()


def make_history(path: Path, now: float, days: int = 430) -> list[tuple[float, float | None]]:
    """A trouble-ticket table with a ticket every 5 hours over `days` before `now` (most resolved two
    hours after creation, every fourth still open); return (created, completed) of each."""
    make_records(path, count=0)
    rows, items = [], []
    for i in range(days * 24 // 5):
        created = now - 3600 * 5 * (i + 1) + 60
        completed = None if i % 4 == 0 else created + 7200
        items.append((created, completed))
        rows.append((f"h{i}", created, completed, created + 4 * 3600, created, "inProgress" if completed is None
                     else "resolved", None if completed is None else "resolved", "high", "web", 0.0, 0, 12.0))
    with sqlite3.connect(path) as db:
        db.executemany("INSERT INTO trouble_ticket VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    return items


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_a_fresh_state_backfills_the_past_months_so_last_month_is_final(aiohttp_client, tmp_path: Path,
                                                                              caplog) -> None:
    from app.service import build_app, shifted_clock
    from reports.summary import Month, read_rollups, read_states, summarize

    now = anchor_now()
    items = make_history(tmp_path / "records.db", now)
    inventory = load_inventory([write_inventory(tmp_path, tmp_path / "records.db")])
    state = tmp_path / "state.db"
    assert not state.exists()
    caplog.set_level(logging.INFO, logger="fabwatch.rollups")
    client = await aiohttp_client(build_app(inventory, clock=shifted_clock(now)))
    deadline = time.monotonic() + 60
    while True:
        text = await (await client.get("/metrics")).text()
        if metric(text, "fab_rollup_backfill_pending") == 0.0:
            break
        assert time.monotonic() < deadline, "the backfill did not finish in 60 s"
        await asyncio.sleep(0.05)
    today = datetime.fromtimestamp(now, UTC).date()
    month = Month(today.year, today.month).shift(-1)
    first = backfill_since(today)
    store = RollupStore(state)
    try:  # every day from the same month a year ago is rolled up, up to today (the re-roll's days)
        assert store.rolled("problem", first, today, "UTC") == {d.day for d in days_between(first, today, "UTC")}
        report = summarize(inventory, read_rollups(store, inventory, month), month,
                           read_states(store, inventory, month))
    finally:
        store.close()
    (problem,) = report.processes
    assert problem.complete
    assert problem.final, "a day of last month is provisional"
    start, end = midnight(month.first, "UTC"), midnight(month.shift(1).first, "UTC")
    volume = next(k for k in problem.kpis if k.kpi == "inflow")
    assert volume.value == sum(1 for created, _ in items if start <= created < end)
    logged = [r.fabwatch_fields for r in caplog.records if r.getMessage() == "rollup_backfill_month"]
    newest = Month(today.year, today.month)
    assert [m["month"] for m in logged] == [str(newest.shift(-i)) for i in range(13)]  # a line a month, newest first
    assert all(m["days"] > 0 for m in logged)
    assert logged[-1]["remaining"] == 0


async def test_an_interrupted_backfill_continues_where_it_stopped(tmp_path: Path, monkeypatch) -> None:
    import app.rolling
    from app.service import shifted_clock

    monkeypatch.setattr(app.rolling, "BACKFILL_PAUSE", 20.0)  # slow enough to be stopped half way
    now = anchor_now()
    make_history(tmp_path / "records.db", now)
    inventory = load_inventory([write_inventory(tmp_path, tmp_path / "records.db")])
    state = tmp_path / "state.db"
    health = HealthTracker([])
    rolling = Rolling(inventory, state, shifted_clock(now), health)
    rolling.start()
    try:
        deadline, total = time.monotonic() + 30, None
        while True:  # stop it once it has rolled up some of its days
            remaining = health.backfill_remaining("crm")
            total = total or remaining
            if total and remaining and remaining < total:
                break
            assert time.monotonic() < deadline, "no backfill step in 30 s"
            await asyncio.sleep(0.005)
    finally:
        await rolling.stop()
    store = RollupStore(state)
    plan = store.backfill_plan("crm")
    assert plan is not None
    assert plan.done_at is None
    before = store.states("problem", plan.first, plan.last, "UTC")
    store.close()
    remaining = health.backfill_remaining("crm")
    assert remaining
    assert 0 < len(before) < len(days_between(plan.first, plan.last, "UTC"))

    monkeypatch.setattr(app.rolling, "BACKFILL_PAUSE", 0.0)
    health = HealthTracker([])
    rolling = Rolling(inventory, state, shifted_clock(now + 60), health)
    rolling.start()
    try:
        deadline = time.monotonic() + 60
        while health.backfill_remaining("crm") != 0:
            assert time.monotonic() < deadline, "the continued backfill did not finish in 60 s"
            await asyncio.sleep(0.02)
    finally:
        await rolling.stop()
    store = RollupStore(state)
    try:
        after = store.states("problem", plan.first, plan.last, "UTC")
        done = store.backfill_plan("crm")
    finally:
        store.close()
    assert set(after) == {d.day for d in days_between(plan.first, plan.last, "UTC")}
    assert {day: after[day].rolled_at for day in before} == {day: s.rolled_at for day, s in before.items()}
    assert done is not None
    assert done.done_at is not None


def two_sources(tmp_path: Path) -> Path:
    """An inventory of two SQLite sources (crm, crm2), a process each: replicas split them."""
    make_records(tmp_path / "records.db")
    make_records(tmp_path / "records2.db", count=12)
    path = write_inventory(tmp_path, tmp_path / "records.db")
    data = yaml.safe_load(path.read_text())
    data["sources"]["crm2"] = {**data["sources"]["crm"], "dsn": f"sqlite+aiosqlite:///{tmp_path / 'records2.db'}"}
    data["processes"]["problem2"] = copy.deepcopy(data["processes"]["problem"])
    data["processes"]["problem2"]["etom"] = "1.3.1.4"
    data["processes"]["problem2"]["records"]["source"] = "crm2"
    path.write_text(yaml.safe_dump(data))
    return path


async def test_replicas_on_a_postgres_state_each_reroll_only_the_sources_they_hold(aiohttp_client, tmp_path: Path,
                                                                                   postgres, caplog) -> None:
    """Two replicas on one PostgreSQL state, both running: each source's days are rolled up once, by
    the replica holding its lease, with no failed pass; its rollup series only there."""
    caplog.set_level(logging.DEBUG, logger="fabwatch.rollups")
    state = postgres.dsn(database=postgres.create_database(), driver="postgresql")
    inventory = load_inventory([two_sources(tmp_path)])
    first = await aiohttp_client(build_app(inventory, state_path=state, replica="first"))
    second = await aiohttp_client(build_app(inventory, state_path=state, replica="second"))
    want = {"problem": created_today(tmp_path / "records.db"), "problem2": created_today(tmp_path / "records2.db")}
    assert await rolled_created(state, want["problem"]) == want["problem"]
    assert await rolled_created(state, want["problem2"], process="problem2") == want["problem2"]
    await asyncio.sleep(3 * OWNED_POLL)  # time for a replica not holding a source to (wrongly) re-roll it too
    done = [r.fabwatch_fields["source"] for r in caplog.records  # type: ignore[attr-defined]
            if r.getMessage() == "rollup_done"]
    assert sorted(done) == ["crm", "crm2"]  # each source once: reconcile (1 h) is the next pass
    assert not [r for r in caplog.records if r.getMessage() == "rollup_failed"]
    holders = {}
    for client in (first, second):
        health = client.app[HEALTH]
        assert health.rollup_errors("crm") == health.rollup_errors("crm2") == 0
        exported = rollup_samples(health, "fab_rollup_last_day_timestamp_seconds")
        errors = rollup_samples(health, "fab_rollup_errors")
        assert set(errors) == {name for name in ("crm", "crm2") if health.owned(name)}
        assert set(exported) <= set(errors)
        holders.update(dict.fromkeys(errors, health.replica))
    assert sorted(holders) == ["crm", "crm2"]  # each exported by its holder alone


async def test_a_serve_on_a_postgres_state_rolls_up_what_the_report_reads(aiohttp_client, tmp_path: Path,
                                                                           postgres) -> None:
    records = tmp_path / "records.db"
    make_records(records)
    state = postgres.dsn(database=postgres.create_database(), driver="postgresql")
    inventory = load_inventory([write_inventory(tmp_path, records)])
    client = await aiohttp_client(build_app(inventory, state_path=state))
    want = created_today(records)
    assert await rolled_created(state, want) == want
    today = datetime.now(UTC).date()
    report = month_report(inventory, state, Month(today.year, today.month))
    store = RollupStore(state)
    first = min(store.rolled("problem", today.replace(day=1), today, "UTC"))
    store.close()
    with sqlite3.connect(records) as db:  # the month's items in the days rolled up (the first start: the last few)
        created = db.execute("SELECT COUNT(*) FROM trouble_ticket WHERE created_at >= ?",
                             (midnight(first, "UTC"),)).fetchone()[0]
    [process] = report.processes
    assert (process.name, process.created, process.days_rolled) == ("problem", created, (today - first).days + 1)
    assert client.app[HEALTH].rollup_errors("crm") == 0
    assert not (tmp_path / "state.db").exists()  # rolled up in PostgreSQL
