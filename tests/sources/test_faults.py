"""Faults of a polled TMF source: each one gives its reason label and `fab_source_up 0`, and the
service keeps serving. The faulty API is a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from app.service import HEALTH, SCHEDULER, build_app
from collector.sources.times import format_time
from tests.sources.helpers import API_OF, example, serve_app

BASE = "/tmf-api/troubleTicket/v4"
GOOD = [{"id": "TT-1", "status": "inProgress", "creationDate": format_time(1.767e9),
         "lastUpdate": format_time(1.767e9 + 5), "priority": "high"}]


class Faulty:
    """A TMF621 list endpoint whose behaviour the test chooses; also an OAuth2 token endpoint."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.tokens = 0
        self.valid_token = ""
        self.blips = 0
        """503s to answer (then the list) once a request is authorized."""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(f"{BASE}/troubleTicket", self.tickets)
        app.router.add_post("/token", self.token)
        return app

    async def token(self, request: web.Request) -> web.Response:
        self.tokens += 1
        return web.json_response({"access_token": f"tok{self.tokens}", "expires_in": 3600})

    async def tickets(self, request: web.Request) -> web.StreamResponse:
        mode = self.mode
        if mode == "expired" and request.headers.get("Authorization") != f"Bearer {self.valid_token}":
            return web.json_response({"code": "expired"}, status=401)
        if self.blips:
            self.blips -= 1
            return web.json_response({"code": "blip"}, status=503)
        answers: dict[str, Any] = {
            "5xx": lambda: web.json_response({"code": "boom"}, status=503),
            "429": lambda: web.json_response({}, status=429, headers={"Retry-After": "0"}),
            "json": lambda: web.Response(text="[{not json", content_type="application/json"),
            "big": lambda: web.json_response([GOOD[0] | {"note": "x" * 5000}] * 50),
            "schema": lambda: web.json_response({"items": GOOD}),
            "no_id": lambda: web.json_response([{"status": "held"}]),
            "history": lambda: web.json_response([GOOD[0] | {"statusChange": [{"status": "resolved",
                                                                                "changeDate": "01/02/2024"}]}]),
        }
        if mode == "slow":
            await asyncio.sleep(2)
        if mode in answers:
            response: web.StreamResponse = answers[mode]()
            return response
        return web.json_response(GOOD, headers={"X-Total-Count": "1"})


@pytest.fixture
async def faulty() -> AsyncIterator[tuple[Faulty, str]]:
    server = Faulty()
    async with serve_app(server.app()) as url:
        yield server, url


async def _service(url: str, tmp_path: Path, **extra: Any) -> web.Application:
    sources = {"sql": {"kind": "sql", "dsn": f"sqlite+aiosqlite:///{tmp_path / 'none.db'}"},
               "tickets": {"kind": "tmf621", "base_url": url + BASE, "timeout": "0.5s", "retries": 1,
                           "backoff": "10ms", "max_bytes": 20000, "store": str(tmp_path / "tt.db"),
                           "interval": "1h", **extra}}
    inventory = example(sources, {p: "tickets" if p == "problem" else "sql" for p in API_OF},
                        tmp_path / "state.db")
    return build_app(inventory)


@pytest.mark.parametrize(("mode", "reason"), [
    ("5xx", "http_status"), ("429", "rate_limited"), ("slow", "timeout"), ("json", "invalid_json"),
    ("big", "oversize"), ("schema", "schema"), ("no_id", "schema"), ("history", "schema"),
])
@pytest.mark.slow
async def test_fault_gives_reason_and_source_down(faulty: tuple[Faulty, str], tmp_path: Path, mode: str,
                                                  reason: str) -> None:
    server, url = faulty
    app = await _service(url, tmp_path)
    async with serve_app(app) as service_url:
        scheduler, health = app[SCHEDULER], app[HEALTH]
        await _sampled(health)
        assert health.is_up("tickets")
        server.mode = mode
        assert await scheduler.run_once("tickets") is None
        assert health.errors("tickets")[reason] == 1
        assert not health.is_up("tickets")
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{service_url}/metrics") as response:
                text = await response.text()
            async with session.get(f"{service_url}/healthz") as response:
                assert response.status == 200
        assert 'fab_source_up{source="tickets"} 0.0' in text
        assert f'fab_source_errors_total{{reason="{reason}",source="tickets"}} 1.0' in text
        server.mode = "ok"
        assert await scheduler.run_once("tickets") is not None
        assert health.is_up("tickets")


