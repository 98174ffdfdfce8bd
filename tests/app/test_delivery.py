"""The scheduled report in `serve` (`app.delivery`), against a real SMTP server (aiosmtpd): the
schedule firing on the service clock, retries with backoff after a refused login, the metrics, what
a restart does (a delivered month is not mailed again, a failed one is), a run missed while down."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from app import delivery
from app.delivery import ReportSchedule, reports_directory
from app.service import build_app, shifted_clock
from collector.health import DELIVERY_RESULTS, HealthTracker
from collector.inventory.load import load_inventory
from collector.inventory.models import Inventory
from collector.state import StateStore, open_state
from reports.summary import Month
from tests.app.test_service import make_records, write_inventory
from tests.smtp import SmtpServer, smtp_server

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # a loopback test server
SECRET = "mail-Pa55-77"
BERLIN = ZoneInfo("Europe/Berlin")
FIRE = datetime(2026, 12, 1, 6, 0, tzinfo=BERLIN).timestamp()
"""When the default schedule (06:00 on the 1st, in Europe/Berlin) fires for November 2026."""


def inventory_with_reports(tmp_path: Path, server: SmtpServer | None, password: str, **reports: Any) -> Inventory:
    if not (tmp_path / "records.db").exists():
        make_records(tmp_path / "records.db")
    path = write_inventory(tmp_path, tmp_path / "records.db")
    data = yaml.safe_load(path.read_text())
    data["service"]["timezone"] = "Europe/Berlin"
    section: dict[str, Any] = {"formats": ["html", "md", "json"], "retries": 3, "retry_after": "60s", **reports}
    if server is not None:
        section["email"] = {"host": server.host, "port": server.port, "security": "none", "username": "fabwatch",
                            "password": password, "from": "fabwatch@example.com", "to": ["managers@example.com"]}
    data["reports"] = section
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_inventory([path])


async def settle(schedule: ReportSchedule, seconds: float = 0.5) -> None:
    """Let the schedule's task run for a while (real seconds)."""
    await asyncio.sleep(seconds)


async def test_a_refused_login_is_retried_with_backoff_counted_and_remembered(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="fabwatch.reports")
    with smtp_server(user="fabwatch", password=SECRET) as server:
        inventory = inventory_with_reports(tmp_path, server, "wrong-" + SECRET)
        health = HealthTracker(inventory.sources)
        schedule = ReportSchedule(inventory, None, shifted_clock(FIRE + 2 * 86400, rate=600), health)
        schedule.start()  # its task finds nothing due at start (no run missed, nothing failed)
        try:
            assert inventory.reports is not None
            delivered = await schedule.deliver_with_retries(inventory.reports, Month(2026, 11), float("inf"))
        finally:
            await schedule.stop()
        assert delivered is False
        assert server.inbox.messages == []
        assert {login for login, _ in server.inbox.logins} == {"fabwatch"}
        assert not any(ok for _, ok in server.inbox.logins)
    assert health.deliveries() == {**dict.fromkeys(DELIVERY_RESULTS, 0), "auth": 4}
    assert health.deliveries_failed_in_a_row == 4
    exposition = {f.name: f for f in health.families()}
    assert exposition["fab_report_delivery_failed_attempts"].samples == [((), 4.0)]
    assert "fab_report_last_success_timestamp_seconds" not in exposition
    waits = [_field(r, "in_seconds") for r in caplog.records if r.getMessage() == "report_retry_scheduled"]
    assert waits == [60.0, 120.0, 240.0]  # retry_after, then twice as long each time
    failed = [r for r in caplog.records if r.getMessage() == "report_delivery_failed"]
    assert len(failed) == 4
    assert _field(failed[0], "reason") == "auth"
    assert _field(failed[0], "server") == f"127.0.0.1:{server.port}"
    assert "login as fabwatch refused: 535" in _field(failed[0], "error")
    assert all(SECRET not in r.getMessage() + str(r.__dict__) for r in caplog.records)
    store = StateStore(tmp_path / "state.db")
    record = store.delivery("2026-11")
    store.close()
    assert record is not None
    assert record[0] is False
    assert record[2].startswith("auth: mail server 127.0.0.1:")


