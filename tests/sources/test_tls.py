"""TLS: the events port with and without client certificates, and the HTTP client's custom CA.

Certificates come from the real `openssl` command (tests/sources/tls.py); servers listen on
loopback ports.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from collector.errors import CannotListen
from collector.inventory.models import EventsTls, ServiceConfig
from collector.sources.http import HttpClient, Limits, SourceTlsFailed
from tests.servers import free_port
from tests.sources.helpers import stored_events, ticket_event
from tests.sources.test_events_http import events_port, read_answer, request
from tests.sources.tls import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def mutual(tmp_path: Path, pki: Pki) -> AsyncIterator[tuple[int, Path]]:
    """An events port that requires a client certificate signed by the test CA."""
    tls = EventsTls(cert_file=str(pki.server_cert), key_file=str(pki.server_key), client_ca_file=str(pki.ca))
    async with events_port(tmp_path, tls=tls) as running:
        yield running.port, tmp_path / "events.db"


async def post_over_tls(port: int, context: ssl.SSLContext) -> int:
    """Post one event; return the status, or raise what the TLS layer raised."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"), 10)
    try:
        writer.write(request(ticket_event(1, 1, 1)))
        return (await read_answer(reader))[0]
    finally:
        writer.close()


async def test_a_client_certificate_from_the_ca_is_let_in(mutual: tuple[int, Path], pki: Pki) -> None:
    port, store = mutual
    assert await post_over_tls(port, pki.client_context(cert=(pki.client_cert, pki.client_key))) == 201
    assert stored_events(store) == 1


@pytest.mark.parametrize("who", ["no certificate", "a certificate the CA did not sign"])
async def test_clients_without_a_trusted_certificate_are_turned_away(
        mutual: tuple[int, Path], pki: Pki, who: str) -> None:
    port, store = mutual
    cert = None if who == "no certificate" else (pki.stranger_cert, pki.stranger_key)
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
        await post_over_tls(port, pki.client_context(cert=cert))
    assert stored_events(store) == 0


async def test_a_client_that_does_not_trust_the_server_refuses_it(tmp_path: Path, pki: Pki) -> None:
    async with events_port(tmp_path, tls=EventsTls(cert_file=str(pki.server_cert),
                                                  key_file=str(pki.server_key))) as running:
        with pytest.raises(ssl.SSLCertVerificationError):
            await post_over_tls(running.port, pki.client_context(trust=False))
        assert await post_over_tls(running.port, pki.client_context()) == 201  # TLS, no client certificate


async def test_an_unloadable_certificate_names_the_setting(tmp_path: Path, pki: Pki) -> None:
    tls = EventsTls(cert_file=str(tmp_path / "missing.pem"), key_file=str(pki.server_key))
    with pytest.raises(CannotListen, match=r"service\.events_tls\.cert_file/key_file: .*No such file"):
        async with events_port(tmp_path, tls=tls):
            pass


def test_events_tls_needs_the_events_port() -> None:
    with pytest.raises(ValueError, match="events_tls needs events_listen"):
        ServiceConfig(events_tls=EventsTls(cert_file="c.pem", key_file="k.pem"))


@pytest.fixture
async def json_over_tls(pki: Pki) -> AsyncIterator[str]:
    """An HTTPS JSON endpoint whose certificate the test CA signed."""
    async def items(_: web.Request) -> web.Response:
        return web.json_response([{"id": "1"}])

    app = web.Application()
    app.router.add_get("/items", items)
    runner = web.AppRunner(app)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        yield f"https://127.0.0.1:{port}/items"
    finally:
        await runner.cleanup()


async def test_the_http_client_trusts_a_custom_ca(json_over_tls: str, pki: Pki) -> None:
    limits = Limits(timeout=5, retries=2, backoff=0.01, max_bytes=1 << 20)
    client = HttpClient("src", limits, ca_file=str(pki.ca))
    try:
        assert (await client.request("GET", json_over_tls)).body == [{"id": "1"}]
    finally:
        await client.close()
    untrusting = HttpClient("src", limits)
    try:
        with pytest.raises(SourceTlsFailed) as caught:
            await untrusting.request("GET", json_over_tls)
    finally:
        await untrusting.close()
    assert caught.value.reason == "tls"
    assert "certificate verify failed" in str(caught.value)
    assert untrusting.requests == 1  # a certificate is not retried
