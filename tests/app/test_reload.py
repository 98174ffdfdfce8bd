"""Reloading the inventory while serving: SIGHUP and POST /-/reload, over real SQLite sources."""

import asyncio
import base64
import copy
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml

from app.reload import live_problems, unchanged_sources
from app.service import LIVE, OTLP, build_app
from collector.inventory.load import load_inventory, load_web_config
from tests.app.test_cli import run_fabwatch, stop, wait_http
from tests.app.test_service import make_records, write_inventory
from tests.exporters.test_otlp import otel_env
from tests.servers import free_port, http_get, poll
from tests.sources.helpers import EVENT_PATH, events_inventory, ticket_event


def base_document(tmp_path: Path) -> dict[str, Any]:
    records = tmp_path / "records.db"
    make_records(records)
    return yaml.safe_load(write_inventory(tmp_path, records).read_text())


def with_second_source(document: dict[str, Any]) -> dict[str, Any]:
    """Add a source `desk` (the same records, read as inquiries) and its process."""
    changed = copy.deepcopy(document)
    changed["sources"]["desk"] = dict(changed["sources"]["crm"])
    inquiry = copy.deepcopy(changed["processes"]["problem"])
    inquiry.update({"etom": "1.3.1.9", "name": "Bill Inquiry Handling"})
    inquiry["records"]["source"] = "desk"
    inquiry["kpis"] = {"inflow": {"kind": "volume"}}
    inquiry.pop("costs")
    changed["processes"]["inquiry"] = inquiry
    return changed


