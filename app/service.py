"""The aiohttp service: /metrics, /healthz, /readyz, /-/reload, the status page at /, the JSON API and
the monthly reports at /reports/ (written, and mailed, on the inventory's `reports.schedule`).

`build_app` wires the health tracker, the exporter and the sampling scheduler; the scheduler
and the samplers are started and stopped with the app (`cleanup_ctx`), and replaced by a reload
(`app.reload`). Handlers only read what the last samples left: a scrape never runs a query.
"""

import asyncio
import gc
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Middleware
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from app.delivery import ReportSchedule
from app.reload import LiveSampling, ReloadRefused
from app.rolling import Rolling
from app.workers import EventsWorkers
from collector.health import HealthTracker
from collector.inventory.load import ConfigError
from collector.inventory.models import Inventory
from collector.inventory.webconfig import WebConfig
from collector.logs import log_event
from collector.sampling import LISTENERS, mount_sources
from collector.scheduler import Sampler, SamplingScheduler
from exporters import api, page, reportfiles
from exporters.otlp import OtlpExporter, otlp_settings
from exporters.pace import Pace, paced
from exporters.prometheus import PrometheusExporter
from exporters.status import StatusBoard

if TYPE_CHECKING:
    from app.websecurity import BasicAuth, WebGuard

INVENTORY = web.AppKey("inventory", Inventory)
"""The inventory the service started with; after a reload, `app[LIVE].inventory` is the running one."""
HEALTH = web.AppKey("health", HealthTracker)
EXPORTER = web.AppKey("exporter", PrometheusExporter)
SCHEDULER = web.AppKey("scheduler", SamplingScheduler)
"""The scheduler started with the app; after a reload, `app[LIVE].scheduler` is the running one."""
LIVE = web.AppKey("live", LiveSampling)
LOADER = web.AppKey[Callable[[], Inventory] | None]("loader")
GUARD = web.AppKey[Optional["WebGuard"]]("guard")
WEB_LOADER = web.AppKey[Callable[[], WebConfig] | None]("web_loader")
WORKERS = web.AppKey("workers", EventsWorkers)
"""Present with `serve --workers N`: the worker processes that serve the events port."""
OTLP = web.AppKey("otlp", OtlpExporter)
"""Present when OTLP export is on (the inventory's `exporters.otlp` or `OTEL_METRICS_EXPORTER=otlp`)."""

_LOG = logging.getLogger("fabwatch.service")
_ACCESS_LOG = logging.getLogger("fabwatch.access")
_VARY = "Accept, Accept-Encoding"


