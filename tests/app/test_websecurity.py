"""TLS, mutual TLS and basic authentication on the service port, with certificates made by the test."""

import base64
import logging
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
import yaml
from aiohttp import web

from app.service import GUARD, build_app, serve
from app.websecurity import FailedLogins, WebGuard, tls_context
from collector.inventory.load import load_inventory, load_web_config
from collector.inventory.webconfig import WebConfig
from tests.app.test_cli import run_fabwatch, stop
from tests.app.test_service import make_records, write_inventory
from tests.servers import free_port
from tests.sources.tls import Pki, make_pki

USER, PASSWORD = "prometheus", "correct horse"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    directory = tmp_path / "pki"
    directory.mkdir()
    return make_pki(directory)


def web_config_file(tmp_path: Path, pki: Pki, *, mtls: bool = False, users: bool = True) -> Path:
    tls: dict[str, Any] = {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)}
    if mtls:
        tls |= {"client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": str(pki.ca)}
    document: dict[str, Any] = {"tls_server_config": tls,
                                "http_server_config": {"headers": {"X-Content-Type-Options": "nosniff"}}}
    if users:
        document["basic_auth_users"] = {USER: bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()}
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump(document))
    return path


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def _serving(tmp_path: Path, web: WebConfig, *, healthz_open: bool = False) -> AsyncIterator[str]:
    import asyncio

    records = tmp_path / "records.db"
    make_records(records)
    inventory = load_inventory([write_inventory(tmp_path, records)])
    if healthz_open:
        inventory = inventory.model_copy(update={"service": inventory.service.model_copy(
            update={"healthz_without_auth": True})})
    assert web.tls_server_config is not None
    port = free_port()
    stopping = asyncio.Event()
    app = build_app(inventory, web_config=web)
    task = asyncio.create_task(serve(app, "127.0.0.1", port, stopping, tls_context(web.tls_server_config)))
    url = f"https://127.0.0.1:{port}"
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            break
        except OSError:
            await asyncio.sleep(0.05)
    try:
        yield url
    finally:
        stopping.set()
        await asyncio.wait_for(task, 30)


@pytest.fixture
async def service(tmp_path: Path, pki: Pki) -> AsyncIterator[str]:
    async for url in _serving(tmp_path, load_web_config(web_config_file(tmp_path, pki))):
        yield url


async def get(url: str, pki: Pki, headers: dict[str, str] | None = None,
              cert: tuple[Path, Path] | None = None, method: str = "GET") -> tuple[int, dict[str, str], str]:
    connector = aiohttp.TCPConnector(ssl=pki.client_context(cert=cert))
    async with aiohttp.ClientSession(connector=connector) as session, \
            session.request(method, url, headers=headers or {}) as response:
        return response.status, dict(response.headers), await response.text()


async def test_every_path_needs_the_credentials(service: str, pki: Pki) -> None:
    for path in ("/metrics", "/healthz", "/readyz", "/", "/no/such/path", "/reports/", "/api/v1/reports",
                 "/reports/fabwatch-report-2026-11.html"):
        status, headers, _ = await get(service + path, pki)
        assert status == 401, path
        assert headers["WWW-Authenticate"].startswith("Basic ")
        assert headers["X-Content-Type-Options"] == "nosniff"  # on refusals too
    status, _, _ = await get(service + "/metrics", pki, basic(USER, "wrong"))
    assert status == 401
    status, _, _ = await get(service + "/metrics", pki, basic("mallory", PASSWORD))
    assert status == 401
    status, headers, body = await get(service + "/metrics", pki, basic(USER, PASSWORD))
    assert status == 200
    assert "fab_source_up" in body
    assert headers["X-Content-Type-Options"] == "nosniff"
    status, _, _ = await get(service + "/no/such/path", pki, basic(USER, PASSWORD))
    assert status == 404
    status, _, _ = await get(service + "/-/reload", pki, method="POST")
    assert status == 401  # a reload too needs the credentials


async def test_healthz_is_left_open_only_when_the_inventory_says_so(tmp_path: Path, pki: Pki) -> None:
    config = load_web_config(web_config_file(tmp_path, pki))
    async for url in _serving(tmp_path, config, healthz_open=True):
        assert (await get(url + "/healthz", pki))[0] == 200
        assert (await get(url + "/readyz", pki))[0] == 401
        assert (await get(url + "/metrics", pki))[0] == 401


async def test_plain_http_gets_no_answer_from_the_tls_port(service: str, pki: Pki) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(service.replace("https:", "http:") + "/metrics", headers=basic(USER, PASSWORD)):
                pass