def write(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


def counter(body: str, prefix: str) -> float:
    """The sum of the samples whose line starts with `prefix`."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(prefix))


def add_tickets(path: Path, count: int) -> None:
    """Add tickets created now (a sample counts them once they are `settle`, 2 s, old)."""
    db = sqlite3.connect(path, timeout=30)  # the service (its first-start backfill too) reads meanwhile
    created = time.time()
    db.executemany("INSERT INTO trouble_ticket (id, created_at, updated_at, status, priority, channel) "
                   "VALUES (?, ?, ?, 'inProgress', 'high', 'web')",
                   [(f"new{i}", created, created) for i in range(count)])
    db.commit()
    db.close()


def test_only_what_changed_is_reopened_and_the_service_section_waits_for_a_restart(tmp_path: Path) -> None:
    document = base_document(tmp_path)
    old = load_inventory([write(tmp_path / "a.yaml", document)])
    added = load_inventory([write(tmp_path / "b.yaml", with_second_source(document))])
    assert unchanged_sources(old, added) == {"crm"}
    assert live_problems(old, added) == []
    kpi = copy.deepcopy(document)
    kpi["processes"]["problem"]["kpis"]["open_now"] = {"kind": "backlog"}
    assert unchanged_sources(old, load_inventory([write(tmp_path / "c.yaml", kpi)])) == set()
    moved = copy.deepcopy(document)
    moved["service"]["listen"] = "127.0.0.1:1"
    problems = live_problems(old, load_inventory([write(tmp_path / "d.yaml", moved)]))
    assert len(problems) == 1
    assert "listen" in problems[0]


@pytest.mark.slow
async def test_a_reload_keeps_unchanged_samplers_counters_and_schedules(aiohttp_client: Any, tmp_path: Path) -> None:
    document = base_document(tmp_path)
    path = write(tmp_path / "inventory.yaml", document)
    # no first-start backfill: the test writes to the records (not in WAL mode) between samples
    app = build_app(load_inventory([path]), loader=lambda: load_inventory([path]), backfill=False)
    client = await aiohttp_client(app)
    live = app[LIVE]
    await poll_async_body(lambda: _text(client, "/metrics"), 'fab_source_up{source="crm"} 1.0')
    body = await _text(client, "/metrics")
    created = created_of(body, "problem")
    assert created > 0
    assert "fab_config_last_reload_successful 1.0" in body
    crm = live.samplers["crm"]

    write(path, with_second_source(document))
    answer = await client.post("/-/reload")
    assert answer.status == 200, await answer.text()
    assert live.samplers["crm"] is crm  # the same sampler: its pool and state live on
    await poll_async_body(lambda: _text(client, "/metrics"), 'fab_kpi_value{kpi="inflow",process="inquiry"}')
    assert live.scheduler is not None
    assert live.scheduler.runs["crm"] == 0  # kept its next run, an hour away: no extra sample
    assert created_of(await _text(client, "/metrics"), "problem") == created

    # off the event loop: the service's own reads of the records run on it, and a write waiting for
    # them on the loop's thread would wait for itself until SQLite's timeout
    await asyncio.to_thread(add_tickets, tmp_path / "records.db", 5)
    await asyncio.sleep(2.5)
    await live.scheduler.run_once("crm")
    body = await _text(client, "/metrics")
    assert created_of(body, "problem") == created + 5  # counted on from where it was: not reset, not twice
    assert created_of(body, "inquiry") > 0  # the new process counts on its own source


KNOB_SQL = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < (SELECT n FROM knob)) "
            "SELECT count(*) FROM c")
"""A value KPI counting to `knob.n`."""


def set_knob(records: Path, n: int) -> None:
    db = sqlite3.connect(records, timeout=30)
    db.execute("CREATE TABLE IF NOT EXISTS knob (n INTEGER)")
    db.execute("DELETE FROM knob")
    db.execute("INSERT INTO knob VALUES (?)", (n,))
    db.commit()
    db.close()


async def test_a_sample_cancelled_by_a_reload_leaves_its_kept_source_up(
        aiohttp_client: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A reload cancels a sample still running after the grace; its source, unchanged, is kept:
    its engine interrupted every later statement (down, reason=timeout, until a restart)."""
    document = base_document(tmp_path)
    document["sources"]["crm"]["timeout"] = "60s"
    document["processes"]["problem"]["kpis"]["slow"] = {"kind": "value", "sql": KNOB_SQL}
    set_knob(tmp_path / "records.db", 1_000_000_000)
    path = write(tmp_path / "inventory.yaml", document)
    app = build_app(load_inventory([path]), loader=lambda: load_inventory([path]), backfill=False)
    client = await aiohttp_client(app)
    live = app[LIVE]
    assert live.scheduler is not None
    live.scheduler.stop_grace = 0.3
    in_flight = asyncio.create_task(live.scheduler._job("crm"))
    await asyncio.sleep(0.5)  # into the slow query
    write(path, with_second_source(document))  # crm unchanged: its sampler kept
    crm = live.samplers["crm"]
    answer = await client.post("/-/reload")
    assert answer.status == 200, await answer.text()
    await in_flight
    # some 0.5 s: many periods of the interrupts (0.05 s)
    await asyncio.to_thread(set_knob, tmp_path / "records.db", 2_000_000)
    assert live.samplers["crm"] is crm
    whys = {getattr(r, "fabwatch_fields", {}).get("why")
            for r in caplog.records if r.getMessage() == "sample_cancelled"}
    assert whys == {"still running when the inventory was reloaded"}
    assert await live.scheduler.run_once("crm") is not None


async def test_a_process_moved_to_another_source_is_served_once(aiohttp_client: Any, tmp_path: Path) -> None:
    """Only removed sources were forgotten: the old source's last sample still carried the moved
    process, and /metrics and OTLP served its series twice (old values and the new source's)."""
    both = with_second_source(base_document(tmp_path))
    both["processes"]["inquiry"]["records"]["source"] = "crm"
    both["sources"]["crm"]["timeout"] = "60s"
    both["processes"]["problem"]["kpis"]["slow"] = {"kind": "value", "sql": KNOB_SQL}
    set_knob(tmp_path / "records.db", 1)
    desk = both["sources"].pop("desk")
    path = write(tmp_path / "inventory.yaml", both)
    environ = otel_env(f"http://127.0.0.1:{free_port()}/v1/metrics")  # never reached: the snapshot is read
    # no first-start backfill: the test writes to the records (not in WAL mode) between samples
    app = build_app(load_inventory([path]), loader=lambda: load_inventory([path]), environ=environ, backfill=False)
    client = await aiohttp_client(app)
    await poll_async_body(lambda: _text(client, "/metrics"), 'fab_kpi_value{kpi="inflow",process="inquiry"}')
    moved = copy.deepcopy(both)
    moved["sources"]["desk"] = desk
    moved["processes"]["inquiry"]["records"]["source"] = "desk"
    write(path, moved)
    await asyncio.to_thread(set_knob, tmp_path / "records.db", 1_000_000_000)  # crm's next sample (reopened) takes long
    answer = await client.post("/-/reload")
    assert answer.status == 200, await answer.text()
    await poll_async_body(lambda: _text(client, "/metrics"), 'fab_source_up{source="desk"} 1.0')
    assert app[LIVE].scheduler is not None
    app[LIVE].scheduler.stop_grace = 0.1  # the slow sample is cancelled at the end
    await poll_async_body(lambda: _text(client, "/metrics"), 'fab_kpi_value{kpi="inflow",process="inquiry"}')
    series = [line.rsplit(" ", 1)[0] for line in (await _text(client, "/metrics")).splitlines()
              if line and not line.startswith("#")]
    assert [s for s, n in Counter(series).items() if n > 1] == []
    pushed = [(f.name, labels) for f in app[OTLP].snapshot() for labels, _ in f.samples]
    assert [s for s, n in Counter(pushed).items() if n > 1] == []
    assert any(name == "fab_kpi_value" and ("process", "inquiry") in labels for name, labels in pushed)


async def test_a_bad_web_config_refuses_the_whole_reload(aiohttp_client: Any, tmp_path: Path) -> None:
    """A bcrypt cost bcrypt cannot hash at passed the check: the inventory was applied, then building
    the users' dummy hash failed: a 500, half the reload applied."""
    document = base_document(tmp_path)
    path = write(tmp_path / "inventory.yaml", document)
    web_file = tmp_path / "web.yml"
    hashed = bcrypt.hashpw(b"old", bcrypt.gensalt(4)).decode()
    web_file.write_text(yaml.safe_dump({"basic_auth_users": {"prom": hashed}}))
    app = build_app(load_inventory([path]), web_config=load_web_config(web_file),
                    loader=lambda: load_inventory([path]), web_loader=lambda: load_web_config(web_file))
    client = await aiohttp_client(app)
    auth = {"Authorization": "Basic " + base64.b64encode(b"prom:old").decode()}
    write(path, with_second_source(document))
    web_file.write_text(yaml.safe_dump({"basic_auth_users": {"prom": "$2y$99$" + "a" * 53}}))
    answer = await client.post("/-/reload", headers=auth)
    assert answer.status == 400, await answer.text()
    assert "basic_auth_users" in await answer.text()
    body = await (await client.get("/metrics", headers=auth)).text()
    assert "fab_config_last_reload_successful 0.0" in body
    assert "desk" not in app[LIVE].inventory.sources  # nothing of the reload applied
    assert "desk" not in app[LIVE].samplers


def created_of(body: str, process: str) -> float:
    """`fab_items_created_total` of `process`, all dimensions summed."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith("fab_items_created_total{") and f'process="{process}"' in line)


async def poll_async_body(read: Any, needle: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in await read():
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"{needle!r} never appeared in /metrics")


async def test_a_bad_inventory_is_refused_and_the_old_one_keeps_running(aiohttp_client: Any, tmp_path: Path) -> None:
    document = base_document(tmp_path)
    path = write(tmp_path / "inventory.yaml", document)
    app = build_app(load_inventory([path]), loader=lambda: load_inventory([path]))
    client = await aiohttp_client(app)
    live = app[LIVE]
    await poll_async_body(lambda: _text(client, "/metrics"), 'fab_source_up{source="crm"} 1.0')
    scheduler = live.scheduler
    crm = live.samplers["crm"]

    broken = copy.deepcopy(document)
    broken["processes"]["problem"]["kpis"]["resolved_in_time"]["objective"] = 90
    write(path, broken)
    answer = await client.post("/-/reload")
    assert answer.status == 400
    refused = await answer.json()
    assert any("objective" in problem for problem in refused["problems"])
    body = await _text(client, "/metrics")
    assert "fab_config_last_reload_successful 0.0" in body
    assert 'fab_kpi_value{kpi="backlog",process="problem"}' in body
    assert live.scheduler is scheduler
    assert live.samplers["crm"] is crm
    assert live.inventory.processes["problem"].kpis["resolved_in_time"].objective == 0.9  # type: ignore[union-attr]

    moved = copy.deepcopy(document)
    moved["service"]["state_path"] = str(tmp_path / "elsewhere.db")
    write(path, moved)
    answer = await client.post("/-/reload")
    assert answer.status == 400
    assert "state_path" in (await answer.json())["problems"][0]

    write(path, document)
    assert (await client.post("/-/reload")).status == 200
    assert "fab_config_last_reload_successful 1.0" in await _text(client, "/metrics")


async def _text(client: Any, path: str) -> str:
    return str(await (await client.get(path)).text())


@pytest.mark.slow
def test_serve_reloads_on_sighup_and_refuses_a_bad_file(tmp_path: Path) -> None:
    document = base_document(tmp_path)
    path = write(tmp_path / "inventory.yaml", document)
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    proc = run_fabwatch("serve", "-c", str(path), env={"FABWATCH_LISTEN": f"127.0.0.1:{port}"})
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc)
        before = http_get(url)[1].decode()
        created = created_of(before, "problem")
        stamp = counter(before, "fab_config_last_reload_success_timestamp_seconds ")

        write(path, with_second_source(document))
        proc.send_signal(signal.SIGHUP)
        body = poll(lambda: http_get(url)[1].decode(), lambda b: 'process="inquiry"' in b, 30, 0.2, "new KPI")
        assert created_of(body, "problem") == created  # not reset by the reload
        assert counter(body, "fab_config_last_reload_success_timestamp_seconds ") > stamp

        path.write_text("sources: [this is not an inventory\n")
        proc.send_signal(signal.SIGHUP)
        body = poll(lambda: http_get(url)[1].decode(), lambda b: "fab_config_last_reload_successful 0.0" in b,
                    30, 0.2, "refused reload")
        assert 'process="inquiry"' in body  # the last good inventory still runs
        assert 'fab_source_up{source="desk"} 1.0' in body
    finally:
        code, _, err = stop(proc)
    assert code == 0, err
    assert "event=inventory_reloaded" in err
    assert "event=reload_refused" in err


async def test_a_reload_reads_a_rotated_sender_token_file(aiohttp_client: Any, tmp_path: Path) -> None:
    """One process (no workers): after a reload, events must carry the rotated bearer token; an
    unreadable token file keeps the one read before."""
    token = tmp_path / "token"
    token.write_text("first\n")
    path = events_inventory(tmp_path)
    document = yaml.safe_load(path.read_text())
    document["sources"]["events"]["sender_auth"] = {"kind": "bearer", "token_file": str(token)}
    path.write_text(yaml.safe_dump(document))
    app = build_app(load_inventory([path]), loader=lambda: load_inventory([path]), backfill=False)
    client = await aiohttp_client(app)

    async def post(credential: str, number: int) -> int:
        reply = await client.post(EVENT_PATH,
                                  data=ticket_event(number, number, 1),
                                  headers={"Authorization": f"Bearer {credential}"})
        return reply.status

    assert [await post("first", 1), await post("second", 2)] == [201, 401]
    token.write_text("second\n")
    assert (await client.post("/-/reload")).status == 200
    assert [await post("first", 3), await post("second", 4)] == [401, 201]
    token.unlink()
    assert (await client.post("/-/reload")).status == 200
    assert await post("second", 5) == 201
