"""The sampling half of the service (state store, samplers, scheduler), swappable while it serves.

`LiveSampling` opens the samplers and starts the scheduler with the app, and `reload` replaces them
for a new inventory without stopping the HTTP server or the events port: the new inventory is
validated first, then the old scheduler stops (samples in flight finish, within its grace), the
samplers of sources that changed or went away are closed, new ones are opened for sources that
changed or appeared, and a new scheduler starts. A source whose definition and processes did not
change keeps its sampler (connections, in-memory state) and its next run time. Counters continue
across a reload whatever changed: every sampler reads its source's state from the state store.

What a reload cannot change while serving is refused with the old inventory kept: the `service`
section (addresses, TLS, state file, time zone) and the `tmf_events` sources, whose listeners
own the events port and their record stores.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path

from collector.engine import SourceSampler
from collector.health import HealthTracker
from collector.inventory.models import Inventory, Process
from collector.leases import Leases, replica_id
from collector.logs import log_event, safe_dsn
from collector.samples import FanOut, SampleSink
from collector.sampling import Sampler, build_sampler, monthly_costs
from collector.scheduler import Sampler as Scheduled
from collector.scheduler import SamplingScheduler, lease_seconds
from collector.state import StateStore, open_state
from collector.storeurl import postgres_url
from exporters.prometheus import PrometheusExporter

_LOG = logging.getLogger("fabwatch.service")


class ReloadRefused(Exception):
    """The new inventory cannot be applied; `problems` says why, one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def processes_of(inventory: Inventory, source: str) -> dict[str, Process]:
    """Return the processes whose records live in `source`."""
    return {name: process for name, process in inventory.processes.items()
            if process.records.source == source}


def unchanged_sources(old: Inventory, new: Inventory) -> set[str]:
    """Sources whose definition and processes are the same in both inventories (their samplers can
    be kept); none when the cost files changed, which every sampler's monthly lookup reads."""
    if _cost_sources(old) != _cost_sources(new):
        return set()
    return {name for name, source in new.sources.items()
            if old.sources.get(name) == source and processes_of(old, name) == processes_of(new, name)}


def _cost_sources(inventory: Inventory) -> dict[str, object]:
    return {n: s for n, s in inventory.sources.items() if s.kind == "cost_csv"}


def live_problems(old: Inventory, new: Inventory) -> list[str]:
    """What `new` changes that a running service cannot take (a restart can)."""
    problems = []
    if old.service != new.service:
        fields = sorted(k for k in type(new.service).model_fields
                        if getattr(old.service, k) != getattr(new.service, k))
        problems.append(f"service: {', '.join(fields)} changed: the service section takes effect at a restart")
    events = sorted({n for n, s in (old.sources | new.sources).items() if s.kind == "tmf_events"
                     and (old.sources.get(n) != new.sources.get(n)
                          or _tables(old, n) != _tables(new, n))})
    if events:
        problems.append(f"sources: tmf_events source(s) {', '.join(events)} added, removed or changed "
                        "(definition or record tables): their listeners change at a restart")
    return problems


def _tables(inventory: Inventory, source: str) -> set[str | None]:
    return {p.records.table for p in processes_of(inventory, source).values()}


