"""`fabwatch dashboards push` against a fake Grafana that follows the documented HTTP API."""

import asyncio
import socket
import time

import pytest

from app.cli import main
from dashboards.build import FOLDER_UID
from dashboards.push import PushError, connect, credential_from, push
from tests.dashboards.conftest import EXAMPLE
from tests.dashboards.fake_grafana import GrafanaState, fake_grafana


@pytest.fixture
async def grafana(aiohttp_server):
    state = GrafanaState()
    server = await aiohttp_server(fake_grafana(state), host="127.0.0.1")
    return state, str(server.make_url("")).rstrip("/")


async def _push(url, credential, dashboards, **options):
    return await asyncio.to_thread(push, connect(url, credential), dashboards.values(), **options)


async def test_push_creates_the_folder_and_every_dashboard(grafana, dashboards):
    state, url = grafana
    saved = await _push(url, state.token, dashboards)
    assert sorted(s.uid for s in saved) == sorted(dashboards)
    assert list(state.folders) == [FOLDER_UID]
    assert {d["folderUid"] for d in state.dashboards.values()} == {FOLDER_UID}
    assert state.dashboards["fabwatch-overview"]["dashboard"]["panels"] == dashboards["fabwatch-overview"]["panels"]


async def test_push_is_idempotent(grafana, dashboards):
    state, url = grafana
    await _push(url, state.token, dashboards)
    again = await _push(url, state.basic, dashboards)
    assert {s.version for s in again} == {2}
    assert len(state.dashboards) == len(dashboards)
    assert [r for r in state.requests if r == ("POST", "/api/folders")] == [("POST", "/api/folders")]


async def test_wrong_token_is_a_clear_401(grafana, dashboards):
    _, url = grafana
    with pytest.raises(PushError, match="401 Unauthorized: check FABWATCH_GRAFANA_TOKEN"):
        await _push(url, "wrong", dashboards)


async def test_dashboard_changed_in_grafana_is_a_clear_412_without_overwrite(grafana, dashboards):
    state, url = grafana
    await _push(url, state.token, dashboards)
    state.dashboards["fabwatch-overview"]["version"] = 7  # someone saved it in the UI
    with pytest.raises(PushError, match=r"fabwatch-overview \(412 version-mismatch\): it was changed in Grafana"):
        await _push(url, state.token, dashboards, overwrite=False)
    saved = await _push(url, state.token, dashboards)
    assert next(s.version for s in saved if s.uid == "fabwatch-overview") == 8


def test_credentials_come_from_env_or_files(tmp_path):
    secret = tmp_path / "token"
    secret.write_text("glsa_file\n")
    assert credential_from({"FABWATCH_GRAFANA_TOKEN_FILE": str(secret)}) == "glsa_file"
    assert credential_from({"FABWATCH_GRAFANA_USER": "a", "FABWATCH_GRAFANA_PASSWORD": "b"}) == ("a", "b")
    assert credential_from({}) is None
    with pytest.raises(PushError, match="PASSWORD"):
        credential_from({"FABWATCH_GRAFANA_USER": "a"})
    with pytest.raises(PushError, match="cannot read"):
        credential_from({"FABWATCH_GRAFANA_TOKEN_FILE": str(tmp_path / "missing")})


async def test_cli_push(grafana, monkeypatch, capsys):
    state, url = grafana
    monkeypatch.setenv("FABWATCH_GRAFANA_TOKEN", state.token)
    status = await asyncio.to_thread(main, ["dashboards", "push", "-c", str(EXAMPLE), "--url", url])
    assert status == 0
    assert "Pushed 11 dashboards" in capsys.readouterr().out
    monkeypatch.setenv("FABWATCH_GRAFANA_TOKEN", "wrong")
    assert await asyncio.to_thread(main, ["dashboards", "push", "-c", str(EXAMPLE), "--url", url]) == 1
    assert "401 Unauthorized" in capsys.readouterr().err


def _push_cli(url: str, capsys) -> tuple[int, str]:
    """Run `fabwatch dashboards push` to `url`; return its status and what it wrote to stderr."""
    status = main(["dashboards", "push", "-c", str(EXAMPLE), "--url", url])
    return status, capsys.readouterr().err


def test_push_to_a_closed_port_is_one_clear_line(monkeypatch, capsys):
    from tests.servers import free_port

    monkeypatch.setenv("FABWATCH_GRAFANA_TOKEN", "t")
    url = f"http://127.0.0.1:{free_port()}"
    status, err = _push_cli(url, capsys)
    assert status == 1
    assert err == f"fabwatch: cannot reach Grafana at {url}: connection refused\n"


def test_a_grafana_that_does_not_answer_in_time_is_a_timeout(dashboards):
    with socket.socket() as listening:  # accepts connections (the backlog) and never answers
        listening.bind(("127.0.0.1", 0))
        listening.listen(8)
        url = f"http://127.0.0.1:{listening.getsockname()[1]}"
        api = connect(url, credential_from({"FABWATCH_GRAFANA_TOKEN": "t"}), timeout=0.5)
        started = time.monotonic()
        with pytest.raises(PushError) as error:
            push(api, list(dashboards.values())[:1])
        assert time.monotonic() - started < 5.0
    assert str(error.value) == f"cannot reach Grafana at {url}: no answer within 0.5 s"


@pytest.mark.parametrize(("status", "message", "said"), [
    (404, "Not found", "404 Not Found: Not found"),
    (500, "database is locked", "500 Internal Server Error: database is locked"),
    (503, "Grafana is starting", "503 Service Unavailable: Grafana is starting"),
])
async def test_an_http_error_says_the_status_and_grafanas_message(grafana, monkeypatch, capsys, status, message,
                                                                  said):
    state, url = grafana
    state.failure = (status, message)
    monkeypatch.setenv("FABWATCH_GRAFANA_TOKEN", state.token)
    code, err = await asyncio.to_thread(_push_cli, url, capsys)
    assert code == 1
    assert err == f"fabwatch: Grafana at {url} answered {said}\n"


def test_a_url_without_its_scheme_is_refused_before_any_request(monkeypatch, capsys):
    monkeypatch.setenv("FABWATCH_GRAFANA_TOKEN", "t")
    status, err = _push_cli("127.0.0.1:3000", capsys)
    assert status == 1
    assert err == "fabwatch: the Grafana URL must start with http:// or https://, got '127.0.0.1:3000'\n"
