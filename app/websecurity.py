"""TLS, basic authentication and response headers on the service port, from the web config file.

Everything the service answers goes through `protect` (metrics, health, status, the API, reload,
an unknown path's 404 too): a request without valid credentials gets 401 with
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
from aiohttp.typedefs import Middleware

from collector.inventory.webconfig import GO_CIPHER_SUITES, TlsServerConfig, WebConfig
from collector.logs import log_event

_LOG = logging.getLogger("fabwatch.auth")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REALM = "fabwatch"
CACHE_SIZE = 64
"""Credentials remembered as valid (digests, never the passwords): a few users, a few clients each."""
FAILED_LOG_EVERY = 10.0
"""Seconds between two `login_failed` lines for the same address; the ones in between are counted."""
_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
             "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
                "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}


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

    def __init__(self, every: float = FAILED_LOG_EVERY, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def failed(self, user: str, remote: str, path: str) -> None:
        """Count one failure; log it unless this address was logged less than `every` ago."""
        now = self.clock()
        if now - self._last.get(remote, -self.every) < self.every:
            self._suppressed[remote] = self._suppressed.get(remote, 0) + 1
            return
        if len(self._last) > 10_000:  # many addresses: forget those logged long ago
            self._last = {a: t for a, t in self._last.items() if now - t < self.every}
        self._last[remote] = now
        log_event(_LOG, "login_failed", logging.WARNING, user=user[:64], remote=remote, path=path,
                  suppressed_since_last=self._suppressed.pop(remote, 0))


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


def protect(config: WebConfig, *, healthz_open: bool = False) -> list[Middleware]:
    """The middlewares that make the service answer only to valid credentials (when the config
    has `basic_auth_users`); `healthz_open` leaves `/healthz` open."""
    if not config.basic_auth_users:
        return []
    auth = BasicAuth(config.basic_auth_users)
    failures = FailedLogins()

    @web.middleware
    async def basic_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if healthz_open and request.path == "/healthz":
            return await handler(request)
        user, ok = await auth.user(request.headers.get("Authorization"))
        if not ok:
            if user or "Authorization" in request.headers:
                failures.failed(user or "-", request.remote or "-", request.path)
            return web.Response(status=401, text="401 Unauthorized\n",
                                headers={"WWW-Authenticate": f'Basic realm="{REALM}"'})
        return await handler(request)

    return [basic_auth]


def add_headers(app: web.Application, config: WebConfig) -> None:
    """Send the configured `http_server_config.headers` with every response."""
    headers = config.http_server_config.headers.items()
    if not headers:
        return

    async def prepare(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(headers)

    app.on_response_prepare.append(prepare)
