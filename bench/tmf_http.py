"""A lean HTTP/1.1 keep-alive load client for the TMF benchmarks (loopback only).

aiohttp's client costs more CPU per request than the listener it measures, so the load loops
use this one: one asyncio protocol per connection, one request in flight per connection,
pre-encoded requests, responses parsed just enough (status line, Content-Length).
"""

import asyncio


class Connection(asyncio.Protocol):
    """One keep-alive connection; `request(raw)` sends pre-encoded bytes and returns the status."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiting: asyncio.Future[int] | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_exception(ConnectionError("connection lost"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        length = 0
        at = head.find(b"content-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at)
            length = int(head[at + 15:stop if stop >= 0 else len(head)])
        if len(self.buffer) < end + 4 + length:
            return
        status = int(self.buffer[9:12])
        del self.buffer[:end + 4 + length]
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_result(status)

    async def request(self, raw: bytes) -> int:
        """Send one request; return the response status."""
        if self.closed or self.transport is None:
            raise ConnectionError("connection closed")
        self.waiting = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiting

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def connect(host: str, port: int) -> Connection:
    """Open one connection."""
    _, protocol = await asyncio.get_running_loop().create_connection(Connection, host, port)
    return protocol


def post(host: str, port: int, path: str, body: bytes) -> bytes:
    """A pre-encoded keep-alive POST with a JSON body."""
    return (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def get(host: str, port: int, path: str) -> bytes:
    """A pre-encoded keep-alive GET."""
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
