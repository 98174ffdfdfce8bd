"""The events port: a lean HTTP/1.1 server for `POST /tmf/<source>/listener/<eventName>` only.

aiohttp spends ~200 µs of CPU per request on this hardware, ten times the cost of storing an
event. This server does what the listener needs and nothing more: httptools (llhttp, the parser
Node.js uses) parses requests, keep-alive and pipelining are kept (answers go out in request
order, a `100 Continue` too), `Expect: 100-continue` is honoured, bodies over the source's
`max_body` are refused before they are read, an `Upgrade` asked for is ignored (the request is
answered over HTTP/1.1), a client's half-close is answered before the close, and every answer
is JSON. Validation, group commit and acknowledgement
are the `Listener`'s, exactly as on the main port.
"""

import asyncio
import collections
import functools
import logging
import os
import ssl
import time
from collections.abc import Mapping
from email.utils import formatdate

import httptools

from collector.errors import CannotListen
from collector.inventory.models import EventsTls
from collector.logs import log_event
from collector.sources.listener import SECRET_HEADER, BadEvent, Listener, error_body

_LOG = logging.getLogger("fabwatch.listener")
_PREFIX = "/tmf/"
_MAX_QUEUED = 64
"""Answers a pipelining client may have outstanding before the server stops reading from it."""
IDLE_TIMEOUT = 75.0
"""Seconds a keep-alive connection may stay silent with nothing in flight (aiohttp's default)."""
HEAD_TIMEOUT = 10.0
"""Seconds a request head may take from its first byte: a client trickling one (slowloris) is cut off."""
BODY_TIMEOUT = 30.0
"""Seconds a request body may take after its head (1 MiB, the default `max_body`, at 35 KiB/s)."""
MAX_CONNECTIONS = 512
"""Connections open at once; more are closed as they are accepted (half the usual 1,024 descriptors)."""
MAX_PER_ADDRESS = 128
"""Connections open at once from one peer address (a hub pool of 128, as `bench/listener_floor.py` loads it, fits)."""
BODY_MEMORY = 64 * 1024 * 1024
"""Bytes of unfinished request bodies held by all the connections; a body that goes past it gets 503."""
RETRY_AFTER = 1
_MAX_URL = 8192
_MAX_HEADERS = 65536
_REASONS = {100: "Continue", 201: "Created", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 408: "Request Timeout", 413: "Content Too Large", 414: "URI Too Long",
            417: "Expectation Failed",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}
_MAX_HEAD = _MAX_URL + _MAX_HEADERS
"""Bytes a request head may take before it ends: httptools keeps a header it has not seen the end
of in memory, and calls back only at its end, too late to stop an endless one."""
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_SECRET = SECRET_HEADER.lower().encode()
_SECRET_SIZE = len(_SECRET)
_ROUTES_MAX = 1024
"""Routes (request target -> listener and event name) remembered per server, at most."""


