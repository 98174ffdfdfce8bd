"""The events port at the HTTP level: keep-alive, pipelining order, Expect, refusals, closing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
import string
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from collector.errors import SourceError
from collector.inventory.sources import TmfEventsSource
from collector.sources.events_http import EventsServer
from collector.sources.listener import BadEvent, Listener
from collector.sources.records import open_records
from collector.sources.store import Event, Records, RecordStore
from collector.sources.tmf import APIS
from tests.servers import free_port
from tests.sources.helpers import stored_events, stored_rows, ticket_event

PATH = "/tmf/tickets/listener/troubleTicketStatusChangeEvent"
SECRET = "s3cret"
LIMIT = 4096


@dataclass
class Running:
    server: EventsServer
    listener: Listener
    port: int


@contextlib.asynccontextmanager
async def events_port(directory: Path, max_body: int = LIMIT, sender_auth: Any = None, store_at: str | None = None,
                      secret: str | None = SECRET, **options: Any) -> AsyncIterator[Running]:
    """An events server on a free loopback port with one listener `tickets` (secret SECRET) whose
    store is `store_at` (default `directory/events.db`); `options` go to `EventsServer`. Stopping
    twice is harmless."""
    source = TmfEventsSource(kind="tmf_events", api="tmf621", secret=secret, max_body=max_body,
                             sender_auth=sender_auth)
    store = open_records(store_at or directory / "events.db", "tickets", ["trouble_ticket"], synchronous="FULL",
                         final_statuses={"trouble_ticket": APIS["tmf621"].finals})
    listener = Listener("tickets", source, store)
    await listener.start()
    server = EventsServer({"tickets": listener}, **options)
    try:
        port = free_port()
        await server.start("127.0.0.1", port)
        yield Running(server, listener, port)
    finally:
        await server.stop()
        await listener.stop()
        store.close()


@pytest.fixture
async def events(tmp_path: Path, store_location: str) -> AsyncIterator[tuple[int, str]]:
    """(port, store) of an events port, its store in SQLite or PostgreSQL."""
    async with events_port(tmp_path, store_at=store_location) as running:
        yield running.port, store_location


def request(body: bytes, *, path: str = PATH, method: str = "POST", headers: str = "") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"X-Fabwatch-Secret: {SECRET}\r\nContent-Length: {len(body)}\r\n{headers}\r\n").encode() + body


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], Any]:
    """One response: status, headers (lower-case names), JSON body."""
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 10)
    return status, headers, json.loads(body) if body else None


async def test_keep_alive_and_pipelined_answers_come_back_in_request_order(events: tuple[int, str]) -> None:
    port, store = events
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request(ticket_event(1, 1, 1)) + request(b"{not json") + request(ticket_event(2, 2, 1))
                 + request(ticket_event(1, 1, 1)))
    answers = [await read_answer(reader) for _ in range(4)]
    assert [a[0] for a in answers] == [201, 400, 201, 201]
    assert answers[0][2] == {"eventId": "E1", "duplicate": False}
    assert answers[1][2]["code"] == "invalidJson"
    assert answers[3][2] == {"eventId": "E1", "duplicate": True}
    assert all(a[1]["content-type"] == "application/json" and "date" in a[1] for a in answers)
    writer.write(request(ticket_event(3, 3, 1)))  # the connection is still usable
    assert (await read_answer(reader))[0] == 201
    writer.close()
    assert stored_events(store) == 3


async def test_connection_close_is_honoured(events: tuple[int, str]) -> None:
    port, store = events
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request(ticket_event(1, 1, 1), headers="Connection: close\r\n"))
    status, headers, _ = await read_answer(reader)
    assert (status, headers["connection"]) == (201, "close")
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
    writer.close()
    assert stored_events(store) == 1


async def test_expect_100_continue(events: tuple[int, str]) -> None:
    port, store = events
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = ticket_event(1, 1, 1)
    writer.write(request(body)[:-len(body)].replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"))
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10) == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(body)
    assert (await read_answer(reader))[0] == 201
    writer.close()
    assert stored_events(store) == 1


@pytest.mark.parametrize(("raw", "status", "code"), [
    (request(b"{}", path="/metrics"), 404, "notFound"),
    (request(b"{}", path="/tmf/nobody/listener/troubleTicketStatusChangeEvent"), 404, "unknownSource"),
    (request(b"", method="GET"), 405, "methodNotAllowed"),
    (request(ticket_event(1, 1, 1)).replace(SECRET.encode(), b"wrong!"), 401, "unauthorized"),
    (request(ticket_event(1, 1, 1), path=PATH.replace("StatusChange", "Exploded")), 400, "unknownEventType"),
])
async def test_refusals_are_json_and_keep_the_connection(
        events: tuple[int, str], raw: bytes, status: int, code: str) -> None:
    port, store = events
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw + request(ticket_event(9, 9, 1)))
    answer = await read_answer(reader)
    assert (answer[0], answer[2]["code"], answer[2]["status"]) == (status, code, str(status))
    assert (await read_answer(reader))[0] == 201  # the next request on the connection is served
    writer.close()
    assert stored_events(store) == 1


async def test_a_target_served_before_still_refuses_other_methods_and_header_names_are_case_blind(
        events: tuple[int, str]) -> None:
    """Routes are remembered after the first event to a target; the method is still checked each
    time. Header names are matched whatever their case (RFC 9110), the secret's included."""
    port, store = events
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    shouting = request(ticket_event(2, 2, 1)).replace(b"X-Fabwatch-Secret", b"x-FABWATCH-secret").replace(
        b"Content-Length", b"CONTENT-LENGTH")
    writer.write(request(ticket_event(1, 1, 1)) + request(b"", method="PUT") + shouting)
    answers = [await read_answer(reader) for _ in range(3)]
    assert [(a[0], a[2].get("code")) for a in answers] == [(201, None), (405, "methodNotAllowed"), (201, None)]
    writer.close()
    assert stored_events(store) == 2


