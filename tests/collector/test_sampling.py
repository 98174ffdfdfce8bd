"""The glue of the non-SQL sources: hub registration, incomplete resources completed from the API."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from collector.errors import SourceError
from collector.inventory.sources import TmfEventsSource
from collector.sampling import HubRegistration, build_sampler, open_store
from collector.sources.http import HttpClient, limits_of
from collector.sources.listener import Listener
from collector.sources.store import RecordStore
from collector.sources.times import format_time
from collector.sources.tmf import APIS, resource_to_row
from collector.state import StateStore
from simulator import Simulator
from tests.sources.helpers import problem_inventory, serve_app, tmf_server


@pytest.mark.parametrize("secret", [None, "s3cret"])
async def test_a_secret_a_hub_cannot_send_is_warned_of_at_start(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                                secret: str | None) -> None:
    """A TMF hub registration has no headers: with hub_url and a secret, every event would be
    refused (401) without a word at start; only the refusal alert would tell, later."""
    source = TmfEventsSource(kind="tmf_events", api="tmf621", hub_url="http://127.0.0.1:9/tmf-api/troubleTicket/v4",
                             secret=secret)
    store = RecordStore(tmp_path / "events.db", ["trouble_ticket"])
    with caplog.at_level(logging.WARNING, logger="fabwatch.sources"):
        registration = HubRegistration("tickets", source, "http://127.0.0.1:9464/tmf/tickets", store,
                                       HttpClient("tickets", limits_of(source)))
    await registration.client.close()
    store.close()
    warned = [r for r in caplog.records if r.getMessage() == "hub_cannot_send_secret"]
    assert len(warned) == (1 if secret else 0)
    if secret:
        assert "X-Fabwatch-Secret" in str(warned[0].__dict__["fabwatch_fields"]["why"])


class _Hub:
    """A TMF hub on loopback: POST /hub, DELETE /hub/{id}; `down` answers 503 to both."""

    def __init__(self) -> None:
        self.subscriptions: list[str] = []
        self.made = 0
        self.down = False

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/tmf-api/troubleTicket/v4/hub", self.register)
        app.router.add_delete("/tmf-api/troubleTicket/v4/hub/{id}", self.unregister)
        return app

    async def register(self, request: web.Request) -> web.Response:
        if self.down:
            return web.json_response({"code": "down"}, status=503)
        self.made += 1
        self.subscriptions.append(f"sub-{self.made}")
        return web.json_response({"id": self.subscriptions[-1], **await request.json()}, status=201)

    async def unregister(self, request: web.Request) -> web.Response:
        if self.down:
            return web.json_response({"code": "down"}, status=503)
        if request.match_info["id"] not in self.subscriptions:
            return web.json_response({"code": "404"}, status=404)
        self.subscriptions.remove(request.match_info["id"])
        return web.Response(status=204)


@pytest.mark.slow
async def test_a_subscription_the_hub_would_not_drop_at_a_restart_is_dropped_later(tmp_path: Path) -> None:
    """A run killed while registered leaves its subscription; the next run drops it first. If the
    hub is down then, the id used to be forgotten anyway: the hub, back, sent every event twice."""
    hub = _Hub()
    async with serve_app(hub.app()) as url:
        source = TmfEventsSource(kind="tmf_events", api="tmf621", hub_url=f"{url}/tmf-api/troubleTicket/v4")
        store = RecordStore(tmp_path / "events.db", ["trouble_ticket"])

        def registration() -> HubRegistration:
            return HubRegistration("tickets", source, "http://127.0.0.1:9464/tmf/tickets/listener", store,
                                   HttpClient("tickets", limits_of(source)))

        killed = registration()
        await killed.sync()
        await killed.client.close()  # killed: no unregistration
        assert hub.subscriptions == ["sub-1"]
        hub.down = True
        restarted = registration()
        with pytest.raises(SourceError):
            await restarted.sync()
        hub.down = False
        await restarted.sync()
        assert hub.subscriptions == ["sub-2"]  # sub-1 dropped once the hub could
        await restarted.close()
        store.close()
    assert hub.subscriptions == []


async def test_a_hub_url_with_a_query_string_gets_hub_appended_to_its_path(tmp_path: Path) -> None:
    """A gateway's key in the hub URL's query (`?apikey=...`): `/hub` used to land after the query,
    inside the key's value, and the hub answered 404 (or the gateway 401) to every registration."""
    hub = _Hub()
    keys: list[tuple[str, str]] = []

    @web.middleware
    async def gateway(request: web.Request, handler: Any) -> web.StreamResponse:
        keys.append((request.method, request.query.get("apikey", "")))
        return await handler(request)

    app = hub.app()
    app.middlewares.append(gateway)
    async with serve_app(app) as url:
        source = TmfEventsSource(kind="tmf_events", api="tmf621",
                                 hub_url=f"{url}/tmf-api/troubleTicket/v4/?apikey=gw-key")
        store = RecordStore(tmp_path / "events.db", ["trouble_ticket"])
        registration = HubRegistration("tickets", source, "http://127.0.0.1:9464/tmf/tickets/listener", store,
                                       HttpClient("tickets", limits_of(source)))
        await registration.sync()
        assert hub.subscriptions == ["sub-1"]
        await registration.close()
        store.close()
    assert hub.subscriptions == []
    assert keys == [("POST", "gw-key"), ("DELETE", "gw-key")]


