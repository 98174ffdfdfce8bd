"""Plug the non-SQL sources into the service: one sampler per source, listener routes, hubs.

A syncing source's sample first syncs its record store (TMF polling, HTTP JSON, cost CSV, or
making sure the hub registration stands for TMF events), then lets the ordinary SQL
`SourceSampler` sample the record store. A failed sync fails the sample with its reason, so
`fab_source_up` and `fab_source_errors_total{reason}` report it, and the service keeps serving.

The modules of the syncing sources (HTTP client, TMF mapping, JMESPath, CSV, record store,
listener) are imported by the functions that use them: an inventory of SQL sources only never
loads them, which keeps `fabwatch serve` smaller in memory.
"""

import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

from aiohttp import web

from collector.engine import MonthlyLookup, SourceSampler
from collector.errors import SourceError
from collector.inventory.models import Inventory, Process, ServiceConfig, Source, SqlSource
from collector.inventory.sources import CostCsvSource, HttpJsonSource, SyncedSource, TmfEventsSource, TmfSource
from collector.logs import log_event, safe_dsn
from collector.samples import SourceSample
from collector.state import StateStore
from collector.storeurl import postgres_url

if TYPE_CHECKING:
    from collector.health import HealthTracker
    from collector.sources.http import HttpClient
    from collector.sources.listener import Listener
    from collector.sources.polling import ResourceCompleter, TmfPoller
    from collector.sources.store import Records

LISTENERS = web.AppKey[dict[str, "Listener"]]("tmf_listeners")
_LOG = logging.getLogger("fabwatch.sources")


class Syncer(Protocol):
    async def sync(self, now: float | None = None) -> int:
        """Bring the record store up to date; raise `SourceError` when the source fails."""
        ...

    async def close(self) -> None: ...


class Sampler(Protocol):
    async def open(self) -> None: ...
    def abort(self) -> None: ...
    async def close(self) -> None: ...
    async def sample(self, now: float | None = None) -> SourceSample: ...
    async def check_columns(self) -> list[str]: ...
    async def inspect(self) -> list[str]: ...


class SyncingSampler:
    """Sync the record store, then sample it with the SQL KPI engine."""

    def __init__(self, name: str, syncer: Syncer | None, store: "Records | None", inner: SourceSampler) -> None:
        self.name = name
        self.syncer = syncer
        self.store = store
        self.inner = inner

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()
        if self.syncer is not None:
            await self.syncer.close()
        if self.store is not None:
            self.store.close()

    def resume(self) -> None:
        """Read the saved state again (a lease taken over from another replica)."""
        self.inner.resume()

    async def sample(self, now: float | None = None) -> SourceSample:
        """Sync, then sample the record store."""
        if self.syncer is not None:
            await self.syncer.sync(now)
        return await self.inner.sample(now)

    def abort(self) -> None:
        self.inner.abort()

    async def check_columns(self) -> list[str]:
        return await self.inner.check_columns()

    async def inspect(self) -> list[str]:
        return await self.inner.inspect()


def _hub(hub_url: str, subscription: str | None = None) -> str:
    """The URL of a TMF hub's `/hub` resource, or of one subscription in it: appended to the path,
    the query string (a gateway's key) and fragment kept where they were."""
    parts = urlsplit(hub_url)
    path = f"{parts.path.rstrip('/')}/hub" + ("" if subscription is None else f"/{quote(subscription, safe='')}")
    return urlunsplit(parts._replace(path=path))


_HUB_ID, _HUB_URL, _HUB_OWED = "hub_id", "hub_url", "hub_unregister_owed"
"""Record store keys of the current hub subscription, so a restart after a crash can drop it."""