@pytest.mark.parametrize("raw", [
    request(b"x" * (LIMIT + 1)),
    (f"POST {PATH} HTTP/1.1\r\nHost: h\r\nX-Fabwatch-Secret: {SECRET}\r\nTransfer-Encoding: chunked\r\n\r\n"
     f"{LIMIT:x}\r\n{'x' * LIMIT}\r\n10\r\n{'x' * 16}\r\n0\r\n\r\n").encode(),
])
async def test_a_body_over_the_limit_is_refused_and_the_connection_closed(
        events: tuple[int, str], raw: bytes) -> None:
    port, store = events
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    status, headers, body = await read_answer(reader)
    assert (status, body["code"], headers["connection"]) == (413, "tooLarge", "close")
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    assert stored_events(store) == 0


async def test_malformed_http_gets_400_and_a_close(events: tuple[int, str]) -> None:
    port, _ = events
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /tmf/tickets HTTP/1.1\r\nContent-Length: nope\r\n\r\n")
    status, headers, body = await read_answer(reader)
    assert (status, body["code"], headers["connection"]) == (400, "badRequest", "close")
    writer.close()


async def test_events_queued_when_the_server_stops_are_committed_and_answered(tmp_path: Path,
                                                                               store_location: str) -> None:
    """Stopping drains: what was acknowledged is stored; what came after is refused with 503."""
    async with events_port(tmp_path, store_at=store_location) as running:
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        writer.write(b"".join(request(ticket_event(n, n, 1)) for n in range(50)))
        first = await read_answer(reader)
        await running.server.stop()
        await running.listener.stop()  # drains: every queued event is committed before the writer ends
        answers = [first] + [await read_answer(reader) for _ in range(49)]
        writer.close()
    acknowledged = sum(a[0] == 201 for a in answers)
    assert {a[0] for a in answers} <= {201, 503}
    assert all(a[2]["code"] == "stopping" for a in answers if a[0] == 503)
    assert stored_events(store_location) == acknowledged >= 1
    counted = {k: v for k, v in running.listener.received.items() if v}
    assert counted == {"accepted": acknowledged, **({"stopping": 50 - acknowledged} if acknowledged < 50 else {})}