async def test_a_ticket_an_event_spoke_of_partially_is_completed_from_the_api_at_the_next_sample(
        tmp_path: Path) -> None:
    """An event about a ticket fabwatch never stored is acknowledged and kept; the next sample reads
    it from the simulator's TMF621 API (`GET {base_url}/troubleTicket/{id}`), and gives up one the
    API does not know."""
    start = 1_767_225_600.0
    dsn = f"sqlite+aiosqlite:///{tmp_path / 'operator.db'}"
    simulator = Simulator(dsn, seed=5, scale=0.1)
    await simulator.create_schema()
    await simulator.backfill(2, start)
    await simulator.close()
    async with tmf_server(dsn) as (_, url):
        base = url + APIS["tmf621"].base_paths[4]
        client = HttpClient("probe", limits_of(TmfEventsSource(kind="tmf_events", api="tmf621")))
        listed = (await client.request("GET", f"{base}/troubleTicket", params={"ticketType": "problem",
                                                                                "limit": "1"})).body
        await client.close()
        known = listed[0]
        inventory = problem_inventory(tmp_path, {"kind": "tmf_events", "api": "tmf621", "base_url": base,
                                                 "store": str(tmp_path / "events.db"), "interval": "1h"})
        source = inventory.sources["src"]
        assert isinstance(source, TmfEventsSource)
        listener = Listener("src", source, open_store("src", source, inventory.processes, tmp_path / "state.db"))
        await listener.start()
        answers: list[tuple[int, bytes]] = []
        older = format_time(start - 30 * 86_400)  # than what the API has: the API's resource wins
        for ident in (known["id"], "TT-UNKNOWN"):
            body = {"eventId": f"E-{ident}", "event": {"troubleTicket": {
                "id": ident, "status": "inProgress", "statusChangeDate": older}}}
            done = asyncio.get_running_loop().create_future()
            listener.submit("troubleTicketStatusChangeEvent", json.dumps(body).encode(),
                            lambda status, reply, done=done: done.set_result((status, reply)))
            answers.append(await asyncio.wait_for(done, 10))
        assert [status for status, _ in answers] == [201, 201]
        assert listener.store.rows("trouble_ticket") == []
        assert listener.store.incomplete_counts() == (2, {"api": 0, "event": 0, "failed": 0})
        state = StateStore(tmp_path / "state.db")
        sampler = build_sampler("src", source, inventory.processes, state, inventory.service, tmp_path / "state.db")
        try:
            await sampler.open()
            await sampler.sample(start + 3 * 86_400)
        finally:
            await sampler.close()
            state.close()
        expected = resource_to_row(APIS["tmf621"], 4, known)
        stored = listener.store.rows("trouble_ticket")
        assert [(r["id"], r["created_at"], r["status"], r["priority"]) for r in stored] == [
            (known["id"], expected["created_at"], expected["status"], expected["priority"])]
        assert listener.store.incomplete_counts() == (0, {"api": 1, "event": 0, "failed": 1})
        await listener.stop()
        listener.store.close()
