"""`reports.delivery`: the files a delivery writes (every configured format, the PDF included) and that
writing them leaves the service's event loop free."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from collector.inventory.load import load_inventory
from reports.delivery import available, deliver
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