@pytest.mark.parametrize(("raw", "status", "code"), [
    (request(b"{}", path="/tmf/" + "x" * 9000), 414, "uriTooLong"),
    (request(b"{}", headers="".join(f"X-Pad-{n}: {'y' * 1000}\r\n" for n in range(70))), 431, "headersTooLarge"),
])
async def test_oversized_request_heads_are_refused_and_closed(
        events: tuple[int, str], raw: bytes, status: int, code: str) -> None:
    port, store = events
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    answer = await read_answer(reader)
    assert (answer[0], answer[2]["code"], answer[1]["connection"]) == (status, code, "close")
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    assert stored_events(store) == 0


async def test_silent_keep_alive_connections_are_closed_after_the_idle_timeout(tmp_path: Path) -> None:
    async with events_port(tmp_path, idle_timeout=0.4) as running:
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        writer.write(request(ticket_event(1, 1, 1)))
        assert (await read_answer(reader))[0] == 201
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server, not by us
        assert not running.server.connections
        writer.close()


def _first_commit_fails(store: Records) -> Records:
    """The store, its first commit failing as on a full disk (SQLite) or a lost server (PostgreSQL)."""
    commit = store.commit
    failed: list[bool] = []

    def failing() -> None:
        if not failed:
            failed.append(True)
            raise sqlite3.OperationalError("database or disk is full")
        commit()

    store.commit = failing  # type: ignore[method-assign]
    return store


async def _submit(listener: Listener, body: bytes, name: str = "troubleTicketStatusChangeEvent") -> tuple[int, Any]:
    """Submit one event and wait for its answer (status, JSON body)."""
    answers: list[tuple[int, Any]] = []
    listener.submit(name, body,
                    lambda status, raw: answers.append((status, json.loads(raw))))
    async with asyncio.timeout(10):
        while not answers:
            await asyncio.sleep(0.01)
    return answers[0]


async def test_a_failed_commit_is_answered_503_stores_nothing_and_is_counted(store_location: str) -> None:
    store = _first_commit_fails(open_records(store_location, "tickets", ["trouble_ticket"], synchronous="FULL"))
    listener = Listener("tickets", TmfEventsSource(kind="tmf_events", api="tmf621"), store)
    await listener.start()
    try:
        answers = [await _submit(listener, ticket_event(n, n, 1)) for n in (1, 2)]  # each its own batch
    finally:
        await listener.stop()
        store.close()
    assert [(status, body.get("code")) for status, body in answers] == [(503, "storeFailed"), (201, None)]
    assert stored_events(store_location) == 1  # the failed batch was rolled back
    assert {k: v for k, v in listener.received.items() if v} == {"storeFailed": 1, "accepted": 1}
    assert listener.commits.count == 2  # the failed commit's time is shown too


@pytest.mark.parametrize("extension", [{"reopened": 2**63}, {"paused_seconds": "nan"}, {"amount": "inf"}])
async def test_a_number_no_column_can_keep_is_refused_alone_not_failing_the_others_commit(
        store_location: str, extension: dict[str, Any]) -> None:
    """An event with a number past what a column keeps (a 64-bit integer, a finite float) is refused
    (400 invalidResource); it once failed the whole group commit it joined, every event in it
    answered 503, and again at each redelivery."""
    store = open_records(store_location, "tickets", ["trouble_ticket"], synchronous="FULL")
    listener = Listener("tickets", TmfEventsSource(kind="tmf_events", api="tmf621"), store)
    await listener.start()
    bad = json.loads(ticket_event(2, 2, 1))
    bad["event"]["troubleTicket"]["fabwatch"] = extension
    try:
        answers = await asyncio.gather(*(_submit_or_refused(listener, body) for body in (
            ticket_event(1, 1, 1), json.dumps(bad).encode(), ticket_event(3, 3, 1))))  # one batch
    finally:
        await listener.stop()
        store.close()
    assert [(status, body.get("code")) for status, body in answers] == [
        (201, None), (400, "invalidResource"), (201, None)]
    assert stored_events(store_location) == 2


