"""A fake Grafana following the documented HTTP API paths and payloads (Grafana cannot run here).

Folder API: `GET /api/folders/:uid` (404 when missing), `POST /api/folders {uid, title}` (409 when
the uid exists). Dashboard API: `POST /api/dashboards/db {dashboard, folderUid, overwrite, message}`
answering `{id, uid, url, status, version, slug}`, 412 `{message, status: version-mismatch}` when
the dashboard changed and `overwrite` is false, 400 for an unknown folder. Every request needs a
Bearer token or Basic credentials, else 401 `{"message": "Unauthorized"}`. A state's `failure`
(status, message) makes every request answer that error, in Grafana's shape `{"message": ...}`.
"""

import base64
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class GrafanaState:
    token: str = "glsa_test"
    basic: tuple[str, str] = ("admin", "secret")
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Saved dashboards by uid: {"dashboard": model, "folderUid": uid, "version": n}."""
    requests: list[tuple[str, str]] = field(default_factory=list)
    failure: tuple[int, str] | None = None
    """(status, message) every request answers, as a Grafana failing (5xx) or behind a proxy (404)."""


STATE = web.AppKey("state", GrafanaState)


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _authorized(request: web.Request, state: GrafanaState) -> bool:
    header = request.headers.get("Authorization", "")
    if header == f"Bearer {state.token}":
        return True
    if header.startswith("Basic "):
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return (user, password) == state.basic
    return False


@web.middleware
async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
    state = request.app[STATE]
    state.requests.append((request.method, request.path))
    if state.failure is not None:
        status, message = state.failure
        return web.json_response({"message": message}, status=status)
    if not _authorized(request, state):
        return web.json_response({"message": "Unauthorized"}, status=401)
    return await handler(request)


async def get_folder(request: web.Request) -> web.Response:
    folder = request.app[STATE].folders.get(request.match_info["uid"])
    if folder is None:
        return web.json_response({"message": "folder not found", "status": "not-found"}, status=404)
    return web.json_response(folder)


async def create_folder(request: web.Request) -> web.Response:
    state, body = request.app[STATE], await request.json()
    if not body.get("title"):
        return web.json_response({"message": "folder title cannot be empty"}, status=400)
    uid = body.get("uid") or f"f{len(state.folders) + 1}"
    if uid in state.folders:
        return web.json_response({"message": "a folder with the same uid already exists"}, status=409)
    folder = {"id": len(state.folders) + 1, "uid": uid, "title": body["title"],
              "url": f"/dashboards/f/{uid}/{_slug(body['title'])}", "version": 1}
    state.folders[uid] = folder
    return web.json_response(folder)


async def save_dashboard(request: web.Request) -> web.Response:
    state, body = request.app[STATE], await request.json()
    model, folder_uid = body.get("dashboard") or {}, body.get("folderUid", "")
    if not model.get("title") or not model.get("uid"):
        return web.json_response({"message": "Dashboard title cannot be empty"}, status=400)
    if folder_uid and folder_uid not in state.folders:
        return web.json_response({"message": "folder not found"}, status=400)
    existing = state.dashboards.get(model["uid"])
    if existing and not body.get("overwrite") and model.get("version") != existing["version"]:
        return web.json_response({"message": "The dashboard has been changed by someone else",
                                  "status": "version-mismatch"}, status=412)
    version = existing["version"] + 1 if existing else 1
    state.dashboards[model["uid"]] = {"dashboard": {**model, "version": version}, "folderUid": folder_uid,
                                      "version": version}
    slug = _slug(model["title"])
    return web.json_response({"id": list(state.dashboards).index(model["uid"]) + 1, "uid": model["uid"],
                              "url": f"/d/{model['uid']}/{slug}", "status": "success", "version": version,
                              "slug": slug})


def fake_grafana(state: GrafanaState) -> web.Application:
    """Return the fake Grafana application."""
    app = web.Application(middlewares=[auth])
    app[STATE] = state
    app.router.add_get("/api/folders/{uid}", get_folder)
    app.router.add_post("/api/folders", create_folder)
    app.router.add_post("/api/dashboards/db", save_dashboard)
    return app
