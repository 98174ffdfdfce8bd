"""The PDF as a person sees it: laid out by WeasyPrint, then read back with Debian's poppler-utils
(`pdftoppm` pages as pictures, `pdftotext` for their text): the overview alone on page 1, a page per
process, no page blank, every chart drawn where its caption says, and no word of the HTML lost."""

import logging
import re
import statistics
import subprocess
import sys
from collections import Counter
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path
from xml.etree import ElementTree
from zoneinfo import ZoneInfo

import pytest

from collector.inventory.load import load_inventory
from reports.pdf import render_pdf
from reports.render import charts, render_html, write
from reports.summary import Report, summarize
from tests.reports.test_render import EXAMPLE, MONTH, problem_rollups
from tests.servers import require_binary

LINE, TARGET = (0x1F, 0x5F, 0xA8), (0xE0, 0x53, 0x3D)
"""The trend line's and the target line's colours, used by the charts alone (reports/templates/report.html.j2)."""
GENERATED = datetime(2026, 12, 1, 6, 0, tzinfo=ZoneInfo("Europe/Berlin"))
DPI = 72  # one PDF point a pixel: pdftotext's boxes are in points
CHART_MM = 88  # a chart's printed width (the template's print CSS)
CAPTION = ", last 12 months"


@pytest.fixture(scope="module")
def report() -> Report:
    inventory = load_inventory([EXAMPLE], {"FABWATCH_DEMO_DSN": "sqlite+aiosqlite:///unused.db"})
    return summarize(inventory, {"problem": problem_rollups()}, MONTH)


@pytest.fixture(scope="module")
def pdf(report: Report, tmp_path_factory: pytest.TempPathFactory) -> Path:
    (path,) = write(report, tmp_path_factory.mktemp("pdf"), ["pdf"], generated=GENERATED)
    return path


def page_text(pdf: Path, page: int | None = None, mode: str = "-layout") -> str:
    """The text of a page (all pages: None) as laid out (`-layout`), or in the order drawn (`-raw`)."""
    pages = ["-f", str(page), "-l", str(page)] if page else []
    return subprocess.run([require_binary("pdftotext"), *pages, mode, str(pdf), "-"], capture_output=True,
                          text=True, check=True, timeout=60).stdout


def page_count(pdf: Path) -> int:
    # pdftotext ends each page with a form feed
    return page_text(pdf).count("\f")


def page_image(pdf: Path, page: int, folder: Path) -> tuple[int, int, bytes]:
    """Width, height and RGB bytes of a page drawn by pdftoppm at DPI."""
    out = folder / f"page-{page}"
    subprocess.run([require_binary("pdftoppm"), "-r", str(DPI), "-f", str(page), "-l", str(page), "-singlefile",
                    str(pdf), str(out)], check=True, timeout=60)
    data = out.with_suffix(".ppm").read_bytes()
    magic, width, height, depth, pixels = data.split(maxsplit=4)
    assert (magic, depth) == (b"P6", b"255")
    return int(width), int(height), pixels[:int(width) * int(height) * 3]


def words(text: str) -> list[str]:
    """The words of a text; a line broken after a slash or a hyphen (where lines may break) joined again."""
    return re.sub(r"([/-])\s+", r"\1", text).split()


def test_overview_on_page_1_then_a_page_per_process(pdf: Path, report: Report) -> None:
    pages = page_count(pdf)
    assert pages == 1 + len(report.processes)
    info = subprocess.run([require_binary("pdfinfo"), str(pdf)], capture_output=True, text=True, check=True,
                          timeout=60).stdout
    assert re.search(r"^Page size: +595\.\d+ x 841\.\d+ pts \(A4\)$", info, re.MULTILINE), info
    first = " ".join(words(page_text(pdf, 1)))
    assert f"monthly summary, {report.month}" in first
    assert "Overview" in first
    assert "Processes that need modification" in first
    assert report.findings
    for finding in report.findings:
        assert " ".join(words(finding.sentence)) in first
    for number, process in enumerate(report.processes, start=2):
        text = page_text(pdf, number)
        title = text.strip().splitlines()[0]
        assert title.startswith(process.title), (number, title)
        assert not any(p.title in text for p in report.processes if p is not process)
        footer = " ".join(words(text.strip().splitlines()[-1]))
        assert footer == (f"fabwatch monthly summary {report.month}, generated 2026-12-01 06:00 CET "
                          f"page {number} of {pages}"), footer


def test_no_page_is_blank(pdf: Path, report: Report, tmp_path: Path) -> None:
    for page in range(1, 2 + len(report.processes)):
        width, height, pixels = page_image(pdf, page, tmp_path)
        assert (round(width / 10), round(height / 10)) == (60, 84), (width, height)  # A4 at 72 dpi: portrait
        grey = pixels[1::3]  # the green channel: text, lines and rules all differ from white in it
        ink = sum(1 for v in grey if v < 200) / len(grey)
        assert ink > 0.005, f"page {page}: {ink:.2%} of it inked"
        assert statistics.pvariance(grey) > 50, f"page {page}: no contrast"