async def test_mutual_tls_refuses_a_client_without_a_trusted_certificate(tmp_path: Path, pki: Pki) -> None:
    config = load_web_config(web_config_file(tmp_path, pki, mtls=True, users=False))
    async for url in _serving(tmp_path, config):
        for cert in (None, (pki.stranger_cert, pki.stranger_key)):
            with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
                await get(url + "/healthz", pki, cert=cert)
        status, _, _ = await get(url + "/metrics", pki, cert=(pki.client_cert, pki.client_key))
        assert status == 200


async def test_failed_logins_are_logged_with_user_and_address_at_a_bounded_rate(
        service: str, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fabwatch.auth")
    for _ in range(5):
        await get(service + "/metrics", pki, basic("mallory", "guess"))
    failed = [r for r in caplog.records if r.getMessage() == "login_failed"]
    assert len(failed) == 1
    fields = failed[0].fabwatch_fields  # type: ignore[attr-defined]
    assert fields["user"] == "mallory"
    assert fields["remote"] == "127.0.0.1"
    assert "guess" not in caplog.text


def test_failed_logins_count_what_they_did_not_log() -> None:
    now = [0.0]
    log = FailedLogins(every=10.0, clock=lambda: now[0])
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("fabwatch.auth")
    logger.addHandler(handler)
    try:
        for _ in range(3):
            log.failed("eve", "10.0.0.1", "/metrics")
        log.failed("eve", "10.0.0.2", "/metrics")
        now[0] = 11.0
        log.failed("eve", "10.0.0.1", "/metrics")
    finally:
        logger.removeHandler(handler)
    counts = [(r.fabwatch_fields["remote"], r.fabwatch_fields["suppressed_since_last"])  # type: ignore[attr-defined]
              for r in records]
    assert counts == [("10.0.0.1", 0), ("10.0.0.2", 0), ("10.0.0.1", 2)]


def test_failed_logins_remember_a_bounded_number_of_addresses() -> None:
    """The suppressed counts were never cleaned: one entry per address that ever failed twice."""
    now = [0.0]
    log = FailedLogins(every=10.0, clock=lambda: now[0], addresses=100)
    logging.getLogger("fabwatch.auth").disabled = True
    try:
        for second in range(5):
            now[0] = second * 20.0  # past `every`: each round logs again
            for address in range(1000):
                log.failed("eve", f"2001:db8::{second:x}:{address:x}", "/metrics")
                log.failed("eve", f"2001:db8::{second:x}:{address:x}", "/metrics")  # suppressed
        assert log.tracked <= 100
    finally:
        logging.getLogger("fabwatch.auth").disabled = False


async def test_a_valid_password_is_hashed_once_then_remembered(pki: Pki, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from aiohttp.test_utils import make_mocked_request

    import app.websecurity

    hashed: list[bytes] = []
    checkpw = app.websecurity._checkpw
    monkeypatch.setattr(app.websecurity, "_checkpw", lambda pw, h: hashed.append(pw) or checkpw(pw, h))
    middleware = WebGuard(load_web_config(web_config_file(tmp_path, pki))).middleware

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def status(user: str, password: str) -> int:
        return (await middleware(make_mocked_request("GET", "/", headers=basic(user, password)), handler)).status

    assert [await status(USER, PASSWORD) for _ in range(10)] == [200] * 10
    assert len(hashed) == 1
    assert [await status(USER, "wrong") for _ in range(3)] == [401] * 3  # a failure is never remembered
    assert await status("nobody", PASSWORD) == 401  # an unknown user costs a hash too (same timing)
    assert len(hashed) == 5


def _get_tls(url: str, pki: Pki, headers: dict[str, str]) -> tuple[int, bytes]:
    context = pki.client_context(cert=(pki.client_cert, pki.client_key))
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_prometheus_scrapes_fabwatch_over_mutual_tls_with_basic_auth(tmp_path: Path, pki: Pki,
                                                                     prometheus_factory: Any) -> None:
    records = tmp_path / "records.db"
    make_records(records)
    inventory = write_inventory(tmp_path, records)
    web_file = web_config_file(tmp_path, pki, mtls=True)
    port = free_port()
    proc = run_fabwatch("serve", "-c", str(inventory), "--web.config.file", str(web_file),
                        env={"FABWATCH_LISTEN": f"127.0.0.1:{port}"})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            try:
                status, _ = _get_tls(f"https://127.0.0.1:{port}/readyz", pki, basic(USER, PASSWORD))
                if status == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.2)
        tls = {"ca_file": str(pki.ca), "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}
        job = {"scheme": "https", "tls_config": tls, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
        config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s"}, "scrape_configs": [
            {"job_name": "fabwatch", **job, "basic_auth": {"username": USER, "password": PASSWORD}},
            {"job_name": "intruder", **job, "basic_auth": {"username": USER, "password": "guess"}}]}
        prometheus = prometheus_factory(yaml.safe_dump(config))
        prometheus.wait_for('fab_source_up{job="fabwatch",source="crm"} == 1')
        prometheus.wait_for('up{job="intruder"} == 0')
        targets = prometheus.api("targets")["activeTargets"]
        intruder = next(t for t in targets if t["labels"]["job"] == "intruder")
        assert "401" in intruder["lastError"]
        assert _get_tls(f"https://127.0.0.1:{port}/metrics", pki, {})[0] == 401
    finally:
        code, _, err = stop(proc)
    assert code == 0, err
    assert "event=login_failed" in err
    assert "guess" not in err
    assert PASSWORD not in err


@pytest.mark.slow
def test_serve_refuses_a_bad_web_config_and_exits_2(tmp_path: Path) -> None:
    records = tmp_path / "records.db"
    make_records(records)
    inventory = write_inventory(tmp_path, records)
    bad = tmp_path / "web.yml"
    bad.write_text("tls_server_config: {cert_file: /nonexistent.pem, key_file: /nonexistent.key}\n")
    proc = run_fabwatch("serve", "-c", str(inventory), env={"FABWATCH_WEB_CONFIG": str(bad),
                                                             "FABWATCH_LISTEN": f"127.0.0.1:{free_port()}"})
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "tls_server_config.cert_file/key_file" in err
    bad.write_text("basic_auth_users: {alice: not-a-hash}\n")
    proc = run_fabwatch("serve", "-c", str(inventory), "--web.config.file", str(bad))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "not a bcrypt hash" in err
    assert "not-a-hash" not in err


def test_listening_beyond_loopback_without_tls_or_auth_names_the_risk() -> None:
    from app.exposure import exposure_risks

    assert exposure_risks("127.0.0.1", None) == []
    risks = exposure_risks("0.0.0.0", None)
    assert any("TLS" in r for r in risks)
    assert any("authentication" in r for r in risks)
    assert exposure_risks("0.0.0.0", WebConfig.model_validate({
        "tls_server_config": {"cert_file": "a", "key_file": "b"},
        "basic_auth_users": {"a": "$2y$10$" + "a" * 53}})) == []



@pytest.mark.slow
def test_check_checks_the_web_config_the_inventory_names(tmp_path: Path, pki: Pki) -> None:
    records = tmp_path / "records.db"
    make_records(records)
    inventory = write_inventory(tmp_path, records)
    document = yaml.safe_load(inventory.read_text())
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({"tls_server_config": {"cert_file": str(pki.server_cert),
                                                         "key_file": str(pki.stranger_key)}}))
    document["service"]["web_config"] = str(web)
    inventory.write_text(yaml.safe_dump(document))
    proc = run_fabwatch("check", "-c", str(inventory))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "tls_server_config.cert_file/key_file" in err  # a key that is not the certificate's
    web.write_text(yaml.safe_dump({"tls_server_config": {"cert_file": str(pki.server_cert),
                                                         "key_file": str(pki.server_key)}}))
    proc = run_fabwatch("check", "-c", str(inventory))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err


