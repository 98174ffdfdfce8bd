"""The events port under random and mutated requests (issue 18): thousands of byte streams, made of
valid TMF events, broken heads, wrong lengths, chunked bodies, flipped bytes and random headers, cut
into random pieces. Whatever comes, the server answers no 5xx for a client's fault, keeps serving,
stores every event it acknowledged, and does not grow.

fabwatch runs as `fabwatch serve` in a subprocess (its memory is its own); hypothesis drives plain
sockets against its events port.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.servers import free_port
from tests.sources.helpers import EVENT_PATH as PATH
from tests.sources.helpers import FabwatchProcess, events_inventory, ticket_event

SECRET = "s3cret"
"""Sent as `X-Fabwatch-Secret` (or a wrong one): the source asks for none, so it is one more header."""

pytestmark = pytest.mark.timeout(600)

EXAMPLES = 1200
"""Streams per test; each holds one to four requests, so a few thousand requests in all."""
QUIET = 0.1
"""Seconds without an answer after which a stream's exchange ends (a body the server still waits for)."""


class Served:
    """`fabwatch serve` in a subprocess, receiving events of source `events` on its events port."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.process = FabwatchProcess(events_inventory(directory, events_port=self.port), free_port(),
                                       log=directory / "fabwatch.log")
        self.process.start()
        self.store = directory / "events.db"

    def rss_mib(self) -> float:
        """Resident memory of the fabwatch process now (Linux /proc)."""
        assert self.process.process is not None
        status = Path(f"/proc/{self.process.process.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024

    def stored(self, event_ids: list[str]) -> set[str]:
        """Which of `event_ids` the store holds."""
        db = sqlite3.connect(self.store)
        try:
            marks = ", ".join("?" * len(event_ids))
            rows = db.execute(f"SELECT event_id FROM tmf_event WHERE event_id IN ({marks})", event_ids)
            return {row[0] for row in rows}
        finally:
            db.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = Served(tmp_path_factory.mktemp("fuzz"))
    try:
        yield served
    finally:
        served.process.stop()


def _mutate(data: bytes, draw: st.DrawFn) -> bytes:
    """Flip, cut, insert or repeat bytes of `data`."""
    if not data:
        return data
    how = draw(st.sampled_from(["flip", "cut", "insert", "repeat", "none"]))
    at = draw(st.integers(0, len(data) - 1))
    if how == "flip":
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:]
    if how == "cut":
        return data[:at]
    if how == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]
    if how == "repeat":
        return data[:at] + data[at:] * 2
    return data


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    choice = draw(st.sampled_from(["event", "event", "mutated", "json", "bytes", "empty"]))
    number = draw(st.integers(0, 10**9))
    event = ticket_event(number, number % 97, 1 + number % 5)
    if choice == "event":
        return event
    if choice == "mutated":
        return _mutate(event, draw)
    if choice == "json":
        value = draw(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                                  lambda inner: st.lists(inner, max_size=3)
                                  | st.dictionaries(st.sampled_from(["eventId", "event", "eventType", "x"]),
                                                    inner, max_size=3), max_leaves=8))
        return json.dumps(value).encode()
    if choice == "bytes":
        return draw(st.binary(max_size=256))
    return b""


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    body = draw(bodies())
    method = draw(st.sampled_from(["POST"] * 6 + ["GET", "PUT", "DELETE", "P\x00ST", ""]))
    path = draw(st.sampled_from([PATH] * 5 + [PATH + "?a=1", "/tmf/tickets/listener/unknownEvent", "/", "//x",
                                              "/tmf/nobody/listener/troubleTicketCreateEvent", "*"]))
    version = draw(st.sampled_from(["HTTP/1.1"] * 5 + ["HTTP/1.0", "HTTP/2.0", "HTTP/1.1x", ""]))
    headers = ["Host: 127.0.0.1", "Content-Type: application/json"]
    secret = draw(st.sampled_from([SECRET] * 5 + ["wrong", ""]))
    if secret:
        headers.append(f"X-Fabwatch-Secret: {secret}")
    framing = draw(st.sampled_from(["length"] * 5 + ["short", "long", "none", "chunked", "both", "bad"]))
    payload = body
    if framing in ("length", "both"):
        headers.append(f"Content-Length: {len(body)}")
    elif framing == "short":
        headers.append(f"Content-Length: {max(0, len(body) - draw(st.integers(1, 8)))}")
    elif framing == "long":
        headers.append(f"Content-Length: {len(body) + draw(st.integers(1, 8))}")
    elif framing == "bad":
        headers.append(draw(st.sampled_from(["Content-Length: -1", "Content-Length: 1e3", "Content-Length: 9" * 30,
                                             "Content-Length: 5, 6"])))
    if framing in ("chunked", "both"):
        headers.append("Transfer-Encoding: chunked")
        payload = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:7], body[7:]) if part) + b"0\r\n\r\n"
    extra = draw(st.lists(st.tuples(st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1,
                                            max_size=12),
                                    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=24)),
                          max_size=3))
    headers += [f"{name}: {value}" for name, value in extra]
    if draw(st.booleans()):
        headers.append(draw(st.sampled_from(["Expect: 100-continue", "Connection: close", "Connection: Upgrade",
                                             "Upgrade: h2c", "Transfer-Encoding: gzip"])))
    head = f"{method} {path} {version}\r\n" + "".join(f"{h}\r\n" for h in headers) + "\r\n"
    raw = head.encode("latin-1", "replace") + payload
    return _mutate(raw, draw) if draw(st.integers(0, 9)) == 0 else raw


def _exchange(port: int, pieces: list[bytes], expected: int) -> list[tuple[int, bytes]]:
    """Send `pieces` on one connection, then read answers until `expected` final ones, EOF or `QUIET`
    seconds of silence; return (status, body) of each final (non-1xx) answer."""
    answers: list[tuple[int, bytes]] = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with contextlib.suppress(OSError):  # the server may close early on a bad head: that is its right
            for piece in pieces:
                sock.sendall(piece)
        sock.settimeout(QUIET)
        buffer = b""
        while len(answers) < expected:
            try:
                data = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not data:
                break
            buffer += data
            buffer = _parse(buffer, answers)
    return answers


def _parse(buffer: bytes, answers: list[tuple[int, bytes]]) -> bytes:
    """Take every complete answer off `buffer` (the server always sends Content-Length)."""
    while b"\r\n\r\n" in buffer:
        head, _, rest = buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next((int(line.split(":", 1)[1]) for line in lines[1:]
                       if line.lower().startswith("content-length:")), 0)
        if len(rest) < length:
            break
        if status >= 200:
            answers.append((status, rest[:length]))
        buffer = rest[length:]
    return buffer


@pytest.mark.slow
def test_random_and_mutated_requests_never_crash_the_port_or_lose_an_acknowledged_event(
        server: Served) -> None:
    """No 5xx for a client's fault, every acknowledged event stored; afterwards a valid event is
    still acknowledged and the process's peak memory grew by less than 64 MiB."""
    warm = ticket_event(1_999_999_999, 1, 1)
    _exchange(server.port, [(f"POST {PATH} HTTP/1.1\r\nHost: h\r\nContent-Length: {len(warm)}\r\n\r\n").encode()
                            + warm], 1)
    before = server.rss_mib()

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    @given(streams=st.lists(requests(), min_size=1, max_size=4), cuts=st.lists(st.integers(1, 400), max_size=6))
    def exchange(streams: list[bytes], cuts: list[int]) -> None:
        data = b"".join(streams)
        pieces, at = [], 0
        for cut in cuts:
            pieces.append(data[at:at + cut])
            at += cut
        pieces.append(data[at:])
        answers = _exchange(server.port, [p for p in pieces if p], len(streams))
        assert all(status < 500 for status, _ in answers), answers
        acknowledged = [json.loads(body)["eventId"] for status, body in answers
                        if status in (200, 201) and b'"ignored"' not in body]
        if acknowledged:
            assert server.stored(acknowledged) == set(acknowledged)

    exchange()
    body = ticket_event(2_000_000_000, 1, 1)
    answers = _exchange(server.port, [(f"POST {PATH} HTTP/1.1\r\nHost: h\r\nX-Fabwatch-Secret: {SECRET}\r\n"
                                      f"Content-Length: {len(body)}\r\n\r\n").encode() + body], 1)
    assert answers, "no answer to a valid event after the fuzz"
    assert answers[0][0] == 201, answers
    assert server.stored(["E2000000000"]) == {"E2000000000"}
    after = server.rss_mib()
    print(f"fuzz: fabwatch RSS {before:.1f} -> {after:.1f} MiB")
    assert after - before < 16, f"fabwatch's RSS grew from {before:.0f} MiB to {after:.0f} MiB"
