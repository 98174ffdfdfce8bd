"""`fabwatch dashboards push` against a fake Grafana that follows the documented HTTP API."""

import asyncio

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


def test_a_grafana_that_does_not_answer_is_a_clear_error(dashboards):
    from tests.servers import free_port

    api = connect(f"http://127.0.0.1:{free_port()}", credential_from({"FABWATCH_GRAFANA_TOKEN": "t"}))
    with pytest.raises(PushError, match="cannot reach Grafana: "):
        push(api, list(dashboards.values())[:1])