def build_app(inventory: Inventory, *, state_path: str | Path | None = None,
              samplers: Mapping[str, Sampler] | None = None,
              clock: Callable[[], float] = time.time, web_config: WebConfig | None = None,
              loader: Callable[[], Inventory] | None = None,
              web_loader: Callable[[], WebConfig] | None = None,
              environ: Mapping[str, str] | None = None, replica: str | None = None,
              workers: EventsWorkers | None = None, backfill: bool = True) -> web.Application:
    """Build the service for `inventory`.

    Samplers are built from the inventory (and opened and closed with the app) unless
    `samplers` is given, in which case the caller owns them. `state_path` overrides
    `service.state_path`. `clock` tells the time samples are taken at (see `shifted_clock`).
    `web_config` (the exporter-toolkit file) adds basic authentication to every path and its
    response headers; its TLS is the listener's (`serve`). `loader` reads the inventory again for a
    reload (`POST /-/reload`, SIGHUP); without it, the service cannot reload. `web_loader` reads the
    web config again at each reload (new certificate, users, headers).
    `environ` (default `os.environ`) holds the `OTEL_*` variables that may switch OTLP export on;
    a bad OTLP setting raises `OtlpSettingsError`. `replica`: this replica's id when the state is a
    PostgreSQL URL shared by replicas (see `collector.leases`).
    `workers` serve the events port in processes of their own (`serve --workers N`), started and
    stopped with the app; this one then serves none of it.
    `backfill=False` leaves out the first start's backfill of the daily rollups (tests that choreograph
    the database's locks).
    """
    guard = _guard(web_config, inventory)
    inner: list[Middleware] = [paced(Pace()), api.json_errors]  # the page and the API yield to scrapes
    app = web.Application(middlewares=inner if guard is None else [guard.middleware, *inner])
    health = HealthTracker(inventory.sources, syncing=[n for n, s in inventory.sources.items() if s.kind != "sql"])
    app[INVENTORY] = inventory
    app[HEALTH] = health
    app[EXPORTER] = PrometheusExporter(health)
    app[api.BOARD] = board = StatusBoard(inventory, health, app[EXPORTER].latest)
    settings = otlp_settings(inventory.exporters.otlp, os.environ if environ is None else environ)
    if settings is not None:
        app[OTLP] = OtlpExporter(settings, health, on_error=app[EXPORTER].invalidate,
                                 state_path=state_path or inventory.service.state_path)
        app.cleanup_ctx.append(_pushing(app[OTLP]))  # before sampling: stopped after it, for a last push
    pushed = (app[OTLP],) if settings is not None else ()
    # a caller's own samplers (tests, replays) read no records of their own: nothing to roll up either;
    # on a shared PostgreSQL state, each replica re-rolls the sources it holds the lease of (`health.owned`)
    rolling = (Rolling(inventory, state_path, clock, health, app[EXPORTER].invalidate, backfill=backfill)
               if samplers is None else None)
    schedule = ReportSchedule(inventory, state_path, clock, health, on_change=app[EXPORTER].invalidate,
                              replica=lambda: _replica(app))
    app[LIVE] = LiveSampling(inventory, health, app[EXPORTER], state_path=state_path, clock=clock, given=samplers,
                             sinks=(board, *pushed),
                             on_reload=(board.replace_inventory, *(otlp.reloaded for otlp in pushed),
                                        *([rolling.replace_inventory] if rolling else []),
                                        schedule.replace_inventory),
                             forget=tuple(otlp.forget for otlp in pushed), replica=replica)
    app[LOADER] = loader
    app[GUARD] = guard
    app[WEB_LOADER] = web_loader
    app.cleanup_ctx.append(_sampling(app[LIVE]))
    if rolling is not None:
        app.cleanup_ctx.append(_rolling(rolling))
    app.cleanup_ctx.append(_reporting(schedule))
    mount_sources(app, inventory, state_path, health, listen=workers is None)
    if workers is not None:
        app[WORKERS] = workers
        health.workers = workers
        health.intake.update(workers.intakes)
        health.completions.update(workers.intakes)
        app.cleanup_ctx.append(_working(workers))
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_post("/-/reload", reload_endpoint)
    api.add_routes(app)
    page.add_routes(app)
    reportfiles.add_routes(app, schedule.directory, inventory.service.timezone)
    if guard is not None:
        app.on_response_prepare.append(guard.add_headers)
    return app


def _replica(app: web.Application) -> str | None:
    """This replica's id once sampling started on a shared state (None: a SQLite state, one process)."""
    leases = app[LIVE].leases if LIVE in app else None
    return None if leases is None else leases.replica


def _guard(web_config: WebConfig | None, inventory: Inventory) -> "WebGuard | None":
    if web_config is None:
        return None
    from app.websecurity import WebGuard  # bcrypt only when the service is configured for it

    return WebGuard(web_config, healthz_open=inventory.service.healthz_without_auth)


def shifted_clock(start: float, rate: float = 1.0) -> Callable[[], float]:
    """A clock that reads `start` now and runs on from there, `rate` seconds per real second.

    For replaying a recorded or generated dataset whose timestamps end at a fixed instant
    (benchmarks, tests): sampling windows and watermarks then move over the data as they would
    have when it was live. A `rate` above 1 runs simulated time faster (a soak: weeks in minutes).
    Timestamps that Prometheus stores are its own and stay real.
    """
    began = time.time()
    if rate == 1.0:
        offset = start - began
        return lambda: time.time() + offset
    return lambda: start + (time.time() - began) * rate


