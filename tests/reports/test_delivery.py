"""`reports.delivery`: the files a delivery writes (every configured format, the PDF included) and that
writing them leaves the service's event loop free."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from collector.inventory.load import load_inventory
from reports import render
from reports.delivery import available, deliver, subject
from reports.summary import Month, Report, summarize
from tests.app.test_service import make_records, write_inventory


def empty_report(tmp_path: Path) -> Report:
    """The report of a month without any rolled-up day (every process without figures)."""
    make_records(tmp_path / "records.db")
    inventory = load_inventory([write_inventory(tmp_path, tmp_path / "records.db")])
    return summarize(inventory, {name: {} for name in inventory.processes}, Month(2026, 11),
                     {name: {} for name in inventory.processes})


def test_the_pdf_is_written_and_attachable(tmp_path: Path) -> None:
    """`formats: [html, pdf]` in `reports`: the scheduled delivery wrote no PDF (and so attached none), saying
    "not available in this installation" on an installation that has WeasyPrint."""
    assert available(["html", "pdf"]) == (["html", "pdf"], [])
    delivered = asyncio.run(deliver(empty_report(tmp_path), tmp_path / "out", ["html", "pdf"], None))
    assert [p.name for p in delivered.paths] == ["fabwatch-report-2026-11.html", "fabwatch-report-2026-11.pdf"]
    assert (tmp_path / "out" / "fabwatch-report-2026-11.pdf").read_bytes().startswith(b"%PDF-")
    assert delivered.notes == []


def test_rendering_and_writing_leave_the_event_loop_free(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The serve's event loop (events port, samples, scrapes) must not wait while a report is laid out
    (a PDF takes seconds) and fsynced: each format is rendered in a worker thread."""
    threads: list[int] = []
    markdown = render.RENDERERS["md"]

    def watched(report: Report) -> str:
        threads.append(threading.get_ident())
        return markdown(report)

    monkeypatch.setitem(render.RENDERERS, "md", watched)

    async def run() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        before = ticks
        await deliver(empty_report(tmp_path), tmp_path / "out", ["md", "pdf"], None)
        task.cancel()
        return ticks - before

    loop_thread = threading.get_ident()
    ticked = asyncio.run(run())
    assert threads
    assert loop_thread not in threads
    assert ticked > 10  # the loop ran other tasks while the PDF was laid out


def test_a_month_without_figures_is_not_on_track(tmp_path: Path) -> None:
    """A process none of whose days was rolled up (a backfill not run or still running) was "on track", and
    the mail's subject told managers every process was on track for a month with no figures at all."""
    report = empty_report(tmp_path)
    assert report.processes
    assert {p.status for p in report.processes} == {"incomplete"}
    assert subject(report) == (f"fabwatch monthly report 2026-11: 0 of {len(report.processes)} processes on track, "
                               f"{len(report.processes)} without figures for every day")