class EventsServer:
    """Serves the listeners of the `tmf_events` sources on their own port."""

    def __init__(self, listeners: Mapping[str, Listener], idle_timeout: float = IDLE_TIMEOUT,
                 tls: EventsTls | None = None, *, head_timeout: float = HEAD_TIMEOUT,
                 body_timeout: float = BODY_TIMEOUT, max_connections: int = MAX_CONNECTIONS,
                 max_per_address: int = MAX_PER_ADDRESS, body_memory: int = BODY_MEMORY,
                 reuse_port: bool = False) -> None:
        self.listeners = listeners
        self.reuse_port = reuse_port
        """Bind with SO_REUSEPORT, beside the other worker processes of `serve --workers N`: the kernel
        spreads the connections over them, and each worker names itself in `X-Fabwatch-Worker`."""
        self.idle_timeout = idle_timeout
        self.head_timeout = head_timeout
        self.body_timeout = body_timeout
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.budget = _Budget(body_memory)
        self.tls = tls
        self.connections: set[_Connection] = set()
        self.per_address: dict[str, int] = {}
        self.refused: collections.Counter[str] = collections.Counter()
        """Connections closed at accept (`tooManyConnections`, `tooManyFromAddress`) and requests
        cut off (`requestTimeout`, `bodyMemory`), counted."""
        self.routes: dict[bytes, tuple[Listener, str]] = {}
        """The request targets seen, routed: a hub posts to a few, again and again."""
        self._server: asyncio.Server | None = None
        self._reaper: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> None:
        context = None if self.tls is None else tls_context(self.tls, f"{host}:{port}")
        try:
            self._server = await asyncio.get_running_loop().create_server(
                lambda: _Connection(self.listeners, self.connections, self.routes, self), host, port,
                reuse_address=True, reuse_port=self.reuse_port or None, backlog=1024, ssl=context,
                ssl_handshake_timeout=None if context is None else self.head_timeout)
        except OSError as exc:
            cause = os.strerror(exc.errno) if exc.errno else str(exc)
            raise CannotListen(exc.errno, f"cannot listen for events on {host}:{port}: {cause}") from exc
        self._reaper = asyncio.create_task(self._reap(), name="events-idle-reaper")
        if self.reuse_port:
            _Heads.name_worker(os.getpid())
        scheme = "http" if context is None else "https"
        log_event(_LOG, "events_listening", url=f"{scheme}://{host}:{port}{_PREFIX}<source>/listener/<eventName>",
                  client_certificates="required" if self.tls and self.tls.client_ca_file else "no")

    async def stop(self) -> None:
        """Stop accepting; each connection closes once its answers are written."""
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        if self._server is not None:
            self._server.close()
            self._server = None
        for connection in list(self.connections):
            connection.close_when_answered()

    def admit(self, connection: "_Connection", transport: asyncio.BaseTransport) -> bool:
        """Count a new connection in, or say it is one too many (in all, or from its address)."""
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) else ""
        from_address = self.per_address.get(address, 0)
        if len(self.connections) >= self.max_connections:
            self._refuse_connection("tooManyConnections", address, self.max_connections)
            return False
        if from_address >= self.max_per_address:
            self._refuse_connection("tooManyFromAddress", address, self.max_per_address)
            return False
        self.per_address[address] = from_address + 1
        connection.address = address
        return True

    def _refuse_connection(self, reason: str, address: str, limit: int) -> None:
        """Count a connection closed at accept; log the first of each kind (an attack logs once)."""
        self.refused[reason] += 1
        if self.refused[reason] == 1:
            log_event(_LOG, "events_connection_refused", logging.WARNING, reason=reason, peer=address, limit=limit)

    def release(self, connection: "_Connection") -> None:
        """Count a closed connection out of its address."""
        address = connection.address
        if address is not None:
            left = self.per_address.get(address, 1) - 1
            if left > 0:
                self.per_address[address] = left
            else:
                self.per_address.pop(address, None)

    async def _reap(self) -> None:
        """Every quarter of the shortest timeout, close the connections past one of them."""
        while True:
            await asyncio.sleep(min(self.idle_timeout, self.head_timeout, self.body_timeout) / 4)
            now = time.monotonic()
            for connection in list(self.connections):
                late = connection.overdue(now, self.idle_timeout, self.head_timeout, self.body_timeout)
                if late:
                    self.refused["requestTimeout"] += 1


def tls_context(tls: EventsTls, where: str) -> ssl.SSLContext:
    """The server context of the events port; a file that cannot be loaded is named in the error."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    step = "service.events_tls.cert_file/key_file"
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.client_ca_file is not None:
            step = "service.events_tls.client_ca_file"
            context.load_verify_locations(cafile=tls.client_ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise CannotListen(0, f"cannot listen for events on {where}: {step}: {exc}") from exc
    return context


class _Budget:
    """Bytes of unfinished request bodies held by a server's connections, and the most they may be."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.held = 0
        self.limit = limit


class _Request:
    """What the parser has seen of the request being received."""

    __slots__ = ("authorization", "body", "event", "expect", "length", "listener", "refused", "secret", "size",
                 "upgrade", "url")

    def __init__(self) -> None:
        self.url = b""
        self.secret: str | None = None
        self.authorization: str | None = None
        self.expect = False
        self.upgrade = False
        """An `Upgrade` header (a Java HttpClient asks for h2c): the upgrade is ignored, as HTTP allows."""
        self.length: int | None = None
        self.body: list[bytes] = []
        self.size = 0
        self.listener: Listener | None = None
        self.event = ""
        self.refused: BadEvent | None = None