LONG = "".join(random.Random(7).choices(string.ascii_letters, k=3000))
"""A value past what a PostgreSQL index row holds (2,704 bytes), random so that it does not compress."""


@pytest.mark.parametrize("odd", ["\x00x", LONG], ids=["nul", "long"])
@pytest.mark.parametrize(("where", "code"), [
    ("eventId", "invalidEvent"), ("id", "invalidResource"), ("status", "invalidResource"),
    ("priority", "invalidResource"), ("fabwatch", "invalidResource"), ("delete", "invalidResource")])
async def test_a_string_the_store_cannot_keep_is_refused_alone_not_failing_the_others_commit(
        store_location: str, where: str, code: str, odd: str) -> None:
    """JSON may carry `\\u0000`, which PostgreSQL text cannot hold, and a string over 2,704 bytes
    cannot be in a PostgreSQL index (event id, resource id, status). An event with one in a value
    the store keeps failed the whole group commit it joined there, every event in it answered 503.
    It is refused (400) on both backends: a NUL anywhere, more than 512 characters."""
    store = open_records(store_location, "tickets", ["trouble_ticket"], synchronous="FULL")
    listener = Listener("tickets", TmfEventsSource(kind="tmf_events", api="tmf621"), store)
    await listener.start()
    bad = json.loads(ticket_event(2, 2, 1))
    resource = bad["event"]["troubleTicket"]
    if where == "eventId":
        bad["eventId"] += odd
    elif where == "fabwatch":
        resource["fabwatch"] = {"segment": f"a{odd}"}
    else:
        resource["id" if where == "delete" else where] += odd
    name = bad["eventType"] = "troubleTicketDeleteEvent" if where == "delete" else "troubleTicketStatusChangeEvent"
    try:
        answers = await asyncio.gather(*(_submit_or_refused(listener, body, n) for body, n in (
            (ticket_event(1, 1, 1), None), (json.dumps(bad).encode(), name), (ticket_event(3, 3, 1), None))))
    finally:
        await listener.stop()
        store.close()
    assert [(status, body.get("code")) for status, body in answers] == [(201, None), (400, code), (201, None)]
    assert stored_events(store_location) == 2


async def _submit_or_refused(listener: Listener, body: bytes, name: str | None = None) -> tuple[int, Any]:
    try:
        return await _submit(listener, body, name or "troubleTicketStatusChangeEvent")
    except BadEvent as exc:
        return exc.status, {"code": exc.code}


class _SlowCommit(RecordStore):
    """A record store whose commits take 0.3 s, as on a saturated disk."""

    def commit(self) -> None:
        time.sleep(0.3)
        super().commit()


async def test_the_time_each_group_commit_takes_is_measured(tmp_path: Path) -> None:
    """`fab_events_commit_duration_seconds` is what tells a slow disk from a slow hub at 3 a.m."""
    store = _SlowCommit(tmp_path / "events.db", ["trouble_ticket"], synchronous="FULL")
    listener = Listener("tickets", TmfEventsSource(kind="tmf_events", api="tmf621"), store)
    await listener.start()
    try:
        for n in (1, 2):
            assert (await _submit(listener, ticket_event(n, n, 1)))[0] == 201
    finally:
        await listener.stop()
        store.close()
    buckets = dict(listener.commits.histogram().buckets)
    assert (buckets[0.25], buckets[0.5], buckets[float("inf")]) == (0.0, 2.0, 2.0)
    assert 0.6 <= listener.commits.sum < 1.0