def _pushing(otlp: OtlpExporter) -> Callable[[web.Application], AsyncIterator[None]]:
    """Return the cleanup context that starts the OTLP exporter and stops it (with a last push)."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        await otlp.start()
        try:
            yield
        finally:
            await otlp.stop()

    return context


def _sampling(live: LiveSampling) -> Callable[[web.Application], AsyncIterator[None]]:
    """Return the cleanup context that opens samplers and starts the scheduler, and undoes both."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        try:
            app[SCHEDULER] = await live.start()  # the first one; a reload starts another (`live.scheduler`)
            yield
        finally:
            await live.stop()  # stop sampling, then close

    return context


def _working(workers: EventsWorkers) -> Callable[[web.Application], AsyncIterator[None]]:
    """Return the cleanup context that starts the events port's workers and stops them."""

    async def context(_app: web.Application) -> AsyncIterator[None]:
        await workers.start()
        try:
            yield
        finally:
            await workers.stop()

    return context


def _rolling(rolling: Rolling) -> Callable[[web.Application], AsyncIterator[None]]:
    """Return the cleanup context that keeps the daily rollups current while the app runs."""

    async def context(_app: web.Application) -> AsyncIterator[None]:
        rolling.start()
        try:
            yield
        finally:
            await rolling.stop()

    return context


def _reporting(schedule: ReportSchedule) -> Callable[[web.Application], AsyncIterator[None]]:
    """Return the cleanup context that runs the scheduled monthly report while the app runs."""

    async def context(_app: web.Application) -> AsyncIterator[None]:
        schedule.start()
        try:
            yield
        finally:
            await schedule.stop()

    return context


async def reload_inventory(app: web.Application) -> list[str]:
    """Re-read the inventory and apply it; return the problems that refused it (none: applied).
    The outcome is logged and exported (`fab_config_last_reload_successful`)."""
    loader = app[LOADER]
    if loader is None:
        return ["this service was not started from inventory files: nothing to reload"]
    web_config, context, auth, problems = await _reload_web_config(app)
    if problems:
        app[HEALTH].reload_failed()
        app[EXPORTER].invalidate()
        for problem in problems:
            log_event(_LOG, "reload_refused", logging.ERROR, problem=problem, kept="the last good inventory")
        return problems
    try:
        await app[LIVE].reload(lambda: asyncio.to_thread(loader))
    except ConfigError as exc:
        problems = [str(problem) for problem in exc.problems]
    except ReloadRefused as exc:
        problems = exc.problems
    except Exception as exc:  # a store that cannot be opened: the old inventory runs on
        log_event(_LOG, "reload_failed", logging.ERROR, exc_info=True, error=repr(exc))
        return [f"the new inventory could not be opened: {exc!r}"]
    else:
        guard = app[GUARD]
        if guard is not None and web_config is not None:
            guard.replace(web_config, context, auth)
        _reread_sender_credentials(app)
        if WORKERS in app:
            app[WORKERS].reload()
        return []
    for problem in problems:
        log_event(_LOG, "reload_refused", logging.ERROR, problem=problem, kept="the last good inventory")
    return problems


def _reread_sender_credentials(app: web.Application) -> None:
    """After a reload: the listeners of this process read their senders' credentials again (a rotated
    bearer `token_file`), as the workers of `serve --workers N` do on the SIGHUP passed on to them.
    An unreadable file keeps the old credentials, logged."""
    for name, listener in app.get(LISTENERS, {}).items():
        try:
            listener.reread_credentials()
        except Exception as exc:
            log_event(_LOG, "sender_credentials_reload_failed", logging.ERROR, source=name, error=repr(exc),
                      kept="the credentials read before")