class HubRegistration:
    """Keeps this service registered with a TMF hub (`POST /hub`), and unregisters on close."""

    def __init__(self, name: str, source: TmfEventsSource, callback: str, store: "Records",
                 client: "HttpClient") -> None:
        self.name = name
        self.source = source
        self.callback = callback
        self.store = store
        self.client = client
        self.hub_id: str | None = None
        self._owed: list[list[str]] | None = None
        """Subscriptions of earlier runs still to drop, as [hub url, id] (None: not read yet)."""
        if source.hub_url is not None and source.secret is not None:
            from collector.sources.listener import SECRET_HEADER

            log_event(_LOG, "hub_cannot_send_secret", logging.WARNING, source=name,
                      why=f"a TMF hub registration ({{callback, query}}) carries no header: the hub's events "
                          f"lack {SECRET_HEADER} and are refused (401) unless a proxy in front of fabwatch adds it",
                      instead="mutual TLS on the events port (service.events_tls.client_ca_file)")

    async def sync(self, now: float | None = None) -> int:
        """Register when not registered yet (a failure fails the sample with its reason); drop the
        subscriptions earlier runs left, while the hub refuses to."""
        if self.source.hub_url is None:
            return 0
        await self._drop_leftovers()
        if self.hub_id is not None:
            return 0
        from collector.sources.http import SourceSchemaMismatch
        reply = await self.client.request("POST", _hub(self.source.hub_url),
                                          payload={"callback": self.callback, "query": self.source.query})
        if not isinstance(reply.body, dict) or not isinstance(reply.body.get("id"), str | int):
            raise SourceSchemaMismatch(self.name, "the hub answered without an id")
        self.hub_id = str(reply.body["id"])
        self.store.set_meta({_HUB_ID: self.hub_id, _HUB_URL: self.source.hub_url})
        log_event(_LOG, "hub_registered", source=self.name, hub=self.hub_id, callback=safe_dsn(self.callback))
        return 0

    async def _drop_leftovers(self) -> None:
        """Unregister the subscriptions earlier runs left (killed before they could): else the hub
        keeps calling them, once more per event each, for as long as they live. One the hub would
        not drop (down, or failing) stays owed, and is asked for again at the next sync. The store
        is read once, at the first sync: later ones read nothing when nothing is owed."""
        if self._owed is None:
            self._owed = json.loads(self.store.meta(_HUB_OWED) or "[]")
            leftover, hub_url = self.store.meta(_HUB_ID), self.store.meta(_HUB_URL)
            if leftover and hub_url:  # the last run's, never dropped
                self._owed.append([hub_url, leftover])
                self.store.set_meta({_HUB_OWED: json.dumps(self._owed), _HUB_ID: ""})
        if not self._owed:
            return
        still: list[list[str]] = []
        for hub_url, hub_id in self._owed:
            try:
                await self.client.request("DELETE", _hub(hub_url, hub_id), missing_ok=True)
                log_event(_LOG, "hub_leftover_unregistered", source=self.name, hub=hub_id)
            except SourceError as exc:
                log_event(_LOG, "hub_leftover_unregister_failed", logging.WARNING, source=self.name, hub=hub_id,
                          error=str(exc), retry="at the next sync")
                still.append([hub_url, hub_id])
        if still != self._owed:
            self._owed = still
            self.store.set_meta({_HUB_OWED: json.dumps(still)})

    async def close(self) -> None:
        """Unregister from the hub (best effort) and close the client."""
        if self.hub_id is not None and self.source.hub_url is not None:
            try:
                await self.client.request("DELETE", _hub(self.source.hub_url, self.hub_id),
                                          missing_ok=True)
                self.store.set_meta({_HUB_ID: ""})
                log_event(_LOG, "hub_unregistered", source=self.name, hub=self.hub_id)
            except SourceError as exc:
                log_event(_LOG, "hub_unregister_failed", logging.WARNING, source=self.name, error=str(exc))
            self.hub_id = None
        await self.client.close()


def store_path(name: str, source: SyncedSource, state_path: str | Path) -> str | Path:
    """Where the record store of a source lives: a SQLite file, or a PostgreSQL URL."""
    from collector.sources.store import records_path

    if source.store:
        return source.store if postgres_url(source.store) else Path(source.store)
    return records_path(state_path, name)


