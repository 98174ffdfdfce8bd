"""The HTTP client every non-SQL source uses: one aiohttp session per source (connections reused),
timeouts, retries with exponential backoff and full jitter (`Retry-After` honoured), bearer, basic
or OAuth2 client-credentials auth (an expired token is re-fetched once), TLS with a custom CA, a
body size limit, and typed failures whose `reason` becomes `fab_source_errors_total{reason}`.
"""

import asyncio
import base64
import json
import math
import random
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy

from collector.errors import SourceError, SourceTimeout, SourceUnreachable
from collector.inventory.sources import Auth, BasicAuth, BearerAuth, OAuth2Auth
from collector.logs import mask_secrets, safe_dsn

MAX_RETRY_AFTER = 30.0
"""A `Retry-After` longer than this fails the sample now instead of blocking the source's job."""


class SourceHttpStatus(SourceError):
    reason = "http_status"


class SourceRateLimited(SourceError):
    reason = "rate_limited"


class SourceAuthFailed(SourceError):
    reason = "auth"


def _finite(text: str) -> float:
    """A JSON number as a float; one no float can hold (`1e400`) is refused, not made infinite."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def _not_json(name: str) -> float:
    """`NaN`, `Infinity` and `-Infinity`, which Python's parser takes and JSON (RFC 8259) does not."""
    raise ValueError(f"{name} is not a JSON value")


class SourceInvalidJson(SourceError):
    reason = "invalid_json"


class SourceTooLarge(SourceError):
    reason = "oversize"


class SourceTlsFailed(SourceUnreachable):
    """The TLS handshake failed: an untrusted or mismatched certificate (see `ca_file`)."""

    reason = "tls"


class SourceSchemaMismatch(SourceError):
    """The payload is JSON but not the shape the source expects (not a list, no id, bad date...)."""

    reason = "schema"


@dataclass(frozen=True)
class Limits:
    timeout: float
    retries: int
    backoff: float
    max_bytes: int


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    """Case-insensitive, as HTTP header names are (gateways send `x-total-count`); a header sent on
    several lines (`Link`) has all of them (`getall`)."""
    body: Any
    url: str = ""
    """The URL answered, query included: the base of a relative `Link`."""