async def _reload_web_config(app: web.Application) -> tuple[WebConfig | None, ssl.SSLContext | None,
                                                            "BasicAuth | None", list[str]]:
    """Read the web config file again and check it can replace the running one (its TLS context and
    basic authentication built, nothing changed that needs a restart), before the inventory is
    swapped: a bad web config refuses the whole reload. (None, None, None, []) when there is none."""
    guard, loader = app[GUARD], app[WEB_LOADER]
    if guard is None or loader is None:
        return None, None, None, []
    from app.websecurity import WebConfigUnusable, tls_context

    try:
        new = await asyncio.to_thread(loader)
    except ConfigError as exc:
        return None, None, None, [f"web config: {problem}" for problem in exc.problems]
    problems = guard.problems(new)
    context, auth = None, None
    if not problems and new.tls_server_config is not None:
        try:
            context = await asyncio.to_thread(tls_context, new.tls_server_config)
        except WebConfigUnusable as exc:
            problems.append(f"web config: {exc}")
    if not problems:
        try:
            auth = await asyncio.to_thread(guard.prepare, new)
        except ValueError as exc:  # bcrypt refusing a hash the file's check let through
            problems.append(f"web config: basic_auth_users: {exc}")
    return new, context, auth, problems


async def reload_endpoint(request: web.Request) -> web.Response:
    """POST /-/reload: 200 when the new inventory runs, 400 with the problems when it was refused."""
    problems = await reload_inventory(request.app)
    if problems:
        return web.json_response({"status": "refused", "problems": problems}, status=400)
    return web.json_response({"status": "reloaded"})


async def metrics(request: web.Request) -> web.Response:
    """Serve the cached exposition in the negotiated format and encoding."""
    await request.app[EXPORTER].ready()
    exposition = request.app[EXPORTER].respond(request.headers.get("Accept"),
                                               request.headers.get("Accept-Encoding"))
    headers = {"Content-Type": exposition.content_type, "Vary": _VARY}
    if exposition.encoding:
        headers["Content-Encoding"] = exposition.encoding
    return web.Response(body=exposition.body, headers=headers)


async def healthz(request: web.Request) -> web.Response:
    """Answer 200 while the process serves requests."""
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    """200 once every source has been sampled at least once (successfully or not), else 503."""
    health = request.app[HEALTH]
    # of the sources this replica samples: all of them, but for replicas on a shared state
    pending = [name for name in health.not_sampled() if health.owned(name)]
    down = [name for name in health.sources if name not in pending and health.owned(name) and not health.is_up(name)]
    if pending:
        return web.json_response({"status": "not ready", "not_sampled": pending, "down": down},
                                 status=503)
    return web.json_response({"status": "ready", "sources": list(health.sources), "down": down})


class AccessLogger(AbstractAccessLogger):
    """Access log as key=value events, at DEBUG so that scrapes don't flood the log."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        """Log one request."""
        log_event(self.logger, "http_request", logging.DEBUG, method=request.method,
                  path=request.path, status=response.status, bytes=response.body_length,
                  seconds=round(time, 6), remote=request.remote or "-")

    @property
    def enabled(self) -> bool:
        """Skip the work when DEBUG is off."""
        return self.logger.isEnabledFor(logging.DEBUG)


async def serve(app: web.Application, host: str, port: int, stop: asyncio.Event,
                ssl_context: ssl.SSLContext | None = None) -> None:
    """Serve `app` on host:port (HTTPS with `ssl_context`) until `stop` is set, then shut down cleanly."""
    runner = web.AppRunner(app, access_log_class=AccessLogger, access_log=_ACCESS_LOG,
                           shutdown_timeout=5.0, handle_signals=False)
    try:
        await runner.setup()  # inside: a start-up that fails half-way still closes what it opened
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
        await site.start()
        _freeze_startup_objects()
        scheme = "http" if ssl_context is None else "https"
        log_event(_LOG, "listening", url=f"{scheme}://{_url_host(host)}:{port}/")
        await stop.wait()
    finally:
        log_event(_LOG, "stopping")
        await runner.cleanup()


def _freeze_startup_objects() -> None:
    """Move what start-up built (modules, models, statements: a few hundred thousand objects) out
    of the cyclic collector's reach: they live as long as the process, and every full collection
    would walk them again, on the same core that answers scrapes and events."""
    gc.collect()
    gc.freeze()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
