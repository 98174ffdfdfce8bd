"""The simulator's TMF server: resources and events validate against the official specifications;
paging, filtering and hubs behave as TMF says."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from collector.sources.tmf import APIS
from simulator import Simulator
from simulator.tmf_render import API_PROCESSES, event
from tests.sources.helpers import tmf_server
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
