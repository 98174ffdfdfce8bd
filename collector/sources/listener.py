"""The TMF event listener: `POST /tmf/<source>/listener/<eventName>`, durable before acknowledged.

A valid event is queued to one writer task that commits what has queued up in one transaction
(group commit, `synchronous=FULL` by default) and only then answers 201: an acknowledged event
is on disk. Redelivered events (same `eventId`) are acknowledged again and stored once; an event
older than the stored resource (by its `lastUpdate`) does not overwrite it. Malformed JSON, an
unknown event type, missing ids, a body over `max_body` or a wrong secret get a 4xx with a JSON
error and are never stored.
"""

import asyncio
import base64
import contextlib
import functools
import hmac
import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from collector.errors import SourceError
from collector.health import COMMIT_BUCKETS, DurationHistogram
from collector.inventory.sources import BasicAuth, BearerAuth, TmfEventsSource
from collector.logs import log_event
from collector.sources.store import Event, Records
from collector.sources.times import maybe_time
from collector.sources.tmf import APIS, MappingError, TmfApi, checked_text, event_row
from collector.sources.typed import TypedEvents
from collector.sources.writelock import WriterLock

SECRET_HEADER = "X-Fabwatch-Secret"
Answer = Callable[[int, bytes], None]
"""Called with the HTTP status and JSON body that answer an event, once its commit is done."""
_LOG = logging.getLogger("fabwatch.listener")
_JSON = msgspec.json.Decoder()
"""Event bodies are decoded by msgspec: a third of the CPU of `json.loads` for a typical event."""
RESULTS = ("accepted", "duplicate", "ignored", "invalidJson", "invalidEvent", "unknownEventType", "eventTypeMismatch",
           "missingEventId", "missingResource", "invalidResource", "tooLarge", "unauthorized", "stopping",
           "storeFailed", "internalError")
"""Every `result` of `fab_events_received_total`: stored, a redelivery, an event of the API that
changes no work item (acknowledged, not stored), or the code of the refusal."""
NOT_REFUSED = RESULTS[:3]
"""The `result`s that are not refusals: the event is stored (or was, for a redelivery) or ignored."""
COMMITTED = ("accepted", "duplicate", "storeFailed")
"""The `result`s of the events that went through a group commit (a failed one included)."""
FORGET_EVERY = 60.0
"""Seconds between two passes that forget the event ids older than the source's `dedup_window`."""
FORGET_BATCH = 10_000
"""Rows one pass looks at, at most; a pass that finds a full batch is followed by another one second later."""


