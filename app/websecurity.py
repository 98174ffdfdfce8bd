"""TLS, basic authentication and response headers on the service port, from the web config file.

Everything the service answers goes through `WebGuard.middleware` (metrics, health, status, the
API, reload, an unknown path's 404 too): a request without valid credentials gets 401 with
`WWW-Authenticate: Basic`. The one exception is explicit: `service.healthz_without_auth` leaves
`/healthz` open for load balancers. Passwords are checked with bcrypt in a worker thread (a check
costs tens of milliseconds of CPU) and a success is remembered under a keyed digest, so a scrape
every few seconds costs one hash a process lifetime, as in exporter-toolkit; an unknown user costs
the same hash as a wrong password, so the time of an answer does not tell which users exist.
"""

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import os
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping

import bcrypt
from aiohttp import web

from collector.inventory.webconfig import GO_CIPHER_SUITES, TlsServerConfig, WebConfig
from collector.logs import log_event

_LOG = logging.getLogger("fabwatch.auth")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REALM = "fabwatch"
CACHE_SIZE = 64
"""Credentials remembered as valid (digests, never the passwords): a few users, a few clients each."""
FAILED_ADDRESSES = 10_000
"""Addresses whose failed logins `FailedLogins` remembers at most."""
FAILED_LOG_EVERY = 10.0
"""Seconds between two `login_failed` lines for the same address; the ones in between are counted."""
_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
             "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
                "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}


_ROTATED = ("cert_file", "key_file", "client_ca_file")
"""The TLS settings a reload applies (the files are read again); the others need a restart."""


class WebConfigUnusable(Exception):
    """A file the web config names cannot be used (missing, not PEM, key not matching)."""


def tls_context(config: TlsServerConfig) -> ssl.SSLContext:
    """The server's SSL context for `tls_server_config`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[config.min_version]
    context.maximum_version = _VERSIONS[config.max_version]
    step = "tls_server_config.cert_file/key_file"
    try:
        context.load_cert_chain(config.cert_file, config.key_file)
        if config.client_ca_file is not None:
            step = "tls_server_config.client_ca_file"
            context.load_verify_locations(cafile=config.client_ca_file)
        context.verify_mode = _CLIENT_AUTH[config.client_auth_type]
        if config.cipher_suites:
            step = "tls_server_config.cipher_suites"
            context.set_ciphers(":".join(GO_CIPHER_SUITES[name] for name in config.cipher_suites))
    except (OSError, ssl.SSLError) as exc:
        raise WebConfigUnusable(f"{step}: {getattr(exc, 'strerror', None) or exc}") from None
    if config.prefer_server_cipher_suites:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    return context


class FailedLogins:
    """Log failed logins (user name, address) at most once per address every `FAILED_LOG_EVERY`
    seconds, with the number of failures in between: a brute force cannot flood the log."""

    def __init__(self, every: float = FAILED_LOG_EVERY, clock: Callable[[], float] = time.monotonic,
                 addresses: int = FAILED_ADDRESSES) -> None:
        self.every = every
        self.clock = clock
        self.addresses = addresses
        """At most this many addresses remembered (the oldest logged are forgotten first)."""
        self._seen: OrderedDict[str, tuple[float, int]] = OrderedDict()
        """Address -> (when its failure was last logged, failures not logged since), oldest logged first."""

    @property
    def tracked(self) -> int:
        """How many addresses are remembered now."""
        return len(self._seen)

    def failed(self, user: str, remote: str, path: str) -> None:
        """Count one failure; log it unless this address was logged less than `every` ago."""
        now = self.clock()
        logged, suppressed = self._seen.get(remote, (-self.every, 0))
        if now - logged < self.every:
            self._seen[remote] = (logged, suppressed + 1)  # in its place: the order is by time logged
            return
        self._seen.pop(remote, None)
        self._forget()
        self._seen[remote] = (now, 0)
        log_event(_LOG, "login_failed", logging.WARNING, user=user[:64], remote=remote, path=path,
                  suppressed_since_last=suppressed)

    def _forget(self) -> None:
        """Make room for one more address: a flood from many addresses (an IPv6 range) would grow the
        map without bound. The ones logged longest ago go (their failures since then uncounted)."""
        while self._seen and len(self._seen) >= self.addresses:
            self._seen.popitem(last=False)


class BasicAuth:
    """Check `Authorization: Basic` credentials against bcrypt hashes."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self.users = {user: hashed.encode() for user, hashed in users.items()}
        self._key = os.urandom(32)
        self._valid: OrderedDict[bytes, None] = OrderedDict()
        self._hashing = asyncio.Semaphore(2)  # a flood of guesses takes two threads, not the pool
        cost = max((int(h.split(b"$")[2]) for h in self.users.values()), default=10)
        self._unknown = bcrypt.hashpw(b"fabwatch: no such user", bcrypt.gensalt(cost))
        """Checked for an unknown user, at the users' cost: the answer takes as long as for a known one."""

    async def user(self, header: str | None) -> tuple[str, bool]:
        """(user name, whether the credentials are valid) for an `Authorization` header."""
        parsed = _basic_credentials(header)
        if parsed is None:
            return "", False
        user, password = parsed
        hashed = self.users.get(user)
        digest = hmac.new(self._key, b"%b\0%b\0%b" % (user.encode(), password.encode(), hashed or b""),
                          hashlib.sha256).digest()
        if hashed is not None and digest in self._valid:
            self._valid.move_to_end(digest)
            return user, True
        async with self._hashing:
            ok = await asyncio.to_thread(_checkpw, password.encode(), hashed or self._unknown)
        if ok and hashed is not None:
            self._valid[digest] = None
            while len(self._valid) > CACHE_SIZE:
                self._valid.popitem(last=False)
        return user, ok and hashed is not None


