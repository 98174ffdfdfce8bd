"""The JSON API on a real SQLite source: shapes, filters, JSON errors, no secret; and schemathesis
against `fabwatch serve` on a loopback port, driven by the API's own OpenAPI document."""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
import yaml
from schemathesis import GenerationMode
from schemathesis.transport import requests as st_requests

from app.service import build_app
from collector.inventory.load import load_inventory
from exporters.api import openapi_document
from tests.app.test_cli import run_fabwatch, stop, wait_http
from tests.app.test_service import make_records, wait_ready, write_inventory
from tests.servers import free_port

MARKER = "Zq7mArKeR42"


def marked_inventory(tmp_path: Path) -> Path:
    """The service tests' inventory plus a source whose DSN and a process whose runbook carry MARKER."""
    make_records(tmp_path / "records.db")
    path = write_inventory(tmp_path, tmp_path / "records.db")
    data = yaml.safe_load(path.read_text())
    data["sources"]["remote"] = {"kind": "sql", "interval": "1h", "timeout": "2s",
                                 "dsn": f"postgresql+asyncpg://fab:{MARKER}@127.0.0.1:{free_port()}/x"}
    data["processes"]["order"] = {
        "etom": "1.3.1.2", "name": "Order <script>alert(1)</script>", "team": "fulfilment",
        "records": {"source": "remote", "table": "product_order", "open_statuses": ["open"]},
        "kpis": {"wip": {"kind": "backlog", "target": {"max": 10}}}}
    data["alerting"] = {"grafana_url": "https://grafana.example"}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
async def client(aiohttp_client, tmp_path):
    client = await aiohttp_client(build_app(load_inventory([marked_inventory(tmp_path)])))
    await wait_ready(client)
    return client


async def get(client, path: str, status: int = 200):
    response = await client.get(path)
    assert response.status == status, await response.text()
    assert response.headers["Content-Type"].startswith("application/json")
    return await response.json()


async def test_processes_carry_their_state_links_and_source_health(client):
    listed = await get(client, "/api/v1/processes")
    assert [p["name"] for p in listed["processes"]] == ["problem", "order"]
    problem = await get(client, "/api/v1/processes/problem")
    assert problem["etom"] == "1.3.1.3"
    assert problem["dashboard"] == "https://grafana.example/d/fabwatch-process-problem?var-process=problem"
    assert problem["source"] == {"name": "crm", "kind": "sql", "up": True, "sampled": True,
                                 "last_success": problem["source"]["last_success"], "last_error": None,
                                 "errors": {}}
    kpis = {k["kpi"]: k for k in problem["kpis"]}
    assert kpis["backlog"]["value"] == 10.0  # make_records leaves every third of 30 tickets open
    assert kpis["backlog"]["state"] == "ok"
    assert kpis["backlog"]["trend"][-1]["value"] == 10.0
    order = await get(client, "/api/v1/processes/order")
    assert order["state"] == "no_data"  # its database is unreachable
    assert order["source"]["up"] is False
    assert order["source"]["last_error"] == "connection"


async def test_kpis_filter_by_process_and_state(client):
    every = (await get(client, "/api/v1/kpis"))["kpis"]
    assert {k["process"] for k in every} == {"problem", "order"}
    only = (await get(client, "/api/v1/kpis?process=order"))["kpis"]
    assert [k["kpi"] for k in only] == ["wip"]
    no_data = (await get(client, "/api/v1/kpis?state=no_data"))["kpis"]
    assert no_data == [k for k in every if k["state"] == "no_data"]
    assert {"process": "order", "kpi": "wip"}.items() <= no_data[0].items()


async def test_slos_follow_the_objective_shape(client):
    (slo,) = (await get(client, "/api/v1/slos"))["slos"]
    assert slo["labels"] == {"process": "problem", "kpi": "resolved_in_time"}
    assert slo["objective"]["target"] == 0.9
    assert slo["objective"]["window"] == "30d"
    availability, budget = slo["availability"], slo["budget"]
    assert availability["errors"] == pytest.approx(availability["total"] * (1 - availability["percentage"]))
    assert budget["total"] == pytest.approx(availability["total"] * 0.1)
    assert budget["remaining"] == pytest.approx(budget["total"] - budget["used"])
    assert len(slo["burn_rates"]) == 4  # the workbook's four alert window pairs
    assert (await get(client, "/api/v1/slos?process=order"))["slos"] == []


