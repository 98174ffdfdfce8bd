"""The simulator's TMF server: resources and events validate against the official specifications;
paging, filtering and hubs behave as TMF says."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from collector.sources.tmf import APIS, EXTENSION
from simulator import Simulator
from simulator.tmf import TmfServer
from simulator.tmf_render import API_PROCESSES, event
from tests.sources.helpers import serve_app, tmf_server
from tests.sources.tmf_spec import errors, schema_names

ENDPOINTS = [(kind, v) for kind in API_PROCESSES for v in sorted(APIS[kind].base_paths)]


@pytest.fixture(scope="module")
def operator_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    import asyncio

    path = tmp_path_factory.mktemp("tmf") / "operator.db"
    dsn = f"sqlite+aiosqlite:///{path}"

    async def fill() -> None:
        simulator = Simulator(dsn, seed=5, scale=0.1)
        await simulator.backfill(4, time.time())
        await simulator.close()

    asyncio.run(fill())
    return dsn


@pytest.fixture
async def served(operator_db: str) -> AsyncIterator[str]:
    async with tmf_server(operator_db) as (_, url):
        yield url


async def _get(url: str, **params: str) -> tuple[list[dict], dict[str, str]]:
    async with aiohttp.ClientSession() as session, session.get(url, params=params) as response:
        assert response.status == 200, await response.text()
        return await response.json(), dict(response.headers)


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "version"), ENDPOINTS)
async def test_resources_and_events_validate_against_the_specification(served: str, kind: str, version: int) -> None:
    api = APIS[kind]
    items, _ = await _get(f"{served}{api.base_paths[version]}/{api.resource}", limit="1000")
    assert len(items) > 20
    for item in items:
        assert errors(kind, version, api.type_name, item) == [], item["id"]
    for name in (f"{api.resource}CreateEvent", api.change_event):
        type_name = name[0].upper() + name[1:]
        body = event(api, version, name, items[0], "e-1", time.time())
        if type_name in schema_names(kind, version):
            assert errors(kind, version, type_name, body) == []
        else:  # TMF678 v4 defines no event schemas; TMF683 v5 names its status event differently
            payload = "PartyInteractionStatusChange" if kind == "tmf683" else None
            if payload and payload in schema_names(kind, version):
                assert errors(kind, version, payload, body) == []
            assert errors(kind, version, api.type_name, body["event"][api.resource]) == []


async def test_paging_headers_and_link(served: str) -> None:
    url = f"{served}/tmf-api/troubleTicket/v4/troubleTicket"
    everything, headers = await _get(url, limit="1000")
    total = int(headers["X-Total-Count"])
    assert total == len(everything)
    page, headers = await _get(url, limit="7", offset="3")
    assert headers["X-Result-Count"] == "7"
    assert headers["X-Total-Count"] == str(total)
    assert [p["id"] for p in page] == [e["id"] for e in everything[3:10]]
    assert "offset=10" in headers["Link"]
    assert 'rel="next"' in headers["Link"]


async def test_filters_and_fields(served: str) -> None:
    url = f"{served}/tmf-api/troubleTicket/v5/troubleTicket"
    items, _ = await _get(url, ticketType="bill_inquiry", status="resolved,closed", fields="status,priority",
                          limit="1000")
    assert items
    assert all(set(i) <= {"id", "href", "@type", "status", "priority"} for i in items)
    assert all(i["status"] in ("resolved", "closed") for i in items)
    everything, _ = await _get(url, limit="1000")
    middle = sorted(i["lastUpdate"] for i in everything)[len(everything) // 2]
    later, _ = await _get(url, **{"lastUpdate.gt": middle, "limit": "1000"})
    assert 0 < len(later) < len(everything)
    async with aiohttp.ClientSession() as session, session.get(url, params={"colour": "red"}) as response:
        assert response.status == 400
        assert (await response.json())["code"] == "invalidQuery"


async def test_hub_registration(served: str, tmp_path: Path) -> None:
    hub = f"{served}/tmf-api/productOrderingManagement/v4/hub"
    async with aiohttp.ClientSession() as session:
        async with session.post(hub, json={"callback": "http://127.0.0.1:9/cb", "query": "eventType=x"}) as reply:
            assert reply.status == 201
            body = await reply.json()
        assert errors("tmf622", 4, "EventSubscription", body) == []
        async with session.delete(f"{hub}/{body['id']}") as reply:
            assert reply.status == 204
        async with session.delete(f"{hub}/{body['id']}") as reply:
            assert reply.status == 404


START = 1_767_225_600.0  # 2026-01-01T00:00:00Z
TICKETS = "/tmf-api/troubleTicket/v4"


@contextlib.asynccontextmanager
async def _hub(options: dict[str, Any], tmp_path: Path) -> AsyncIterator[tuple[TmfServer, Simulator, list[dict]]]:
    """A TMF server with `options` over a fresh simulator database, and one TMF621 v4 hub whose
    received event bodies are collected in the yielded list."""
    dsn = f"sqlite+aiosqlite:///{tmp_path / 'operator.db'}"
    simulator = Simulator(dsn, seed=3, scale=0.1)
    await simulator.backfill(2, START)
    received: list[dict] = []

    async def listener(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=201)

    app = web.Application()
    app.router.add_post("/cb/listener/{name}", listener)
    try:
        async with serve_app(app) as hub_url, tmf_server(dsn, tick=0.02, **options) as (server, url):
            async with aiohttp.ClientSession() as session, \
                    session.post(f"{url}{TICKETS}/hub", json={"callback": f"{hub_url}/cb"}) as reply:
                assert reply.status == 201
            yield server, simulator, received
    finally:
        await simulator.close()


async def _round(server: TmfServer, simulator: Simulator, until: float) -> None:
    """Let the simulator change rows up to `until` and wait until the server has sent that round."""
    await simulator.step(until)
    async with asyncio.timeout(20):
        while server.notified_until != until or server.delivery.pending:
            await asyncio.sleep(0.02)


async def test_partial_changes_carry_only_what_changed(tmp_path: Path) -> None:
    api = APIS["tmf621"]
    async with _hub({"partial_changes": True}, tmp_path) as (server, simulator, received):
        await _round(server, simulator, START + 6 * 3600)
    changes = [e["event"]["troubleTicket"] for e in received if e["eventType"] == "TroubleTicketStatusChangeEvent"]
    creates = [e["event"]["troubleTicket"] for e in received if e["eventType"] == "TroubleTicketCreateEvent"]
    assert len(changes) > 10
    assert creates
    assert all("creationDate" in c and "priority" in c for c in creates)  # create events stay whole
    allowed = {"id", "@type", "href", "status", "lastUpdate", "statusChangeDate", "resolutionDate",
               "expectedResolutionDate", EXTENSION}
    for change in changes:
        assert {"id", "@type", "href", "status", "lastUpdate"} <= set(change), change
        assert set(change) <= allowed, change
        assert errors("tmf621", 4, api.type_name, {**change, "creationDate": change["lastUpdate"]}) == []
    assert any("resolutionDate" in c for c in changes)  # completion dates travel with the change


def _version(event_id: str) -> float:
    """The row version an event is about (the simulator's `eventId` is `<id>@<updated_at>`)."""
    return float(event_id.rsplit("@", 1)[1])


async def test_hold_back_delays_a_repeatable_share_to_the_next_round(tmp_path: Path) -> None:
    async with _hub({"hold_back": 0.4}, tmp_path) as (server, simulator, received):
        await _round(server, simulator, START + 3 * 3600)
        first = {e["eventId"] for e in received}
        held = server.held
        assert 0.2 * (len(first) + held) < held < 0.6 * (len(first) + held)
        await _round(server, simulator, START + 6 * 3600)
        later = [e["eventId"] for e in received[len(first):]]
        # the events held in the first round went out with the second, none of them twice
        late = {e for e in later if _version(e) <= START + 3 * 3600}
        assert len(late) == held
        assert not late & first
        assert server.held > 0
        still = server.held
        count = len(received)
        server.release()
        await _released(server)
        assert server.notified_until == START + 6 * 3600  # sent without a new round
        assert len(received) == count + still
    ids = [e["eventId"] for e in received]
    assert len(ids) == len(set(ids))
    assert await _held_on_a_fresh_run(tmp_path / "again") == late


async def _released(server: TmfServer) -> None:
    async with asyncio.timeout(20):
        while server.held or server.delivery.pending:
            await asyncio.sleep(0.02)


async def _held_on_a_fresh_run(directory: Path) -> set[str]:
    """The events the first round holds back when the same run starts again."""
    directory.mkdir()
    async with _hub({"hold_back": 0.4}, directory) as (server, simulator, received):
        await _round(server, simulator, START + 3 * 3600)
        first = len(received)
        server.release()
        await _released(server)
        return {e["eventId"] for e in received[first:]}
