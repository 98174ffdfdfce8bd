"""Leases on the sources in a real PostgreSQL: split between replicas, renewed, taken over when
the holder stops renewing, given back when it stops."""

import asyncio
import time

import pytest

from collector.leases import Leases, replica_id
from tests.servers import PostgresServer

SOURCES = {f"s{i}": 30.0 for i in range(5)}


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    return postgres.dsn(database=postgres.create_database(), driver="postgresql")


def test_replicas_split_the_sources_each_held_by_exactly_one(pg_url: str) -> None:
    a, b = Leases(pg_url, "a", SOURCES), Leases(pg_url, "b", SOURCES)
    a.round(take=False)  # both counted before either takes
    b.round(take=False)
    a._apply(a.round())
    b._apply(b.round())
    held_a, held_b = set(a.held()), set(b.held())
    assert not held_a & held_b
    assert held_a | held_b == set(SOURCES)
    assert sorted([len(held_a), len(held_b)]) == [2, 3]  # a fair share each (5 / 2, rounded up)
    a._close()
    b._close()


def test_a_lone_replica_takes_every_source_and_a_newcomer_gets_its_share(pg_url: str) -> None:
    a = Leases(pg_url, "a", SOURCES)
    a._apply(a.round())
    assert a.held() == sorted(SOURCES)
    b = Leases(pg_url, "b", SOURCES)
    b.round(take=False)
    a._apply(a.round())  # two live replicas now: a gives back what exceeds its share
    b._apply(b.round())
    assert len(a.held()) == 3
    assert len(b.held()) == 2
    assert not set(a.held()) & set(b.held())
    a._close()
    b._close()


def test_a_holder_that_stops_renewing_loses_its_sources_to_another_after_the_lease(pg_url: str) -> None:
    ttls = {"crm": 1.0}
    a, b = Leases(pg_url, "a", ttls), Leases(pg_url, "b", ttls)
    a._apply(a.round())
    assert a.holds("crm")
    b._apply(b.round())
    assert not b.holds("crm")
    time.sleep(1.1)  # a hangs past its lease: by its own clock it holds nothing any more
    assert not a.holds("crm")
    b._apply(b.round())
    assert b.holds("crm")
    assert b.term("crm") == 2
    lost: list[set[str]] = []
    a.on_lost = lost.append
    a._apply(a.round())  # a resumes: its renewal fails, it does not take it back
    assert lost == [{"crm"}]
    assert not a.holds("crm")
    a._close()
    b._close()


async def test_a_stopping_replica_gives_its_leases_back_at_once(pg_url: str) -> None:
    ttls = {"crm": 30.0}
    a, b = Leases(pg_url, replica_id(), ttls), Leases(pg_url, replica_id(), ttls)
    gained: asyncio.Queue[set[str]] = asyncio.Queue()
    a.on_gained = gained.put_nowait
    a.start()
    assert await asyncio.wait_for(gained.get(), 10) == {"crm"}
    await a.stop()
    tick = await asyncio.to_thread(b.round)
    assert tick.gained == {"crm"}  # not 30 s later
    await b.stop()


async def test_leases_lapse_by_the_replicas_own_clock_when_postgres_cannot_be_reached(pg_url: str) -> None:
    now = [0.0]
    leases = Leases(pg_url, "a", {"crm": 3.0}, clock=lambda: now[0])
    leases._apply(await asyncio.to_thread(leases.round))
    assert leases.holds("crm")
    lost: asyncio.Queue[set[str]] = asyncio.Queue()
    leases.on_lost = lost.put_nowait
    leases.url = "postgresql://fabwatch@127.0.0.1:1/unreachable"  # as after a partition
    leases._close()
    now[0] = 3.5  # past the lease: told at the next round that fails
    leases.start()
    assert await asyncio.wait_for(lost.get(), 15) == {"crm"}
    assert not leases.holds("crm")
    task = leases._task
    assert task is not None
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_a_starting_replica_forgets_the_replicas_gone_for_an_hour(pg_url: str, postgres: PostgresServer) -> None:
    database = pg_url.rsplit("/", 1)[1]
    a = Leases(pg_url, "a", SOURCES)
    a.round(take=False)  # creates the tables
    postgres.psql("INSERT INTO fabwatch_replica VALUES ('old', now() - interval '2 hours'), "
                  "('recent', now() - interval '5 minutes')", database=database)
    a.round(take=False)
    rows = postgres.psql("SELECT replica FROM fabwatch_replica ORDER BY replica", database=database).split()
    assert rows == ["a", "recent"]
    a._close()


def test_a_lease_lost_and_taken_again_in_one_round_is_told_as_lost_first(pg_url: str) -> None:
    """A holder paused past its lease, while another replica sampled the source and then died, takes
    it back in the round that finds its renewal refused: its last sample, older than the other
    replica's, must be dropped (told lost) before the source is sampled again, or its counters would
    be exported below the other's, which Prometheus reads as a reset and counts again."""
    ttls = {"crm": 30.0}
    a, b = Leases(pg_url, "a", ttls), Leases(pg_url, "b", ttls)
    told: list[tuple[str, set[str]]] = []
    a.on_lost = lambda names: told.append(("lost", set(names)))
    a.on_gained = lambda names: told.append(("gained", set(names)))
    a._apply(a.round())
    assert told == [("gained", {"crm"})]
    a._connection().execute("UPDATE source_lease SET expires = now() - interval '1 second'")  # a paused
    b._apply(b.round())
    assert b.term("crm") == 2
    b._give_back(["crm"])  # b dies (or stops)
    told.clear()
    a._apply(a.round())  # a resumes: its renewal is refused, and it takes the source back
    assert a.term("crm") == 3
    assert told == [("lost", {"crm"}), ("gained", {"crm"})]
    a._close()
    b._close()


async def test_a_stopping_replica_leaves_its_share_to_the_others_at_once(pg_url: str) -> None:
    """A planned stop (SIGTERM, a rolling restart) gives the leases back; the others must take them
    then, not only once the stopped replica's heartbeat expires and their fair share grows."""
    ttls = {f"s{i}": 30.0 for i in range(4)}
    a, b = Leases(pg_url, "a", ttls), Leases(pg_url, "b", ttls)
    a.round(take=False)
    b.round(take=False)
    a._apply(a.round())
    b._apply(b.round())
    assert len(a.held()) == len(b.held()) == 2
    await a.stop()
    b._apply(await asyncio.to_thread(b.round))
    assert b.held() == sorted(ttls)
    b._close()