def _field(record: logging.LogRecord, name: str) -> Any:
    """A field of a `log_event` record."""
    return record.fabwatch_fields[name]  # type: ignore[attr-defined]


async def test_after_a_restart_a_failed_month_is_retried_and_a_delivered_one_not_mailed_again(tmp_path: Path) -> None:
    clock = shifted_clock(FIRE + 3 * 86400, rate=1)  # days after the run: not made up as a missed run
    with smtp_server(user="fabwatch", password=SECRET) as server:
        failing = inventory_with_reports(tmp_path, server, "wrong", retries=0)
        first = ReportSchedule(failing, None, clock, HealthTracker(failing.sources))
        first.start()
        assert failing.reports is not None
        assert await first.deliver_with_retries(failing.reports, Month(2026, 11), float("inf")) is False
        await first.stop()

        fixed = inventory_with_reports(tmp_path, server, SECRET)
        health = HealthTracker(fixed.sources)
        second = ReportSchedule(fixed, None, clock, health)  # a restart with the password fixed
        second.start()
        [message] = await server.inbox.arrived(1)
        await settle(second)
        await second.stop()
        assert "2026-11" in message["Subject"]
        assert health.deliveries()["delivered"] == 1

        # restarted again, half an hour after the run: it would be made up, but it was delivered
        third = ReportSchedule(fixed, None, shifted_clock(FIRE + 1800), HealthTracker(fixed.sources))
        third.start()
        await settle(third, 1.0)
        await third.stop()
        assert len(server.inbox.messages) == 1  # not mailed twice
    directory = reports_directory(fixed.reports, tmp_path / "state.db")
    assert sorted(p.name for p in directory.iterdir()) == [
        "fabwatch-report-2026-11.html", "fabwatch-report-2026-11.json", "fabwatch-report-2026-11.md"]


async def test_the_schedule_fires_on_the_service_clock_and_mails_last_month(tmp_path: Path) -> None:
    with smtp_server(user="fabwatch", password=SECRET) as server:
        inventory = inventory_with_reports(tmp_path, server, SECRET, directory=str(tmp_path / "out"))
        health = HealthTracker(inventory.sources)
        schedule = ReportSchedule(inventory, None, shifted_clock(FIRE - 1.5), health)
        schedule.start()
        try:
            assert server.inbox.messages == []  # not before 06:00
            [message] = await server.inbox.arrived(1)
            await settle(schedule, 0.2)
        finally:
            await schedule.stop()
    assert message["Subject"].startswith("fabwatch monthly report 2026-11: ")
    assert message["To"] == "managers@example.com"
    [attached] = [part.get_filename() for part in message.iter_attachments()]  # html: no pdf among these formats
    assert attached == "fabwatch-report-2026-11.html"
    body = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert (tmp_path / "out" / "fabwatch-report-2026-11.md").read_text().replace("\n", "\r\n") == body
    last = {f.name: f for f in health.families()}["fab_report_last_success_timestamp_seconds"]
    assert FIRE <= last.samples[0][1] < FIRE + 60


async def test_a_run_missed_while_down_is_made_up_at_start(tmp_path: Path) -> None:
    with smtp_server(user="fabwatch", password=SECRET) as server:
        inventory = inventory_with_reports(tmp_path, server, SECRET)
        schedule = ReportSchedule(inventory, None, shifted_clock(FIRE + 1800), HealthTracker(inventory.sources))
        schedule.start()  # started half an hour after the run
        try:
            [message] = await server.inbox.arrived(1)
        finally:
            await schedule.stop()
    assert "2026-11" in message["Subject"]


async def test_a_directory_that_cannot_be_written_fails_as_write(tmp_path: Path) -> None:
    (tmp_path / "blocked").write_text("a file where the directory should be")
    inventory = inventory_with_reports(tmp_path, None, SECRET, directory=str(tmp_path / "blocked"), retries=0)
    health = HealthTracker(inventory.sources)
    schedule = ReportSchedule(inventory, None, shifted_clock(FIRE + 3 * 86400), health)
    schedule.start()
    try:
        assert inventory.reports is not None
        assert await schedule.deliver_with_retries(inventory.reports, Month(2026, 11), float("inf")) is False
    finally:
        await schedule.stop()
    assert health.deliveries()["write"] == 1


