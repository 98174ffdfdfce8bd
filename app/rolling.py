"""The daily rollups kept current while serving: a task per SQL source re-rolls today and the days
rows may still change in, every `reconcile` period, so late rows and reopened items heal their day."""

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from app.reload import processes_of
from collector.errors import SourceError
from collector.inventory.models import Inventory
from collector.logs import log_event
from collector.rollups import RollupStore, SourceRoller, reroll, sql_sources

_LOG = logging.getLogger("fabwatch.rollups")


def rolling(inventory: Inventory, state_path: str | Path | None,
            clock: Callable[[], float]) -> Callable[[web.Application], AsyncIterator[None]]:
    """Return the cleanup context that re-rolls the daily rollups of each SQL source of `inventory`
    (the one the service started with) every `reconcile`, and stops them with the app."""

    async def context(_app: web.Application) -> AsyncIterator[None]:
        store = RollupStore(state_path or inventory.service.state_path)
        rollers = [SourceRoller(name, source, processes_of(inventory, name), store, inventory.service.timezone)
                   for name, source in sql_sources(inventory.sources).items() if processes_of(inventory, name)]
        tasks = [asyncio.create_task(_reroll_every(roller, clock), name=f"rollups-{roller.name}")
                 for roller in rollers]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for roller in rollers:
                await roller.close()
            store.close()

    return context


async def _reroll_every(roller: SourceRoller, clock: Callable[[], float]) -> None:
    """Recompute today and the source's late window, then wait its `reconcile` period; for ever."""
    while True:
        started = time.monotonic()
        try:
            days = await reroll(roller, clock())
        except SourceError as exc:
            log_event(_LOG, "rollup_failed", logging.WARNING, source=roller.name, reason=exc.reason, error=str(exc))
        except sqlite3.Error as exc:  # the state file: full, locked, read-only
            log_event(_LOG, "rollup_failed", logging.WARNING, source=roller.name, reason="state", error=str(exc))
        else:
            log_event(_LOG, "rollup_done", logging.DEBUG, source=roller.name, days=len(days),
                      seconds=round(time.monotonic() - started, 3))
        await asyncio.sleep(roller.source.reconcile)
