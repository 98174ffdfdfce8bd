"""`/reports/` on the service port: the listing newest first, each file with its content type, the
same list at `/api/v1/reports`, nothing outside the directory reachable (`..`, encoded or not,
symbolic links), and the pace of the page applied."""

import asyncio
import os
from pathlib import Path

import pytest
import yarl
from aiohttp import web

from app.service import build_app
from collector.inventory.load import load_inventory
from exporters import reportfiles
from exporters.pace import Pace, paced
from exporters.reportfiles import CONTENT_TYPES, list_reports, read_report
from tests.app.test_service import make_records, wait_ready, write_inventory

SECRET_TEXT = "state-file-secret-7731"


def fill(directory: Path) -> None:
    """Reports of three months, written in an order unlike the listing's, and files that are no report."""
    directory.mkdir(parents=True, exist_ok=True)
    for month, formats, at in (("2026-10", ("md", "html"), 3), ("2026-09", ("csv",), 1), ("2026-11", FORMATS, 2)):
        for name in formats:
            path = directory / f"fabwatch-report-{month}.{name}"
            path.write_bytes(f"{month} {name} ü".encode())
            os.utime(path, (1_790_000_000 + at, 1_790_000_000 + at))
    (directory / "notes.txt").write_text("not a report")
    (directory / ".fabwatch-report-2026-12.html.123.tmp").write_text("half written")
    (directory / "fabwatch-report-2026-13.html").write_text("no such month")


FORMATS = ("json", "csv", "pdf", "md", "html")


@pytest.fixture
async def client(aiohttp_client, tmp_path):
    make_records(tmp_path / "records.db")
    inventory = load_inventory([write_inventory(tmp_path, tmp_path / "records.db")])
    (tmp_path / "outside.txt").write_text(SECRET_TEXT)
    fill(tmp_path / "reports")  # beside the state file: the default reports directory
    client = await aiohttp_client(build_app(inventory))
    await wait_ready(client)
    return client


def test_the_listing_is_newest_first_and_holds_report_files_only(tmp_path: Path) -> None:
    fill(tmp_path)
    files = list_reports(tmp_path)
    assert [(f.month, f.format) for f in files] == [
        ("2026-11", "html"), ("2026-11", "pdf"), ("2026-11", "md"), ("2026-11", "json"), ("2026-11", "csv"),
        ("2026-10", "html"), ("2026-10", "md"), ("2026-09", "csv")]
    assert files[0].bytes == len("2026-11 html ü".encode())
    assert list_reports(tmp_path / "missing") == []


async def test_reports_page_lists_and_links_every_file(client) -> None:
    response = await client.get("/reports/")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    page = await response.text()
    months = [line.split('data-month="')[1].split('"')[0] for line in page.splitlines() if "data-month=" in line]
    assert months == ["2026-11", "2026-10", "2026-09"]
    for name in ("fabwatch-report-2026-11.pdf", "fabwatch-report-2026-09.csv"):
        assert f'href="{name}"' in page
    for stranger in ("notes.txt", ".tmp", "2026-13"):
        assert stranger not in page
    redirected = await client.get("/reports", allow_redirects=False)
    assert redirected.status == 308
    assert redirected.headers["Location"] == "reports/"
    status_page = await (await client.get("/")).text()
    assert 'href="reports/"' in status_page  # linked from the status page


@pytest.mark.parametrize("extension", FORMATS)
async def test_each_file_is_served_with_its_content_type(client, extension: str) -> None:
    response = await client.get(f"/reports/fabwatch-report-2026-11.{extension}")
    assert response.status == 200
    assert response.headers["Content-Type"] == CONTENT_TYPES[extension]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert await response.read() == f"2026-11 {extension} ü".encode()


async def test_the_api_lists_the_same_files(client) -> None:
    listed = await (await client.get("/api/v1/reports")).json()
    page = await (await client.get("/reports/")).text()
    assert [r["name"] for r in listed["reports"]][:2] == ["fabwatch-report-2026-11.html", "fabwatch-report-2026-11.pdf"]
    for report in listed["reports"]:
        assert f'href="{report["name"]}"' in page
        assert report["url"] == f"reports/{report['name']}"
        served = await client.get("/" + report["url"])
        assert served.status == 200
        assert len(await served.read()) == report["bytes"]


TRAVERSALS = [
    "/reports/../outside.txt", "/reports/..%2Foutside.txt", "/reports/%2e%2e/outside.txt",
    "/reports/%2e%2e%2foutside.txt", "/reports/..%5coutside.txt", "/reports/%252e%252e%252foutside.txt",
    "/reports/fabwatch-report-2026-11.html/../../outside.txt", "/reports//etc/passwd",
    "/reports/..%2F..%2F..%2Fetc%2Fpasswd", "/reports/fabwatch-report-2026-11.html%00.txt",
    "/reports/fabwatch-report-2026-11.html%2f..%2f..%2foutside.txt", "/reports/notes.txt",
]


@pytest.mark.parametrize("raw", TRAVERSALS)
async def test_nothing_outside_the_directory_is_reachable(client, raw: str) -> None:
    url = yarl.URL(f"http://{client.host}:{client.port}{raw}", encoded=True)  # sent as written, not normalised
    async with client.session.get(url) as response:
        body = await response.read()
    assert response.status in (400, 404), (raw, response.status)
    assert SECRET_TEXT.encode() not in body
    assert b"root:" not in body


async def test_symbolic_links_are_not_followed(client, tmp_path: Path) -> None:
    directory = tmp_path / "reports"
    (directory / "fabwatch-report-2025-01.html").symlink_to(tmp_path / "outside.txt")
    (directory / "fabwatch-report-2025-02.html").symlink_to(directory / "fabwatch-report-2026-11.html")
    for name in ("fabwatch-report-2025-01.html", "fabwatch-report-2025-02.html"):
        response = await client.get(f"/reports/{name}")
        assert response.status == 404, name
        assert SECRET_TEXT not in await response.text()
    page = await (await client.get("/reports/")).text()
    assert "2025-01" not in page
    assert "2025-02" not in page


def test_a_fifo_named_like_a_report_is_not_read(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fabwatch-report-2026-11.html")  # reading it would block the worker forever
    assert read_report(tmp_path, "fabwatch-report-2026-11.html") is None
    assert list_reports(tmp_path) == []


async def test_the_reports_are_paced_like_the_page(aiohttp_client, tmp_path: Path) -> None:
    fill(tmp_path)
    pace = Pace(rate=5, burst=1)
    app = web.Application(middlewares=[paced(pace)])
    reportfiles.add_routes(app, tmp_path, "UTC")
    client = await aiohttp_client(app)
    paths = ["/reports/", "/reports/fabwatch-report-2026-11.pdf", "/reports/fabwatch-report-2026-10.md"]
    statuses = await asyncio.gather(*((await_status(client, path)) for path in paths))
    assert statuses == [200, 200, 200]
    assert pace.waited >= 1  # beyond the burst, answers wait their turn (unpaced: none would)


async def await_status(client, path: str) -> int:
    response = await client.get(path)
    await response.read()
    return response.status


def test_a_name_with_a_trailing_newline_is_no_report(tmp_path: Path) -> None:
    """`$` also matches before a final newline: such a file (any local user can make one) was listed with a
    broken link and served with an unknown extension (a 500), and a newline reached the response headers."""
    fill(tmp_path)
    (tmp_path / "fabwatch-report-2026-08.html\n").write_text("odd name")
    assert "2026-08" not in {f.month for f in list_reports(tmp_path)}
    assert read_report(tmp_path, "fabwatch-report-2026-08.html\n") is None