class LiveSampling:
    """Owns the state store, the samplers and the scheduler of the running service."""

    def __init__(self, inventory: Inventory, health: HealthTracker, exporter: PrometheusExporter, *,
                 state_path: str | Path | None = None, clock: Callable[[], float] = time.time,
                 given: Mapping[str, Scheduled] | None = None, sinks: Sequence[SampleSink] = (),
                 on_reload: Sequence[Callable[[Inventory], None]] = (),
                 forget: Sequence[Callable[[Iterable[str]], None]] = (),
                 replica: str | None = None) -> None:
        """`replica`: this replica's id when the state is shared (a PostgreSQL URL; default: host
        name, process id and a random part)."""
        self.inventory = inventory
        self.health = health
        self.exporter = exporter
        self.sinks = FanOut(exporter, *sinks)
        """Where the scheduler hands each sample: the exporter, then the other sinks (the status board)."""
        self.on_reload = tuple(on_reload)
        """Told the new inventory once a reload applied it."""
        self.forget = (exporter.forget, *forget)
        """Told, at a reload, the sources whose last samples must go (removed or reopened): the sinks
        that keep samples of their own (`/metrics`, OTLP)."""
        self.state_path = state_path or inventory.service.state_path
        self.clock = clock
        self.given = given
        """Samplers the caller owns (tests): then the inventory cannot be reloaded."""
        self.scheduler: SamplingScheduler | None = None
        self._samplers: dict[str, Sampler] = {}
        self._state: StateStore | None = None
        self.leases: Leases | None = None
        """This replica's leases on the sources, when the state is shared (a PostgreSQL URL)."""
        self._replica = replica
        self._lock = asyncio.Lock()
        self._stopped = False

    @property
    def samplers(self) -> Mapping[str, Sampler]:
        """The samplers this object opened, by source (none when the caller gave them)."""
        return dict(self._samplers)

    async def start(self) -> SamplingScheduler:
        """Open the state store and the samplers, start the scheduler."""
        if self.given is None:
            url = postgres_url(str(self.state_path))
            if url is not None:
                self.leases = Leases(url, self._replica or replica_id(), self._lease_ttls(self.inventory))
                self.leases.on_gained, self.leases.on_lost = self._gained, self._lost
                self.health.lease(self.leases.replica, self.leases.holds)
            holder = None if self.leases is None else self.leases.replica
            self._state = await asyncio.to_thread(open_state, self.state_path, holder)
            self._samplers = await self._open(self.inventory, set(self.inventory.sources))
        self.health.reload_succeeded(time.time())
        scheduler = self._start_scheduler({})
        if self.leases is not None:
            self.leases.start()
            log_event(_LOG, "replica_started", replica=self.leases.replica, store=safe_dsn(self.leases.url))
        return scheduler

    def _lease_ttls(self, inventory: Inventory) -> dict[str, float]:
        return {name: lease_seconds(source, inventory.service.timezone) for name, source in inventory.sources.items()}

    def _gained(self, names: set[str]) -> None:
        """Sources whose leases this replica just took: sample them now."""
        if self.scheduler is not None:
            self.scheduler.wake(names)
        self.exporter.invalidate()

    def _lost(self, names: set[str]) -> None:
        """Sources another replica samples now: their last samples go from every sink."""
        for forget in self.forget:
            forget(names)
        self.exporter.invalidate()

    async def stop(self) -> None:
        """Stop sampling, then close the samplers and the state store (after a reload in flight)."""
        async with self._lock:
            self._stopped = True
            if self.scheduler is not None:
                await self.scheduler.stop()
            if self.leases is not None:
                await self.leases.stop()  # after the last saves: given back, taken over at once
            await self._close(list(self._samplers))
            if self._state is not None:
                self._state.close()
                self._state = None

    async def reload(self, load: Callable[[], Awaitable[Inventory]]) -> Inventory:
        """Load and apply a new inventory; raise `ReloadRefused` (or the loader's `ConfigError`),
        keeping the old one, when it cannot be applied. Reloads run one at a time."""
        async with self._lock:
            try:
                new = await load()
                problems = live_problems(self.inventory, new) if self.given is None else [
                    "this service samples with samplers given by its caller: nothing to reload"]
                if self._stopped:
                    problems = ["the service is stopping"]
                if problems:
                    raise ReloadRefused(problems)
                await self._swap(new)
            except Exception:
                self.health.reload_failed()
                self.exporter.invalidate()  # the next scrape says so
                raise
            self.health.reload_succeeded(time.time())
            self.exporter.invalidate()
            return new

    async def _swap(self, new: Inventory) -> None:
        old = self.inventory
        kept = unchanged_sources(old, new)
        next_runs = self.scheduler.next_runs() if self.scheduler is not None else {}
        if self.scheduler is not None:
            # Before a new sampler reads its source's state: the last save is in.
            await self.scheduler.stop("the inventory was reloaded")
        await self._close([n for n in self._samplers if n not in kept])
        try:
            opened = await self._open(new, set(new.sources) - kept)
        except Exception:  # a store that cannot be opened: go on sampling with the old inventory
            self._samplers.update(await self._open(old, set(old.sources) - set(self._samplers)))
            self._start_scheduler(next_runs)
            raise
        self._samplers.update(opened)
        self.inventory = new
        self.health.track(new.sources, syncing=[n for n, s in new.sources.items() if s.kind != "sql"])
        # Removed and reopened sources: a process moved to another source would otherwise be
        # served twice, by the old source's last sample and by the new source's.
        for forget in self.forget:
            forget(set(old.sources) - kept)
        for listener in self.on_reload:
            listener(new)
        self._start_scheduler({n: t for n, t in next_runs.items() if n in kept})
        log_event(_LOG, "inventory_reloaded", kept=",".join(sorted(kept)) or "-",
                  reopened=",".join(sorted(set(new.sources) - kept)) or "-",
                  removed=",".join(sorted(set(old.sources) - set(new.sources))) or "-")

    def _start_scheduler(self, next_runs: Mapping[str, datetime]) -> SamplingScheduler:
        # The samplers run on `clock` (a replay's shifted one); health timestamps stay real, so
        # that `time() - fab_source_last_success_timestamp_seconds` (FabSourceStale) holds.
        samplers: Mapping[str, Scheduled] = self.given if self.given is not None else self._samplers
        if self.leases is not None:
            self.leases.replace(self._lease_ttls(self.inventory))
        self.scheduler = SamplingScheduler(self.inventory.sources, samplers, self.health, self.sinks,
                                           timezone=self.inventory.service.timezone, leases=self.leases)
        self.scheduler.start(next_runs)
        return self.scheduler

    async def _open(self, inventory: Inventory, names: set[str]) -> dict[str, Sampler]:
        """Open the samplers of `names` (in the inventory's order); close them all if one fails."""
        assert self._state is not None
        samplers: dict[str, Sampler] = {}
        monthly = monthly_costs(inventory, self.state_path)
        try:
            for name, source in inventory.sources.items():
                if name not in names:
                    continue
                sampler = build_sampler(name, source, processes_of(inventory, name), self._state, inventory.service,
                                        self.state_path, monthly)
                if isinstance(sampler, SourceSampler):
                    sampler.clock = self.clock
                await sampler.open()
                samplers[name] = sampler
                log_event(_LOG, "source_opened", source=name, dsn=safe_dsn(source.dsn),
                          processes=",".join(processes_of(inventory, name)) or "-")
        except BaseException:
            for sampler in samplers.values():
                await sampler.close()
            raise
        return samplers

    async def _close(self, names: list[str]) -> None:
        for name in reversed(names):
            sampler = self._samplers.pop(name)
            await sampler.close()
