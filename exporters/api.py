"""The JSON API under /api/v1/ and its OpenAPI 3.1 document, generated from `exporters.schema`.

Handlers read the `StatusBoard` (rebuilt at most once per sample): a request never runs a query.
Errors under /api/ are JSON: `{"error": ..., "detail": ...}`, 400 for a bad parameter, 404 for
an unknown process or path, 405 for a method other than GET or HEAD.
"""

from collections.abc import Awaitable, Callable, Hashable
from functools import lru_cache
from typing import Any, cast, get_args

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from collector.health import fabwatch_version
from exporters.reportfiles import api_reports
from exporters.schema import (
    Error,
    InventoryView,
    KpiList,
    ProcessList,
    ProcessStatus,
    ReportList,
    SloList,
    SourceList,
    State,
)
from exporters.status import StatusBoard, filter_kpis, inventory_view

BOARD = web.AppKey("status_board", StatusBoard)
PREFIX = "/api/v1"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_STATES: tuple[str, ...] = get_args(State)


class ApiError(Exception):
    """A client error to answer as JSON."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


def respond(request: web.Request, key: Hashable, build: Callable[[], BaseModel]) -> web.Response:
    """Answer the response model `build` makes, serialised once per version of the view."""
    body = request.app[BOARD].memo(key, lambda: build().model_dump_json().encode())
    return web.Response(body=body, content_type="application/json")


def error_response(status: int, error: str, detail: str) -> web.Response:
    """A JSON error body."""
    return web.Response(status=status, body=Error(error=error, detail=detail).model_dump_json(),
                        content_type="application/json")


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer errors under /api/ as JSON instead of aiohttp's plain text."""
    if not request.path.startswith("/api/"):
        return await handler(request)
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.error, exc.detail)
    except web.HTTPNotFound:
        return error_response(404, "not_found", f"no such path: {request.path}")
    except web.HTTPMethodNotAllowed as exc:
        response = error_response(405, "method_not_allowed", f"{request.method} is not allowed; use GET")
        response.headers["Allow"] = ",".join(sorted(exc.allowed_methods))
        return response


def _choice(request: web.Request, name: str, allowed: tuple[str, ...]) -> str | None:
    """A query parameter that must be one of `allowed` (given at most once), or None."""
    values = request.query.getall(name, [])
    if not values:
        return None
    if len(values) > 1 or values[0] not in allowed:
        raise ApiError(400, "bad_parameter", f"{name} must be one of {', '.join(allowed)}; got {', '.join(values)}")
    return values[0]


async def processes(request: web.Request) -> web.Response:
    """Every process with its overall state."""
    board = request.app[BOARD]
    return respond(request, "processes", lambda: ProcessList(processes=board.summaries()))


async def process(request: web.Request) -> web.Response:
    """One process with its KPIs, SLAs and source health."""
    name = request.match_info["name"]
    status = request.app[BOARD].processes().get(name)
    if status is None:
        raise ApiError(404, "not_found", f"no process named {name!r}")
    return respond(request, ("process", name), lambda: status)


async def kpis(request: web.Request) -> web.Response:
    """Every KPI's value, target and state; `process` and `state` filter."""
    board = request.app[BOARD]
    name = _choice(request, "process", tuple(board.inventory.processes))
    state = cast(State | None, _choice(request, "state", _STATES))
    return respond(request, ("kpis", name, state), lambda: KpiList(kpis=filter_kpis(board.processes(), name, state)))


async def slos(request: web.Request) -> web.Response:
    """Every SLA as an objective with its error budget and burn rates; `process` filters."""
    board = request.app[BOARD]
    name = _choice(request, "process", tuple(board.inventory.processes))
    return respond(request, ("slos", name), lambda: SloList(
        slos=[slo for key, status in board.processes().items() if name in (None, key) for slo in status.slos]))


async def sources(request: web.Request) -> web.Response:
    """Every source's health."""
    board = request.app[BOARD]
    return respond(request, "sources", lambda: SourceList(sources=board.sources()))


async def inventory(request: web.Request) -> web.Response:
    """The inventory without any secret."""
    board = request.app[BOARD]
    return respond(request, "inventory", lambda: inventory_view(board.inventory))


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of this API, for this inventory's processes."""
    return web.json_response(openapi_document(tuple(request.app[BOARD].inventory.processes)))


def add_routes(app: web.Application) -> None:
    """Add the API's routes (GET, and HEAD with them)."""
    for path, handler in ROUTES.items():
        app.router.add_get(PREFIX + path, handler)


ROUTES: dict[str, Handler] = {
    "/processes": processes, "/processes/{name}": process, "/kpis": kpis, "/slos": slos,
    "/sources": sources, "/inventory": inventory, "/reports": api_reports, "/openapi.json": openapi,
}


def _parameter(name: str, where: str, values: tuple[str, ...] | None, description: str) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if values is not None:
        schema["enum"] = list(values)
    return {"name": name, "in": where, "required": where == "path", "schema": schema, "description": description}


def _operation(summary: str, model: str, parameters: list[dict[str, Any]], errors: tuple[int, ...]) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": summary, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}}}}
    for status in errors:
        responses[str(status)] = {"description": {400: "A bad parameter", 404: "Unknown process"}[status],
                                  "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {"get": {"summary": summary, "operationId": model[0].lower() + model[1:], "parameters": parameters,
                    "responses": responses}}


@lru_cache(maxsize=4)
def openapi_document(process_names: tuple[str, ...]) -> dict[str, Any]:
    """Build the OpenAPI 3.1 document; the schemas are the response models' JSON Schemas."""
    models: list[type[BaseModel]] = [ProcessList, ProcessStatus, KpiList, SloList, SourceList, InventoryView,
                                     ReportList, Error]
    _, schemas = models_json_schema([(m, "serialization") for m in models],
                                    ref_template="#/components/schemas/{model}")
    by_process = _parameter("process", "query", process_names, "Only this process's")
    paths = {
        "/processes": _operation("Every process with its overall state", "ProcessList", [], ()),
        "/processes/{name}": _operation("One process with its KPIs, SLAs and source health", "ProcessStatus",
                                        [_parameter("name", "path", None, "The process's name")], (404,)),
        "/kpis": _operation("Every KPI's value, target and state", "KpiList",
                            [by_process, _parameter("state", "query", _STATES, "Only KPIs in this state")], (400,)),
        "/slos": _operation("Every SLA's objective, error budget and burn rates", "SloList", [by_process], (400,)),
        "/sources": _operation("Every source's health", "SourceList", [], ()),
        "/inventory": _operation("The inventory, without secrets", "InventoryView", [], ()),
        "/reports": _operation("The monthly reports served at /reports/, newest first", "ReportList", [], ()),
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "fabwatch", "version": fabwatch_version(),
                 "description": "Processes, KPIs, SLAs and source health of fabwatch's latest samples."},
        "servers": [{"url": PREFIX}],
        "paths": paths,
        "components": {"schemas": schemas.get("$defs", {})},
    }
