"""The status page and the API are paced so that scrapes never wait behind them."""

import asyncio

from aiohttp import web

from exporters.pace import Pace, paced


def test_a_burst_passes_then_answers_are_spaced_and_a_long_wait_is_refused():
    pace = Pace(rate=10.0, burst=3, max_wait=0.5)
    waits = [pace.delay(100.0) for _ in range(10)]
    assert waits[:4] == [0.0, 0.0, 0.0, 0.0]  # the burst (and the one due now)
    assert [round(w, 3) for w in waits[4:8]] == [0.1, 0.2, 0.3, 0.4]  # then 1 / rate apart
    assert round(waits[8], 3) == 0.5  # type: ignore[arg-type]
    assert waits[9] is None  # would wait over max_wait: refused, and not booked
    assert pace.delay(100.0 + 10.0) == 0.0  # time passed: free again


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def test_only_the_page_the_api_and_the_assets_wait(aiohttp_client):
    pace = Pace(rate=20.0, burst=2, max_wait=0.2)
    app = web.Application(middlewares=[paced(pace)])
    for path in ("/", "/api/v1/kpis", "/metrics", "/healthz"):
        app.router.add_get(path, _ok)
    client = await aiohttp_client(app)
    loop = asyncio.get_running_loop()
    started = loop.time()
    metrics = await asyncio.gather(*(client.get("/metrics") for _ in range(30)))
    assert [r.status for r in metrics] == [200] * 30
    assert pace.waited == 0  # scrapes are never paced
    answers = await asyncio.gather(*(client.get("/api/v1/kpis") for _ in range(10)))
    statuses = sorted(r.status for r in answers)
    # 2 at once + 1 due now, then 0.05 s apart up to 0.2 s of waiting: 4 more; the rest refused
    assert statuses == [200] * 7 + [503] * 3
    refused = next(r for r in answers if r.status == 503)
    assert refused.headers["Retry-After"] == "1"
    assert (await refused.json())["error"] == "busy"
    assert pace.waited == 4
    assert loop.time() - started < 2.0