class _Retry(Exception):
    """One attempt failed in a way worth retrying; `error` is what to raise if none is left."""

    def __init__(self, error: SourceError, wait: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.wait = wait


class HttpClient:
    """JSON over HTTP for one source."""

    def __init__(self, source: str, limits: Limits, auth: Auth | None = None, ca_file: str | None = None) -> None:
        self.source = source
        self.limits = limits
        self._auth = auth
        self._ca_file = ca_file
        self._session: aiohttp.ClientSession | None = None
        self._token: tuple[str, float] | None = None
        self.requests = 0

    async def open(self) -> None:
        if self._session is None:
            try:
                context = ssl.create_default_context(cafile=self._ca_file) if self._ca_file else None
            except (OSError, ssl.SSLError) as exc:  # a certificate file cannot be fixed by retrying
                raise SourceTlsFailed(self.source, f"ca_file {self._ca_file}: {exc}") from exc
            connector = aiohttp.TCPConnector(limit=4, ssl=context if context is not None else True)
            self._session = aiohttp.ClientSession(connector=connector, raise_for_status=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, url: str, *, params: Mapping[str, str] | None = None,
                      payload: Any = None, missing_ok: bool = False) -> Reply:
        """Send a request (retrying what may pass on a retry) and return the decoded JSON reply;
        with `missing_ok`, a 404 is a reply (status 404, body None), not an error."""
        await self.open()
        refreshed, attempt = False, 0
        while True:
            try:
                return await self._attempt(method, url, params, payload, missing_ok)
            except SourceAuthFailed:
                if refreshed or not self._refreshable():
                    raise
                refreshed, self._token = True, None  # an expired token: fetched again once, not a retry
            except _Retry as retry:
                if attempt == self.limits.retries:
                    raise retry.error from retry
                await asyncio.sleep(self._delay(attempt, retry.wait))
                attempt += 1

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        jittered = random.uniform(0, self.limits.backoff * 2**attempt)
        return max(jittered, retry_after or 0.0)

    def _refreshable(self) -> bool:
        return isinstance(self._auth, OAuth2Auth) or (isinstance(self._auth, BearerAuth)
                                                      and self._auth.token_file is not None)

    async def _attempt(self, method: str, url: str, params: Mapping[str, str] | None, payload: Any,
                       missing_ok: bool = False) -> Reply:
        assert self._session is not None
        headers = {"Accept": "application/json", **await self._auth_headers()}
        self.requests += 1
        try:
            async with asyncio.timeout(self.limits.timeout):
                async with self._session.request(method, url, params=params, json=payload,
                                                 headers=headers) as response:
                    if missing_ok and response.status == 404:
                        return Reply(404, response.headers, None, str(response.url))
                    self._check_status(response)
                    raw = await self._read(response)
                    return Reply(response.status, response.headers, self._decode(raw), str(response.url))
        except TimeoutError as exc:
            raise _Retry(SourceTimeout(self.source, f"{method} {safe_dsn(url)}: no answer within "
                                                    f"{self.limits.timeout:g}s")) from exc
        except aiohttp.ClientSSLError as exc:  # retrying cannot fix a certificate
            raise SourceTlsFailed(self.source, f"{method} {safe_dsn(url)}: TLS: {mask_secrets(str(exc))}") from exc
        except aiohttp.ClientError as exc:  # its text may quote the URL (a redirect loop, an invalid URL)
            raise _Retry(SourceUnreachable(self.source, f"{method} {safe_dsn(url)}: {mask_secrets(str(exc))}")) from exc

    def _check_status(self, response: aiohttp.ClientResponse) -> None:
        status, where = response.status, f"{response.method} {response.url.with_query(None)}"
        if status in (401, 403):
            raise SourceAuthFailed(self.source, f"{where}: HTTP {status}")
        if status == 429:
            wait = _retry_after(response.headers.get("Retry-After"))
            error = SourceRateLimited(self.source, f"{where}: HTTP 429, Retry-After {wait}")
            if wait is not None and wait > MAX_RETRY_AFTER:
                raise error
            raise _Retry(error, wait)
        if status >= 500:
            raise _Retry(SourceHttpStatus(self.source, f"{where}: HTTP {status}"))
        if status >= 300:
            raise SourceHttpStatus(self.source, f"{where}: HTTP {status}")

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        limit = self.limits.max_bytes
        if response.content_length is not None and response.content_length > limit:
            raise SourceTooLarge(self.source, f"response of {response.content_length} bytes over the "
                                              f"{limit} byte limit")
        chunks, size = [], 0
        async for chunk in response.content.iter_chunked(65536):
            size += len(chunk)
            if size > limit:
                raise SourceTooLarge(self.source, f"response over the {limit} byte limit")
            chunks.append(chunk)
        return b"".join(chunks)

    def _decode(self, raw: bytes) -> Any:
        if not raw:
            return None
        try:
            return json.loads(raw, parse_float=_finite, parse_constant=_not_json)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SourceInvalidJson(self.source, f"invalid JSON: {exc}") from exc

    def _read_token(self, path: str) -> str:
        """The bearer token of `token_file`, read at each request (a rotated token is picked up)."""
        try:
            return Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise SourceAuthFailed(self.source, f"token_file {path}: {getattr(exc, 'strerror', None) or exc}") from exc

    async def _auth_headers(self) -> dict[str, str]:
        auth = self._auth
        if isinstance(auth, BearerAuth):
            token = auth.token if auth.token is not None else self._read_token(str(auth.token_file))
            return {"Authorization": f"Bearer {token}"}
        if isinstance(auth, BasicAuth):
            return {"Authorization": basic_auth(auth.username, auth.password)}
        if isinstance(auth, OAuth2Auth):
            return {"Authorization": f"Bearer {await self._oauth2_token(auth)}"}
        return {}

    async def _oauth2_token(self, auth: OAuth2Auth) -> str:
        """Return the cached client-credentials token, fetching a new one when missing or expiring."""
        if self._token is not None and self._token[1] > time.monotonic():
            return self._token[0]
        assert self._session is not None
        form = {"grant_type": "client_credentials", **({"scope": auth.scope} if auth.scope else {})}
        try:
            async with asyncio.timeout(self.limits.timeout), self._session.post(
                    auth.token_url, data=form,
                    headers={"Authorization": basic_auth(auth.client_id, auth.client_secret)}) as reply:
                if reply.status != 200:
                    raise SourceAuthFailed(self.source, f"token endpoint answered HTTP {reply.status}")
                body = self._decode(await self._read(reply))
        except TimeoutError as exc:
            raise SourceTimeout(self.source, "token endpoint: no answer") from exc
        except aiohttp.ClientSSLError as exc:
            raise SourceTlsFailed(self.source, f"token endpoint: TLS: {mask_secrets(str(exc))}") from exc
        except aiohttp.ClientError as exc:
            raise SourceUnreachable(self.source, f"token endpoint: {mask_secrets(str(exc))}") from exc
        if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            raise SourceAuthFailed(self.source, "token endpoint returned no access_token")
        lifetime = float(body.get("expires_in") or 300)
        self._token = (body["access_token"], time.monotonic() + max(lifetime - 30.0, lifetime / 2))
        return self._token[0]


def basic_auth(user: str, password: str) -> str:
    """Return an HTTP Basic `Authorization` value (RFC 7617, UTF-8)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def limits_of(source: Any) -> Limits:
    """Build the limits of a source model that has timeout, retries, backoff and max_bytes."""
    return Limits(source.timeout, getattr(source, "retries", 2), getattr(source, "backoff", 0.5),
                  getattr(source, "max_bytes", 16 * 1024 * 1024))