async def test_event_ids_older_than_the_dedup_window_are_forgotten(store_location: str) -> None:
    store = open_records(store_location, "tickets", ["trouble_ticket"], synchronous="FULL")
    source = TmfEventsSource(kind="tmf_events", api="tmf621", dedup_window=0.3)
    listener = Listener("tickets", source, store)
    listener.forget_every = 0.05
    await listener.start()
    try:
        assert await _submit(listener, ticket_event(1, 1, 1)) == (201, {"eventId": "E1", "duplicate": False})
        assert await _submit(listener, ticket_event(1, 1, 1)) == (201, {"eventId": "E1", "duplicate": True})
        async with asyncio.timeout(10):  # the writer forgets it on its own, with nothing else to do
            while stored_events(store_location):
                await asyncio.sleep(0.05)
        # A redelivery after the window is stored again; the row is the same version.
        assert await _submit(listener, ticket_event(1, 1, 1)) == (201, {"eventId": "E1", "duplicate": False})
    finally:
        await listener.stop()
        store.close()
    assert stored_events(store_location) == 1
    assert [(r["id"], r["status"]) for r in stored_rows(store_location, "tickets", "trouble_ticket")] == [
        ("TT-1", "resolved")]


def _batch_sizes(store: Records, sizes: list[int]) -> Records:
    """The store, noting in `sizes` how many events each group commit held."""
    stage = store.stage_events

    def noted(events: Sequence[Event]) -> list[bool]:
        sizes.append(len(events))
        return stage(events)

    store.stage_events = noted  # type: ignore[method-assign]
    return store


@pytest.mark.parametrize(("batch_max", "sizes"), [(1000, [4]), (3, [3, 1])])
async def test_events_arriving_over_the_next_loop_turns_share_one_commit(
        store_location: str, batch_max: int, sizes: list[int]) -> None:
    """The writer is woken by the first event; the three that follow it, one per turn of the event
    loop (as requests on other connections are read), go into the same commit, up to `batch_max`."""
    seen: list[int] = []
    store = _batch_sizes(open_records(store_location, "tickets", ["trouble_ticket"], synchronous="FULL"), seen)
    listener = Listener("tickets", TmfEventsSource(kind="tmf_events", api="tmf621", batch_max=batch_max), store)
    answers: list[int] = []
    loop = asyncio.get_running_loop()

    def submit(n: int) -> None:
        listener.submit("troubleTicketStatusChangeEvent", ticket_event(n, n, 1),
                        lambda status, _: answers.append(status))
        if n < 4:
            loop.call_soon(submit, n + 1)  # the next request arrives at the next turn

    await listener.start()
    try:
        await asyncio.sleep(0.05)  # the writer is idle, waiting for an event
        submit(1)
        async with asyncio.timeout(10):
            while len(answers) < 4:
                await asyncio.sleep(0.01)
    finally:
        await listener.stop()
        store.close()
    assert answers == [201] * 4
    assert seen == sizes
    assert stored_events(store_location) == 4


async def test_the_last_event_time_moves_with_each_commit_and_survives_a_restart(store_location: str) -> None:
    store = open_records(store_location, "tickets", ["trouble_ticket"], synchronous="FULL")
    source = TmfEventsSource(kind="tmf_events", api="tmf621")
    listener = Listener("tickets", source, store)
    started = time.time()
    await listener.start()
    try:
        assert started <= listener.last_received <= time.time()  # nothing stored yet: since the start
        await asyncio.sleep(0.05)
        before = time.time()
        assert (await _submit(listener, ticket_event(1, 1, 1)))[0] == 201
        first = listener.last_received
        assert first >= before
        await asyncio.sleep(0.05)
        assert await _submit(listener, ticket_event(1, 1, 1)) == (201, {"eventId": "E1", "duplicate": True})
        assert listener.last_received > first  # a redelivery: the hub is alive
        latest = listener.last_received
        with pytest.raises(BadEvent):
            listener.submit("troubleTicketStatusChangeEvent", b"{", lambda status, body: None)
        assert listener.last_received == latest  # a refusal is not news from the hub
    finally:
        await listener.stop()
    await asyncio.sleep(0.05)
    restarted_at = time.time()
    again = Listener("tickets", source, store)
    await again.start()  # the newest event in the store, not the restart
    try:
        assert before <= again.last_received <= first < restarted_at
    finally:
        await again.stop()
        store.close()