async def test_a_reload_follows_the_new_reports_section(tmp_path: Path) -> None:
    with smtp_server(user="fabwatch", password=SECRET) as server:
        with_reports = inventory_with_reports(tmp_path, server, SECRET)
        without = with_reports.model_copy(update={"reports": None})
        clock = shifted_clock(FIRE + 1800)  # half an hour after the run: made up as soon as there is a schedule
        health = HealthTracker(without.sources)
        schedule = ReportSchedule(without, None, clock, health)
        schedule.start()
        try:
            await settle(schedule)
            assert server.inbox.messages == []
            assert not any(f.name.startswith("fab_report") for f in health.families())
            schedule.replace_inventory(with_reports)  # what a reload does
            [message] = await server.inbox.arrived(1)
        finally:
            await schedule.stop()
    assert "2026-11" in message["Subject"]
    assert health.deliveries()["delivered"] == 1


async def test_a_defect_in_rendering_counts_as_internal_and_the_schedule_goes_on(tmp_path: Path, monkeypatch,
                                                                                 caplog) -> None:
    from reports import render

    def broken(report: object) -> str:
        raise RuntimeError("template defect")

    monkeypatch.setitem(render.RENDERERS, "html", broken)
    inventory = inventory_with_reports(tmp_path, None, SECRET, retries=0)
    health = HealthTracker(inventory.sources)
    schedule = ReportSchedule(inventory, None, shifted_clock(FIRE + 3 * 86400), health)
    schedule.start()
    try:
        assert inventory.reports is not None
        assert await schedule.deliver_with_retries(inventory.reports, Month(2026, 11), float("inf")) is False
        assert schedule._task is not None
        assert not schedule._task.done()  # still waiting for the next run
    finally:
        await schedule.stop()
    assert health.deliveries()["internal"] == 1
    crashed = [r for r in caplog.records if r.getMessage() == "report_delivery_crashed"]
    assert crashed
    assert crashed[0].exc_info is not None


async def test_two_replicas_on_a_postgres_state_mail_the_report_once(tmp_path: Path, postgres, caplog) -> None:
    """Both replicas' schedules fire at 06:00: one claims the month, writes and mails it; the other
    waits, sees it delivered, and mails nothing."""
    caplog.set_level(logging.INFO, logger="fabwatch.reports")
    state = postgres.dsn(database=postgres.create_database(), driver="postgresql")
    with smtp_server(user="fabwatch", password=SECRET) as server:
        inventory = inventory_with_reports(tmp_path, server, SECRET, directory=str(tmp_path / "out"))
        clock = shifted_clock(FIRE - 1.5)
        healths = [HealthTracker(inventory.sources) for _ in range(2)]
        replicas = [ReportSchedule(inventory, state, clock, health, replica=lambda n=n: n)
                    for n, health in zip(("first", "second"), healths, strict=True)]
        for schedule in replicas:
            schedule.start()
        try:
            [message] = await server.inbox.arrived(1)
            await settle(replicas[0], 2.0)  # time for a second mail, if one were coming
        finally:
            for schedule in replicas:
                await schedule.stop()
        assert len(server.inbox.messages) == 1
    assert "2026-11" in message["Subject"]
    assert sum(health.deliveries()["delivered"] for health in healths) == 1
    assert [r.getMessage() for r in caplog.records].count("report_delivered") == 1
    store = open_state(state)
    record = store.delivery("2026-11")
    store.close()
    assert record is not None
    assert record[0] is True
    assert not (tmp_path / "state.db").exists()