async def _oauth2_service(url: str, tmp_path: Path) -> web.Application:
    """The service with the tickets source behind OAuth2 client credentials from the faulty server."""
    auth = {"kind": "oauth2", "token_url": f"{url}/token", "client_id": "fabwatch", "client_secret": "x"}
    return await _service(url, tmp_path, auth=auth)


async def test_expired_token_is_fetched_again_once(faulty: tuple[Faulty, str], tmp_path: Path) -> None:
    server, url = faulty
    app = await _oauth2_service(url, tmp_path)
    async with serve_app(app):
        scheduler, health = app[SCHEDULER], app[HEALTH]
        await _sampled(health)
        assert server.tokens == 1
        assert health.is_up("tickets")
        server.mode, server.valid_token = "expired", "tok2"  # the cached token has expired server-side
        assert await scheduler.run_once("tickets") is not None
        assert server.tokens == 2
        assert health.is_up("tickets")
        server.valid_token = "never"  # a fresh token that is refused too: one re-fetch, then auth fails
        assert await scheduler.run_once("tickets") is None
        assert server.tokens == 3
        assert health.errors("tickets")["auth"] == 1


async def test_a_5xx_after_a_token_fetched_again_is_retried(faulty: tuple[Faulty, str], tmp_path: Path) -> None:
    """The attempt with the new token is an attempt like any other: a transient 503 on it is retried
    (it used to escape the retries as an internal error)."""
    server, url = faulty
    app = await _oauth2_service(url, tmp_path)
    async with serve_app(app):
        scheduler, health = app[SCHEDULER], app[HEALTH]
        await _sampled(health)
        server.mode, server.valid_token, server.blips = "expired", "tok2", 1
        assert await scheduler.run_once("tickets") is not None
        assert (server.tokens, server.blips) == (2, 0)
        assert health.is_up("tickets")
        assert health.errors("tickets")["internal"] == 0


async def _sampled(health: Any) -> None:
    """Wait for the first scheduled sample of every source."""
    async with asyncio.timeout(10):
        while health.not_sampled():
            await asyncio.sleep(0.01)


@pytest.mark.parametrize(("extra", "reason", "message"), [
    ({"auth": {"kind": "bearer", "token_file": "/nonexistent/fabwatch-token"}}, "auth",
     "token_file /nonexistent/fabwatch-token: No such file or directory"),
    ({"ca_file": "/nonexistent/fabwatch-ca.pem"}, "tls", "ca_file /nonexistent/fabwatch-ca.pem: "),
])
async def test_a_missing_credential_file_is_named_with_its_reason(faulty: tuple[Faulty, str], tmp_path: Path,
                                                                  extra: dict[str, Any], reason: str,
                                                                  message: str, caplog) -> None:
    """Not reason=internal with a bare FileNotFoundError: on-call needs the file and the setting."""
    _, url = faulty
    app = await _service(url, tmp_path, **extra)
    async with serve_app(app):
        scheduler, health = app[SCHEDULER], app[HEALTH]
        assert await scheduler.run_once("tickets") is None
        assert health.errors("tickets")[reason] >= 1  # the start's sample failed the same way
        assert health.errors("tickets")["internal"] == 0
    failed = [r for r in caplog.records if r.getMessage() == "sample_failed"]
    assert failed
    assert message in str(failed[-1].__dict__["fabwatch_fields"]["error"])
