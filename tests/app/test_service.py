"""The aiohttp service over a real SQLite source (and an unreachable PostgreSQL one)."""

import asyncio
import gzip
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from app.service import EXPORTER, HEALTH, SCHEDULER, build_app
from collector.inventory.load import load_inventory

UNREACHABLE = "postgresql+asyncpg://u:secret@127.0.0.1:1/x"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def make_records(path: Path, count: int = 30) -> None:
    """Create a trouble-ticket table shaped like the simulator's, with `count` tickets."""
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE trouble_ticket (id TEXT PRIMARY KEY, created_at REAL NOT NULL,
            completed_at REAL, due_at REAL, updated_at REAL NOT NULL, status TEXT NOT NULL,
            outcome TEXT, priority TEXT, channel TEXT, paused_seconds REAL NOT NULL DEFAULT 0,
            reopened INTEGER NOT NULL DEFAULT 0, handling_minutes REAL NOT NULL DEFAULT 0);
        CREATE INDEX trouble_ticket_status ON trouble_ticket (status);
    """)
    now = time.time()
    rows = []
    for i in range(count):
        created = now - 3600 * (i + 1)
        done = i % 3 != 0
        rows.append((f"t{i}", created, created + 1800 * (i % 4 + 1) if done else None,
                     created + 4 * 3600, created, "resolved" if done else "inProgress",
                     "resolved" if done else None, ("high", "low", "medium")[i % 3],
                     ("web", "phone")[i % 2], 0.0, int(i % 7 == 0), 10.0 + i))
    db.executemany("INSERT INTO trouble_ticket VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    db.commit()
    db.close()


def write_inventory(tmp_path: Path, records: Path, *, unreachable: bool = False) -> Path:
    """Write an inventory with one SQLite source (and optionally an unreachable one)."""
    sources = {"crm": {"kind": "sql", "dsn": f"sqlite+aiosqlite:///{records}",
                       "interval": "1h", "timeout": "10s"}}
    processes = {"problem": {
        "etom": "1.3.1.3", "name": "Support Customer Problem Management", "team": "assurance",
        "records": {"source": "crm", "table": "trouble_ticket",
                    "columns": {"due": "due_at", "paused": "paused_seconds", "outcome": "outcome",
                                "dimensions": ["priority", "channel"],
                                "measures": ["reopened", "handling_minutes"]},
                    "open_statuses": ["acknowledged", "inProgress"]},
        "kpis": {"inflow": {"kind": "volume"},
                 "backlog": {"kind": "backlog", "target": {"max": 500}},
                 "resolved_in_time": {"kind": "sla", "objective": 0.9},
                 "time_to_restore": {"kind": "duration", "buckets": ["1h", "4h", "1d"]},
                 "reopen_rate": {"kind": "ratio", "good": "reopened = 0",
                                 "target": {"max": 0.05}}},
        "costs": {"labour": {"driver": "handling_minutes", "rate_per_hour": 42}}}}
    if unreachable:
        sources["remote"] = {"kind": "sql", "dsn": UNREACHABLE, "interval": "1h", "timeout": "5s"}
        processes["order"] = {
            "etom": "1.3.1.2", "name": "Support Customer Order Management", "team": "fulfilment",
            "records": {"source": "remote", "table": "product_order", "open_statuses": ["open"]},
            "kpis": {"wip": {"kind": "backlog"}}}
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump({"service": {"state_path": str(tmp_path / "state.db")},
                                    "sources": sources, "processes": processes}))
    return path


@pytest.fixture
def records(tmp_path: Path) -> Path:
    path = tmp_path / "records.db"
    make_records(path)
    return path


async def wait_ready(client, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get("/readyz")
        if response.status == 200:
            return await response.json()
        assert time.monotonic() < deadline, await response.text()
        await asyncio.sleep(0.02)


async def test_readyz_waits_for_the_first_sample(aiohttp_client, tmp_path, records):
    inventory = load_inventory([write_inventory(tmp_path, records)])
    lock = sqlite3.connect(records, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # the first sample waits until the lock is released
    try:
        client = await aiohttp_client(build_app(inventory))
        response = await client.get("/readyz")
        assert response.status == 503
        assert await response.json() == {"status": "not ready", "not_sampled": ["crm"], "down": []}
        metrics = await client.get("/metrics")
        assert metrics.status == 200
        assert 'fab_source_up{source="crm"} 0.0' in await metrics.text()
    finally:
        lock.execute("COMMIT")
        lock.close()
    assert await wait_ready(client) == {"status": "ready", "sources": ["crm"], "down": []}
    assert (await client.get("/healthz")).status == 200


async def test_metrics_negotiation_and_cached_body(aiohttp_client, tmp_path, records):
    # no first-start backfill: its progress renders the exposition again between these scrapes
    app = build_app(load_inventory([write_inventory(tmp_path, records)]), backfill=False)
    client = await aiohttp_client(app)
    await wait_ready(client)
    exporter = app[EXPORTER]

    text = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert text.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "Content-Encoding" not in text.headers
    body = await text.read()
    assert b'fab_items_created_total{channel="web",priority="high",process="problem"}' in body
    assert b'fab_source_up{source="crm"} 1.0' in body
    for _ in range(5):  # a look during which nothing changed (a sample or a health change re-renders, rightly)
        await exporter.ready()
        generation = exporter.generation
        cached = exporter.render("text")
        renders = exporter.renders
        again = await (await client.get("/metrics", headers={"Accept-Encoding": "identity"})).read()
        if exporter.generation != generation:
            continue
        assert again == cached
        assert exporter.render("text") is cached  # the very same bytes object: no re-render
        assert exporter.renders == renders
        break
    else:
        pytest.fail("the exposition was invalidated during each of 5 scrapes of an idle service")

    om = await client.get("/metrics", headers={"Accept": "application/openmetrics-text",
                                               "Accept-Encoding": "identity"})
    assert om.headers["Content-Type"] == OPENMETRICS
    assert (await om.read()).endswith(b"# EOF\n")

    # aiohttp's client would decompress transparently: ask for the raw bytes.
    raw = await client.get("/metrics", headers={"Accept-Encoding": "gzip"},
                           auto_decompress=False)
    assert raw.headers["Content-Encoding"] == "gzip"
    assert raw.headers["Vary"] == "Accept, Accept-Encoding"
    assert gzip.decompress(await raw.read()) == body
    assert exporter.renders == renders + 1  # only OpenMetrics was new

    await app[SCHEDULER].run_once("crm")  # a new sample: the next scrape renders again
    fresh = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert fresh.status == 200
    assert exporter.renders == renders + 2


async def test_unreachable_database_is_down_while_metrics_keep_serving(aiohttp_client, tmp_path,
                                                                       records):
    inventory = load_inventory([write_inventory(tmp_path, records, unreachable=True)])
    app = build_app(inventory)
    client = await aiohttp_client(app)
    ready = await wait_ready(client)
    assert ready["down"] == ["remote"]
    response = await client.get("/metrics")
    assert response.status == 200
    text = await response.text()
    assert 'fab_source_up{source="remote"} 0.0' in text
    assert 'fab_source_errors_total{reason="connection",source="remote"} 1.0' in text
    assert 'fab_source_up{source="crm"} 1.0' in text
    assert "secret" not in text
    assert app[HEALTH].last_reason("remote") == "connection"
    index = await client.get("/")
    assert "remote: down (connection)" in await index.text()


@pytest.mark.integration
async def test_promtool_accepts_the_served_metrics(aiohttp_client, tmp_path, records, promtool):
    inventory = load_inventory([write_inventory(tmp_path, records, unreachable=True)])
    client = await aiohttp_client(build_app(inventory))
    await wait_ready(client)
    body = await (await client.get("/metrics")).read()
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True,
                            timeout=30, check=False)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert result.stdout.strip() == b"", result.stdout.decode()


async def test_a_replay_clock_leaves_the_health_timestamps_real(aiohttp_client, tmp_path, records):
    """`serve --clock-start` samples in the past; the last-success time must stay real, or
    `time() - fab_source_last_success_timestamp_seconds` (FabSourceStale) fires at once."""
    from app.service import HEALTH, shifted_clock

    inventory = load_inventory([write_inventory(tmp_path, records)])
    app = build_app(inventory, clock=shifted_clock(1_767_225_600.0))
    client = await aiohttp_client(app)
    await wait_ready(client)
    last = app[HEALTH].families()
    (success,) = [v for f in last if f.name == "fab_source_last_success_timestamp_seconds" for _, v in f.samples]
    assert abs(success - time.time()) < 60


def test_a_faster_clock_starts_where_it_is_told_and_runs_at_its_rate(monkeypatch):
    from app.service import shifted_clock

    wall = [1_000.0]
    monkeypatch.setattr(time, "time", lambda: wall[0])
    clock = shifted_clock(5_000.0, rate=60.0)
    assert clock() == 5_000.0
    wall[0] += 2.5
    assert clock() == 5_150.0  # 2.5 real seconds, 150 simulated
    same = shifted_clock(5_000.0)
    wall[0] += 1.0
    assert same() == 5_001.0


async def test_serve_keeps_the_daily_rollups_of_today(aiohttp_client, tmp_path, records):
    """The rollup job re-rolls today (and the late window) from the records while serving."""
    from datetime import UTC, datetime

    from collector.rollups import RollupStore, totals

    inventory = load_inventory([write_inventory(tmp_path, records)])
    await aiohttp_client(build_app(inventory))
    today = datetime.now(UTC).date()
    start = datetime(today.year, today.month, today.day, tzinfo=UTC).timestamp()
    with sqlite3.connect(records) as db:
        created = db.execute("SELECT COUNT(*) FROM trouble_ticket WHERE created_at >= ?", (start,)).fetchone()[0]
    store = RollupStore(tmp_path / "state.db")
    deadline = time.monotonic() + 20
    try:
        while not (days := store.read("problem", today, today, "UTC")):
            assert time.monotonic() < deadline, "no rollup of today after 20 s"
            await asyncio.sleep(0.05)
        assert totals(days[today]).get("created", 0.0) == created
    finally:
        store.close()


async def test_replicas_on_a_postgres_state_split_the_source_and_the_other_is_ready_without_it(
        aiohttp_client, tmp_path, records, postgres) -> None:
    """The replica holding the source samples and exports it; the other one exports only who holds
    it, and is ready: a source another replica samples is neither pending nor down there."""
    state = postgres.dsn(database=postgres.create_database(), driver="postgresql")
    inventory = load_inventory([write_inventory(tmp_path, records)])
    first = await aiohttp_client(build_app(inventory, state_path=state, replica="first"))
    deadline = time.monotonic() + 15
    body = ""
    while "fab_items_created_total{" not in body:  # its first round counts it, the second takes the source
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.1)
        body = await (await first.get("/metrics")).text()
    assert 'fab_source_leader{replica="first",source="crm"} 1.0' in body
    assert 'fab_items_created_total{' in body
    second = await aiohttp_client(build_app(inventory, state_path=state, replica="second"))
    assert await wait_ready(second) == {"status": "ready", "sources": ["crm"], "down": []}
    body = await (await second.get("/metrics")).text()
    assert 'fab_source_leader{replica="second",source="crm"} 0.0' in body
    assert 'source="crm"' not in body.replace('fab_source_leader{replica="second",source="crm"} 0.0', "")
    assert "fab_items_created_total{" not in body
    assert not (tmp_path / "state.db").exists()  # the state is in PostgreSQL