def open_store(name: str, source: SyncedSource, processes: Mapping[str, Process],
               state_path: str | Path, *, shared: bool = False) -> "Records":
    """Open (creating the tables of) the record store of a source; `shared`: other processes write
    events into it too (`RecordStore.shared`)."""
    from collector.sources.records import open_records
    from collector.sources.tmf import APIS

    tables = sorted({p.records.table for p in processes.values() if p.records.table}) or [name]
    finals: dict[str, tuple[str, ...]] = {}
    api = getattr(source, "api", None) or (source.kind if source.kind in APIS else None)
    if api is not None:
        finals = dict.fromkeys(tables, APIS[api].finals)
    sync = "FULL" if isinstance(source, TmfEventsSource) and source.durability == "full" else "NORMAL"
    return open_records(store_path(name, source, state_path), name, tables, synchronous=sync, final_statuses=finals,
                        shared=shared)


def store_source(source: SyncedSource, store: "Records") -> SqlSource:
    """The SQL source the KPI engine samples: the record store, on the source's schedule."""
    return SqlSource(kind="sql", dsn=store.dsn, timeout=source.timeout, interval=source.interval,
                     cron=source.cron, jitter=source.jitter, pool_size=1, settle=source.settle,
                     reconcile=source.reconcile)


def build_sampler(name: str, source: Source, processes: Mapping[str, Process], state: StateStore,
                  service: ServiceConfig, state_path: str | Path, monthly: MonthlyLookup | None = None) -> Sampler:
    """Return the sampler of any source: the SQL engine itself, or a syncing sampler around it;
    `monthly` finds the amounts of `monthly_from` costs (see `monthly_costs`)."""
    options: dict[str, Any] = {"currency": service.currency, "max_series": service.max_series_per_process,
                               "monthly": monthly, "series_expiry": service.series_expiry}
    if isinstance(source, SqlSource):
        return SourceSampler(name, source, processes, state, **options)
    store = open_store(name, source, processes, state_path)
    # a record reaches the store when it arrives, whatever its dates: look for late ones at every sample
    inner = SourceSampler(name, store_source(source, store), processes, state, late_every_sample=True, **options)
    syncer = _syncer(name, source, store, service)
    if isinstance(source, TmfEventsSource) and source.hub_url is None and source.base_url is None:
        store.close()  # the listener writes events through its own connection
        return SyncingSampler(name, syncer, None, inner)
    # With a hub, this connection keeps the subscription's id (`HubRegistration`); with an API, it
    # completes the incomplete resources (`ResourceCompleter`).
    return SyncingSampler(name, syncer, store, inner)


def monthly_costs(inventory: Inventory, state_path: str | Path) -> MonthlyLookup | None:
    """The lookup of monthly amounts in the stores of the `cost_csv` sources, if there are any."""
    stores = {n: store_path(n, s, state_path) for n, s in inventory.sources.items() if isinstance(s, CostCsvSource)}
    if not stores:
        return None
    from collector.sources.files import MonthlyCosts

    return MonthlyCosts(stores, inventory.service.currency)


def _syncer(name: str, source: SyncedSource, store: "Records", service: ServiceConfig) -> Syncer:
    if isinstance(source, CostCsvSource):
        from collector.sources.files import CostCsvSync

        return CostCsvSync(name, source, store)
    from collector.sources.http import HttpClient, limits_of

    client = HttpClient(name, limits_of(source), source.auth, source.ca_file)
    if isinstance(source, TmfSource):
        from collector.sources.polling import TmfPoller

        return _Polling(TmfPoller(name, source, client, store))
    if isinstance(source, HttpJsonSource):
        from collector.sources.http_json import HttpJsonSync

        return HttpJsonSync(name, source, client, store)
    scheme = "https" if service.events_tls is not None else "http"
    callback = source.callback or f"{scheme}://{service.events_listen or service.listen}/tmf/{name}"
    hub = HubRegistration(name, source, callback, store, client)
    if source.base_url is None:
        return hub
    from collector.sources.polling import ResourceCompleter

    return _Events(hub, ResourceCompleter(name, source, client, store))


