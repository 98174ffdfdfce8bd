"""End to end with real servers: simulator -> fabwatch -> Prometheus (generated rules) -> Alertmanager -> webhook.

Simulated time runs `SPEED` times faster and the SLO windows are shrunk through the inventory's
configurable windows (SLO 10m, page 1m/10s, ticket 2m/20s) so a page arrives in about a minute.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from alerts.build import rule_files
from alerts.routing import alertmanager_config
from app.service import build_app
from collector.inventory.load import load_inventory
from simulator import Simulator
from simulator.incidents import Incident
from tests.alerts.conftest import EXAMPLE
from tests.servers import HOST, free_port

pytestmark = pytest.mark.integration
SPEED = 7200.0
PAGE_WITHIN = 100.0
HEALTHY_SPAN = 60.0


class Receiver:
    """The on-call end: a webhook receiver that records notifications and serves the runbook."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.received: dict[str, list[dict[str, Any]]] = {"page": [], "ticket": []}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{slot}", self._notify)
        app.router.add_get("/runbooks/problem", self._runbook)
        return app

    async def _notify(self, request: web.Request) -> web.Response:
        self.received[request.match_info["slot"]].append(await request.json())
        return web.Response(text="ok")

    async def _runbook(self, _request: web.Request) -> web.Response:
        return web.Response(text="<h1 id='fabslaerrorbudgetburn'>FabSlaErrorBudgetBurn</h1>", content_type="text/html")

    def pages(self) -> list[dict[str, Any]]:
        return [a for n in self.received["page"] for a in n["alerts"] if a["status"] == "firing"]


def inventory_document(dsn: str, receiver: Receiver) -> dict[str, Any]:
    """Return the example's problem process on the simulator's database, with short SLO windows."""
    problem = yaml.safe_load(EXAMPLE.read_text())["processes"]["problem"]
    problem["runbook"] = f"{receiver.url}/runbooks/problem"
    problem["kpis"] = {"resolved_in_time": {**problem["kpis"]["resolved_in_time"], "window": "10m"}}
    hook = {"webhook": {"url": f"{receiver.url}/page"}}
    return {
        "service": {"timezone": "Europe/Berlin"},
        "sources": {"operator": {"kind": "sql", "dsn": dsn, "interval": "1s", "settle": 0}},
        "processes": {"problem": problem},
        "alerting": {
            "slo": {"evaluation_interval": "1s", "raw_window_max": "1h", "min_events": 5, "at_risk_for": "1h",
                    "windows": [
                        {"severity": "critical", "long": "1m", "short": "10s", "budget_share": 0.5},
                        {"severity": "warning", "long": "2m", "short": "20s", "budget_share": 0.5}]},
            "routing": {"group_wait": "1s", "group_interval": "1s", "repeat_interval": "1m",
                        "page_repeat_interval": "1m"},
            "teams": {"assurance-ops": {"page": hook, "ticket": {"webhook": {"url": f"{receiver.url}/ticket"}}}},
        },
    }


@asynccontextmanager
async def serving(app: web.Application, port: int) -> AsyncIterator[None]:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, HOST, port).start()
    try:
        yield
    finally:
        await runner.cleanup()


async def pipeline(tmp_path: Path, prometheus_factory: Callable[..., Any], alertmanager_factory: Callable[..., Any],
                   receiver: Receiver, incident: bool, span: float) -> None:
    """Run the whole pipeline until the receiver gets a page or `span` seconds pass."""
    dsn = f"sqlite+aiosqlite:///{tmp_path / 'operator.db'}"
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(inventory_document(dsn, receiver)))
    inventory = load_inventory([path], environ={})
    now = time.time()
    incidents = [Incident("problem", "slow", 10.0, now)] if incident else []
    simulator = Simulator(dsn, speed=SPEED, incidents=incidents)
    await simulator.create_schema()
    await simulator.step(now)
    stop = asyncio.Event()
    live = asyncio.create_task(simulator.run(stop, 0.5))
    fabwatch_port = free_port()
    try:
        async with serving(build_app(inventory, state_path=tmp_path / "state.db"), fabwatch_port):
            am = alertmanager_factory(yaml.safe_dump(alertmanager_config(inventory)))
            files = {f"rules/{name}.yml": yaml.safe_dump(f.to_dict()) for name, f in rule_files(inventory).items()}
            prometheus_factory(prometheus_config(fabwatch_port, am.address), files=files)
            deadline = time.monotonic() + span
            while time.monotonic() < deadline and not receiver.pages():
                await asyncio.sleep(1.0)
    finally:
        stop.set()
        await live
        await simulator.close()


def prometheus_config(fabwatch_port: int, alertmanager: str) -> str:
    return yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules/*.yml"],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
        "scrape_configs": [{"job_name": "fabwatch", "static_configs": [{"targets": [f"{HOST}:{fabwatch_port}"]}]}],
    })


async def test_an_incident_pages_the_owning_team(tmp_path: Path, prometheus_factory: Callable[..., Any],
                                                 alertmanager_factory: Callable[..., Any]) -> None:
    receiver = Receiver()
    async with serving(receiver.app(), receiver.port):
        started = time.monotonic()
        await pipeline(tmp_path, prometheus_factory, alertmanager_factory, receiver, incident=True, span=PAGE_WITHIN)
        pages = receiver.pages()
        assert pages, f"no page within {PAGE_WITHIN}s; tickets: {receiver.received['ticket']}"
        print(f"paged after {time.monotonic() - started:.1f}s: {pages[0]}")
        labels = pages[0]["labels"]
        assert labels["alertname"] == "FabSlaErrorBudgetBurn"
        assert (labels["team"], labels["process"], labels["kpi"], labels["severity"]) == \
            ("assurance-ops", "problem", "resolved_in_time", "critical")
        runbook = pages[0]["annotations"]["runbook_url"]
        assert runbook == f"{receiver.url}/runbooks/problem#fabslaerrorbudgetburn"
        response = await asyncio.to_thread(urllib.request.urlopen, runbook.split("#")[0], None, 5.0)
        assert response.status == 200


async def test_a_healthy_operator_pages_nobody(tmp_path: Path, prometheus_factory: Callable[..., Any],
                                               alertmanager_factory: Callable[..., Any]) -> None:
    receiver = Receiver()
    async with serving(receiver.app(), receiver.port):
        await pipeline(tmp_path, prometheus_factory, alertmanager_factory, receiver, incident=False,
                       span=HEALTHY_SPAN)
    assert receiver.pages() == [], receiver.pages()
