"""The status page: formatting and escaping, the HTML without JavaScript, and the acceptance test in
a real headless Chromium on `fabwatch serve` sampling the simulated operator with an incident."""

import os
import time
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from app.service import build_app
from collector.inventory.load import load_inventory
from exporters.page import format_seconds, format_target, format_value, sparkline
from exporters.schema import Target, TrendPoint
from tests.app.test_cli import run_fabwatch, stop, wait_http
from tests.app.test_service import wait_ready
from tests.browser import chromium
from tests.exporters.test_api import marked_inventory
from tests.servers import free_port

ROOT = Path(__file__).parents[2]
PROCESSES = ("interface", "order", "problem", "retention", "qos_sla", "invoice", "payments", "bill_inquiry")
INCIDENT = "qos_sla:surge:3000:20s"
"""From 20 s after the live run starts, SLA cases arrive 3000 times as often (a few a second): the
open cases pass their target (30) within a minute, while the process starts healthy."""
BREACH_TIMEOUT = 180.0


class Tiles(HTMLParser):
    """Collects the tiles' process and state, and every link, from the page's HTML."""

    def __init__(self) -> None:
        super().__init__()
        self.tiles: dict[str, str] = {}
        self.links: list[str] = []
        self.refresh: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "article" and "tile" in (named.get("class") or "").split():
            self.tiles[named["data-process"] or ""] = named["data-state"] or ""
        if tag == "a":
            self.links.append(named.get("href") or "")
        if tag == "meta" and named.get("http-equiv") == "refresh":
            self.refresh = named.get("content")


def parse(html: str) -> Tiles:
    tiles = Tiles()
    tiles.feed(html)
    return tiles


def test_values_read_as_a_person_reads_them():
    assert format_value("sla", 0.89987, "EUR") == "89.98 %"  # never rounded up to the objective
    assert format_value("ratio", 0.0712, "EUR") == "7.1 %"
    assert format_value("cost", 1234.5, "EUR") == "1,234.50 EUR"
    assert format_value("backlog", 812.0, "EUR") == "812"
    assert format_value("volume", None, "EUR") == "-"
    assert format_seconds(90) == "90 s"
    assert format_seconds(5400) == "90 min"
    assert format_seconds(36 * 3600) == "36 h"
    assert format_seconds(3 * 86400) == "3 d"
    assert format_target("sla", Target(min=0.9, max=None), "EUR") == "≥ 90.00 %"
    assert format_target("backlog", Target(min=None, max=40), "EUR") == "≤ 40"
    assert format_target("value", Target(min=1, max=5), "EUR") == "1 - 5"


def test_the_sparkline_spans_the_box_from_the_lowest_to_the_highest_value():
    points = [TrendPoint(at=float(i), value=v) for i, v in enumerate([3.0, 5.0, 4.0])]
    coords = [tuple(map(float, pair.split(","))) for pair in sparkline(points, 100, 24).split()]
    assert [x for x, _ in coords] == [0.0, 50.0, 100.0]
    ys = [y for _, y in coords]
    assert ys[1] == min(ys)  # SVG's y grows downwards: the highest value is on top
    assert ys[0] == max(ys)
    assert min(ys) >= 0
    assert max(ys) <= 24
    assert sparkline(points[:1]) == ""
    flat = sparkline([TrendPoint(at=0, value=2), TrendPoint(at=1, value=2)], 100, 24)
    assert flat == "0.0,12.0 100.0,12.0"


async def test_the_page_escapes_the_inventory_and_links_only_http(aiohttp_client, tmp_path):
    client = await aiohttp_client(build_app(load_inventory([marked_inventory(tmp_path)])))
    await wait_ready(client)
    response = await client.get("/")
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    html = await response.text()
    assert "<script>" not in html
    assert "Order &lt;script&gt;alert(1)&lt;/script&gt;" in html
    page = parse(html)
    assert list(page.tiles) == ["problem", "order"]
    assert page.tiles["order"] == "no_data"  # its database is unreachable
    external = [link for link in page.links if ":" in link]
    assert "https://grafana.example/d/fabwatch-process-problem?var-process=problem" in external
    assert all(link.startswith(("http://", "https://")) for link in external)
    assert {"metrics", "readyz", "healthz", "api/v1/openapi.json"} <= set(page.links)  # the old index's links
    assert "remote: down (connection)" in html
    css = await client.get("/static/status.css")
    assert css.status == 200
    assert "grid-template-columns" in await css.text()