async def test_a_replica_takes_over_a_month_whose_claim_lapsed(tmp_path: Path, postgres, monkeypatch) -> None:
    """A replica that claimed the month died before delivering: another one takes the claim over once
    it lapses, and mails the report."""
    monkeypatch.setattr(delivery, "CLAIM", 1.5)
    state = postgres.dsn(database=postgres.create_database(), driver="postgresql")
    store = open_state(state)
    # claimed for 4 s, then its holder died (4 s: the next line runs well within it, even on a loaded machine)
    assert store.claim_delivery("2026-11", "dead", 4.0)
    assert not store.claim_delivery("2026-11", "alive", 1.5)  # current: not another replica's
    with smtp_server(user="fabwatch", password=SECRET) as server:
        inventory = inventory_with_reports(tmp_path, server, SECRET, directory=str(tmp_path / "out"))
        schedule = ReportSchedule(inventory, state, shifted_clock(FIRE - 0.5), HealthTracker(inventory.sources),
                                  replica=lambda: "alive")
        schedule.start()
        try:
            [message] = await server.inbox.arrived(1, timeout=30)
        finally:
            await schedule.stop()
    assert "2026-11" in message["Subject"]
    record = store.delivery("2026-11")
    assert record is not None
    assert record[0] is True
    assert not store.claim_delivery("2026-11", "dead", 1.5)  # delivered: nobody claims it again
    store.close()
    assert (tmp_path / "out" / "fabwatch-report-2026-11.html").is_file()
    # without a directory, a PostgreSQL state has no file to put `reports` beside: the working directory's
    assert reports_directory(None, state) == Path("reports")


async def test_two_served_replicas_on_a_postgres_state_mail_the_report_once(aiohttp_client, tmp_path: Path,
                                                                            postgres) -> None:
    """The same through the service (`build_app`): each replica's schedule claims as the replica its
    leases name, and only one replica's reports directory gets the files."""
    state = postgres.dsn(database=postgres.create_database(), driver="postgresql")
    with smtp_server(user="fabwatch", password=SECRET) as server:
        inventory = inventory_with_reports(tmp_path, server, SECRET)
        clients = []
        for name in ("first", "second"):
            own = inventory.model_copy(update={"reports": inventory.reports.model_copy(  # type: ignore[union-attr]
                update={"directory": str(tmp_path / name)})})
            clients.append(await aiohttp_client(build_app(own, state_path=state, replica=name,
                                                          clock=shifted_clock(FIRE - 2))))
        [message] = await server.inbox.arrived(1)
        await asyncio.sleep(2.0)  # time for a second mail, if one were coming
        assert len(server.inbox.messages) == 1
        listed = [(await (await client.get("/api/v1/reports")).json()) for client in clients]
    assert "2026-11" in message["Subject"]
    written = [name for name in ("first", "second") if (tmp_path / name / "fabwatch-report-2026-11.html").exists()]
    assert len(written) == 1  # by the replica that claimed the month
    # /reports/ lists what this replica wrote
    assert [bool(listing["reports"]) for listing in listed] == [name in written for name in ("first", "second")]


async def test_a_state_store_failure_does_not_end_the_schedule_silently(tmp_path: Path, caplog, monkeypatch) -> None:
    """The state store failing under the schedule (locked, full, unreachable) is logged with its
    traceback, counted as a failed attempt (`internal`: the alert fires if it keeps failing), and
    the schedule starts again: the report is mailed once the store answers."""
    import sqlite3

    caplog.set_level(logging.INFO, logger="fabwatch.reports")
    monkeypatch.setattr(delivery, "RESTART", 0.2)
    failures = iter([sqlite3.OperationalError("database is locked")])
    original = StateStore.delivery

    def flaky(self: StateStore, month: str) -> Any:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return original(self, month)

    monkeypatch.setattr(StateStore, "delivery", flaky)
    with smtp_server(user="fabwatch", password=SECRET) as server:
        inventory = inventory_with_reports(tmp_path, server, SECRET, directory=str(tmp_path / "out"))
        health = HealthTracker(inventory.sources)
        schedule = ReportSchedule(inventory, None, shifted_clock(FIRE + 60), health)  # the run missed a minute ago
        schedule.start()
        try:
            [message] = await server.inbox.arrived(1, timeout=30)
        finally:
            await schedule.stop()
    assert "2026-11" in message["Subject"]
    assert health.deliveries()["internal"] == 1
    assert health.deliveries()["delivered"] == 1
    failed = [r for r in caplog.records if r.getMessage() == "report_schedule_failed"]
    assert len(failed) == 1
    assert failed[0].exc_info is not None
