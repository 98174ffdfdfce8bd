"""The HTML report as a person sees it: rendered by a real headless Chromium (Debian's `chromium`),
the screenshot not blank and the charts' line and target colours on it, and no console error."""

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from collector.inventory.load import load_inventory
from reports.render import charts, render_html
from reports.summary import summarize
from tests.reports.test_render import EXAMPLE, MONTH, problem_rollups

pytestmark = pytest.mark.integration
LINE, TARGET = (0x1F, 0x5F, 0xA8), (0xE0, 0x53, 0x3D)
"""The trend line's and the target line's colours, used by the charts alone (reports/templates/report.html.j2)."""


def pixels(png: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Width, height and RGB pixels of an 8-bit RGB or RGBA PNG (what Chromium writes)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, data, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        body = png[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert (depth, colour) in ((8, 2), (8, 6)), (depth, colour)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            data += body
        pos += 12 + length
    raw, stride = zlib.decompress(data), width * channels
    rows: list[bytearray] = []
    previous = bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, corner = previous[i], previous[i - channels] if i >= channels else 0
            line[i] = (line[i] + _predict(kind, left, up, corner)) & 0xFF
        rows.append(line)
        previous = line
    out = [(row[i], row[i + 1], row[i + 2]) for row in rows for i in range(0, stride, channels)]
    return width, height, out


def _predict(kind: int, left: int, up: int, corner: int) -> int:
    if kind == 0:
        return 0
    if kind == 1:
        return left
    if kind == 2:
        return up
    if kind == 3:
        return (left + up) // 2
    estimate = left + up - corner
    near = min((abs(estimate - left), 0, left), (abs(estimate - up), 1, up), (abs(estimate - corner), 2, corner))
    return near[2]


def test_chromium_renders_the_report_with_its_charts_and_no_console_error(tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed: run scripts/ensure-deps.sh as root")
    inventory = load_inventory([EXAMPLE], {"FABWATCH_DEMO_DSN": "sqlite+aiosqlite:///unused.db"})
    report = summarize(inventory, {"problem": problem_rollups()}, MONTH)
    assert sum(len(charts(p)) for p in report.processes) >= 4
    page = tmp_path / "report.html"
    page.write_text(render_html(report), encoding="utf-8")
    shot = tmp_path / "shot.png"
    done = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr",
         "--v=0", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,4000",
         f"--screenshot={shot}", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "CONSOLE" not in done.stderr, done.stderr[-2000:]
    width, height, image = pixels(shot.read_bytes())
    assert (width, height) == (1000, 4000)
    blank = sum(1 for p in image if p == (255, 255, 255))
    assert blank < 0.97 * len(image), "the page is (nearly) blank"
    assert sum(1 for p in image if p == LINE) > 500, "no trend line drawn"
    assert sum(1 for p in image if p == TARGET) > 100, "no target line drawn"
