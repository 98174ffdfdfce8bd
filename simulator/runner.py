"""The simulated operator: backfill history, then advance the world step by step."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterator, Sequence
from heapq import heappop, heappush
from typing import Protocol

from simulator.arrivals import BatchStream, LocalClock, PoissonStream
from simulator.incidents import Incident, Knobs
from simulator.planners import PLANNERS
from simulator.plans import Plan, row_at
from simulator.profiles import DAY, PROFILES, InvoiceProfile
from simulator.store import Batch, Store, write_batch

log = logging.getLogger(__name__)


class SimulatorError(Exception):
    """The simulator cannot do what was asked (e.g. backfill a database that has history)."""


class _Stream(Protocol):
    def until(self, end: float) -> Iterator[float]: ...


_Streams = dict[str, tuple[random.Random, _Stream]]


class Simulator:
    """Writes deterministic work items of the eight eTOM 1.3.1 processes into a database."""

    def __init__(
        self,
        dsn: str,
        *,
        seed: int = 1,
        scale: float = 1.0,
        speed: float = 1.0,
        incidents: Sequence[Incident] = (),
        timezone: str = "Europe/Berlin",
    ) -> None:
        self._store = Store(dsn)
        self._seed = seed
        self._knobs = Knobs.of(speed, scale, incidents)
        self._clock = LocalClock(timezone)
        self._reset()

    def _reset(self) -> None:
        """Forget the in-memory world; the next call reloads it from the database."""
        self._plans: dict[str, Plan] = {}
        self._heap: list[tuple[float, str]] = []
        self._cursor: float | None = None
        self._streams: _Streams | None = None
        self._loaded = False

    async def create_schema(self) -> None:
        """Create the records tables, their indexes and the side tables when missing."""
        await self._store.create_schema()

    async def cursor(self) -> float | None:
        """Return the time the world has been advanced to (None for an empty database)."""
        await self._load()
        return self._cursor

    async def backfill(self, days: float, now: float, *, speed: float = 1.0) -> int:
        """Write `days` of history up to now (at `speed`, 1 by default); return the rows written."""
        await self._load()
        if self._cursor is not None:
            raise SimulatorError(f"the database already holds simulated data up to {self._cursor}")
        if not days > 0:
            raise ValueError(f"days must be positive, got {days!r}")
        started = time.perf_counter()
        knobs = Knobs.of(speed, self._knobs.scale, self._knobs.incidents)
        streams = self._open_streams(now - days * DAY, knobs)
        rows = kept = 0
        try:
            async with self._store.transaction() as conn:
                # A day at a time: bounded memory, and the garbage collector stays cheap.
                for end in _chunk_ends(now - days * DAY, now, DAY):
                    batch = Batch(cursor=now if end >= now else None)
                    for plan in self._arrivals(streams, knobs, end):
                        self._place(plan, now, batch, old_cursor=None, stored=False)
                    await write_batch(conn, batch)
                    rows, kept = rows + batch.rows(), kept + len(batch.plans_added)
        except BaseException:
            self._reset()
            raise
        self._cursor = now
        log.info(
            "simulate backfill days=%g rows=%d plans_kept=%d seconds=%.2f",
            days, rows, kept, time.perf_counter() - started,
        )  # fmt: skip
        return rows

    async def step(self, now: float) -> int:
        """Advance the world to now: new arrivals, due status changes; return the rows written."""
        await self._load()
        old = self._cursor
        if old is not None and now <= old:
            return 0
        batch = Batch(cursor=now)
        if old is not None:
            if self._streams is None:
                self._streams = self._open_streams(old, self._knobs)
            while self._heap and self._heap[0][0] <= now:
                plan = self._plans[heappop(self._heap)[1]]
                self._place(plan, now, batch, old_cursor=old, stored=True)
            for plan in self._arrivals(self._streams, self._knobs, now):
                self._place(plan, now, batch, old_cursor=old, stored=False)
        await self._write(batch, now)
        log.debug("simulate step now=%.3f rows=%d open_plans=%d", now, batch.rows(), len(self._plans))
        return batch.rows()

    async def run(self, stop: asyncio.Event, tick: float = 1.0) -> None:
        """Call step(time.time()) every tick until stop is set."""
        log.info("simulate live speed=%g scale=%g tick=%g", self._knobs.speed, self._knobs.scale, tick)
        total = 0
        while not stop.is_set():
            total += await self.step(time.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), tick)
        log.info("simulate live stopped rows=%d", total)

    async def close(self) -> None:
        """Release the database engine."""
        await self._store.close()

    async def _load(self) -> None:
        """Create the schema and load the cursor and the kept plans once."""
        if self._loaded:
            return
        await self._store.create_schema()
        cursor, stored = await self._store.load()
        for ident, text in stored:
            plan = Plan.from_json(ident, text)
            nxt = plan.next_event(cursor if cursor is not None else float("-inf"))
            if nxt is not None:
                self._plans[ident] = plan
                heappush(self._heap, (nxt, ident))
        self._cursor, self._loaded = cursor, True

    async def _write(self, batch: Batch, now: float) -> None:
        """Write a batch; on failure reload the world from the database next time."""
        try:
            await self._store.write(batch)
        except BaseException:
            self._reset()
            raise
        self._cursor = now

    def _open_streams(self, start: float, knobs: Knobs) -> _Streams:
        """Start one arrival stream per process at start, each with its own seeded Random."""
        streams: _Streams = {}
        for process in PLANNERS:
            rng = random.Random(f"{self._seed}:{process}:{start!r}")
            profile = PROFILES[process]
            stream: _Stream
            if isinstance(profile, InvoiceProfile):
                stream = BatchStream(profile, rng, start, knobs)
            else:
                stream = PoissonStream(profile, rng, start, knobs, self._clock)
            streams[process] = (rng, stream)
        return streams

    @staticmethod
    def _arrivals(streams: _Streams, knobs: Knobs, end: float) -> Iterator[Plan]:
        """Plan the items arriving up to end, process by process in a fixed order."""
        for process, (rng, stream) in streams.items():
            planner = PLANNERS[process]
            for t in stream.until(end):
                yield from planner(rng, t, knobs)

    def _place(self, plan: Plan, now: float, batch: Batch, *, old_cursor: float | None, stored: bool) -> None:
        """Write the row of a plan as of now and keep the plan while it has events to come."""
        if plan.created <= now:
            existed = stored and old_cursor is not None and plan.created <= old_cursor
            target = batch.updates if existed else batch.inserts
            target.setdefault(plan.process, []).append(row_at(plan, now))
        nxt = plan.next_event(now)
        if nxt is None:
            if stored:
                batch.plans_done.append(plan.id)
                del self._plans[plan.id]
            return
        if not stored:
            batch.plans_added.append({"id": plan.id, "process": plan.process, "plan": plan.to_json()})
            self._plans[plan.id] = plan
        heappush(self._heap, (nxt, plan.id))


def _chunk_ends(start: float, end: float, size: float) -> Iterator[float]:
    """Yield start + size, start + 2 size, ... and finally end."""
    t = start + size
    while t < end:
        yield t
        t += size
    yield end


__all__ = ["Simulator", "SimulatorError"]
