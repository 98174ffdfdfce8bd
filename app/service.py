"""The aiohttp service: /metrics, /healthz, /readyz, the status page at / and the JSON API.

`build_app` wires the health tracker, the exporter and the sampling scheduler; the scheduler
and the samplers are started and stopped with the app (`cleanup_ctx`). Handlers only read what
the last samples left: a scrape never runs a query.
"""

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack
from pathlib import Path

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from collector.engine import SourceSampler
from collector.health import HealthTracker
from collector.inventory.models import Inventory, Process
from collector.logs import log_event, safe_dsn
from collector.samples import SampleSink, SourceSample
from collector.sampling import build_sampler, monthly_costs, mount_sources
from collector.scheduler import Sampler, SamplingScheduler
from collector.state import StateStore
from exporters import api, page
from exporters.prometheus import PrometheusExporter
from exporters.status import StatusBoard

INVENTORY = web.AppKey("inventory", Inventory)
HEALTH = web.AppKey("health", HealthTracker)
EXPORTER = web.AppKey("exporter", PrometheusExporter)
SCHEDULER = web.AppKey("scheduler", SamplingScheduler)

_LOG = logging.getLogger("fabwatch.service")
_ACCESS_LOG = logging.getLogger("fabwatch.access")
_VARY = "Accept, Accept-Encoding"


def processes_of(inventory: Inventory, source: str) -> dict[str, Process]:
    """Return the processes whose records live in `source`."""
    return {name: process for name, process in inventory.processes.items()
            if process.records.source == source}


def build_app(inventory: Inventory, *, state_path: str | Path | None = None,
              samplers: Mapping[str, Sampler] | None = None,
              clock: Callable[[], float] = time.time) -> web.Application:
    """Build the service for `inventory`.

    Samplers are built from the inventory (and opened and closed with the app) unless
    `samplers` is given, in which case the caller owns them. `state_path` overrides
    `service.state_path`. `clock` tells the time samples are taken at (see `shifted_clock`).
    """
    app = web.Application(middlewares=[api.json_errors])
    health = HealthTracker(inventory.sources, syncing=[n for n, s in inventory.sources.items() if s.kind != "sql"])
    app[INVENTORY] = inventory
    app[HEALTH] = health
    app[EXPORTER] = PrometheusExporter(health)
    app[api.BOARD] = StatusBoard(inventory, health, app[EXPORTER].latest)
    app.cleanup_ctx.append(_sampling(state_path, samplers, clock))
    mount_sources(app, inventory, state_path, health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    api.add_routes(app)
    page.add_routes(app)
    return app


class Sinks:
    """Hands each sample (and each health change) to several sinks: the exporter, the status board."""

    def __init__(self, *sinks: SampleSink) -> None:
        self._sinks = sinks

    def update(self, sample: SourceSample) -> None:
        """Give the sample to every sink."""
        for sink in self._sinks:
            sink.update(sample)

    def invalidate(self) -> None:
        """Tell every sink that a source's health changed."""
        for sink in self._sinks:
            sink.invalidate()


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


def _sampling(state_path: str | Path | None, given: Mapping[str, Sampler] | None,
              clock: Callable[[], float]) -> Callable[[web.Application], AsyncIterator[None]]:
    """Return the cleanup context that opens samplers, starts the scheduler, and undoes both."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        inventory = app[INVENTORY]
        async with AsyncExitStack() as stack:
            samplers = dict(given) if given is not None else await _open_samplers(
                inventory, state_path or inventory.service.state_path, stack, clock)
            # The samplers run on `clock` (a replay's shifted one); health timestamps stay real, so
            # that `time() - fab_source_last_success_timestamp_seconds` (FabSourceStale) holds.
            scheduler = SamplingScheduler(inventory.sources, samplers, app[HEALTH],
                                          Sinks(app[EXPORTER], app[api.BOARD]), timezone=inventory.service.timezone)
            app[SCHEDULER] = scheduler
            scheduler.start()
            stack.push_async_callback(scheduler.stop)  # runs first: stop sampling, then close
            yield

    return context


async def _open_samplers(inventory: Inventory, state_path: str | Path,
                         stack: AsyncExitStack, clock: Callable[[], float]) -> dict[str, Sampler]:
    """Open the state store and one sampler per source; register their closing on `stack`."""
    state = StateStore(state_path)
    stack.callback(state.close)
    samplers: dict[str, Sampler] = {}
    monthly = monthly_costs(inventory, state_path)
    for name, source in inventory.sources.items():
        sampler = build_sampler(name, source, processes_of(inventory, name), state, inventory.service, state_path,
                                monthly)
        if isinstance(sampler, SourceSampler):
            sampler.clock = clock
        await sampler.open()
        stack.push_async_callback(sampler.close)
        samplers[name] = sampler
        log_event(_LOG, "source_opened", source=name, dsn=safe_dsn(source.dsn),
                  processes=",".join(processes_of(inventory, name)) or "-")
    return samplers


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
    pending = health.not_sampled()
    down = [name for name in health.sources if name not in pending and not health.is_up(name)]
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


async def serve(app: web.Application, host: str, port: int, stop: asyncio.Event) -> None:
    """Serve `app` on host:port until `stop` is set, then shut down cleanly."""
    runner = web.AppRunner(app, access_log_class=AccessLogger, access_log=_ACCESS_LOG,
                           shutdown_timeout=5.0, handle_signals=False)
    try:
        await runner.setup()  # inside: a start-up that fails half-way still closes what it opened
        site = web.TCPSite(runner, host, port)
        await site.start()
        _freeze_startup_objects()
        log_event(_LOG, "listening", url=f"http://{_url_host(host)}:{port}/")
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