def _checkpw(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # a password over 72 bytes (bcrypt 5 refuses them)
        return False


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) of a `Basic` Authorization header, None when it is absent or malformed."""
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


class WebGuard:
    """What the web config asks of every request: basic authentication and response headers, and
    the listener's TLS context; `replace` applies a reloaded file to all three while serving."""

    def __init__(self, config: WebConfig, *, healthz_open: bool = False) -> None:
        self.config = config
        self.healthz_open = healthz_open
        """`service.healthz_without_auth`: `/healthz` answers without credentials."""
        self.context: ssl.SSLContext | None = None
        """The listener's TLS context (set by whoever starts the listener); `replace` makes each new
        handshake switch from it to the reloaded file's context (`_reloaded`)."""
        self._reloaded: ssl.SSLContext | None = None
        self.failures = FailedLogins()
        self._auth = BasicAuth(config.basic_auth_users) if config.basic_auth_users else None
        self._headers = config.http_server_config.headers.items()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Answer 401 to a request without valid credentials, when the config has users."""
        auth = self._auth
        if auth is None or (self.healthz_open and request.path == "/healthz"):
            return await handler(request)
        user, ok = await auth.user(request.headers.get("Authorization"))
        if not ok:
            if user or "Authorization" in request.headers:
                self.failures.failed(user or "-", request.remote or "-", request.path)
            return web.Response(status=401, text="401 Unauthorized\n",
                                headers={"WWW-Authenticate": f'Basic realm="{REALM}"'})
        return await handler(request)

    async def add_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """Send the configured `http_server_config.headers` with a response (`on_response_prepare`)."""
        if self._headers:
            response.headers.update(self._headers)

    def problems(self, new: WebConfig) -> list[str]:
        """What `new` changes that the running listener cannot take: TLS on or off, and every TLS
        setting but the certificate, key and client CA file (rotated by a reload)."""
        old_tls, new_tls = self.config.tls_server_config, new.tls_server_config
        if (old_tls is None) != (new_tls is None):
            return ["web config: tls_server_config added or removed: TLS is switched at a restart"]
        if old_tls is None or new_tls is None:
            return []
        changed = sorted(k for k in type(new_tls).model_fields
                         if k not in _ROTATED and getattr(old_tls, k) != getattr(new_tls, k))
        return [f"web config: tls_server_config.{k} changed: it takes effect at a restart" for k in changed]

    def prepare(self, new: WebConfig) -> "BasicAuth | None":
        """The basic authentication `new` asks for, built (its dummy hash made: seconds at a high
        cost, so in a worker thread) before a reload applies anything; the running one if `new`
        has the same users."""
        if new.basic_auth_users == self.config.basic_auth_users:
            return self._auth
        return BasicAuth(new.basic_auth_users) if new.basic_auth_users else None

    def replace(self, new: WebConfig, context: ssl.SSLContext | None = None,
                auth: "BasicAuth | None" = None) -> None:
        """Apply `new` (checked with `problems` first; `context` its `tls_context`, built from the
        files as they are now; `auth` what `prepare` built for it): new handshakes present its
        certificate and trust only its client CAs, new requests need its users' passwords and get
        its headers."""
        if context is not None and self.context is not None:
            # A context only adds CAs (`load_verify_locations`): a revoked one stays trusted. Each
            # handshake switches to the whole new context instead (certificate, key and CAs).
            self._reloaded = context
            self.context.sni_callback = self._switch
        if new.basic_auth_users != self.config.basic_auth_users:
            self._auth = auth if auth is not None or not new.basic_auth_users else self.prepare(new)
        self._headers = new.http_server_config.headers.items()
        self.config = new

    def _switch(self, connection: ssl.SSLObject | ssl.SSLSocket, _server_name: str | None,
                _context: ssl.SSLContext) -> None:
        """Serve a handshake with the last reloaded context (called for every client hello, with
        or without a server name)."""
        if self._reloaded is not None:
            connection.context = self._reloaded