class _Connection(asyncio.Protocol):
    """One client connection: parse requests, hand events to listeners, answer in order."""

    def __init__(self, listeners: Mapping[str, Listener], registry: set["_Connection"],
                 routes: dict[bytes, tuple[Listener, str]] | None = None, server: EventsServer | None = None) -> None:
        self.listeners = listeners
        self.registry = registry
        self.routes = {} if routes is None else routes
        self.server = server
        self.budget = _Budget(BODY_MEMORY) if server is None else server.budget
        self.address: str | None = None
        """The peer's address, once the server has counted the connection in."""
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.request = _Request()
        self.answers: collections.deque[list[bytes | None]] = collections.deque()
        self.closing = False
        self.paused = False
        self.active_at = time.monotonic()
        self.header_bytes = 0
        self.heads = self.messages = 0
        """Request heads and whole requests parsed so far on the connection (more heads: in a body)."""
        self.head_bytes = 0
        """Bytes received while no head ended: an endless header is refused at `_MAX_HEAD`."""
        self.since = 0.0
        """When the unfinished request's head began, or its body (0: none, as far as reads tell)."""
        self.held = 0
        """Bytes of the unfinished body counted in `budget`."""
        self.upgraded: tuple[bool, int] | None = None
        """`self.request` asked for an upgrade: (keep-alive, body bytes still to come); its body is
        read here, past the parser, which hands over everything after such a head."""

    def close_when_answered(self) -> None:
        """Read nothing more; close once every answer owed is written."""
        self.closing = True
        self._flush()

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.server is not None and not self.server.admit(self, transport):
            self.closing = True
            transport.abort()  # type: ignore[attr-defined]  # a socket transport: close now, read nothing
            return
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        self.registry.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.registry.discard(self)
        if self.server is not None:
            self.server.release(self)
        self._drop_body()

    def _drop_body(self) -> None:
        """Give back the unfinished body's bytes now (the parser and this object are a cycle, which
        only the garbage collector would free)."""
        self.budget.held -= self.held
        self.held = 0
        self.request.body = []

    def overdue(self, now: float, idle: float, head: float, body: float) -> bool:
        """Close the connection if silent for `idle`; answer 408 and close it if its request's head
        or body is late. True if a request was cut off."""
        if self.closing or self.answers or self.paused:  # answers owed: the client waits for us
            return False
        if not self.since:
            if now - self.active_at > idle:
                self.close_when_answered()
            return False
        in_head = self.heads == self.messages and self.upgraded is None
        if now - self.since <= (head if in_head else body):
            return False
        late = f"the request {'head' if in_head else 'body'} took over {head if in_head else body:g} s"
        self._drop_body()
        self._refuse_now(408, "requestTimeout", late)
        return True

    def eof_received(self) -> bool:
        """The client has sent all it will (a half-close): answer what it sent, then close."""
        self.close_when_answered()
        return True  # keep the write side open for the answers

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        now = self.active_at = time.monotonic()
        if self.upgraded is not None:
            self._upgraded_body(data)
            return
        heads, messages = self.heads, self.messages
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if self.upgraded is not None:
                self.since = now  # the ignored upgrade's body is timed as a body
                self._upgraded_body(data[int(exc.args[0]):])
            return
        except httptools.HttpParserError as exc:
            self._refuse_now(400, "badRequest", f"malformed HTTP request: {exc}")
            return
        if self.messages != messages:  # a request ended in this read; what follows it is a new one's start
            self.head_bytes = 0  # not counted: at most one read (what the transport reads at once)
            if self.held:
                self._hold(0)
            if self.heads != self.messages:  # its head ended too: in its body
                self.since = now
                self._hold(self.request.size)
            else:  # a target begun (a head's start) or nothing
                self.since = now if self.request.url else 0.0
        elif self.heads != heads:  # a head ended; its body is still to come
            self.head_bytes = 0
            self.since = now
            self._hold(self.request.size)
        elif self.heads == self.messages:  # in a head that has not ended, not in a body
            self.head_bytes += len(data)
            if not self.since:
                self.since = now
            if self.head_bytes > _MAX_HEAD and not self.closing:
                self._refuse_now(431, "headersTooLarge", f"the request head is over {_MAX_HEAD} bytes")
        else:  # further in a body
            self._hold(self.request.size)

    def _hold(self, size: int) -> None:
        """Count `size` bytes of unfinished body in the server's budget; refuse the body with 503
        (and close) when all the connections hold more than it allows."""
        budget = self.budget
        budget.held += size - self.held
        self.held = size
        if size and budget.held > budget.limit and not self.closing:
            self._drop_body()
            self.request.refused = BadEvent(503, "bodyMemory", "too many unfinished bodies; retry later")
            if self.server is not None:
                self.server.refused["bodyMemory"] += 1
            reason = f"unfinished bodies hold over {budget.limit} bytes; retry in {RETRY_AFTER} s"
            self._answer([_response(503, error_body(503, "bodyMemory", reason), False).replace(
                b"Content-Length:", b"Retry-After: %d\r\nContent-Length:" % RETRY_AFTER, 1)], False)

    def _upgraded_body(self, data: bytes) -> None:
        """Read the body of a request whose upgrade is ignored, submit it, then parse what follows
        with a new parser (the old one takes nothing after an upgrade)."""
        assert self.upgraded is not None
        keep_alive, left = self.upgraded
        body, rest = data[:left], data[left:]
        if body:
            self.on_body(body)
        self.upgraded = (keep_alive, left - len(body))
        if left > len(body) or self.closing:
            self._hold(self.request.size)
            return
        self._hold(0)
        self.since = 0.0
        request, self.upgraded, self.request = self.request, None, _Request()
        self.parser = httptools.HttpRequestParser(self)
        self._complete(request, keep_alive)
        if rest:
            self.data_received(rest)

    # --- httptools callbacks -------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self.request.url += url
        if len(self.request.url) > _MAX_URL and not self.closing:
            self._refuse_now(414, "uriTooLong", f"the request target is over {_MAX_URL} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > _MAX_HEADERS:
            if not self.closing:
                self._refuse_now(431, "headersTooLarge", f"the headers are over {_MAX_HEADERS} bytes")
            return
        size = len(name)  # compared first: most headers (Host, Content-Type) are none of these
        if size == _SECRET_SIZE and name.lower() == _SECRET:
            self.request.secret = value.decode("latin-1")
        elif size == 14 and name.lower() == b"content-length" and value.strip().isdigit():
            self.request.length = int(value)
        elif size == 6 and name.lower() == b"expect" and value.lower() == b"100-continue":
            self.request.expect = True
        elif size == 7 and name.lower() == b"upgrade":
            self.request.upgrade = True
        elif size == 13 and name.lower() == b"authorization":
            self.request.authorization = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.heads += 1
        if self.closing:
            return
        request = self.request
        try:
            route, method = self.routes.get(request.url), self.parser.get_method()
            if route is None or method != b"POST":  # `_route` for a target not seen yet, or to refuse
                route = self._route(method, request.url)
            listener = request.listener = route[0]
            request.event = route[1]
            if listener.guarded:
                listener.authorize(request.secret, request.authorization)
            if request.length is not None and request.length > listener.source.max_body:
                raise listener.refused(BadEvent(413, "tooLarge", f"body over {listener.source.max_body} bytes"))
        except BadEvent as exc:
            request.refused = exc
            if exc.status == 413 or request.expect:
                self._refuse_now(exc.status, exc.code, exc.reason)  # do not read a body we will refuse
            return
        if request.expect:
            self._answer([_CONTINUE], True)  # in turn: after the answers owed to earlier requests

    def on_body(self, body: bytes) -> None:
        request = self.request
        if self.closing or request.refused is not None or request.listener is None:
            return
        request.size += len(body)
        if request.size > request.listener.source.max_body:
            refused = request.listener.refused(
                BadEvent(413, "tooLarge", f"body over {request.listener.source.max_body} bytes"))
            self._refuse_now(refused.status, refused.code, refused.reason)
            return
        request.body.append(body)

    def on_message_complete(self) -> None:
        if self.closing:
            return
        request, keep_alive = self.request, self.parser.should_keep_alive()
        self.header_bytes = 0
        self.messages += 1
        if request.upgrade and self.parser.should_upgrade():
            self._ignore_upgrade(request, keep_alive)
            return
        self.request = _Request()  # for the next message (no on_message_begin: a call less)
        self._complete(request, keep_alive)

    def _ignore_upgrade(self, request: _Request, keep_alive: bool) -> None:
        """The parser ends a request that asks for an upgrade at its head; its body follows."""
        if request.length is None and request.refused is None:
            self._refuse_now(400, "badRequest", "a request asking for an upgrade needs a Content-Length")
            return
        self.upgraded = (keep_alive, request.length or 0)  # self.request stays: its body is still to come

    def _complete(self, request: _Request, keep_alive: bool) -> None:
        """Answer a refused request, or hand its event to the listener (answered after the commit)."""
        if request.refused is not None or request.listener is None:
            refused = request.refused or BadEvent(404, "notFound", "no such resource")
            self._answer([_response(refused.status, error_body(refused.status, refused.code, refused.reason),
                                    keep_alive)], keep_alive)
            return
        slot: list[bytes | None] = [None]
        try:
            request.listener.submit(request.event, b"".join(request.body),
                                    functools.partial(self._acknowledged, slot, keep_alive))
        except BadEvent as exc:
            slot[0] = _response(exc.status, error_body(exc.status, exc.code, exc.reason), keep_alive)
        except Exception as exc:  # not "malformed HTTP": the parser would say so and close the connection
            failed = request.listener.internal_error(exc)
            slot[0] = _response(failed.status, error_body(failed.status, failed.code, failed.reason), keep_alive)
        self._answer(slot, keep_alive)

    # --- answering -----------------------------------------------------------------------

    def _route(self, method: bytes, url: bytes) -> tuple[Listener, str]:
        """The listener and event name of `/tmf/<source>/listener/<eventName>`; BadEvent otherwise."""
        route = self.routes.get(url)
        if route is None:
            route = self._parse_route(url)
            if len(self.routes) >= _ROUTES_MAX:
                self.routes.clear()
            self.routes[url] = route
        if method != b"POST":
            raise BadEvent(405, "methodNotAllowed", f"{method.decode('latin-1')} is not allowed; use POST")
        return route

    def _parse_route(self, url: bytes) -> tuple[Listener, str]:
        path = url.split(b"?", 1)[0].decode("latin-1")
        parts = path[len(_PREFIX):].split("/") if path.startswith(_PREFIX) else []
        if len(parts) != 3 or parts[1] != "listener" or not parts[2]:
            raise BadEvent(404, "notFound", f"no such resource {path!r}; events go to "
                           "POST /tmf/<source>/listener/<eventName>")
        listener = self.listeners.get(parts[0])
        if listener is None:
            raise BadEvent(404, "unknownSource", f"no tmf_events source {parts[0]!r}")
        return listener, parts[2]

    def _acknowledged(self, slot: list[bytes | None], keep_alive: bool, status: int, body: bytes) -> None:
        """The commit is done (or failed): fill the answer slot and write what is ready."""
        head = _Heads.made.get((status, keep_alive)) if time.time() - _Heads.at < 1.0 else None
        if head is None:
            head = _Heads.head(status, keep_alive)
        slot[0] = b"%s%d\r\n\r\n%s" % (head, len(body), body)  # `_response`, inlined: two calls less an event
        self._flush()

    def _answer(self, slot: list[bytes | None], keep_alive: bool) -> None:
        """Queue an answer slot (filled now or after the commit) in request order."""
        self.answers.append(slot)
        if not keep_alive:
            self.closing = True
        if len(self.answers) > _MAX_QUEUED and self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        if slot[0] is not None:  # else nothing can go before the commit: answers leave in order
            self._flush()

    def _flush(self) -> None:
        """Write the answers that are ready, in order; close after the last one when asked to."""
        transport = self.transport
        if transport is None:
            self.answers.clear()
            return
        while self.answers and self.answers[0][0] is not None:
            transport.write(self.answers.popleft()[0])  # type: ignore[arg-type]
        if self.paused and len(self.answers) <= _MAX_QUEUED // 2:
            self.paused = False
            transport.resume_reading()
        if self.closing and not self.answers:
            transport.close()

    def _refuse_now(self, status: int, code: str, reason: str) -> None:
        """Answer an error after the answers already queued, then close: the stream is not usable."""
        self._answer([_response(status, error_body(status, code, reason), False)], False)


class _Heads:
    """Response heads up to `Content-Length: `, by status and keep-alive; made again when the
    `Date` they carry is a second old."""

    made: dict[tuple[int, bool], bytes] = {}  # noqa: RUF012 (one cache for the process)
    at = 0.0
    worker = ""
    """`X-Fabwatch-Worker: <pid>` and its line end, in a worker process of `serve --workers N`."""

    @classmethod
    def name_worker(cls, pid: int) -> None:
        """Say in every answer which worker process gave it (which one a connection landed on)."""
        cls.worker, cls.made, cls.at = f"X-Fabwatch-Worker: {pid}\r\n", {}, 0.0

    @classmethod
    def head(cls, status: int, keep_alive: bool) -> bytes:
        now = time.time()
        if now - cls.at >= 1.0:
            cls.made, cls.at = {}, now
        head = cls.made.get((status, keep_alive))
        if head is None:
            close = "" if keep_alive else "Connection: close\r\n"
            head = cls.made[(status, keep_alive)] = (
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: application/json\r\n"
                f"Date: {formatdate(now, usegmt=True)}\r\n{cls.worker}{close}Content-Length: ").encode()
        return head


def _response(status: int, body: bytes, keep_alive: bool) -> bytes:
    return b"%s%d\r\n\r\n%s" % (_Heads.head(status, keep_alive), len(body), body)
