"""The simulated operator speaks TMF: TMF621/622/678/676/683 (v4 and v5) over its records tables.

`GET {base}/{resource}` pages with `offset`/`limit` (`X-Total-Count`, `X-Result-Count`, `Link`
rel=next), filters on `lastUpdate.gt|gte|lt|lte`, the status/state attribute, `id` and, for
TMF621, `ticketType` (the simulated process), and keeps only the `fields=` asked for. Hubs
register with `POST {base}/hub` and receive `POST {callback}/listener/{eventName}` for every row
the simulator changes (create, status/state change), retried with backoff until acknowledged.
Two options make the delivery as messy as real hubs' (see `TmfServer`): change events with only
what changed (`partial_changes`) and events held back until a later round (`hold_back`).

Run it next to a simulator writing the same database:
`python -m simulator.tmf --dsn sqlite+aiosqlite:///op.db --listen 127.0.0.1:8080`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import logging
import math
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
from aiohttp import web
from sqlalchemy import CompoundSelect, Select, and_, func, literal, select, union_all
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from collector.sources.times import parse_time
from collector.sources.tmf import APIS, EXTENSION, TmfApi
from simulator.profiles import PROFILES
from simulator.store import SIM_STATE, TABLES
from simulator.tmf_render import API_PROCESSES, event, resource

log = logging.getLogger(__name__)
MAX_LIMIT = 1000
_RANGE = {"gt": "__gt__", "gte": "__ge__", "lt": "__lt__", "lte": "__le__"}


class BadRequest(Exception):
    """A list request the server cannot answer (unknown filter, bad number or date)."""


@dataclass
class Hub:
    id: str
    api: str
    version: int
    callback: str
    query: dict[str, str]


@dataclass
class Endpoint:
    api: TmfApi
    version: int
    base: str


@dataclass
class Delivery:
    """Counters of event delivery, for tests and logs."""

    sent: int = 0
    failed: int = 0
    attempts: int = 0
    pending: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)


PROCESS_APIS: dict[str, tuple[str, str | None]] = {
    "problem": ("tmf621", "problem"), "qos_sla": ("tmf621", "qos_sla"),
    "retention": ("tmf621", "retention"), "bill_inquiry": ("tmf621", "bill_inquiry"),
    "order": ("tmf622", None), "invoice": ("tmf678", None), "payments": ("tmf676", None),
    "interface": ("tmf683", None)}
"""Simulated process -> (API, TMF621 ticketType) the server publishes it through."""


class TmfServer:
    """Serves the records of a simulator database as TMF APIs and notifies registered hubs.

    Realism options, both off by default:
    - `partial_changes`: a change event (not a create event) carries only what a hub that sends
      deltas would: `id`, `@type`, `href`, the status/state attribute, `lastUpdate` and the API's
      change dates, every other attribute whose name ends in `Date`/`date` (completion and due
      dates among them) and the `fabwatch` extension; not the creation date, which a delta does
      not repeat, and nothing else (no priority, channel, amounts).
    - `hold_back` (0..1): that share of each notification round's events, chosen by a hash of the
      `eventId` (so runs repeat), is held back and sent with the next round that has new changes,
      or at the next tick after `release()`; `held` tells how many wait.
    """

    def __init__(self, dsn: str, *, tick: float = 0.2, concurrency: int = 16, retries: int = 8,
                 root: str = "", partial_changes: bool = False, hold_back: float = 0.0) -> None:
        if not 0.0 <= hold_back <= 1.0:
            raise ValueError(f"hold_back must be within 0..1, got {hold_back}")
        self._partial = partial_changes
        self._hold_back = hold_back
        self._held: list[tuple[Hub, str, dict[str, Any]]] = []
        self._releasing = False
        self._dsn = dsn
        self._tick = tick
        self._retries = retries
        self._root = root.rstrip("/")
        self._engine: AsyncEngine | None = None
        self._hubs: dict[str, Hub] = {}
        self._ids = itertools.count(1)
        self._limit = asyncio.Semaphore(concurrency)
        self._since: float | None = None
        self.delivery = Delivery()
        self.endpoints = [Endpoint(api, v, self._root + api.base_paths[v])
                          for api in APIS.values() for v in sorted(api.base_paths)]

    def app(self) -> web.Application:
        """Build the aiohttp application (routes for every API and version)."""
        app = web.Application()
        for endpoint in self.endpoints:
            collection = f"{endpoint.base}/{endpoint.api.resource}"
            app.router.add_get(collection, self._lister(endpoint))
            app.router.add_get(collection + "/{id}", self._getter(endpoint))
            app.router.add_post(f"{endpoint.base}/hub", self._registrar(endpoint))
            app.router.add_delete(f"{endpoint.base}/hub/{{id}}", self._unregister)
        app.cleanup_ctx.append(self._running)
        return app

    @property
    def notified_until(self) -> float | None:
        """The simulator cursor up to which changes have been notified."""
        return self._since

    @property
    def hubs(self) -> list[Hub]:
        return list(self._hubs.values())

    @property
    def held(self) -> int:
        """How many events are held back, waiting for a later round (`hold_back`)."""
        return len(self._held)

    def release(self) -> None:
        """Send the held events at the next tick, even without new changes, and hold no more then."""
        self._releasing = True

    async def _running(self, app: web.Application) -> AsyncIterator[None]:
        self._engine = create_async_engine(self._dsn)
        self._since = await self._cursor()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            notifier = asyncio.create_task(self._notify_loop(session), name="tmf-notifier")
            yield
            notifier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await notifier
        await self._engine.dispose()

    # --- REST --------------------------------------------------------------------------------

    def _lister(self, endpoint: Endpoint) -> Any:
        async def handler(request: web.Request) -> web.Response:
            try:
                query = _ListQuery.parse(endpoint.api, request.query)
            except BadRequest as exc:
                return _error(400, "invalidQuery", str(exc))
            total, rows = await self._page(endpoint.api, query)
            href = str(request.url.with_query(None))
            items = [_only(resource(endpoint.api, endpoint.version, r["process"], r, href), query.fields)
                     for r in rows]
            headers = {"X-Total-Count": str(total), "X-Result-Count": str(len(items))}
            if query.offset + len(items) < total:
                nxt = request.url.update_query(offset=str(query.offset + len(items)), limit=str(query.limit))
                headers["Link"] = f'<{nxt}>; rel="next"'
            return web.json_response(items, headers=headers)
        return handler

    def _getter(self, endpoint: Endpoint) -> Any:
        async def handler(request: web.Request) -> web.Response:
            query = _ListQuery(limit=1, equals={"id": [request.match_info["id"]]})
            _, rows = await self._page(endpoint.api, query)
            if not rows:
                return _error(404, "notFound", f"no {endpoint.api.resource} {request.match_info['id']}")
            href = str(request.url.parent)
            return web.json_response(resource(endpoint.api, endpoint.version, rows[0]["process"], rows[0], href))
        return handler

    def _registrar(self, endpoint: Endpoint) -> Any:
        async def handler(request: web.Request) -> web.Response:
            try:
                body = await request.json()
                callback = body["callback"]
                assert isinstance(callback, str)
                assert callback.startswith(("http://", "https://"))
            except (ValueError, KeyError, TypeError, AssertionError):
                return _error(400, "invalidBody", "give {callback: URL, query?: string}")
            raw_query = str(body.get("query") or "")
            hub = Hub(str(next(self._ids)), endpoint.api.kind, endpoint.version, callback,
                      dict(parse_qsl(raw_query)))
            self._hubs[hub.id] = hub
            log.info("tmf hub registered id=%s api=%s v=%d callback=%s", hub.id, hub.api, hub.version, callback)
            return web.json_response({"id": hub.id, "callback": callback, "query": raw_query}, status=201)
        return handler

    async def _unregister(self, request: web.Request) -> web.Response:
        if self._hubs.pop(request.match_info["id"], None) is None:
            return _error(404, "notFound", "no such hub")
        return web.Response(status=204)

    async def _page(self, api: TmfApi, query: _ListQuery) -> tuple[int, list[dict[str, Any]]]:
        assert self._engine is not None
        union = _union(api, query).subquery()
        async with self._engine.connect() as conn:
            total = int(await conn.scalar(select(func.count()).select_from(union)) or 0)
            stmt = select(union).order_by(union.c.updated_at, union.c.id).offset(query.offset).limit(query.limit)
            rows = [dict(r._mapping) for r in await conn.execute(stmt)]
        return total, rows

    # --- notifications -----------------------------------------------------------------------

    async def _cursor(self) -> float | None:
        assert self._engine is not None
        async with self._engine.connect() as conn:
            try:
                value = await conn.scalar(select(SIM_STATE.c.value).where(SIM_STATE.c.key == "cursor"))
            except Exception:  # the simulator has not created its tables yet
                return None
        return None if value is None else float(value)

    async def _notify_loop(self, session: aiohttp.ClientSession) -> None:
        while True:
            await self.notify_once(session)
            await asyncio.sleep(self._tick)

    async def notify_once(self, session: aiohttp.ClientSession) -> None:
        """Send events for every row changed since the last call to every matching hub, with the
        events held back from the previous round (`hold_back`)."""
        cursor = await self._cursor()
        fresh = cursor is not None and (self._since is None or cursor > self._since)
        if not fresh and not (self._releasing and self._held):
            return
        sends = []
        if fresh and cursor is not None:
            since = -math.inf if self._since is None else self._since
            hubs = self.hubs
            for endpoint in self.endpoints:
                targets = [h for h in hubs if h.api == endpoint.api.kind and h.version == endpoint.version]
                if targets:
                    sends += await self._events(endpoint, targets, since, cursor)
            self._since = cursor
        sends = self._hold(sends)
        self.delivery.idle.clear()
        self.delivery.pending += len(sends)
        await asyncio.gather(*(self._post(session, hub, name, body) for hub, name, body in sends))
        self.delivery.idle.set()

    def _hold(self, sends: list[tuple[Hub, str, dict[str, Any]]]) -> list[tuple[Hub, str, dict[str, Any]]]:
        """What to send now: this round's events not chosen to be held, then those held last round
        (after the new ones, so a change may overtake the create event of its resource)."""
        late, self._held = self._held, []
        if self._releasing:
            self._releasing = False
            return sends + late
        out: list[tuple[Hub, str, dict[str, Any]]] = []
        for send in sends:
            (self._held if _chosen(send[2]["eventId"], self._hold_back) else out).append(send)
        return out + late

    async def _events(self, endpoint: Endpoint, hubs: Sequence[Hub], since: float,
                      until: float) -> list[tuple[Hub, str, dict[str, Any]]]:
        api = endpoint.api
        _, rows = await self._page(api, _ListQuery(limit=10**9, ranges=[("__gt__", since), ("__le__", until)]))
        out = []
        for row in rows:
            name = f"{api.resource}CreateEvent" if row["created_at"] > since else api.change_event
            doc = resource(api, endpoint.version, row["process"], row, f"{endpoint.base}/{api.resource}")
            if self._partial and name == api.change_event:
                doc = _delta(api, endpoint.version, doc)
            body = event(api, endpoint.version, name, doc, f"{row['id']}@{row['updated_at']!r}", row["updated_at"])
            out += [(hub, name, body) for hub in hubs if _matches(hub.query, row, name)]
        return out

    async def _post(self, session: aiohttp.ClientSession, hub: Hub, name: str, body: dict[str, Any]) -> None:
        delay = 0.05
        for _ in range(self._retries):
            self.delivery.attempts += 1
            try:
                async with self._limit, session.post(f"{hub.callback}/listener/{name}", json=body) as response:
                    if response.status < 300:
                        self.delivery.sent += 1
                        break
                    if 400 <= response.status < 500 and response.status != 429:
                        log.warning("tmf event refused status=%d hub=%s", response.status, hub.id)
                        self.delivery.failed += 1
                        break
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.debug("tmf event post failed hub=%s error=%r", hub.id, exc)
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 2.0)
        else:
            self.delivery.failed += 1
        self.delivery.pending -= 1


@dataclass
class _ListQuery:
    offset: int = 0
    limit: int = 100
    fields: set[str] | None = None
    ranges: list[tuple[str, float]] = field(default_factory=list)
    equals: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, api: TmfApi, params: Mapping[str, str]) -> _ListQuery:
        """Read offset, limit, fields and the filters; raise `BadRequest` on anything else."""
        query = cls()
        for key, value in params.items():
            query._read(api, key, value)
        return query

    def _read(self, api: TmfApi, key: str, value: str) -> None:
        try:
            if key in ("offset", "limit"):
                number = int(value)
                if number < 0 or (key == "limit" and not 0 < number <= MAX_LIMIT):
                    raise BadRequest(f"{key} out of range: {value}")
                setattr(self, key, number)
            elif key == "fields":
                self.fields = {f.strip() for f in value.split(",") if f.strip()}
            elif key.startswith("lastUpdate."):
                op = _RANGE.get(key.removeprefix("lastUpdate."))
                if op is None:
                    raise BadRequest(f"unknown operator in {key}")
                self.ranges.append((op, parse_time(value)))
            elif key in ("id", api.state_key) or (key == "ticketType" and api.kind == "tmf621"):
                self.equals["status" if key == api.state_key else key] = value.split(",")
            else:
                raise BadRequest(f"unsupported filter {key!r}")
        except ValueError as exc:
            raise BadRequest(f"{key}: {exc}") from exc


def _union(api: TmfApi, query: _ListQuery) -> Select[Any] | CompoundSelect[Any]:
    processes = [p for p in API_PROCESSES[api.kind] if p in query.equals.get("ticketType", [p])]
    parts = []
    for process in processes or API_PROCESSES[api.kind][:1]:
        table = TABLES[process]
        conds = [getattr(table.c.updated_at, op)(value) for op, value in query.ranges]
        conds += [table.c[key].in_(values) for key, values in query.equals.items() if key != "ticketType"]
        if not processes:
            conds.append(literal(False))
        parts.append(select(*table.c, literal(process).label("process")).where(and_(True, *conds)))
    return union_all(*parts) if len(parts) > 1 else parts[0]


def _chosen(event_id: str, share: float) -> bool:
    """Whether an event is among the `share` held back: a hash of its id, the same on every run."""
    if share <= 0.0:
        return False
    digest = hashlib.sha256(event_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") < share * 2**64


def _delta(api: TmfApi, version: int, doc: dict[str, Any]) -> dict[str, Any]:
    """What a hub that sends only what changed puts in a change event (see `TmfServer`)."""
    created = api.field_paths(version)["created_at"][0]
    keep = {"id", "@type", "href", api.state_key, "lastUpdate", *api.change_dates, EXTENSION}
    return {k: v for k, v in doc.items()
            if k in keep or (k != created and k.endswith(("Date", "date")))}


def _only(doc: dict[str, Any], fields: set[str] | None) -> dict[str, Any]:
    if fields is None:
        return doc
    keep = fields | {"id", "href", "@type"}
    return {k: v for k, v in doc.items() if k in keep}


def _matches(query: Mapping[str, str], row: Mapping[str, Any], name: str) -> bool:
    """Apply a hub's query: `eventType=` and attribute equality (`ticketType=problem`)."""
    for key, wanted in query.items():
        values = wanted.split(",")
        if key == "eventType":
            if name[0].upper() + name[1:] not in values and name not in values:
                return False
        elif key == "ticketType":
            if row["process"] not in values:
                return False
        elif str(row.get("status" if key in ("status", "state") else key)) not in values:
            return False
    return True


def _error(status: int, code: str, reason: str) -> web.Response:
    """A TMF error body: {code, reason, status}."""
    return web.json_response({"code": code, "reason": reason, "status": str(status), "@type": "Error"},
                             status=status)


def table_of(process: str) -> str:
    """Return the records table of a simulated process."""
    return PROFILES[process].table


async def _serve(dsn: str, host: str, port: int, tick: float) -> None:
    runner = web.AppRunner(TmfServer(dsn, tick=tick).app())
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("tmf server listening url=http://%s:%d/", host, port)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    """Serve a simulator database as TMF APIs until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m simulator.tmf", description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--listen", default="127.0.0.1:8080")
    parser.add_argument("--tick", type=float, default=0.5, help="seconds between event notification rounds")
    args = parser.parse_args(argv)
    host, port = args.listen.rsplit(":", 1)
    logging.basicConfig(level=logging.INFO)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.dsn, host.strip("[]"), int(port), args.tick))


if __name__ == "__main__":
    main()
