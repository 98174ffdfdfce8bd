"""The TMF event listener of the service: durable acknowledgement, duplicates, order, bad events.

Every test runs twice: through the main port's aiohttp route and through the events port.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest
from aiohttp import web

from app.service import EXPORTER, build_app
from collector.errors import SourceError
from collector.inventory.sources import BearerAuth
from collector.sources.listener import RESULTS, sender_authorization
from collector.sources.times import format_time
from collector.sources.typed import TypedEvents
from tests.servers import free_port
from tests.sources.helpers import API_OF, example, serve_app, stored_events, stored_rows

T0 = 1_767_225_600.0
SECRET = "s3cret"


def ticket(ident: str, status: str, updated: float) -> dict[str, Any]:
    return {"id": ident, "@type": "TroubleTicket", "status": status, "ticketType": "problem",
            "creationDate": format_time(T0), "lastUpdate": format_time(updated), "priority": "high"}


def envelope(event_id: str, resource: dict[str, Any], *, v5: bool = False,
             name: str = "TroubleTicketStatusChangeEvent") -> dict[str, Any]:
    body = {"eventId": event_id, "eventTime": resource["lastUpdate"], "eventType": name,
            "event": {"troubleTicket": resource}}
    body["timeOccurred" if v5 else "timeOcurred"] = resource["lastUpdate"]
    return body


class Served(NamedTuple):
    url: str
    """The listener base URL: `<base>/tmf/tickets/listener`."""
    store: str
    """The record store: a SQLite file or a PostgreSQL URL (every test runs on both)."""
    app: web.Application
    base: str
    """The main port's URL (`/metrics`)."""


@pytest.fixture(params=["main", "events"])
async def listener(tmp_path: Path, request: pytest.FixtureRequest, store_location: str) -> AsyncIterator[Served]:
    port, events_port = free_port(), free_port()
    store = store_location
    sources = {"sql": {"kind": "sql", "dsn": f"sqlite+aiosqlite:///{tmp_path / 'none.db'}"},
               "tickets": {"kind": "tmf_events", "api": "tmf621", "store": store, "secret": SECRET,
                           "max_body": 4096}}
    inventory = example(sources, {p: "tickets" if p == "problem" else "sql" for p in API_OF},
                        tmp_path / "state.db")
    if request.param == "events":
        service = inventory.service.model_copy(update={"events_listen": f"127.0.0.1:{events_port}"})
        inventory = inventory.model_copy(update={"service": service})
    app = build_app(inventory)
    async with serve_app(app, port=port) as url:
        base = url if request.param == "main" else f"http://127.0.0.1:{events_port}"
        yield Served(f"{base}/tmf/tickets/listener", store, app, url)


async def _post(url: str, body: Any, *, secret: str = SECRET, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "X-Fabwatch-Secret": secret}
    async with aiohttp.ClientSession() as session, session.post(url, data=data, headers=headers) as response:
        return response.status, await response.json()


async def _received(served: Served) -> dict[str, float]:
    """`fab_events_received_total` of source `tickets` by result, as /metrics shows it now."""
    served.app[EXPORTER].invalidate()  # the exposition is rendered per sample; render it now
    async with aiohttp.ClientSession() as session, session.get(f"{served.base}/metrics") as response:
        text = await response.text()
    prefix = 'fab_events_received_total{result="'
    return {line[len(prefix):].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith(prefix) and 'source="tickets"' in line}


def _rows(store: str) -> list[tuple[Any, ...]]:
    return [(r["id"], r["status"], r["updated_at"], r["reopened"]) for r in stored_rows(store, "tickets",
                                                                                        "trouble_ticket")]


async def test_acknowledged_events_are_stored_once_and_the_newest_version_wins(listener: Served) -> None:
    url, store = listener.url, listener.store
    create = envelope("e1", ticket("TT-1", "acknowledged", T0), name="TroubleTicketCreateEvent")
    assert (await _post(f"{url}/troubleTicketCreateEvent", create))[0] == 201
    resolved = envelope("e3", ticket("TT-1", "resolved", T0 + 300), v5=True)
    assert await _post(f"{url}/troubleTicketStatusChangeEvent", resolved) == (
        201, {"eventId": "e3", "duplicate": False})
    late = envelope("e2", ticket("TT-1", "inProgress", T0 + 100))  # arrives after a newer version
    assert (await _post(f"{url}/troubleTicketStatusChangeEvent", late))[0] == 201
    assert _rows(store) == [("TT-1", "resolved", T0 + 300, 0)]
    assert await _post(f"{url}/troubleTicketStatusChangeEvent", resolved) == (
        201, {"eventId": "e3", "duplicate": True})
    reopened = envelope("e4", ticket("TT-1", "inProgress", T0 + 900))
    assert (await _post(f"{url}/troubleTicketStatusChangeEvent", reopened))[0] == 201
    assert _rows(store) == [("TT-1", "inProgress", T0 + 900, 1)]  # resolved -> inProgress is a reopen
    assert stored_events(store) == 4
    assert await _received(listener) == {**dict.fromkeys(RESULTS, 0.0), "accepted": 4.0, "duplicate": 1.0}


