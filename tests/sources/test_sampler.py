"""The glue of the non-SQL sources: hub registration."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from collector.sources.http import HttpClient, limits_of
from collector.sources.sampler import HubRegistration
from collector.sources.schema import TmfEventsSource
from collector.sources.store import RecordStore


@pytest.mark.parametrize("secret", [None, "s3cret"])
async def test_a_secret_a_hub_cannot_send_is_warned_of_at_start(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                                secret: str | None) -> None:
    """A TMF hub registration has no headers: with hub_url and a secret, every event would be
    refused (401) without a word at start; only the refusal alert would tell, later."""
    source = TmfEventsSource(kind="tmf_events", api="tmf621", hub_url="http://127.0.0.1:9/tmf-api/troubleTicket/v4",
                             secret=secret)
    store = RecordStore(tmp_path / "events.db", ["trouble_ticket"])
    with caplog.at_level(logging.WARNING, logger="fabwatch.sources"):
        registration = HubRegistration("tickets", source, "http://127.0.0.1:9464/tmf/tickets", store,
                                       HttpClient("tickets", limits_of(source)))
    await registration.client.close()
    store.close()
    warned = [r for r in caplog.records if r.getMessage() == "hub_cannot_send_secret"]
    assert len(warned) == (1 if secret else 0)
    if secret:
        assert "X-Fabwatch-Secret" in str(warned[0].__dict__["fabwatch_fields"]["why"])