async def test_an_upgrade_asked_for_is_ignored_and_the_event_stored(events: tuple[int, str]) -> None:
    """Java's HttpClient asks for h2c on every `http://` POST: the parser handed over the body as the
    new protocol's, the event was refused as empty JSON (a 4xx: the hub drops it) and answered twice."""
    port, store = events
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    upgrade = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQBAAAAAAIAAAAA\r\n"
    asked = request(ticket_event(1, 1, 1), headers=upgrade)
    writer.write(asked[:len(asked) - 30])  # the body split over two reads, then a plain request behind it
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(asked[len(asked) - 30:] + request(ticket_event(2, 2, 1)))
    answers = [await read_answer(reader) for _ in range(2)]
    assert [(status, body["eventId"]) for status, _, body in answers] == [(201, "E1"), (201, "E2")]
    writer.close()
    assert stored_events(store) == 2


async def test_a_client_that_half_closes_gets_every_answer_then_the_close(events: tuple[int, str]) -> None:
    """`shutdown(SHUT_WR)` after the last request (`nc -N`): the events were stored, and used to go
    unanswered, the connection closed at once."""
    port, store = events
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"".join(request(ticket_event(n, n, 1)) for n in (1, 2, 3)))
    writer.write_eof()
    answers = [await read_answer(reader) for _ in range(3)]
    assert [(status, body["eventId"]) for status, _, body in answers] == [(201, "E1"), (201, "E2"), (201, "E3")]
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    assert stored_events(store) == 3


async def test_a_pipelined_expect_gets_its_100_continue_after_the_answers_before_it(
        events: tuple[int, str]) -> None:
    port, store = events
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = ticket_event(2, 2, 1)
    writer.write(request(ticket_event(1, 1, 1))
                 + request(body)[:-len(body)].replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"))
    first = await read_answer(reader)
    assert (first[0], first[2]["eventId"]) == (201, "E1")
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10) == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(body)
    second = await read_answer(reader)
    assert (second[0], second[2]["eventId"]) == (201, "E2")
    writer.close()
    assert stored_events(store) == 2


async def test_a_header_that_never_ends_is_refused_before_it_fills_memory(events: tuple[int, str]) -> None:
    """httptools keeps a header value it has not seen the end of and calls back only at its end."""
    port, store = events
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Junk: ".encode())
    answer = None
    for _ in range(64):  # 4 MiB at most, in 64 KiB writes
        with contextlib.suppress(ConnectionError):
            writer.write(b"x" * 65536)
            await writer.drain()
        with contextlib.suppress(TimeoutError):
            answer = await asyncio.wait_for(read_answer(reader), 0.05)
            break
    writer.close()
    assert answer is not None, "no answer to a head of 4 MiB"
    assert (answer[0], answer[2]["code"], answer[1]["connection"]) == (431, "headersTooLarge", "close")
    assert stored_events(store) == 0