@pytest.fixture(scope="module")
def operator(tmp_path_factory) -> Iterator[str]:
    """The simulated operator (3 days of history, then live with INCIDENT) and `fabwatch serve` on the
    example inventory sampling it every 2 s; the service's URL."""
    tmp = tmp_path_factory.mktemp("operator")
    dsn = f"sqlite+aiosqlite:///{tmp / 'operator.db'}"
    backfill = run_fabwatch("simulate", "--dsn", dsn, "--days", "3")
    assert backfill.wait(timeout=120) == 0, backfill.communicate()
    live = run_fabwatch("simulate", "--dsn", dsn, "--live", "--tick", "1", "--incident", INCIDENT)
    port = free_port()
    serve = run_fabwatch("serve", "-c", str(ROOT / "examples" / "operator.yaml"), "--listen", f"127.0.0.1:{port}",
                         "--state", str(tmp / "state.db"),
                         env={"FABWATCH_DEMO_DSN": dsn, "FABWATCH_INTERVAL": "2s"})
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_http(f"{url}readyz", serve)
        yield url
    finally:
        code, _, err = stop(serve)
        stop(live)
        assert code == 0, err


@pytest.mark.slow
def test_without_javascript_the_html_shows_every_tile(operator):
    with urllib.request.urlopen(operator, timeout=10) as response:
        page = parse(response.read().decode())
    assert tuple(page.tiles) == PROCESSES
    assert set(page.tiles.values()) <= {"ok", "at_risk", "breached", "no_data"}
    assert page.refresh == "5"  # the fastest source samples every 2 s; the page reloads at most every 5 s


def _artefact(tmp_path: Path, name: str) -> Path:
    """Where a screenshot goes: $FABWATCH_ARTEFACTS when set (CI keeps it), else the test's tmp dir."""
    directory = Path(os.environ.get("FABWATCH_ARTEFACTS", tmp_path))
    directory.mkdir(parents=True, exist_ok=True)
    return directory / name


TILES = "[...document.querySelectorAll('article.tile')].map(t => [t.dataset.process, t.dataset.state])"


@pytest.mark.integration
@pytest.mark.slow
async def test_in_chromium_eight_tiles_show_and_the_incident_turns_its_process_breached(operator, tmp_path):
    async with chromium(tmp_path / "profile") as page:
        await page.goto(operator)
        first = dict(await page.evaluate(TILES))
        assert tuple(first) == PROCESSES
        assert first["qos_sla"] != "breached", "the process must start healthy for the incident to show"
        visible = await page.evaluate("[...document.querySelectorAll('article.tile')]"
                                      ".filter(t => t.getBoundingClientRect().width > 200).length")
        assert visible == 8
        before = await page.screenshot(_artefact(tmp_path, "status-page-before.png"))
        print(f"\nscreenshot before the incident: {before}")

        # The page reloads itself (meta refresh): no navigation from here on.
        started = time.monotonic()
        breached = await page.wait_for("document.querySelector('#process-qos_sla')?.dataset.state === 'breached'"
                                       " && document.querySelector('#process-qos_sla [data-kpi=open_cases]')"
                                       ".dataset.state", timeout=BREACH_TIMEOUT)
        assert breached == "breached"
        print(f"qos_sla breached after {time.monotonic() - started:.0f} s")
        badge = await page.evaluate("document.querySelector('#process-qos_sla .badge').innerText")
        assert "Breached" in badge  # the state is a word too, not only a colour
        assert len(await page.evaluate(TILES)) == 8
        after = await page.screenshot(_artefact(tmp_path, "status-page.png"))
        print(f"screenshot with the incident: {after}")
        await page.goto(operator, width=390, height=844)
        phone = await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        assert phone, "the page scrolls sideways on a phone"
        print(f"screenshot on a phone: {await page.screenshot(_artefact(tmp_path, 'status-page-phone.png'))}")
