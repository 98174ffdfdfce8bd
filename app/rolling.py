"""The daily rollups kept current while serving: a task per SQL source re-rolls today and the days
rows may still change in, every `reconcile` period, so late rows and reopened items heal their day.
A reload replaces the tasks with those of the new inventory.

On a PostgreSQL state shared by replicas, a source's days are re-rolled only by the replica holding
its lease (`HealthTracker.owned`), so two replicas never re-roll the same day at once; a replica
taking a lease over re-rolls at its next look (every `OWNED_POLL` seconds) from what is final."""

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.reload import processes_of
from collector.errors import SourceError
from collector.health import HealthTracker
from collector.inventory.models import Inventory
from collector.logs import log_event
from collector.rollups import RollupStore, SourceRoller, final_through, late_of, reroll, sql_sources
from collector.state import store_errors

_LOG = logging.getLogger("fabwatch.rollups")
OWNED_POLL = 1.0
"""Seconds between two looks at whether this replica holds a source's lease, while it does not."""


class Rolling:
    """One re-roll task per SQL source of the running inventory, on the state file's rollup tables."""

    def __init__(self, inventory: Inventory, state_path: str | Path | None, clock: Callable[[], float],
                 health: HealthTracker | None = None) -> None:
        """`health`: where failed passes and the last final day of each source are counted."""
        self._inventory = inventory
        self._health = health or HealthTracker([])
        self._state_path = state_path or inventory.service.state_path  # the service section waits for a restart
        self._clock = clock
        self._store: RollupStore | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self) -> None:
        """Open the rollup tables and start re-rolling (inside the running loop)."""
        self._store = RollupStore(self._state_path)
        self._spawn(self._inventory)

    def replace_inventory(self, new: Inventory) -> None:
        """After a reload: stop the old tasks (each closes its connections) and re-roll the new sources."""
        for task in self._tasks:
            task.cancel()
        self._inventory = new
        if self._store is not None:
            self._spawn(new)

    def _spawn(self, inventory: Inventory) -> None:
        assert self._store is not None
        rolled = {name: source for name, source in sql_sources(inventory.sources).items()
                  if processes_of(inventory, name)}
        self._health.track_rollups(rolled)
        for name, source in rolled.items():
            roller = SourceRoller(name, source, processes_of(inventory, name), self._store, inventory.service.timezone)
            task = asyncio.create_task(_reroll_every(roller, self._clock, self._health), name=f"rollups-{name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Stop every task, wait until they have closed their connections, close the tables."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._store is not None:
            self._store.close()
            self._store = None


async def _reroll_every(roller: SourceRoller, clock: Callable[[], float], health: HealthTracker) -> None:
    """Recompute the days not final yet (at start, a missed day too), then wait the source's `reconcile`
    period, until cancelled; count failed passes and the last final day in `health`."""
    errors = store_errors()
    try:
        while True:
            if not health.owned(roller.name):  # another replica holds the source: it re-rolls its days
                await asyncio.sleep(OWNED_POLL)
                continue
            started = time.monotonic()
            try:
                days = await reroll(roller, clock())
            except SourceError as exc:
                health.record_rollup_error(roller.name)
                log_event(_LOG, "rollup_failed", logging.WARNING, source=roller.name, reason=exc.reason,
                          error=str(exc))
            except errors as exc:  # the state: full, locked, read-only, unreachable
                health.record_rollup_error(roller.name)
                log_event(_LOG, "rollup_failed", logging.WARNING, source=roller.name, reason="state", error=str(exc))
            else:
                health.record_rollup(roller.name, final_through(roller.store, roller.processes, roller.zone,
                                                                late_of(roller.source)))
                log_event(_LOG, "rollup_done", logging.DEBUG, source=roller.name, days=len(days),
                          seconds=round(time.monotonic() - started, 3))
            await asyncio.sleep(roller.source.reconcile)
    finally:
        await roller.close()