@pytest.mark.parametrize(("event_name", "body", "raw", "secret", "status", "code"), [
    ("troubleTicketStatusChangeEvent", None, b"{not json", SECRET, 400, "invalidJson"),
    ("troubleTicketStatusChangeEvent", None, b"[" * 2000 + b"]" * 2000, SECRET, 400, "invalidJson"),  # too deep
    ("troubleTicketExplodedEvent", envelope("x1", ticket("TT-9", "held", T0)), None, SECRET, 400,
     "unknownEventType"),
    ("troubleTicketStatusChangeEvent", {"event": {"troubleTicket": ticket("TT-9", "held", T0)}}, None, SECRET,
     400, "missingEventId"),
    ("troubleTicketStatusChangeEvent", {"eventId": "x2", "event": {"troubleTicket": {"status": "held"}}}, None,
     SECRET, 400, "missingResource"),
    ("troubleTicketStatusChangeEvent", envelope("x3", {**ticket("TT-9", "held", T0), "creationDate": "yesterday"}),
     None, SECRET, 400, "invalidResource"),
    ("troubleTicketStatusChangeEvent", envelope("x7", {**ticket("TT-9", "held", T0), "fabwatch": {"amount": 10**400}}),
     None, SECRET, 400, "invalidResource"),  # an integer no float can hold
    ("troubleTicketStatusChangeEvent", envelope("x4", {**ticket("TT-9", "held", T0), "note": "x" * 5000}), None,
     SECRET, 413, "tooLarge"),
    ("troubleTicketStatusChangeEvent", envelope("x5", ticket("TT-9", "held", T0)), None, "wrong", 401,
     "unauthorized"),
    ("troubleTicketCreateEvent", envelope("x6", ticket("TT-9", "held", T0)), None, SECRET, 400,
     "eventTypeMismatch"),
])
async def test_bad_events_get_a_json_4xx_and_are_not_stored(
        listener: Served, event_name: str, body: Any, raw: bytes | None, secret: str, status: int,
        code: str) -> None:
    url, store = listener.url, listener.store
    assert await _received(listener) == dict.fromkeys(RESULTS, 0.0)  # every result exported from the start
    answer = await _post(f"{url}/{event_name}", body, raw=raw, secret=secret)
    assert answer[0] == status
    assert answer[1]["code"] == code
    assert _rows(store) == []
    assert stored_events(store) == 0
    assert await _received(listener) == {**dict.fromkeys(RESULTS, 0.0), code: 1.0}  # counted once, by its code