async def test_a_large_body_ending_in_a_read_of_its_own_does_not_count_as_a_request_head(tmp_path: Path) -> None:
    """A body over 72 KiB whose last read held only body bytes was counted as head bytes: the event
    was acknowledged, then an unsolicited 431 closed the connection and the next event was lost."""
    async with events_port(tmp_path, max_body=1 << 20) as running:
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        first = request(ticket_event(1, 1, 1) + b" " * 100_000)  # JSON allows trailing blanks
        head_end = first.index(b"\r\n\r\n") + 4
        writer.write(first[:head_end + 10])
        await writer.drain()
        await asyncio.sleep(0.1)  # the head is read on its own
        writer.write(first[head_end + 10:])  # ~98 KiB of body only: one read, loopback takes it at once
        await writer.drain()
        answer = await read_answer(reader)
        assert (answer[0], answer[2]["eventId"]) == (201, "E1")
        await asyncio.sleep(0.1)
        writer.write(request(ticket_event(2, 2, 1)))
        answer = await read_answer(reader)
        assert (answer[0], answer[2].get("eventId")) == (201, "E2")
        writer.close()
    assert stored_events(tmp_path / "events.db") == 2


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait until `condition()` holds, polling; fail after `seconds`."""
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.01)


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """The server closed (or reset) the connection without an answer."""
    try:
        return await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("part", ["head", "body"])
async def test_a_request_trickled_byte_by_byte_is_cut_off_with_408(tmp_path: Path, part: str) -> None:
    """One byte every 0.1 s kept a connection open for ever (its reads kept it from being idle)."""
    async with events_port(tmp_path, head_timeout=0.5, body_timeout=0.5) as running:
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        raw = request(ticket_event(1, 1, 1))
        start = 0 if part == "head" else raw.index(b"\r\n\r\n") + 4
        writer.write(raw[:start])
        began, answer = time.monotonic(), None
        for at in range(start, len(raw) - 1):  # never the last byte; ~40 s at most
            with contextlib.suppress(ConnectionError):
                writer.write(raw[at:at + 1])
                await writer.drain()
            with contextlib.suppress(TimeoutError):
                answer = await asyncio.wait_for(read_answer(reader), 0.1)
                break
        took = time.monotonic() - began
        assert answer is not None, "a trickled request was never cut off"
        assert (answer[0], answer[2]["code"], answer[1]["connection"]) == (408, "requestTimeout", "close")
        assert 0.5 <= took < 3
        assert await closed_by_server(reader)
        writer.close()
        assert running.server.refused == {"requestTimeout": 1}
        await until(lambda: not running.server.connections)
    assert stored_events(tmp_path / "events.db") == 0


async def test_connections_over_the_caps_are_closed_at_accept_counted_and_slots_freed(tmp_path: Path) -> None:
    async with events_port(tmp_path, max_connections=3, max_per_address=2) as running:
        async def connect(host: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await asyncio.open_connection("127.0.0.1", running.port, local_addr=(host, 0))

        async def post(client: tuple[asyncio.StreamReader, asyncio.StreamWriter], n: int) -> int:
            client[1].write(request(ticket_event(n, n, 1)))
            return (await read_answer(client[0]))[0]

        kept = [await connect("127.0.0.1"), await connect("127.0.0.1")]
        assert [await post(client, n) for n, client in enumerate(kept)] == [201, 201]
        third_from_one = await connect("127.0.0.1")  # over the per-address cap
        assert await closed_by_server(third_from_one[0])
        kept.append(await connect("127.0.0.2"))  # another address: admitted
        assert await post(kept[2], 3) == 201
        over_all = await connect("127.0.0.3")  # over the cap in all
        assert await closed_by_server(over_all[0])
        assert running.server.refused == {"tooManyFromAddress": 1, "tooManyConnections": 1}
        kept[0][1].close()
        await until(lambda: len(running.server.connections) == 2)
        again = await connect("127.0.0.1")  # the slot it held (in all and for its address) is free
        assert await post(again, 4) == 201
        for _, writer in [*kept, third_from_one, over_all, again]:
            writer.close()
        await until(lambda: not running.server.per_address)
    assert stored_events(tmp_path / "events.db") == 4


async def test_unfinished_bodies_past_the_memory_budget_get_503_and_are_released_on_close(tmp_path: Path) -> None:
    """Each connection holding an unfinished body added to the memory held, without bound."""
    budget = 100_000
    async with events_port(tmp_path, max_body=1 << 20, body_memory=budget) as running:
        held = running.server.budget
        raw = request(ticket_event(1, 1, 1) + b" " * 60_000)
        first = await asyncio.open_connection("127.0.0.1", running.port)
        first[1].write(raw[:-10])  # ~60 KB of body held, 10 bytes to come
        await until(lambda: held.held > 50_000)
        refused = []
        for _ in range(2):  # each would take the budget past 100 KB
            reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
            writer.write(raw[:-10])
            status, headers, body = await read_answer(reader)
            assert (status, body["code"], headers["retry-after"], headers["connection"]) == (
                503, "bodyMemory", "1", "close")
            assert await closed_by_server(reader)
            assert held.held <= budget
            refused.append(writer)
        first[1].write(raw[-10:])  # the body held ends: stored, and its bytes given back
        assert (await read_answer(first[0]))[0] == 201
        assert held.held == 0
        leaving = await asyncio.open_connection("127.0.0.1", running.port)
        leaving[1].write(raw[:-10])
        await until(lambda: held.held > 50_000)
        leaving[1].close()  # a client that leaves mid-body: its bytes are given back at the close
        await until(lambda: held.held == 0)
        assert running.server.refused == {"bodyMemory": 2}
        for writer in [first[1], *refused]:
            writer.close()
    assert stored_events(tmp_path / "events.db") == 1


@pytest.mark.parametrize(("auth", "good", "bad"), [
    ({"kind": "bearer", "token": "t0k3n"}, "bearer t0k3n", "Bearer t0k3m"),
    ({"kind": "basic", "username": "hub", "password": "p:w"}, "Basic aHViOnA6dw==", "Basic aHViOnA6eA=="),
])
async def test_sender_credentials_are_asked_for_besides_the_secret(tmp_path: Path, auth: dict[str, str],
                                                                   good: str, bad: str) -> None:
    """With `sender_auth`, an event without the right `Authorization` is refused (401) and not stored;
    the scheme is matched in any case, the credentials exactly."""
    async with events_port(tmp_path, sender_auth=auth) as running:
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        writer.write(request(ticket_event(1, 1, 1))
                     + request(ticket_event(2, 2, 1), headers=f"Authorization: {bad}\r\n")
                     + request(ticket_event(3, 3, 1), headers=f"Authorization: {good}\r\n"))
        answers = [await read_answer(reader) for _ in range(3)]
        writer.close()
    assert [(a[0], (a[2] or {}).get("code")) for a in answers] == [
        (401, "unauthorized"), (401, "unauthorized"), (201, None)]
    assert stored_events(tmp_path / "events.db") == 1


async def test_a_rotated_sender_token_is_asked_for_at_once_and_a_source_without_credentials_asks_none(
        tmp_path: Path) -> None:
    """The events port checks credentials only for a listener that asks for some (`guarded`); read
    again (a worker's SIGHUP), a rotated `token_file` is the one asked for from the next request,
    on a connection already open; a token file that cannot be read keeps the old token."""
    token = tmp_path / "token"
    token.write_text("first\n")
    auth = {"kind": "bearer", "token_file": str(token)}
    async with events_port(tmp_path, sender_auth=auth, secret=None) as running:
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)

        async def post(number: int, bearer: str | None) -> int:
            writer.write(request(ticket_event(number, number, 1),
                                 headers=f"Authorization: Bearer {bearer}\r\n" if bearer else ""))
            return (await read_answer(reader))[0]

        assert running.listener.guarded
        assert [await post(1, "first"), await post(2, None)] == [201, 401]
        token.write_text("second\n")
        assert await post(3, "first") == 201  # read when the listener starts, and when told to
        running.listener.reread_credentials()
        assert [await post(4, "first"), await post(5, "second")] == [401, 201]
        token.unlink()
        with pytest.raises(SourceError, match="cannot read the sender token file"):
            running.listener.reread_credentials()
        assert running.listener.guarded
        assert [await post(6, None), await post(7, "second")] == [401, 201]
        writer.close()
    async with events_port(tmp_path / "open", secret=None) as running:
        assert not running.listener.guarded
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        writer.write(f"POST {PATH} HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n".encode())
        assert (await read_answer(reader))[0] == 400  # past the credentials: an empty body is no event
        writer.close()