def test_basic_auth_on_the_main_port_warns_of_the_hub_events_it_would_refuse(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from app.exposure import warn_exposure

    path = tmp_path / "events.yaml"
    path.write_text(yaml.safe_dump({"service": {"state_path": str(tmp_path / "state.db")}, "processes": {},
                                    "sources": {"tickets": {"kind": "tmf_events", "api": "tmf621"}}}))
    inventory = load_inventory([path])
    users = WebConfig.model_validate({"basic_auth_users": {"a": "$2y$10$" + "a" * 53}})
    caplog.set_level(logging.WARNING, logger="fabwatch.cli")
    warn_exposure(inventory, "127.0.0.1", 9464, None)
    assert not caplog.records
    warn_exposure(inventory, "127.0.0.1", 9464, users)
    (record,) = caplog.records
    assert record.getMessage() == "events_need_credentials"
    assert record.fabwatch_fields["source"] == "tickets"  # type: ignore[attr-defined]
    caplog.clear()
    warn_exposure(inventory, "0.0.0.0", 9464, None)  # the events come to the open main port too
    assert [r.getMessage() for r in caplog.records] == ["listen_exposed", "listen_exposed", "events_exposed"]


async def test_a_reload_rotates_the_certificate_and_the_passwords_and_refuses_a_tls_change(
        tmp_path: Path, pki: Pki) -> None:
    import asyncio

    records = tmp_path / "records.db"
    make_records(records)
    inventory_file = write_inventory(tmp_path, records)
    web_file = web_config_file(tmp_path, pki)
    config = load_web_config(web_file)
    assert config.tls_server_config is not None
    app = build_app(load_inventory([inventory_file]), web_config=config,
                    loader=lambda: load_inventory([inventory_file]), web_loader=lambda: load_web_config(web_file))
    context = tls_context(config.tls_server_config)
    guard = app[GUARD]
    assert guard is not None
    guard.context = context
    port, stopping = free_port(), asyncio.Event()
    task = asyncio.create_task(serve(app, "127.0.0.1", port, stopping, context))
    url = f"https://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if (await get(url + "/healthz", pki))[0] == 401:
                    break
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
        (tmp_path / "pki2").mkdir()
        rotated = make_pki(tmp_path / "pki2")
        document = yaml.safe_load(web_file.read_text())
        document["tls_server_config"] = {"cert_file": str(rotated.server_cert), "key_file": str(rotated.server_key)}
        document["basic_auth_users"] = {USER: bcrypt.hashpw(b"new password", bcrypt.gensalt(4)).decode()}
        web_file.write_text(yaml.safe_dump(document))
        status, _, body = await get(url + "/-/reload", pki, basic(USER, PASSWORD), method="POST")
        assert status == 200, body
        with pytest.raises(aiohttp.ClientError):  # the old CA's certificate is no longer presented
            await get(url + "/healthz", pki, basic(USER, "new password"))
        assert (await get(url + "/metrics", rotated, basic(USER, PASSWORD)))[0] == 401
        status, _, body = await get(url + "/metrics", rotated, basic(USER, "new password"))
        assert status == 200
        assert "fab_config_last_reload_successful 1.0" in body

        document["tls_server_config"]["min_version"] = "TLS13"
        web_file.write_text(yaml.safe_dump(document))
        status, _, body = await get(url + "/-/reload", rotated, basic(USER, "new password"), method="POST")
        assert status == 400
        assert "tls_server_config.min_version changed: it takes effect at a restart" in body
        status, _, body = await get(url + "/metrics", rotated, basic(USER, "new password"))
        assert status == 200
        assert "fab_config_last_reload_successful 0.0" in body
    finally:
        stopping.set()
        await asyncio.wait_for(task, 30)


async def test_a_reload_rotates_the_client_ca_of_mutual_tls(tmp_path: Path, pki: Pki) -> None:
    """The client CA file given new content (CA1 revoked, CA2 trusted) under the same path: only
    the path was compared, and the listener went on trusting CA1 and refusing CA2 until a restart."""
    import asyncio
    import shutil

    records = tmp_path / "records.db"
    make_records(records)
    inventory_file = write_inventory(tmp_path, records)
    clients_ca = tmp_path / "clients-ca.pem"
    shutil.copy(pki.ca, clients_ca)
    document = {"tls_server_config": {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key),
                                      "client_auth_type": "RequireAndVerifyClientCert",
                                      "client_ca_file": str(clients_ca)}}
    web_file = tmp_path / "web.yml"
    web_file.write_text(yaml.safe_dump(document))
    config = load_web_config(web_file)
    assert config.tls_server_config is not None
    app = build_app(load_inventory([inventory_file]), web_config=config,
                    loader=lambda: load_inventory([inventory_file]), web_loader=lambda: load_web_config(web_file))
    context = tls_context(config.tls_server_config)
    guard = app[GUARD]
    assert guard is not None
    guard.context = context
    (tmp_path / "pki2").mkdir()
    other = make_pki(tmp_path / "pki2")
    old_client, new_client = (pki.client_cert, pki.client_key), (other.client_cert, other.client_key)
    port, stopping = free_port(), asyncio.Event()
    task = asyncio.create_task(serve(app, "127.0.0.1", port, stopping, context))
    url = f"https://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if (await get(url + "/healthz", pki, cert=old_client))[0] == 200:
                    break
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
        with pytest.raises(aiohttp.ClientError):
            await get(url + "/healthz", pki, cert=new_client)
        shutil.copy(other.ca, clients_ca)
        status, _, body = await get(url + "/-/reload", pki, cert=old_client, method="POST")
        assert status == 200, body
        with pytest.raises(aiohttp.ClientError):  # the revoked CA's clients are refused at once
            await get(url + "/healthz", pki, cert=old_client)
        status, _, body = await get(url + "/metrics", pki, cert=new_client)
        assert status == 200
        assert "fab_config_last_reload_successful 1.0" in body
    finally:
        stopping.set()
        await asyncio.wait_for(task, 30)