class BadEvent(Exception):
    """The request cannot be accepted; `status` and `code` go into the JSON error."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.code, self.reason = status, code, reason


class Listener:
    """Receives the events of one `tmf_events` source into its record store.

    Transport-neutral: `submit` validates an event body and queues it for the next group commit;
    the aiohttp route (`handle`) and the lean events server (`events_http`) both answer through it.
    """

    def __init__(self, name: str, source: TmfEventsSource, store: Records, lock: WriterLock | None = None) -> None:
        self.name = name
        self.lock = lock
        """Taken around each group commit and pass over old ids when several processes write the store."""
        self.source = source
        self.api: TmfApi = APIS[source.api]
        self.store = store
        self._names = {n.lower(): kind for n, kind in self.api.event_names().items()}
        self._ignored = {n.lower() for n in self.api.ignored_events}
        self._typed = TypedEvents(self.api, source.version, store.tables[0])
        """Create and change events of the usual shape are decoded and mapped by it; the others,
        and every refusal, by the general path (`_decode`, `_parse`)."""
        self._pending: list[tuple[Event, Answer]] = []
        self._wake: asyncio.Future[None] | None = None
        self._stopping = False
        self._writer: asyncio.Task[None] | None = None
        self._authorization: tuple[str, str] | None = None
        """(scheme, credentials) every event must carry in `Authorization`, when the source asks."""
        self.guarded = False
        """Whether `authorize` has anything to check (the events port skips the call otherwise)."""
        self.reread_credentials()
        self.received: dict[str, int] = dict.fromkeys(RESULTS, 0)
        """Events received so far, by result (`RESULTS`); exported as `fab_events_received_total`."""
        self.last_received = time.time()
        """Unix time of the last event stored or redelivered; at start, the newest in the store, else now."""
        self.commits = DurationHistogram(COMMIT_BUCKETS)
        """How long each group commit took, failed ones too; exported as `fab_events_commit_duration_seconds`."""
        self.incomplete = 0
        """Resources events spoke of partially that are not stored yet (`tmf_incomplete`)."""
        self.completed: dict[str, int] = {}
        """Incomplete resources that left `tmf_incomplete`, by how (`store.COMPLETED`), since the store began."""
        self.forget_every = FORGET_EVERY
        self._forget_at = 0.0
        """When (monotonic) the next pass over old event ids is due; the first is at start."""

    def reread_credentials(self) -> None:
        """Read the sender's credentials again (a bearer `token_file` rotated); raise `SourceError`
        when they cannot be read, the old ones kept."""
        self._authorization = sender_authorization(self.name, self.source.sender_auth)
        self.guarded = self.source.secret is not None or self._authorization is not None

    async def start(self) -> None:
        self._stopping = False
        self.last_received = self.store.last_received() or time.time()
        self._count_incomplete()
        self._writer = asyncio.create_task(self._write_loop(), name=f"listener-{self.name}")

    async def stop(self) -> None:
        """Stop the writer after the queued events are committed."""
        if self._writer is None:
            return
        self._stopping = True
        self._notify()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        self._writer = None

    def submit(self, name: str, raw: bytes | bytearray, answer: "Answer") -> None:
        """Validate one event body and queue it for the next group commit; `answer(status, body)`
        is called once it is committed (201) or failed to be (503). Raise `BadEvent` for anything
        that must not be stored. The transport has already called `authorize` and kept the body
        within `max_body`, before reading it."""
        if self._writer is None or self._stopping:
            raise self.refused(BadEvent(503, "stopping", "the listener is stopping; send the event again"))
        kind = self._names.get(name.lower())
        event = None if kind is None or kind == "delete" else self._typed.event(name, raw)
        if event is not None:
            self._pending.append((event, answer))
            wake = self._wake  # `_notify`, inlined: a call less an event
            if wake is not None and not wake.done():
                wake.set_result(None)
            return
        try:
            body = self._decode(raw)
            if name.lower() in self._ignored and isinstance(body, dict):
                self.received["ignored"] += 1
                answer(201, ignored_body(body.get("eventId"), name))
                return
            event = self._parse(name, body)
        except BadEvent as exc:
            self.refused(exc)
            raise
        self._pending.append((event, answer))
        self._notify()

    def refused(self, exc: BadEvent) -> BadEvent:
        """Count a refused event by its code; return the error, to raise or answer."""
        self.received[exc.code] = self.received.get(exc.code, 0) + 1
        return exc

    def internal_error(self, exc: Exception) -> BadEvent:
        """Count and log an event that failed on a fault of fabwatch's own (a bug); return the 500
        to answer: a 4xx would tell the hub not to send the event again."""
        log_event(_LOG, "event_failed", logging.ERROR, exc_info=True, source=self.name, error=repr(exc))
        return self.refused(BadEvent(500, "internalError", "fabwatch failed to handle the event; send it again"))

    def authorize(self, secret: str | None, authorization: str | None = None) -> None:
        """Check the shared secret and the sender's `Authorization`, when the source asks for them."""
        expected = self.source.secret
        wrong = expected is not None and not (expected and hmac.compare_digest((secret or "").encode(),
                                                                            expected.encode()))
        if wrong:
            raise self.refused(BadEvent(401, "unauthorized", f"missing or wrong {SECRET_HEADER}"))
        if self._authorization is not None and not _same_credentials(authorization, self._authorization):
            raise self.refused(BadEvent(401, "unauthorized", "missing or wrong Authorization"))

    async def handle(self, request: web.Request) -> web.Response:
        """The aiohttp route: validate, store durably, then acknowledge one event."""
        answered: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        try:
            self.authorize(request.headers.get(SECRET_HEADER), request.headers.get("Authorization"))
            self.submit(request.match_info["event"], await self._body(request), functools.partial(_resolve, answered))
        except BadEvent as exc:
            return _error(exc.status, exc.code, exc.reason)
        except Exception as exc:
            failed = self.internal_error(exc)
            return _error(failed.status, failed.code, failed.reason)
        status, body = await answered
        return web.Response(body=body, status=status, content_type="application/json")

    async def _body(self, request: web.Request) -> bytes | bytearray:
        limit = self.source.max_body
        if request.content_length is not None and request.content_length > limit:
            raise self.refused(BadEvent(413, "tooLarge", f"body over {limit} bytes"))
        if request.content_length is not None:
            return await request.content.read()
        raw = bytearray()
        async for chunk in request.content.iter_chunked(65536):
            raw += chunk
            if len(raw) > limit:
                raise self.refused(BadEvent(413, "tooLarge", f"body over {limit} bytes"))
        return raw

    @staticmethod
    def _decode(raw: bytes | bytearray) -> Any:
        try:
            return _JSON.decode(raw)
        except msgspec.DecodeError as exc:
            raise BadEvent(400, "invalidJson", f"malformed JSON: {exc}") from exc
        except RecursionError as exc:  # msgspec recurses per nesting level: `[[[[...` a few KB deep
            raise BadEvent(400, "invalidJson", "malformed JSON: nested too deeply") from exc

    def _parse(self, name: str, body: Any) -> Event:
        kind = self._names.get(name.lower())
        if kind is None:
            raise BadEvent(400, "unknownEventType", f"unknown event {name!r}; expected one of "
                           + ", ".join(sorted([*self.api.event_names(), *self.api.ignored_events])))
        if not isinstance(body, dict):
            raise BadEvent(400, "invalidEvent", "the event must be a JSON object")
        declared = body.get("eventType")
        if declared is not None and str(declared).lower() != name.lower():
            raise BadEvent(400, "eventTypeMismatch", f"eventType {declared!r} does not match {name!r}")
        event_id = body.get("eventId")
        if not isinstance(event_id, str) or not event_id:
            raise BadEvent(400, "missingEventId", "eventId is missing")
        _kept("eventId", event_id, "invalidEvent")
        payload = body.get("event")
        resource = payload.get(self.api.resource) if isinstance(payload, dict) else None
        if not isinstance(resource, dict) or not isinstance(resource.get("id"), str) or not resource["id"]:
            raise BadEvent(400, "missingResource", f"event.{self.api.resource}.id is missing")
        # a deletion's id too, which `event_row` never sees
        _kept(f"event.{self.api.resource}.id", resource["id"], "invalidResource")
        return self._event(name, kind, event_id, body, resource)

    def _event(self, name: str, kind: str, event_id: str, body: Mapping[str, Any],
               resource: Mapping[str, Any]) -> Event:
        try:
            when = maybe_time(body.get("eventTime") or body.get("timeOccurred") or body.get("timeOcurred"))
            row, partial = (None, False) if kind == "delete" else event_row(
                self.api, self.source.version, resource, when if when is not None else time.time())
        except (MappingError, ValueError) as exc:
            raise BadEvent(400, "invalidResource", str(exc)) from exc
        table = self.store.tables[0]
        return Event(event_id, name, table, row, str(resource["id"]), when, delete=kind == "delete", partial=partial)

    def _notify(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _write_loop(self) -> None:
        """Commit what has queued up, in batches of at most `batch_max`, until stopped and drained."""
        loop = asyncio.get_running_loop()
        while True:
            if time.monotonic() >= self._forget_at and not self._stopping:
                await self._forget()
            if not self._pending:
                if self._stopping:
                    return
                self._wake = loop.create_future()
                timer = loop.call_later(max(0.0, self._forget_at - time.monotonic()), self._notify)
                await self._wake
                timer.cancel()
                continue
            await self._gather()
            await self._commit()

    async def _gather(self) -> None:
        """Let the requests already arriving join the batch before it is taken.

        Woken by the first event after a commit, the writer would otherwise commit that event alone,
        and its fsync would hold back the others that arrive meanwhile: batches of 1 and 127, not
        of 128, for 128 concurrent senders. Each turn of the event loop reads what the sockets hold;
        gathering stops at the first turn that brings nothing (no waiting: a lone event is not held)
        or at `batch_max`.
        """
        while len(self._pending) < self.source.batch_max:
            seen = len(self._pending)
            await asyncio.sleep(0)
            if len(self._pending) == seen:
                return

    async def _forget(self) -> None:
        """Forget event ids older than `dedup_window` (one bounded batch, in a thread: it writes)."""
        try:
            if self.lock is not None:
                await self.lock.acquire()
            try:
                forgotten = await asyncio.to_thread(self.store.forget_events, time.time() - self.source.dedup_window,
                                                    FORGET_BATCH)
            finally:
                if self.lock is not None:
                    self.lock.release()
        except Exception as exc:
            log_event(_LOG, "event_ids_forget_failed", logging.WARNING, source=self.name, error=repr(exc))
            forgotten = 0
        if forgotten:
            log_event(_LOG, "event_ids_forgotten", logging.DEBUG, source=self.name, count=forgotten)
        self._count_incomplete()  # the sampler completes them from the API, on its own connection
        self._forget_at = time.monotonic() + (1.0 if forgotten >= FORGET_BATCH else self.forget_every)

    async def _commit(self) -> None:
        """Take a batch of at most `batch_max` events, write it on the loop (CPU work: a thread would
        only add switches on one core), then commit in a thread, so requests keep being parsed while
        the disk syncs; answer each. With a writer lock, the batch is taken once the lock is held:
        what arrived while another process wrote joins it."""
        started = time.perf_counter()
        batch: list[tuple[Event, Answer]] = []
        try:
            if self.lock is not None:
                await self.lock.acquire()
            try:
                limit = self.source.batch_max
                batch, self._pending = self._pending[:limit], self._pending[limit:]
                if self.store.remote:  # PostgreSQL: each statement is a round trip, the whole batch in a thread
                    fresh = await asyncio.to_thread(self.store.apply_events, [e for e, _ in batch])
                else:
                    fresh = self.store.stage_events([e for e, _ in batch])
                    try:
                        await asyncio.to_thread(self.store.commit)
                    except BaseException:
                        self.store.rollback()
                        raise
            finally:
                if self.lock is not None:
                    self.lock.release()
        except Exception as exc:
            self.commits.observe(time.perf_counter() - started)
            log_event(_LOG, "event_store_failed", logging.ERROR, source=self.name, events=len(batch), error=repr(exc))
            failed = error_body(503, "storeFailed", "the event could not be stored; send it again")
            self.received["storeFailed"] += len(batch)
            for _, answer in batch:
                self._answer(answer, 503, failed)
            return
        self.commits.observe(time.perf_counter() - started)
        new = sum(fresh)
        self.last_received = time.time()
        self.received["accepted"] += new
        self.received["duplicate"] += len(fresh) - new
        for (event, answer), is_new in zip(batch, fresh, strict=True):  # `_answer`, inlined: a call less per event
            try:
                answer(201, _ACK % (_encode(event.event_id), b"false" if is_new else b"true"))
            except Exception as exc:
                log_event(_LOG, "event_answer_failed", logging.WARNING, source=self.name, error=repr(exc))
        if self.incomplete or any(event.partial for event, _ in batch):
            self._count_incomplete()

    def _count_incomplete(self) -> None:
        """Read how many resources are incomplete, and how many were completed, from the store."""
        try:
            self.incomplete, self.completed = self.store.incomplete_counts()
        except Exception as exc:  # a count is not worth failing the listener: the next one may pass
            log_event(_LOG, "incomplete_count_failed", logging.WARNING, source=self.name, error=repr(exc))

    def _answer(self, answer: "Answer", status: int, body: bytes) -> None:
        """Answer one event; a failing answer (a vanished client) must not stop the others."""
        try:
            answer(status, body)
        except Exception as exc:
            log_event(_LOG, "event_answer_failed", logging.WARNING, source=self.name, error=repr(exc))


def _resolve(future: "asyncio.Future[tuple[int, bytes]]", status: int, body: bytes) -> None:
    """Answer the aiohttp handler waiting on `future`, unless its client has gone (cancelled)."""
    if not future.done():
        future.set_result((status, body))


_ACK = b'{"eventId":%s,"duplicate":%s}'
"""The JSON body of a 201: the event id (JSON-encoded) and whether it was a duplicate."""
_encode = msgspec.json.encode


def ignored_body(event_id: object, name: str) -> bytes:
    """The JSON body of a 201 for an event that changes no work item."""
    return json.dumps({"eventId": event_id if isinstance(event_id, str) else None, "ignored": True,
                       "reason": f"{name} changes no work item fabwatch keeps"}).encode()


def error_body(status: int, code: str, reason: str) -> bytes:
    """The JSON body of an error answer (TMF `Error`: code, reason, status)."""
    return json.dumps({"code": code, "reason": reason, "status": str(status)}).encode()


def _error(status: int, code: str, reason: str) -> web.Response:
    return web.Response(body=error_body(status, code, reason), status=status, content_type="application/json")


def _kept(what: str, value: str, code: str) -> None:
    """Refuse (400 `code`) a string the store cannot keep (`tmf.checked_text`)."""
    try:
        checked_text(what, value, ValueError)
    except ValueError as exc:
        raise BadEvent(400, code, str(exc)) from None


def sender_authorization(name: str, auth: BearerAuth | BasicAuth | None) -> tuple[str, str] | None:
    """The (scheme, credentials) a sender presents for `auth`; a bearer `token_file` is read now."""
    if auth is None:
        return None
    if isinstance(auth, BasicAuth):
        return "basic", base64.b64encode(f"{auth.username}:{auth.password}".encode()).decode("ascii")
    if auth.token is not None:
        return "bearer", auth.token
    try:
        token = Path(auth.token_file or "").read_text().strip()
    except OSError as exc:
        raise SourceError(name, f"cannot read the sender token file {auth.token_file}: {exc.strerror or exc}") from None
    if not token:  # an empty token would let in any sender presenting an empty one
        raise SourceError(name, f"the sender token file {auth.token_file} is empty")
    return "bearer", token


def _same_credentials(header: str | None, expected: tuple[str, str]) -> bool:
    """Whether an `Authorization` value carries the expected credentials (the scheme in any case),
    compared in constant time."""
    scheme, _, credentials = (header or "").strip().partition(" ")
    same = hmac.compare_digest(credentials.strip().encode(), expected[1].encode())
    return scheme.lower() == expected[0] and same and bool(expected[1])