class _Events:
    """A `tmf_events` source with an API: keep the hub registration, then complete what events left partial."""

    def __init__(self, hub: HubRegistration, completer: "ResourceCompleter") -> None:
        self.hub = hub
        self.completer = completer

    async def sync(self, now: float | None = None) -> int:
        await self.hub.sync(now)
        return await self.completer.sync(now)

    async def close(self) -> None:
        await self.hub.close()  # closes the client both share


class _Polling:
    def __init__(self, poller: "TmfPoller") -> None:
        self.poller = poller

    async def sync(self, now: float | None = None) -> int:
        return await self.poller.sync()

    async def close(self) -> None:
        await self.poller.client.close()


def mount_sources(app: web.Application, inventory: Inventory, state_path: str | Path | None = None,
                  health: "HealthTracker | None" = None, *, listen: bool = True) -> None:
    """Open/close the listeners of the `tmf_events` sources with the app; they answer on the events
    port (`service.events_listen`) when there is one, else on the main port's route. `health`
    exports what each listener received (`fab_events_received_total`). Not `listen`: worker
    processes serve the events port (`serve --workers N`), this one nothing of it."""
    events = {n: s for n, s in inventory.sources.items() if isinstance(s, TmfEventsSource)}
    if not events or not listen:
        return
    app[LISTENERS] = {}
    if inventory.service.events_address is None:
        app.router.add_post("/tmf/{source}/listener/{event}", _dispatch)
    app.cleanup_ctx.append(_listeners(inventory, state_path or inventory.service.state_path, health))


async def open_listeners(inventory: Inventory, state_path: str | Path, stack: AsyncExitStack, *,
                         shared: bool = False) -> dict[str, "Listener"]:
    """Open the record store and start the listener of every `tmf_events` source; `stack` stops
    the listeners (their queued events committed) and closes the stores. `shared`: other processes
    write the same stores (the workers of `serve --workers N`), one group commit at a time."""
    from collector.sources.listener import Listener
    from collector.sources.store import RecordStore
    from collector.sources.writelock import WriterLock

    listeners: dict[str, Listener] = {}
    for name, source in inventory.sources.items():
        if not isinstance(source, TmfEventsSource):
            continue
        processes = {p: proc for p, proc in inventory.processes.items() if proc.records.source == name}
        store = open_store(name, source, processes, state_path, shared=shared)
        stack.callback(store.close)
        # PostgreSQL takes concurrent writers itself; SQLite one group commit at a time
        lock = WriterLock(store.path) if shared and isinstance(store, RecordStore) else None
        if lock is not None:
            stack.callback(lock.close)
        listener = Listener(name, source, store, lock)
        await listener.start()
        stack.push_async_callback(listener.stop)
        listeners[name] = listener
    return listeners


def _listeners(inventory: Inventory, state_path: str | Path,
               health: "HealthTracker | None") -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            listeners = await open_listeners(inventory, state_path, stack)
            app[LISTENERS].update(listeners)
            if health is not None:
                health.intake.update(listeners)
                health.completions.update(listeners)
            address = inventory.service.events_address
            if address is not None:
                from collector.sources.events_http import EventsServer  # httptools only when used

                server = EventsServer(listeners, tls=inventory.service.events_tls)
                await server.start(*address)
                stack.push_async_callback(server.stop)  # runs before the listeners drain and stop
            yield
    return context


async def _dispatch(request: web.Request) -> web.Response:
    listener = request.app[LISTENERS].get(request.match_info["source"])
    if listener is None:
        from collector.sources.listener import _error

        return _error(404, "unknownSource", f"no tmf_events source {request.match_info['source']!r}")
    response: web.Response = await listener.handle(request)
    return response
