"""Events across replicas, with real processes and a real PostgreSQL as the shared record store.

Two `fabwatch serve` on the same sources and processes, each with its own events port, write to
one record store in PostgreSQL. A bounded load loop posts 50,000 events alternately to the two
(the way a load balancer spreads a hub's deliveries; to the other one while one is down), each
replica is killed with SIGKILL once and restarted, and what was not acknowledged is sent again.
After each kill, every event acknowledged so far must be in the store; at the end every event is
stored exactly once and each ticket holds its newest version, whichever replica wrote what.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.servers import PostgresServer, free_port
from tests.sources.conftest import postgres_store
from tests.sources.helpers import EVENT_PATH, EVENT_T0, FabwatchProcess, events_inventory, stored_rows, ticket_event

EVENTS = 50_000
TICKETS = 5_000
VERSIONS = EVENTS // TICKETS
CONCURRENCY = 64
KILLS = ((15_000, 0), (32_000, 1))
"""(acknowledged events, replica): after that many 201s, that replica is killed and restarted."""
DEADLINE = 150.0
"""Bound of the whole load loop, retries included."""


class Balanced:
    """The client side: event n goes to replica n % 2, or to the other one while that one is down."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.bodies = [ticket_event(n, n % TICKETS, 1 + n // TICKETS) for n in range(EVENTS)]
        self.acked: set[int] = set()
        self.by_replica = [0, 0]
        self.up = [asyncio.Event(), asyncio.Event()]
        for event in self.up:
            event.set()

    async def send(self, session: aiohttp.ClientSession, number: int) -> None:
        """Post one event; remember it when acknowledged. Failures are left for the retry round."""
        replica = number % 2 if self.up[number % 2].is_set() else 1 - number % 2
        await self.up[replica].wait()
        try:
            async with session.post(self.urls[replica], data=self.bodies[number],
                                    headers={"Content-Type": "application/json"}) as response:
                await response.read()
                if response.status == 201:
                    self.acked.add(number)
                    self.by_replica[replica] += 1
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


def stored_ids(store: str) -> list[str]:
    """Every event id of the shared store (with repeats, if there were any)."""
    return [r["event_id"] for r in stored_rows(store, "events", "tmf_event")]


def start_replica(directory: Path, store: str) -> tuple[FabwatchProcess, str]:
    """Start a replica on fresh ports; return its process and events URL. A restart takes new
    ports too, as a replica restarted behind a load balancer may: on a machine shared with other
    test runs, another process may take a port between its pick and the bind (then: other ports)."""
    for attempt in range(3):
        port, events_port = free_port(), free_port()
        inventory = events_inventory(directory, events_port=events_port, store=store)
        process = FabwatchProcess(inventory, port, log=directory / "fabwatch.log")
        try:
            process.start()
        except RuntimeError:
            if attempt == 2 or "already in use" not in (directory / "fabwatch.log").read_text():
                raise
            (directory / "fabwatch.log").unlink()
            continue
        return process, f"http://127.0.0.1:{events_port}{EVENT_PATH}"
    raise AssertionError("unreachable")


async def kill_and_restart(load: Balanced, replicas: list[FabwatchProcess], store: str, kills: list[int],
                           directories: list[Path]) -> None:
    """SIGKILL each replica once, at its threshold; check the acknowledged are stored; restart it
    (behind the load balancer: its new address replaces the old one)."""
    for threshold, index in KILLS:
        while len(load.acked) < threshold:
            await asyncio.sleep(0.01)
        load.up[index].clear()
        replicas[index].kill()
        acknowledged = set(load.acked)  # taken after the kill: every 201 was sent before it
        missing = {f"E{n}" for n in acknowledged} - set(await asyncio.to_thread(stored_ids, store))
        assert not missing, f"{len(missing)} acknowledged events lost by SIGKILL, e.g. {sorted(missing)[:5]}"
        kills.append(len(acknowledged))
        replicas[index], load.urls[index] = await asyncio.to_thread(start_replica, directories[index], store)
        load.up[index].set()


@pytest.mark.slow
async def test_events_posted_to_two_replicas_killed_in_turn_are_stored_once(tmp_path: Path,
                                                                           postgres: PostgresServer) -> None:
    store = postgres_store(postgres)
    directories = [tmp_path / "a", tmp_path / "b"]
    replicas: list[FabwatchProcess] = []
    load = Balanced([])
    kills: list[int] = []
    started = time.monotonic()
    try:
        for directory in directories:
            directory.mkdir()
            process, url = start_replica(directory, store)
            replicas.append(process)
            load.urls.append(url)
        killer = asyncio.create_task(kill_and_restart(load, replicas, store, kills, directories))
        await asyncio.wait_for(load.run(list(range(EVENTS))), DEADLINE)
        await asyncio.wait_for(killer, 30)
        first_round = len(load.acked)
        while len(load.acked) < EVENTS and time.monotonic() - started < DEADLINE:  # the hub's retries
            await load.run(sorted(set(range(EVENTS)) - load.acked))
    finally:
        for replica in replicas:
            replica.stop()
    assert len(kills) == 2, kills
    assert first_round < EVENTS, "the kills lost no request in flight: nothing was retried"
    assert len(load.acked) == EVENTS, f"{EVENTS - len(load.acked)} events never acknowledged"
    assert min(load.by_replica) > EVENTS // 4, load.by_replica  # both replicas wrote a good share
    events = stored_ids(store)
    assert len(events) == len(set(events)) == EVENTS
    assert set(events) == {f"E{n}" for n in range(EVENTS)}
    newest = "inProgress" if VERSIONS % 2 == 0 else "resolved"
    rows = sorted((r["id"], r["updated_at"], r["status"], r["reopened"]) for r in stored_rows(store, "events",
                                                                                             "trouble_ticket"))
    assert rows == sorted((f"TT-{t}", EVENT_T0 + t + VERSIONS, newest, 1) for t in range(TICKETS))
