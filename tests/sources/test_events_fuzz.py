"""The events port under random and mutated requests, cut at random places (hypothesis).

Every example sends a few requests, valid, mutated, truncated or garbage, as one byte stream split
into random chunks on one connection, then half-closes it and reads every answer. Whatever the
input: no 5xx (every fault here is the client's), an answer the client can parse, the connection
closed once it is answered, every event acknowledged with 201 found in the store, and the port
still taking a good event afterwards. Bounded: a fixed number of examples, each read with a timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.sources.helpers import ticket_event
from tests.sources.test_events_http import LIMIT, PATH, SECRET, events_port, request

EXAMPLES = 600
"""Each sends up to 6 requests and checks the port with one more: some 2,500 requests a run, in seconds."""
READ_TIMEOUT = 10.0


@dataclass
class Port:
    port: int
    store: Path


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Port]:
    """An events port served by its own event loop in a thread, for the module's examples."""
    directory = tmp_path_factory.mktemp("fuzz")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    context = events_port(directory, LIMIT)
    running = asyncio.run_coroutine_threadsafe(context.__aenter__(), loop).result(30)
    try:
        yield Port(running.port, directory / "events.db")
    finally:
        done: Future[Any] = asyncio.run_coroutine_threadsafe(context.__aexit__(None, None, None), loop)
        done.result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


_numbers = itertools.count(1)

kinds = st.one_of(
    st.tuples(st.just("valid"), st.none()),
    st.tuples(st.just("mutated"), st.tuples(st.integers(0, 10_000), st.integers(0, 255))),
    st.tuples(st.just("truncated"), st.integers(0, 10_000)),
    st.tuples(st.just("garbage"), st.binary(max_size=400)),
    st.tuples(st.just("bad_body"), st.binary(max_size=LIMIT + 100)),
    st.tuples(st.just("header"), st.sampled_from([
        "Content-Length: 99999999\r\n", "Transfer-Encoding: chunked\r\n", "Expect: 100-continue\r\n",
        "Connection: close\r\n", "Upgrade: h2c\r\nConnection: Upgrade\r\n", "X-Fabwatch-Secret: wrong\r\n",
        "Content-Length: -1\r\n", "Host: a\r\nHost: b\r\n", "\x00: x\r\n", "A" * 9000 + ": x\r\n"])),
    st.tuples(st.just("chunked"), st.integers(1, 64)),
)


def materialize(kind: str, arg: Any) -> bytes:
    """The bytes of one request of `kind`; valid events get a fresh id each."""
    number = next(_numbers)
    good = request(ticket_event(number, number, 1))
    if kind == "valid":
        return good
    if kind == "mutated":
        position, byte = arg
        index = position % len(good)
        return good[:index] + bytes([byte]) + good[index + 1:]
    if kind == "truncated":
        return good[:arg % len(good)]
    if kind == "garbage":
        return bytes(arg)
    if kind == "bad_body":
        return request(bytes(arg))
    if kind == "header":
        return request(ticket_event(number, number, 1), headers=arg)
    body = ticket_event(number, number, 1)
    chunks = b"".join(b"%x\r\n%b\r\n" % (len(body[i:i + arg]), body[i:i + arg]) for i in range(0, len(body), arg))
    return (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"X-Fabwatch-Secret: {SECRET}\r\nTransfer-Encoding: chunked\r\n\r\n").encode() + chunks + b"0\r\n\r\n"


def exchange(port: int, stream: bytes, cuts: list[int]) -> bytes:
    """Send `stream` in pieces cut at `cuts`, half-close, return all the server sent until it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT) as sock:
        start = 0
        try:
            for cut in [*sorted(c % (len(stream) + 1) for c in cuts), len(stream)]:
                if cut > start:
                    sock.sendall(stream[start:cut])
                    start = cut
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # broken pipe, reset, not connected
            pass  # the server refused and closed before the rest was sent: its answer is still readable
        received = bytearray()
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            received += data
    return bytes(received)


def answers(raw: bytes) -> list[tuple[int, Any]]:
    """Parse a stream of HTTP/1.1 responses (status, JSON body); fail on anything else."""
    out: list[tuple[int, Any]] = []
    while raw:
        head, separator, rest = raw.partition(b"\r\n\r\n")
        assert separator, f"an answer without the end of its head: {raw[:200]!r}"
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if status == 100:
            raw = rest
            continue
        length = int(headers.get("content-length", "0"))
        assert len(rest) >= length, f"a body cut short: {rest!r}"
        body, raw = rest[:length], rest[length:]
        out.append((status, json.loads(body) if body else None))
    return out


def stored(store: Path, ids: set[str]) -> set[str]:
    db = sqlite3.connect(store)
    try:
        rows = db.execute(f"SELECT event_id FROM tmf_event WHERE event_id IN ({','.join('?' * len(ids))})",
                          sorted(ids)).fetchall()
    finally:
        db.close()
    return {row[0] for row in rows}


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(requests=st.lists(kinds, min_size=1, max_size=6), cuts=st.lists(st.integers(0, 100_000), max_size=8))
def test_no_input_crashes_the_port_gets_a_5xx_or_loses_an_acknowledged_event(
        port: Port, requests: list[tuple[str, Any]], cuts: list[int]) -> None:
    stream = b"".join(materialize(kind, arg) for kind, arg in requests)
    replies = answers(exchange(port.port, stream, cuts))
    assert all(status < 500 for status, _ in replies), replies
    for status, body in replies:  # what the run covered: `pytest --hypothesis-show-statistics`
        event(f"answer {status} {body.get('code', '') if isinstance(body, dict) else ''}")
    acknowledged = {body["eventId"] for status, body in replies if status == 201}
    if acknowledged:
        assert stored(port.store, acknowledged) == acknowledged
    # the port still takes a good event on a new connection
    number = next(_numbers)
    (status, body), = answers(exchange(port.port, request(ticket_event(number, number, 1)), []))
    assert (status, body["eventId"]) == (201, f"E{number}")
