"""The TMF event listener: `POST /tmf/<source>/listener/<eventName>`, durable before acknowledged.

A valid event is queued to one writer task that commits what has queued up in one transaction
(group commit, `synchronous=FULL` by default) and only then answers 201: an acknowledged event
is on disk. Redelivered events (same `eventId`) are acknowledged again and stored once; an event
older than the stored resource (by its `lastUpdate`) does not overwrite it. Malformed JSON, an
unknown event type, missing ids, a body over `max_body` or a wrong secret get a 4xx with a JSON
error and are never stored.
"""

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from collector.logs import log_event
from collector.sources.schema import TmfEventsSource
from collector.sources.store import Event, RecordStore
from collector.sources.times import maybe_time
from collector.sources.tmf import APIS, MappingError, TmfApi, resource_to_row

SECRET_HEADER = "X-Fabwatch-Secret"
_LOG = logging.getLogger("fabwatch.listener")


class BadEvent(Exception):
    """The request cannot be accepted; `status` and `code` go into the JSON error."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.code, self.reason = status, code, reason


class Listener:
    """Receives the events of one `tmf_events` source into its record store."""

    def __init__(self, name: str, source: TmfEventsSource, store: RecordStore) -> None:
        self.name = name
        self.source = source
        self.api: TmfApi = APIS[source.api]
        self.store = store
        self._names = {n.lower(): kind for n, kind in self.api.event_names().items()}
        self._queue: asyncio.Queue[tuple[Event, asyncio.Future[bool]]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self.accepted = 0
        self.duplicates = 0

    async def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name=f"listener-{self.name}")

    async def stop(self) -> None:
        """Stop the writer after the queued events are committed."""
        if self._writer is None:
            return
        self._queue.put_nowait((_STOP, asyncio.get_running_loop().create_future()))
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        self._writer = None

    async def handle(self, request: web.Request) -> web.Response:
        """Validate, store durably, then acknowledge one event."""
        try:
            self._authorize(request)
            event = self._parse(request.match_info["event"], await self._body(request))
        except BadEvent as exc:
            return _error(exc.status, exc.code, exc.reason)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((event, future))
        try:
            new = await future
        except Exception as exc:
            log_event(_LOG, "event_store_failed", logging.ERROR, source=self.name, error=repr(exc))
            return _error(503, "storeFailed", "the event could not be stored; send it again")
        if new:
            self.accepted += 1
        else:
            self.duplicates += 1
        body = b'{"eventId":%s,"duplicate":%s}' % (json.dumps(event.event_id).encode(), b"false" if new else b"true")
        return web.Response(body=body, status=201, content_type="application/json")

    def _authorize(self, request: web.Request) -> None:
        secret = self.source.secret
        if secret is not None and not hmac.compare_digest(request.headers.get(SECRET_HEADER, ""), secret):
            raise BadEvent(401, "unauthorized", f"missing or wrong {SECRET_HEADER}")

    async def _body(self, request: web.Request) -> Any:
        limit = self.source.max_body
        if request.content_length is not None and request.content_length > limit:
            raise BadEvent(413, "tooLarge", f"body over {limit} bytes")
        if request.content_length is not None:
            raw: bytes | bytearray = await request.content.read()
            return self._decode(raw)
        raw = bytearray()
        async for chunk in request.content.iter_chunked(65536):
            raw += chunk
            if len(raw) > limit:
                raise BadEvent(413, "tooLarge", f"body over {limit} bytes")
        return self._decode(raw)

    @staticmethod
    def _decode(raw: bytes | bytearray) -> Any:
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadEvent(400, "invalidJson", f"malformed JSON: {exc}") from exc

    def _parse(self, name: str, body: Any) -> Event:
        kind = self._names.get(name.lower())
        if kind is None:
            raise BadEvent(400, "unknownEventType", f"unknown event {name!r}; expected one of "
                           + ", ".join(sorted(self.api.event_names())))
        if not isinstance(body, dict):
            raise BadEvent(400, "invalidEvent", "the event must be a JSON object")
        declared = body.get("eventType")
        if declared is not None and str(declared).lower() != name.lower():
            raise BadEvent(400, "eventTypeMismatch", f"eventType {declared!r} does not match {name!r}")
        event_id = body.get("eventId")
        if not isinstance(event_id, str) or not event_id:
            raise BadEvent(400, "missingEventId", "eventId is missing")
        payload = body.get("event")
        resource = payload.get(self.api.resource) if isinstance(payload, dict) else None
        if not isinstance(resource, dict) or not isinstance(resource.get("id"), str) or not resource["id"]:
            raise BadEvent(400, "missingResource", f"event.{self.api.resource}.id is missing")
        return self._event(name, kind, event_id, body, resource)

    def _event(self, name: str, kind: str, event_id: str, body: Mapping[str, Any],
               resource: Mapping[str, Any]) -> Event:
        try:
            when = maybe_time(body.get("eventTime") or body.get("timeOccurred") or body.get("timeOcurred"))
            row = None if kind == "delete" else resource_to_row(self.api, self.source.version, resource)
        except (MappingError, ValueError) as exc:
            raise BadEvent(400, "invalidResource", str(exc)) from exc
        table = self.store.tables[0]
        return Event(event_id, name, table, row, str(resource["id"]), when, delete=kind == "delete")

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.source.batch_max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            stop = any(event is _STOP for event, _ in batch)
            events = [(e, f) for e, f in batch if e is not _STOP]
            await self._commit(events)
            if stop:
                return

    async def _commit(self, batch: list[tuple[Event, "asyncio.Future[bool]"]]) -> None:
        if not batch:
            return
        try:
            fresh = await asyncio.to_thread(self.store.apply_events, [e for e, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), new in zip(batch, fresh, strict=True):
            if not future.done():
                future.set_result(new)


_STOP = Event("", "", "", None, "", None)


def _error(status: int, code: str, reason: str) -> web.Response:
    return web.json_response({"code": code, "reason": reason, "status": str(status)}, status=status)
