"""Leases on the sources, so that replicas sharing a PostgreSQL state sample each source exactly once.

A lease is a row of `source_lease` (holder, expiry), taken with one conditional upsert when it is
free or expired, renewed by its holder every third of its length, and given up when the holder
stops. A lease table rather than advisory locks: a session lock stays held as long as its
connection lives, so a holder that hangs (stopped, swapping, its loop stuck) would keep its sources
forever, while an expiry hands them over. The holder also checks its leases against its own
monotonic clock: past the expiry it believed in at the last renewal, it neither samples nor exports
the source, whatever its next renewal says; and its saves are fenced in SQL (`collector.state`).

Each replica takes at most its fair share of the free sources (sources / live replicas, rounded
up; the live replicas are those whose heartbeat has not expired) and gives back what exceeds it,
so the sources split between replicas; a lone replica takes them all.
"""

import asyncio
import hashlib
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from collector.logs import log_event, safe_dsn
from collector.state import connect_pg

if TYPE_CHECKING:
    import psycopg

_LOG = logging.getLogger("fabwatch.leases")
MIN_TICK = 0.25
MAX_TICK = 10.0
FIRST_PAUSE = 1.0
"""Between a replica's first heartbeat and its first taking: replicas started together count each other."""

_RENEW = """
UPDATE source_lease AS l SET expires = now() + v.ttl * interval '1 second'
FROM (SELECT unnest(%(sources)s::text[]) AS source, unnest(%(ttls)s::float8[]) AS ttl) AS v
WHERE l.source = v.source AND l.holder = %(me)s AND l.expires > now()
RETURNING l.source, l.term
"""
_TAKE = """
INSERT INTO source_lease (source, holder, expires) VALUES (%(source)s, %(me)s, now() + %(ttl)s * interval '1 second')
ON CONFLICT (source) DO UPDATE SET holder = excluded.holder, expires = excluded.expires, term = source_lease.term + 1
WHERE source_lease.expires <= now() OR source_lease.holder = excluded.holder
RETURNING term
"""
_HEARTBEAT = """
INSERT INTO fabwatch_replica (replica, expires) VALUES (%(me)s, now() + %(ttl)s * interval '1 second')
ON CONFLICT (replica) DO UPDATE SET expires = excluded.expires
"""


