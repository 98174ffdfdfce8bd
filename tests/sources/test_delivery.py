"""Delivery guarantee of the TMF listener, with real processes.

`fabwatch serve` runs as a subprocess, receiving on its events port; a bounded load loop (aiohttp,
bounded concurrency and time) posts 50,000 events while fabwatch is killed with SIGKILL and
restarted twice. After each
kill, every event acknowledged so far (201) must be in the record store; events not acknowledged
are then sent again, as a TMF hub would, and at the end every event is stored exactly once and the
work items hold the newest version of each ticket.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.servers import free_port
from tests.sources.helpers import EVENT_PATH, EVENT_T0, FabwatchProcess, events_inventory, ticket_event

EVENTS = 50_000
TICKETS = 5_000
"""Each ticket gets EVENTS / TICKETS versions (alternating resolved / inProgress)."""
VERSIONS = EVENTS // TICKETS
CONCURRENCY = 64
KILL_AT = (15_000, 32_000)
"""Acknowledged events after which fabwatch is killed (SIGKILL) and restarted."""
DEADLINE = 150.0
"""Bound of the whole load loop, retries included (it takes about 40 s on 2 cores)."""


class Load:
    """The client side: which events got a 201, and whether fabwatch is up."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.bodies = [ticket_event(n, n % TICKETS, 1 + n // TICKETS) for n in range(EVENTS)]
        self.acked: set[int] = set()
        self.up = asyncio.Event()
        self.up.set()

    async def send(self, session: aiohttp.ClientSession, number: int) -> None:
        """Post one event; remember it when acknowledged. Failures are left for the retry round."""
        await self.up.wait()
        try:
            async with session.post(self.url, data=self.bodies[number],
                                    headers={"Content-Type": "application/json"}) as response:
                await response.read()
                if response.status == 201:
                    self.acked.add(number)
                else:
                    assert response.status >= 500, f"event {number}: {response.status} {await response.text()}"
        except (TimeoutError, aiohttp.ClientError):
            await asyncio.sleep(0.02)

    async def run(self, numbers: list[int]) -> None:
        """Send `numbers` through CONCURRENCY workers over keep-alive connections."""
        queue: Iterator[int] = iter(numbers)
        timeout = aiohttp.ClientTimeout(total=10)
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

            async def worker() -> None:
                for number in queue:
                    await self.send(session, number)

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


def stored(store: Path) -> tuple[list[str], list[tuple[str, float, str, int]]]:
    """Event ids (with repeats, if any) and ticket rows of the record store."""
    db = sqlite3.connect(store)
    try:
        events = [r[0] for r in db.execute("SELECT event_id FROM tmf_event")]
        rows = db.execute("SELECT id, updated_at, status, reopened FROM trouble_ticket").fetchall()
        return events, rows
    finally:
        db.close()


async def kill_and_restart(load: Load, fabwatch: FabwatchProcess, store: Path, kills: list[int]) -> None:
    """SIGKILL fabwatch after each KILL_AT acknowledgements; check the acknowledged are stored; restart."""
    for threshold in KILL_AT:
        while len(load.acked) < threshold:
            await asyncio.sleep(0.01)
        load.up.clear()
        fabwatch.kill()
        acknowledged = set(load.acked)  # taken after the kill: every 201 was sent before it
        events, _ = await asyncio.to_thread(stored, store)
        missing = {f"E{n}" for n in acknowledged} - set(events)
        assert not missing, f"{len(missing)} acknowledged events lost by SIGKILL, e.g. {sorted(missing)[:5]}"
        kills.append(len(acknowledged))
        await asyncio.to_thread(fabwatch.start)
        load.up.set()


@pytest.mark.integration
async def test_acknowledged_events_survive_sigkill_and_are_stored_once(tmp_path: Path) -> None:
    port, events_port = free_port(), free_port()
    inventory = events_inventory(tmp_path, durability="full", events_port=events_port)  # the events port
    store = tmp_path / "events.db"
    fabwatch = FabwatchProcess(inventory, port, log=tmp_path / "fabwatch.log")
    load = Load(f"http://127.0.0.1:{events_port}{EVENT_PATH}")
    kills: list[int] = []
    started = time.monotonic()
    fabwatch.start()
    try:
        killer = asyncio.create_task(kill_and_restart(load, fabwatch, store, kills))
        await asyncio.wait_for(load.run(list(range(EVENTS))), DEADLINE)
        await asyncio.wait_for(killer, 30)
        first_round = len(load.acked)
        while len(load.acked) < EVENTS and time.monotonic() - started < DEADLINE:  # the hub's retries
            await load.run(sorted(set(range(EVENTS)) - load.acked))
    finally:
        fabwatch.stop()
    assert len(kills) == 2, kills
    assert first_round < EVENTS, "the kills lost no request in flight: nothing was retried"
    assert len(load.acked) == EVENTS, f"{EVENTS - len(load.acked)} events never acknowledged"
    events, rows = stored(store)
    assert len(events) == len(set(events)) == EVENTS
    assert set(events) == {f"E{n}" for n in range(EVENTS)}
    newest = "inProgress" if VERSIONS % 2 == 0 else "resolved"
    assert sorted(rows) == [(f"TT-{t}", EVENT_T0 + t + VERSIONS, newest, 1) for t in sorted(range(TICKETS),
                                                                                           key=lambda t: f"TT-{t}")]
