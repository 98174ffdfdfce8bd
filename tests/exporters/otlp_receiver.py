"""An OTLP/HTTP metrics receiver for tests: `POST /v1/metrics`, decoded with the official protobuf messages."""

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from tests.servers import free_port


@dataclass
class Received:
    request: ExportMetricsServiceRequest
    headers: dict[str, str]


@dataclass
class Receiver:
    """Runs in a thread of its own (its own event loop), so sync and async tests can use it alike."""

    status: int = 200
    """What to answer: 200, or an error status to make exports fail."""
    delay: float = 0.0
    """Seconds to wait before answering (a slow or hung collector)."""
    received: list[Received] = field(default_factory=list)
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/metrics"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.delay:
            await asyncio.sleep(self.delay)
        message = ExportMetricsServiceRequest()
        message.ParseFromString(body)
        self.received.append(Received(message, dict(request.headers)))
        return web.Response(body=ExportMetricsServiceResponse().SerializeToString(), status=self.status,
                            content_type="application/x-protobuf")

    def start(self) -> None:
        self.port = free_port()
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def serve() -> web.AppRunner:
            app = web.Application()
            app.router.add_post("/v1/metrics", self._handle)
            runner = web.AppRunner(app, shutdown_timeout=0.5)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            return runner

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self.runner = self._loop.run_until_complete(serve())
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self.runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10), "the receiver did not start"

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"{len(self.received)} of {count} exports received"
            time.sleep(0.05)
        return self.received


def receiver() -> Iterator[Receiver]:
    """Fixture body: a started receiver, stopped afterwards."""
    server = Receiver()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def metrics_of(request: ExportMetricsServiceRequest) -> dict[str, Any]:
    """The metrics of an export by name (one resource, one scope)."""
    [resource] = request.resource_metrics
    [scope] = resource.scope_metrics
    return {metric.name: metric for metric in scope.metrics}


def attributes(items: Any) -> dict[str, str]:
    """KeyValue list -> dict of string values."""
    return {kv.key: kv.value.string_value for kv in items}