async def test_a_fault_of_fabwatchs_own_is_a_500_so_the_hub_sends_the_event_again(
        listener: Served, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A bug in handling an event must not pass for a bad request (a 4xx tells the hub to drop
    the event; on the events port it used to be `badRequest`, and the connection was closed)."""
    def fail(*_: Any) -> None:
        raise RuntimeError("a bug")

    event = envelope("f1", ticket("TT-1", "acknowledged", T0 + 60))
    with monkeypatch.context() as patched:
        patched.setattr(TypedEvents, "event", fail)
        status, body = await _post(f"{listener.url}/troubleTicketStatusChangeEvent", event)
    assert (status, body["code"], body["status"]) == (500, "internalError", "500")
    assert stored_events(listener.store) == 0
    assert [r.getMessage() for r in caplog.records if r.name == "fabwatch.listener"] == ["event_failed"]
    assert "RuntimeError: a bug" in caplog.text  # the traceback, for whoever is on call
    assert (await _post(f"{listener.url}/troubleTicketStatusChangeEvent", event))[0] == 201  # sent again
    assert _rows(listener.store) == [("TT-1", "acknowledged", T0 + 60, 0)]
    assert await _received(listener) == {**dict.fromkeys(RESULTS, 0.0), "internalError": 1.0, "accepted": 1.0}


async def test_events_of_the_api_that_change_no_work_item_are_acknowledged_and_not_stored(listener: Served) -> None:
    """A hub subscribed without a filter sends every event of its API: a refusal would raise the
    refused share (and page someone) for events that are correct."""
    url, store = listener.url, listener.store
    asked = envelope("i1", ticket("TT-1", "pending", T0), name="TroubleTicketInformationRequiredEvent")
    assert await _post(f"{url}/troubleTicketInformationRequiredEvent", asked) == (201, {
        "eventId": "i1", "ignored": True,
        "reason": "troubleTicketInformationRequiredEvent changes no work item fabwatch keeps"})
    specification = {"eventId": "i2", "event": {"troubleTicketSpecification": {"id": "S1"}}}
    assert (await _post(f"{url}/troubleTicketSpecificationCreateEvent", specification))[0] == 201
    assert _rows(store) == []
    assert stored_events(store) == 0
    resolved = envelope("r1", ticket("TT-1", "resolved", T0 + 60), name="TroubleTicketResolvedEvent")
    assert await _post(f"{url}/troubleTicketResolvedEvent", resolved) == (201, {"eventId": "r1", "duplicate": False})
    assert _rows(store) == [("TT-1", "resolved", T0 + 60, 0)]
    assert await _received(listener) == {**dict.fromkeys(RESULTS, 0.0), "ignored": 2.0, "accepted": 1.0}


async def _metric(served: Served, prefix: str) -> dict[str, float]:
    """The samples of source `tickets` whose line starts with `prefix`, by their labels, on /metrics now."""
    served.app[EXPORTER].invalidate()
    async with aiohttp.ClientSession() as session, session.get(f"{served.base}/metrics") as response:
        text = await response.text()
    return {line.split(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith(prefix) and 'source="tickets"' in line}


def _row(store: str, ident: str) -> dict[str, Any]:
    return next(r for r in stored_rows(store, "tickets", "trouble_ticket") if r["id"] == ident)


@pytest.mark.parametrize("path", ["typed", "general"])
async def test_a_change_event_with_only_what_changed_is_merged_into_the_stored_ticket(
        listener: Served, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many hubs send `{"id": "TT-1", "status": "closed", "statusChangeDate": ...}`: it used to be
    refused (400 "has no created_at") and the ticket stayed open forever."""
    if path == "general":
        monkeypatch.setattr(TypedEvents, "event", lambda *_: None)
    url, store = listener.url, listener.store
    create = envelope("e1", ticket("TT-1", "inProgress", T0 + 60), name="TroubleTicketCreateEvent")
    assert (await _post(f"{url}/troubleTicketCreateEvent", create))[0] == 201
    change = {"eventId": "e2", "eventType": "TroubleTicketStatusChangeEvent", "eventTime": format_time(T0 + 600),
              "event": {"troubleTicket": {"id": "TT-1", "status": "closed",
                                          "statusChangeDate": format_time(T0 + 590)}}}
    assert await _post(f"{url}/troubleTicketStatusChangeEvent", change) == (201, {"eventId": "e2", "duplicate": False})
    merged = _row(store, "TT-1")
    assert (merged["status"], merged["completed_at"], merged["updated_at"]) == ("closed", T0 + 590, T0 + 590)
    assert (merged["created_at"], merged["priority"]) == (T0, "high")  # kept from the create event
    assert merged["fab_completed_seq"] > merged["fab_created_seq"] > 0
    assert await _received(listener) == {**dict.fromkeys(RESULTS, 0.0), "accepted": 2.0}


async def test_an_event_about_an_unseen_ticket_is_kept_until_a_later_event_completes_it(listener: Served) -> None:
    url, store = listener.url, listener.store
    change = {"eventId": "p1", "event": {"troubleTicket": {"id": "TT-7", "status": "resolved",
                                                           "lastUpdate": format_time(T0 + 900)}}}
    assert await _post(f"{url}/troubleTicketStatusChangeEvent", change) == (201, {"eventId": "p1", "duplicate": False})
    assert _rows(store) == []  # no creation date: in no KPI yet
    assert await _metric(listener, "fab_records_incomplete") == {'fab_records_incomplete{source="tickets"}': 1.0}
    create = envelope("c1", ticket("TT-7", "acknowledged", T0), name="TroubleTicketCreateEvent")  # a hub's late one
    assert (await _post(f"{url}/troubleTicketCreateEvent", create))[0] == 201
    assert _rows(store) == [("TT-7", "resolved", T0 + 900, 0)]  # the newer status kept, completed at it
    assert _row(store, "TT-7")["completed_at"] == T0 + 900
    assert await _metric(listener, "fab_records_") == {
        'fab_records_incomplete{source="tickets"}': 0.0,
        'fab_records_completed_total{how="api",source="tickets"}': 0.0,
        'fab_records_completed_total{how="event",source="tickets"}': 1.0,
        'fab_records_completed_total{how="failed",source="tickets"}': 0.0}


@pytest.mark.slow
async def test_late_events_are_counted_once_within_a_sample_of_their_arrival(tmp_path: Path) -> None:
    """A hub retrying after a partition sends a ticket created ten minutes ago, and one created and
    resolved days ago: both enter `fab_items_created_total` and the backlog at the next sample (they
    were stored, and not counted, until the next reconcile an hour later)."""
    port = free_port()
    sources = {"sql": {"kind": "sql", "dsn": f"sqlite+aiosqlite:///{tmp_path / 'none.db'}"},
               "tickets": {"kind": "tmf_events", "api": "tmf621", "store": str(tmp_path / "events.db"),
                           "secret": SECRET, "interval": "1s"}}
    inventory = example(sources, {p: "tickets" if p == "problem" else "sql" for p in API_OF}, tmp_path / "state.db")
    app = build_app(inventory)
    now = time.time()

    def created_event(ident: str, created: float, status: str, resolved: float | None = None) -> dict[str, Any]:
        resource = {"id": ident, "@type": "TroubleTicket", "status": status, "ticketType": "problem",
                    "creationDate": format_time(created), "lastUpdate": format_time(resolved or created),
                    "priority": "high"}
        if resolved is not None:
            resource["resolutionDate"] = format_time(resolved)
        return envelope(f"e-{ident}", resource, name="TroubleTicketCreateEvent")

    async def counts() -> tuple[float, ...]:
        app[EXPORTER].invalidate()
        async with aiohttp.ClientSession() as session, session.get(f"{base}/metrics") as response:
            lines = (await response.text()).splitlines()
        return tuple(sum(float(line.rsplit(" ", 1)[1]) for line in lines
                         if line.startswith(name + "{") and 'process="problem"' in line)
                     for name in ("fab_items_created_total", "fab_backlog_items", "fab_items_completed_total"))

    async with serve_app(app, port=port) as base:
        url = f"{base}/tmf/tickets/listener/troubleTicketCreateEvent"
        await asyncio.sleep(2.5)  # a few samples pass: the watermark is past ten minutes ago
        for event in (created_event("TT-late", now - 600, "acknowledged"), created_event("TT-now", now, "acknowledged"),
                      created_event("TT-old", now - 3 * 86400, "resolved", now - 2 * 86400)):
            assert (await _post(url, event))[0] == 201
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and await counts() != (3.0, 2.0, 1.0):
            await asyncio.sleep(0.5)
        assert await counts() == (3.0, 2.0, 1.0)
        await asyncio.sleep(2.5)  # later samples count nothing twice
        assert await counts() == (3.0, 2.0, 1.0)


@pytest.mark.parametrize("port", ["main", "events"])
async def test_a_bearer_token_file_is_asked_of_every_sender_on_either_port(tmp_path: Path, port: str) -> None:
    """`sender_auth` with a `token_file`: the aiohttp route of the main port and the events port both
    refuse an event without the token (401, nothing stored) and store one that carries it."""
    token = tmp_path / "sender.token"
    token.write_text("s3nder-t0ken\n")
    main_port, events_port = free_port(), free_port()
    store = tmp_path / "events.db"
    sources = {"sql": {"kind": "sql", "dsn": f"sqlite+aiosqlite:///{tmp_path / 'none.db'}"},
               "tickets": {"kind": "tmf_events", "api": "tmf621", "store": str(store),
                           "sender_auth": {"kind": "bearer", "token_file": str(token)}}}
    inventory = example(sources, {p: "tickets" if p == "problem" else "sql" for p in API_OF}, tmp_path / "state.db")
    if port == "events":
        service = inventory.service.model_copy(update={"events_listen": f"127.0.0.1:{events_port}"})
        inventory = inventory.model_copy(update={"service": service})
    async with serve_app(build_app(inventory), port=main_port) as url:
        base = url if port == "main" else f"http://127.0.0.1:{events_port}"
        event = {"eventId": "E1", "eventType": "TroubleTicketCreateEvent",
                 "event": {"troubleTicket": ticket("TT-1", "acknowledged", 1_700_000_000.0)}}
        async with aiohttp.ClientSession() as session:
            posts = []
            for authorization in (None, "Bearer wrong", "Bearer s3nder-t0ken"):
                headers = {"Authorization": authorization} if authorization else {}
                async with session.post(f"{base}/tmf/tickets/listener/troubleTicketCreateEvent", json=event,
                                        headers=headers) as response:
                    posts.append(response.status)
    assert posts == [401, 401, 201]
    assert stored_events(store) == 1


def test_an_empty_sender_token_file_stops_the_listener_from_starting(tmp_path: Path) -> None:
    """An empty token (a file truncated by a failed rotation) would let in any `Bearer ` sender."""
    token = tmp_path / "sender.token"
    token.write_text(" \n")
    auth = BearerAuth(kind="bearer", token_file=str(token))
    with pytest.raises(SourceError, match=f"the sender token file {token} is empty"):
        sender_authorization("tickets", auth)
    token.write_text("s3nder-t0ken\n")
    assert sender_authorization("tickets", auth) == ("bearer", "s3nder-t0ken")
