"""The HTTP JSON source: a real aiohttp server on loopback, JMESPath to work items and KPI values."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from collector.errors import SourceError
from collector.sources.times import format_time
from tests.sources.helpers import problem_inventory, sample_source, serve_app

NOW = 1_767_225_600.0 + 86_400.0
HOUR = 3600.0


def workforce_payload() -> dict[str, Any]:
    """A work-management system's queue: its own names, nested, mixed time formats."""
    return {
        "data": {"items": [
            {"ref": 101, "opened": format_time(NOW - 5 * HOUR), "state": "acknowledged", "prio": "critical",
             "due": format_time(NOW - HOUR), "meta": {"channel": "phone"}, "minutes": "12.5"},
            {"ref": 102, "opened": NOW - 4 * HOUR, "state": "inProgress", "prio": "high",
             "due": format_time(NOW + HOUR), "meta": {"channel": "web"}, "minutes": 3},
            {"ref": 103, "opened": format_time(NOW - 3 * HOUR), "state": "resolved", "prio": "low",
             "closed": format_time(NOW - 2 * HOUR), "due": format_time(NOW + HOUR), "meta": {}, "minutes": 30},
        ]},
        "stats": {"agents": 17, "queue": {"waiting": 4}},
    }


class Api:
    """A JSON endpoint whose payload the test sets."""

    def __init__(self) -> None:
        self.payload: Any = workforce_payload()
        self.raw: bytes | None = None
        self.requests = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.raw is not None:
            return web.Response(body=self.raw, content_type="application/json")
        return web.json_response(self.payload)


@pytest.fixture
async def api() -> AsyncIterator[tuple[Api, str]]:
    served = Api()
    app = web.Application()
    app.router.add_get("/api/queue", served.handle)
    async with serve_app(app) as url:
        yield served, f"{url}/api/queue"


COLUMNS = {"id": "ref", "created_at": "opened", "status": "state", "completed_at": "closed", "due_at": "due",
           "priority": "prio", "channel": "meta.channel", "handling_minutes": "minutes"}
KPIS = {
    "backlog": {"kind": "backlog"},
    "overdue": {"kind": "overdue"},
    "inflow": {"kind": "volume", "window": "1d"},
    "agents": {"kind": "value", "sql": "SELECT value FROM kpi_value WHERE name = 'agents_logged_in'"},
    "waiting": {"kind": "value", "sql": "SELECT value FROM kpi_value WHERE name = 'waiting'"},
}


def source(url: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "http_json", "url": url, "items": "data.items", "columns": COLUMNS,
            "values": {"agents_logged_in": "stats.agents", "waiting": "stats.queue.waiting"},
            "retries": 0, **extra}


async def sample_once(tmp_path: Path, spec: dict[str, Any]) -> dict[str, float | None]:
    """Build the source's sampler from an inventory, sample once at NOW, return the KPI values."""
    sample = await sample_source(tmp_path, spec, KPIS, NOW)
    return {k.kpi: k.value for k in sample.kpis}


async def test_items_and_values_are_mapped_by_jmespath_into_the_kpis(api: tuple[Api, str], tmp_path: Path,
                                                                      store_location: str) -> None:
    _, url = api
    values = await sample_once(tmp_path, source(url, store=store_location))
    assert values == {"backlog": 2.0, "overdue": 1.0, "inflow": 3.0, "agents": 17.0, "waiting": 4.0}


async def test_a_newer_payload_updates_the_items(api: tuple[Api, str], tmp_path: Path, store_location: str) -> None:
    served, url = api
    await sample_once(tmp_path, source(url, store=store_location))
    items = served.payload["data"]["items"]
    items[0].update(state="resolved", closed=format_time(NOW - 0.5 * HOUR))
    served.payload["stats"]["agents"] = 11
    values = await sample_once(tmp_path, source(url, store=store_location))
    assert (values["backlog"], values["overdue"], values["agents"]) == (1.0, 0.0, 11.0)


async def test_values_only(api: tuple[Api, str], tmp_path: Path) -> None:
    _, url = api
    spec = {"kind": "http_json", "url": url, "values": {"agents_logged_in": "stats.agents"}}
    values = await sample_once(tmp_path, spec)
    assert values["agents"] == 17.0
    assert values["backlog"] == 0.0