def replica_id() -> str:
    """A replica's default id: host name, process id and a random part (a restart is a new replica)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass
class Tick:
    """What one round with the shared store found: the leases held now (source -> (deadline, term)),
    the ones taken and the ones lost or given back since the last round."""

    held: dict[str, tuple[float, int]] = field(default_factory=dict)
    gained: set[str] = field(default_factory=set)
    lost: set[str] = field(default_factory=set)


class Leases:
    """This replica's leases on the sources of a shared state (PostgreSQL URL `url`)."""

    def __init__(self, url: str, replica: str, ttls: Mapping[str, float], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`ttls`: each source's lease length in seconds (a holder that stops renewing loses it then)."""
        self.url = url
        self.replica = replica
        self._ttls = dict(ttls)
        self._clock = clock
        self._held: dict[str, tuple[float, int]] = {}
        self._conn: psycopg.Connection[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self.on_gained: Callable[[set[str]], None] = lambda names: None
        """Told, in the event loop, the sources this replica has just taken (sample them now)."""
        self.on_lost: Callable[[set[str]], None] = lambda names: None
        """Told, in the event loop, the sources this replica no longer holds (stop exporting them)."""

    @property
    def tick_seconds(self) -> float:
        """How often leases are renewed and free sources looked for: a third of the shortest lease."""
        shortest = min(self._ttls.values(), default=MAX_TICK * 3)
        return min(MAX_TICK, max(MIN_TICK, shortest / 3))

    def holds(self, source: str) -> bool:
        """Whether this replica holds the lease of `source` now, by its own clock."""
        held = self._held.get(source)
        return held is not None and held[0] > self._clock()

    def term(self, source: str) -> int | None:
        """The hand-over count of the lease this replica holds on `source`, None when not held: a new
        term means that another replica may have sampled the source in between."""
        held = self._held.get(source)
        return held[1] if held is not None and held[0] > self._clock() else None

    def held(self) -> list[str]:
        """The sources this replica holds now."""
        return sorted(name for name in self._held if self.holds(name))

    def replace(self, ttls: Mapping[str, float]) -> None:
        """Lease these sources from now on (a reload); the leases of removed sources lapse."""
        self._ttls = dict(ttls)

    def start(self) -> None:
        """Start renewing and taking leases (inside the running loop)."""
        self._task = asyncio.create_task(self._run(), name="leases")

    async def stop(self) -> None:
        """Stop, and give back every lease so that another replica takes the sources at once."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        given = list(self._held)
        self._held.clear()
        try:
            await asyncio.to_thread(self._leave, given)
        except Exception as exc:  # they expire on their own
            log_event(_LOG, "leases_not_given_back", logging.WARNING, error=repr(exc))
        finally:
            await asyncio.to_thread(self._close)

    async def _run(self) -> None:
        first = True
        while True:
            started = self._clock()
            try:
                tick = await asyncio.to_thread(self.round, take=not first)  # first: be counted before taking
            except Exception as exc:  # PostgreSQL down or unreachable: the leases lapse on their own
                log_event(_LOG, "leases_not_renewed", logging.WARNING, store=safe_dsn(self.url), error=repr(exc))
                await asyncio.to_thread(self._close)
                now = self._clock()
                self._apply(Tick({name: held for name, held in self._held.items() if held[0] > now}))
            else:
                self._apply(tick)
            pause = min(self.tick_seconds, FIRST_PAUSE) if first else self.tick_seconds
            first = False
            await asyncio.sleep(max(0.0, pause - (self._clock() - started)))

    def _apply(self, tick: Tick) -> None:
        # Taken again in a new term (its renewal refused, then taken in the same round): lost in
        # between, and another replica may have sampled the source meanwhile.
        lapsed = {name for name, (_, term) in self._held.items()
                  if name not in tick.held or tick.held[name][1] != term}
        self._held = tick.held
        lost = tick.lost | lapsed
        if lost:
            log_event(_LOG, "leases_lost", sources=",".join(sorted(lost)), replica=self.replica)
            self.on_lost(lost)
        if tick.gained:
            log_event(_LOG, "leases_taken", sources=",".join(sorted(tick.gained)), replica=self.replica)
            self.on_gained(tick.gained)

    def round(self, take: bool = True) -> Tick:
        """One round with the shared store (blocking): heartbeat, renew what is held, give back what
        exceeds the fair share, take free sources up to it."""
        conn = self._connection()
        ttls = dict(self._ttls)
        if not take:  # at start: forget the replicas gone for an hour (each restart is a new id)
            conn.execute("DELETE FROM fabwatch_replica WHERE expires < now() - interval '1 hour'")
        conn.execute(_HEARTBEAT, {"me": self.replica, "ttl": min(ttls.values(), default=MAX_TICK)})
        row = conn.execute("SELECT count(*) FROM fabwatch_replica WHERE expires > now()").fetchone()
        live = max(1, int(row[0]) if row else 1)
        tick = Tick()
        tick.held = self._renew(conn, [n for n in self._held if n in ttls], ttls)
        fair = math.ceil(len(ttls) / live)
        if len(tick.held) > fair:
            extra = self._preferred(tick.held)[fair:]
            for name in extra:
                del tick.held[name]
            self._give_back(extra)
            tick.lost.update(extra)
        elif take and len(tick.held) < fair:
            taken = {r[0] for r in conn.execute("SELECT source FROM source_lease WHERE expires > now()")}
            for name in self._preferred(n for n in ttls if n not in taken and n not in tick.held):
                if len(tick.held) >= fair:
                    break
                sent = self._clock()
                got = conn.execute(_TAKE, {"source": name, "me": self.replica, "ttl": ttls[name]}).fetchone()
                if got is not None:
                    tick.held[name] = (sent + ttls[name], int(got[0]))
                    tick.gained.add(name)
        return tick

    def _renew(self, conn: "psycopg.Connection[Any]", names: list[str],
               ttls: Mapping[str, float]) -> dict[str, tuple[float, int]]:
        if not names:
            return {}
        sent = self._clock()  # before the statement: the local deadline is never later than the store's
        rows = conn.execute(_RENEW, {"sources": names, "ttls": [ttls[n] for n in names], "me": self.replica})
        return {name: (sent + ttls[name], int(term)) for name, term in rows}

    def _preferred(self, names: Iterable[str]) -> list[str]:
        """Sources in this replica's order of preference (its own hash order: replicas starting
        together try different sources first)."""
        return sorted(names, key=lambda n: hashlib.sha256(f"{self.replica}/{n}".encode()).digest())

    def _give_back(self, names: list[str]) -> None:
        if names:
            self._connection().execute(
                "UPDATE source_lease SET expires = now() WHERE source = ANY(%s) AND holder = %s",
                (names, self.replica))

    def _leave(self, names: list[str]) -> None:
        """Give back `names` and end this replica's heartbeat: the others count one replica less and
        take its share at their next round, not once the heartbeat expires."""
        self._give_back(names)
        self._connection().execute("DELETE FROM fabwatch_replica WHERE replica = %s", (self.replica,))

    def _connection(self) -> "psycopg.Connection[Any]":
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = connect_pg(self.url)
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
