"""Pacing: the status page and the API yield to the scrapes.

One event loop serves `/metrics`, the status page, the API and (without an events port) the TMF
events. Fifty clients looping over the page and the API as fast as they are answered keep that
loop busy a thousand times a second, and a scrape then waits behind them (p99 117 ms measured).
So the page, the API, the reports (`/reports/`) and the assets are paced: at most `rate` answers a
second, with a burst of `burst`, the others waiting their turn (a client sees a slower answer, never
an error, unless it would wait over `max_wait`: then 503 with Retry-After). `/metrics`, `/healthz`, `/readyz`,
`/-/reload` and the events are never paced.

The pace is a GCRA (the "virtual scheduling" form of a token bucket): each answer is due
`1 / rate` after the previous one, up to `burst` early.
"""

import asyncio
import math
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

RATE = 200.0
"""Answers a second the page and the API get at most: wall screens reloading every 5 s ask one per
screen every 5 s; a tenth of what the loop can serve, so a scrape never waits long."""
BURST = 50
"""How many answers may come at once before the pace applies (a page load and its assets, many screens)."""
MAX_WAIT = 10.0
"""A request that would wait longer is answered 503 at once, so waiting requests stay bounded."""
PACED = ("/api/", "/static/", "/reports")


class Pace:
    """Spaces answers `1 / rate` apart, allowing `burst` at once."""

    def __init__(self, rate: float = RATE, burst: int = BURST, max_wait: float = MAX_WAIT) -> None:
        self.interval = 1.0 / rate
        self.tolerance = burst * self.interval
        self.max_wait = max_wait
        self._due = 0.0
        """When the next answer is due at the pace (the loop's clock)."""
        self.waited = 0
        """Requests that waited their turn (for tests and the benchmark)."""

    def delay(self, now: float) -> float | None:
        """Book one answer at `now`; return how long it must wait (0: at once), or None: too long."""
        due = max(self._due, now)
        wait = due - self.tolerance - now
        if wait > self.max_wait:
            return None
        self._due = due + self.interval
        return max(0.0, wait)


def paced(pace: Pace) -> Middleware:
    """The middleware that holds requests for the page, the API and the assets to `pace`."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != "/" and not request.path.startswith(PACED):
            return await handler(request)
        wait = pace.delay(asyncio.get_running_loop().time())
        if wait is None:
            retry = {"Retry-After": str(math.ceil(pace.max_wait))}
            detail = "the status page and the API are paced so that scrapes never wait; retry later"
            if request.path.startswith("/api/"):
                return web.json_response({"error": "busy", "detail": detail}, status=503, headers=retry)
            return web.Response(status=503, text=f"busy: {detail}\n", headers=retry)
        if wait > 0:
            pace.waited += 1
            await asyncio.sleep(wait)
        return await handler(request)

    return middleware