@pytest.mark.parametrize(("change", "reason", "message"), [
    (lambda p: p["data"].update(items={"not": "a list"}), "schema", "is not a list"),
    (lambda p: p["data"]["items"][1].pop("ref"), "schema", "an item has no id"),
    (lambda p: p["data"]["items"][1].update(opened="last tuesday"), "schema", "created_at"),
    (lambda p: p["data"]["items"][1].update(minutes="a lot"), "schema", "handling_minutes"),
    (lambda p: p["stats"].update(agents="seventeen"), "schema", "agents_logged_in is not a number"),
    (lambda p: p["data"]["items"][1].update(minutes=10**400), "schema", "handling_minutes"),  # no float holds it
    (lambda p: p["data"]["items"][1].update(opened=10**400), "schema", "created_at"),
    (lambda p: p["stats"].update(agents=10**400), "schema", "agents_logged_in"),
    (None, "invalid_json", ""),
])
async def test_payload_faults_have_a_reason(api: tuple[Api, str], tmp_path: Path, change: Any, reason: str,
                                            message: str) -> None:
    served, url = api
    if change is None:
        served.raw = b'{"data": {"items": ['
    else:
        change(served.payload)
    with pytest.raises(SourceError) as caught:
        await sample_once(tmp_path, source(url))
    assert caught.value.reason == reason
    assert message in str(caught.value)


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
async def test_numbers_json_has_not_are_invalid_json(api: tuple[Api, str], tmp_path: Path, number: bytes) -> None:
    """Python's parser takes them (and makes 1e400 infinite); a KPI must not become NaN or inf."""
    served, url = api
    served.raw = json.dumps(served.payload).encode().replace(b'"agents": 17', b'"agents": ' + number)
    assert number in served.raw
    with pytest.raises(SourceError) as caught:
        await sample_once(tmp_path, source(url))
    assert caught.value.reason == "invalid_json"
    assert number.decode().lstrip("-") in str(caught.value)


async def test_oversized_payload_is_refused(api: tuple[Api, str], tmp_path: Path) -> None:
    _, url = api
    with pytest.raises(SourceError) as caught:
        await sample_once(tmp_path, source(url, max_bytes=200))
    assert caught.value.reason == "oversize"


def test_items_need_id_created_and_status_columns(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="columns must map created_at, status"):
        problem_inventory(tmp_path, {"kind": "http_json", "url": "http://127.0.0.1:1/x", "items": "a",
                                     "columns": {"id": "ref"}})


async def test_a_jmespath_runtime_error_is_the_payloads_shape(api: tuple[Api, str], tmp_path: Path) -> None:
    """`abs()` of a string is valid JMESPath that fails on this payload: reason schema, the
    expression named, not an internal error with a traceback."""
    _, url = api
    spec = source(url, values={"agents_logged_in": "abs(stats.queue)"})
    with pytest.raises(SourceError) as caught:
        await sample_once(tmp_path, spec)
    assert caught.value.reason == "schema"
    assert "values.agents_logged_in:" in str(caught.value)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("items", "data.[[", "http_json.items\n  Value error, bad JMESPath 'data.[['"),
    ("columns", {**COLUMNS, "status": "state |"}, "http_json.columns\n  Value error, status: bad JMESPath 'state |'"),
    ("values", {"agents": "stats..agents"}, "http_json.values\n  Value error, agents: bad JMESPath 'stats..agents'"),
    ("columns", {**COLUMNS, "complted_at": "closed"},
     "http_json.columns\n  Value error, unknown record column 'complted_at'; known: id, created_at, completed_at"),
])
def test_bad_expressions_and_unknown_columns_are_config_errors(tmp_path: Path, field: str, value: Any,
                                                               message: str) -> None:
    """A typo must fail at load, not drop a column's data without a word or break every sample."""
    with pytest.raises(ValueError, match=re.escape(message)):
        problem_inventory(tmp_path, {**source("http://127.0.0.1:1/x"), field: value})