def test_every_chart_is_drawn_under_its_caption(pdf: Path, report: Report, tmp_path: Path) -> None:
    """Each caption found by pdftotext has, below it, the chart's trend line and its target line."""
    number, problem = next((n, p) for n, p in enumerate(report.processes, start=2) if p.name == "problem")
    expected = charts(problem, report.currency)
    assert len(expected) >= 4
    captions = caption_boxes(pdf, number)
    assert sorted(captions) == sorted(f"{c.title}{CAPTION}" for c in expected)
    width, _, pixels = page_image(pdf, number, tmp_path)
    chart_w = CHART_MM / 25.4 * DPI
    chart_h = chart_w * expected[0].height / expected[0].width
    for title, (x, y) in captions.items():
        box = (int(x), int(y), int(x + chart_w), int(y + chart_h))
        assert colour_count(pixels, width, box, LINE) > 40, f"{title}: no trend line under the caption"
        assert colour_count(pixels, width, box, TARGET) > 20, f"{title}: no target line under the caption"
    assert sum(len(charts(p, report.currency)) for p in report.processes) == len(expected)


def caption_boxes(pdf: Path, page: int) -> dict[str, tuple[float, float]]:
    """Each chart caption on a page and the point below its left end (PDF points)."""
    xhtml = subprocess.run([require_binary("pdftotext"), "-f", str(page), "-l", str(page), "-bbox-layout", str(pdf),
                            "-"], capture_output=True, text=True, check=True, timeout=60).stdout
    found = {}
    for line in ElementTree.fromstring(xhtml).iter("{http://www.w3.org/1999/xhtml}line"):
        text = " ".join(w.text or "" for w in line)
        if text.endswith(CAPTION):
            found[text] = (float(line.get("xMin", "0")), float(line.get("yMax", "0")))
    return found


def colour_count(pixels: bytes, width: int, box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> int:
    """Pixels within the box close to the colour (anti-aliased edges excluded)."""
    left, top, right, bottom = box
    count = 0
    for y in range(top, bottom):
        row = pixels[(y * width + left) * 3:(y * width + right) * 3]
        count += sum(1 for i in range(0, len(row), 3)
                     if abs(row[i] - colour[0]) + abs(row[i + 1] - colour[1]) + abs(row[i + 2] - colour[2]) < 60)
    return count


def test_the_pdf_holds_every_word_of_the_html(pdf: Path, report: Report) -> None:
    """The same words as the HTML page shows (its charts' labels included), none cut off or lost; the PDF
    adds only its footers."""
    text = _Text()
    text.feed(render_html(report, GENERATED))
    shown = Counter(words("".join(text.parts)))
    drawn = page_text(pdf, mode="-raw")
    printed = Counter(words(re.sub(r"page \d+ of \d+|•", "", drawn)))  # not the footers' numbers, nor list bullets
    footer = f"fabwatch monthly summary {report.month}, generated 2026-12-01 06:00 CET"
    for word in words(footer):
        printed[word] -= 1 + len(report.processes)  # in the footer of every page
    printed -= Counter()  # drop the counts brought to zero
    assert shown == printed, (shown - printed, printed - shown)


class _Text(HTMLParser):
    """The text a reader sees: not the style, not the (tooltip) titles; words split where a block ends."""

    INLINE = frozenset({"a", "code", "em", "strong", "span"})

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("style", "title", "head"):
            self._hidden += 1
        if tag not in self.INLINE:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "title", "head"):
            self._hidden -= 1
        if tag not in self.INLINE:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def test_the_pdf_fetches_nothing_outside_the_report(tmp_path: Path) -> None:
    """Whatever the HTML links (it links nothing: this one is made to), the PDF is laid out without it."""
    picture = tmp_path / "secret.svg"
    picture.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="80" height="80">'
                       '<rect width="80" height="80" fill="#00ff00"/></svg>', encoding="utf-8")
    pdf = tmp_path / "linked.pdf"
    pdf.write_bytes(render_pdf(f'<p>before</p><img src="{picture.as_uri()}" width="80" height="80"><p>after</p>'))
    width, _, pixels = page_image(pdf, 1, tmp_path)
    assert "before" in page_text(pdf)
    assert "after" in page_text(pdf)
    assert colour_count(pixels, width, (0, 0, width, 300), (0, 255, 0)) == 0


def test_reports_and_the_service_do_not_load_weasyprint() -> None:
    """Only a PDF asked for loads WeasyPrint: the service and the other formats never pay for it."""
    code = ("import sys, app.service, app.report, reports.render; "
            "reports.render.render_html; sys.exit('weasyprint' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr or "weasyprint was imported"


def test_weasyprint_logs_nothing_a_report_reader_would_see(report: Report, caplog: pytest.LogCaptureFixture) -> None:
    """Its progress lines and its warnings about the CSS meant for browsers (`fill`, `@media (max-width)`)
    would reach `fabwatch report`'s stderr at every PDF."""
    caplog.set_level(logging.INFO)
    render_pdf(render_html(report, GENERATED))
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("weasyprint")]
