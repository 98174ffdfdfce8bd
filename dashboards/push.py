"""Upload the dashboards to a Grafana server through its HTTP API (grafana-client).

Idempotent: the folder is created only when missing, and each dashboard is saved with
`POST /api/dashboards/db`, replacing the version in Grafana (`overwrite`) unless asked not to.
"""

import socket
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

from grafana_client.api import GrafanaApi
from grafana_client.client import (
    GrafanaClientError,
    GrafanaException,
    GrafanaTimeoutError,
    GrafanaUnauthorizedError,
)
from niquests.exceptions import RequestException  # grafana-client's HTTP library

from dashboards.build import FOLDER_TITLE, FOLDER_UID

Credential = str | tuple[str, str]
MESSAGE = "Pushed by fabwatch dashboards push"
TIMEOUT = 10.0


class PushError(Exception):
    """A push that failed, with a message for the operator."""


@dataclass(frozen=True)
class Saved:
    uid: str
    url: str
    version: int


def credential_from(env: Mapping[str, str]) -> Credential | None:
    """Return a token, or (user, password), from FABWATCH_GRAFANA_* variables or the files they name."""
    token = _secret(env, "FABWATCH_GRAFANA_TOKEN")
    if token:
        return token
    user = env.get("FABWATCH_GRAFANA_USER")
    password = _secret(env, "FABWATCH_GRAFANA_PASSWORD")
    if user and password is not None:
        return (user, password)
    if user:
        raise PushError("FABWATCH_GRAFANA_USER is set but neither FABWATCH_GRAFANA_PASSWORD "
                        "nor FABWATCH_GRAFANA_PASSWORD_FILE is")
    return None


def _secret(env: Mapping[str, str], name: str) -> str | None:
    """Return `name` from the environment, or the content of the file `name_FILE` points at."""
    if env.get(name):
        return env[name]
    path = env.get(f"{name}_FILE")
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise PushError(f"cannot read {name}_FILE {path!r}: {exc.strerror}") from exc


def connect(url: str, credential: Credential | None, timeout: float = TIMEOUT) -> GrafanaApi:
    """Return a client of the Grafana at `url` (http:// or https://)."""
    if not url.startswith(("http://", "https://")):
        raise PushError(f"the Grafana URL must start with http:// or https://, got {url!r}")
    api: GrafanaApi = GrafanaApi.from_url(url, credential=credential, timeout=timeout)
    return api


def ensure_folder(api: GrafanaApi, uid: str = FOLDER_UID, title: str = FOLDER_TITLE) -> bool:
    """Create the folder unless it exists; return whether it was created."""
    folders: Any = api.folder  # grafana-client is not annotated
    try:
        folders.get_folder(uid)
        return False
    except GrafanaClientError as exc:
        if exc.status_code != 404:
            raise
    folders.create_folder(title, uid=uid)
    return True


def save(api: GrafanaApi, model: dict[str, Any], folder_uid: str, overwrite: bool) -> Saved:
    """Save one dashboard into the folder."""
    payload = {"dashboard": {**model, "id": None}, "folderUid": folder_uid,
               "overwrite": overwrite, "message": MESSAGE}
    dashboards: Any = api.dashboard
    answer = dashboards.update_dashboard(payload)
    return Saved(str(answer["uid"]), str(answer.get("url", "")), int(answer.get("version", 0)))


def push(api: GrafanaApi, models: Iterable[dict[str, Any]], *, overwrite: bool = True,
         folder_uid: str = FOLDER_UID, folder_title: str = FOLDER_TITLE) -> list[Saved]:
    """Create the folder if needed and save every dashboard; raise `PushError` with a clear message."""
    try:
        ensure_folder(api, folder_uid, folder_title)
        return [_save_one(api, model, folder_uid, overwrite) for model in models]
    except GrafanaUnauthorizedError as exc:
        raise PushError("Grafana answered 401 Unauthorized: check FABWATCH_GRAFANA_TOKEN (a service account "
                        "token with the Editor role) or FABWATCH_GRAFANA_USER/PASSWORD") from exc
    except GrafanaTimeoutError as exc:
        raise PushError(f"cannot reach Grafana at {base_url(api)}: no answer within {api.client.timeout:g} s") \
            from exc
    except GrafanaException as exc:
        raise PushError(_answered(api, exc)) from exc
    except RequestException as exc:  # no answer at all: wrong URL, Grafana down, TLS
        raise PushError(f"cannot reach Grafana at {base_url(api)}: {_reason(exc)}") from exc


def base_url(api: GrafanaApi) -> str:
    """The Grafana URL the client was made for (its API URL without `/api`)."""
    return str(api.client.url).removesuffix("/api")


def _answered(api: GrafanaApi, exc: GrafanaException) -> str:
    """Say an HTTP error by its status and Grafana's message (its JSON `message`, else the body)."""
    if not exc.status_code:  # grafana-client wraps the HTTP library's other errors with status 0
        return f"cannot reach Grafana at {base_url(api)}: {_reason(exc)}"
    response = exc.response
    message = response.get("message", "") if isinstance(response, dict) else str(response or "")
    first = " ".join(message.split())[:200] or "no message"
    return f"Grafana at {base_url(api)} answered {_status(exc.status_code)}: {first}"


def _status(code: int) -> str:
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


def _reason(exc: BaseException) -> str:
    """Why no answer came, in the operating system's words (`connection refused`), not the HTTP
    library's: the innermost socket error of the exception's chain."""
    inner: BaseException | None = exc
    seen: set[int] = set()
    while inner is not None and id(inner) not in seen:
        seen.add(id(inner))
        if isinstance(inner, socket.gaierror):
            return f"cannot resolve the host name ({inner.strerror or str(inner).split(':')[0]})"
        if isinstance(inner, ssl.SSLError):
            return f"TLS failed: {inner.reason or inner.strerror or inner}"
        if isinstance(inner, OSError) and inner.strerror and type(inner).__module__ in ("builtins", "socket"):
            return inner.strerror[0].lower() + inner.strerror[1:]
        inner = inner.__cause__ or inner.__context__
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _save_one(api: GrafanaApi, model: dict[str, Any], folder_uid: str, overwrite: bool) -> Saved:
    try:
        return save(api, model, folder_uid, overwrite)
    except GrafanaClientError as exc:
        if exc.status_code == 412:
            raise PushError(_precondition_message(model["uid"], exc.response)) from exc
        if exc.status_code == 403:
            raise PushError(f"Grafana answered 403 Forbidden for dashboard {model['uid']}: the credential "
                            f"may not write to folder {folder_uid!r}") from exc
        raise


def _precondition_message(uid: str, response: Any) -> str:
    """Explain a 412 Precondition Failed by its documented `status`."""
    status = response.get("status", "") if isinstance(response, dict) else ""
    detail = response.get("message", "") if isinstance(response, dict) else str(response)
    reasons = {
        "version-mismatch": "it was changed in Grafana since it was last pushed; push with overwrite to replace "
                            "those changes, or copy them into the inventory first",
        "name-exists": "another dashboard in the folder has the same title or uid",
        "plugin-dashboard": "it belongs to a plugin",
    }
    reason = reasons.get(status, detail or "precondition failed")
    return f"Grafana refused dashboard {uid} (412 {status or 'Precondition Failed'}): {reason}"