@pytest.mark.parametrize("query", ["state=red", "process=nope", "state=ok&state=breached"])
async def test_bad_parameters_get_a_400_json_error(client, query):
    body = await get(client, f"/api/v1/kpis?{query}", 400)
    assert body["error"] == "bad_parameter"
    assert body["detail"]


async def test_unknown_paths_and_processes_get_a_404_json_error(client):
    assert (await get(client, "/api/v1/processes/nope", 404))["error"] == "not_found"
    assert (await get(client, "/api/v1/report", 404))["error"] == "not_found"
    response = await client.post("/api/v1/kpis")
    assert response.status == 405
    assert (await response.json())["error"] == "method_not_allowed"


async def test_inventory_and_sources_show_no_secret(client):
    inventory = await get(client, "/api/v1/inventory")
    assert {s["name"]: s["kind"] for s in inventory["sources"]} == {"crm": "sql", "remote": "sql"}
    assert inventory["sources"][0]["interval_seconds"] == 3600.0
    problem = inventory["processes"][0]
    assert {k["name"]: k["target"] for k in problem["kpis"]}["backlog"] == {"min": None, "max": 500.0}
    for path in ("/api/v1/inventory", "/api/v1/sources", "/api/v1/processes/order", "/api/v1/openapi.json", "/"):
        response = await client.get(path)
        assert MARKER not in await response.text(), path


def test_the_openapi_document_is_3_1_and_names_every_route():
    document = openapi_document(("problem",))
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) == {"/processes", "/processes/{name}", "/kpis", "/slos", "/sources", "/inventory",
                                         "/reports"}
    (process,) = [p for p in document["paths"]["/kpis"]["get"]["parameters"] if p["name"] == "process"]
    assert process["schema"]["enum"] == ["problem"]
    refs = set(_refs(document))
    assert "#/components/schemas/ProcessStatus" in refs
    assert {ref.rsplit("/", 1)[1] for ref in refs} <= set(document["components"]["schemas"])


def _refs(node: Any) -> Iterator[str]:
    """Every `$ref` in a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


@pytest.fixture
def served(tmp_path) -> Iterator[str]:
    """`fabwatch serve` on a free loopback port, its sources sampled; its base URL."""
    port = free_port()
    proc = run_fabwatch("serve", "-c", str(marked_inventory(tmp_path)), "--listen", f"127.0.0.1:{port}",
                        "--state", str(tmp_path / "serve-state.db"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while b'"sampled":false' in wait_http(f"{url}/api/v1/sources", proc):
            assert time.monotonic() < deadline, "sources not sampled within 30 s"
            time.sleep(0.1)
        yield url
    finally:
        code, _, err = stop(proc)
        assert code == 0, err


def _conforms(operation: Any, mode: GenerationMode, base_url: str) -> None:
    @hypothesis.settings(max_examples=40, deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        case.call_and_validate(base_url=base_url)

    check()


@pytest.mark.slow
def test_the_api_conforms_to_its_openapi_document(served, monkeypatch):
    """Every operation with generated valid parameters, and those with parameters with invalid ones:
    no 5xx, documented status codes and content types, bodies valid against their schemas, bad
    parameters refused with a 400 (schemathesis' default checks)."""
    # requests runs on urllib3-future here (niquests, grafana-client's HTTP client, installs it as
    # `urllib3`); its pool container has no `keys()`, which schemathesis' dropped-connection retry
    # counts connections with. Counting none only means a dropped connection is retried once.
    monkeypatch.setattr(st_requests, "_count_opened_connections", lambda session: 0)
    schema = schemathesis.openapi.from_url(f"{served}/api/v1/openapi.json")
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()
        _conforms(operation, GenerationMode.POSITIVE, f"{served}/api/v1")
        if any(p.location == "query" for p in operation.query):
            _conforms(operation, GenerationMode.NEGATIVE, f"{served}/api/v1")
            tested.append(operation.label)
    assert sorted(tested) == ["GET /kpis", "GET /slos"]
