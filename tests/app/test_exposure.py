"""Warnings for ports open beyond this machine without protection (the main port's: tests/app/test_websecurity.py)."""

import logging
from pathlib import Path
from typing import Any

import pytest

from app.exposure import events_risks, is_loopback, warn_exposure
from collector.inventory.models import Inventory
from tests.sources.helpers import API_OF, example


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("10.1.2.3", False), ("fabwatch.example", False),
])
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def inventory(tmp_path: Path, events: dict[str, Any] | None = None, **service: Any) -> Inventory:
    sources: dict[str, Any] = {"sql": {"kind": "sql", "dsn": f"sqlite+aiosqlite:///{tmp_path / 'none.db'}"}}
    if events is not None:
        sources["tickets"] = {"kind": "tmf_events", "api": "tmf621", **events}
    loaded = example(sources, {p: "tickets" if p == "problem" and events is not None else "sql" for p in API_OF},
                     tmp_path / "state.db")
    return loaded.model_copy(update={"service": loaded.service.model_copy(update=service)}) if service else loaded


def test_events_on_a_loopback_port_risk_nothing(tmp_path: Path) -> None:
    assert events_risks(inventory(tmp_path, {}), "127.0.0.1", 9464) == []


@pytest.mark.parametrize(("events", "listen", "warned"), [
    ({}, "0.0.0.0:9465", True),
    ({"secret": "s"}, "0.0.0.0:9465", False),
    ({"sender_auth": {"kind": "bearer", "token": "t"}}, "0.0.0.0:9465", False),
    ({}, "127.0.0.1:9465", False),
])
def test_an_open_events_port_is_named_unless_senders_must_prove_who_they_are(
        tmp_path: Path, events: dict[str, Any], listen: str, warned: bool) -> None:
    risks = events_risks(inventory(tmp_path, events, events_listen=listen), "127.0.0.1", 9464)
    assert [r for r in risks if "accepts TMF events for tickets" in r] == ([risks[0]] if warned else [])


def test_an_empty_secret_is_no_protection(tmp_path: Path) -> None:
    """Refused at load; a source built otherwise (`model_copy`) must still not count as protected."""
    loaded = inventory(tmp_path, {"secret": "s"}, events_listen="0.0.0.0:9465")
    emptied = loaded.sources["tickets"].model_copy(update={"secret": ""})
    unprotected = loaded.model_copy(update={"sources": {**loaded.sources, "tickets": emptied}})
    assert len(events_risks(unprotected, "127.0.0.1", 9464)) == 1


def test_mutual_tls_on_the_events_port_is_protection_enough(tmp_path: Path) -> None:
    tls = {"cert_file": "c.pem", "key_file": "k.pem", "client_ca_file": "ca.pem"}
    service = {"events_listen": "0.0.0.0:9465"}
    loaded = inventory(tmp_path, {}, **service)
    from collector.inventory.models import EventsTls

    with_tls = loaded.model_copy(update={"service": loaded.service.model_copy(update={"events_tls": EventsTls(**tls)})})
    assert events_risks(with_tls, "127.0.0.1", 9464) == []
    without_ca = EventsTls(**{**tls, "client_ca_file": None})
    only_tls = loaded.model_copy(update={"service": loaded.service.model_copy(update={"events_tls": without_ca})})
    assert len(events_risks(only_tls, "127.0.0.1", 9464)) == 1


def test_each_risk_is_logged_as_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """What `serve` calls once it is set up (a test may not bind beyond loopback to see it there)."""
    with caplog.at_level(logging.WARNING, logger="fabwatch.service"):
        warn_exposure(inventory(tmp_path, {}, events_listen="0.0.0.0:9465"), "0.0.0.0", 9464, None)
    assert [r.getMessage() for r in caplog.records] == ["listen_exposed", "listen_exposed", "events_exposed"]
