"""The reports directory served at `/reports/`: an HTML listing, newest month first, and each report
file with its content type; `/api/v1/reports` lists the same files as JSON.

Only names the report writer makes (`fabwatch-report-<YYYY-MM>.<format>`) are ever served, and
only regular files: the name is matched whole before any path is built (no `..`, no `/`, encoded
or not), and the file is opened without following a symbolic link, so nothing outside the
directory can be reached through it. Files are small (a report is some hundred kilobytes) and
read in a worker thread.
"""

import asyncio
import datetime as dt
import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import jinja2
from aiohttp import web

from exporters.schema import ReportFile, ReportList


@dataclass(frozen=True)
class ReportsDir:
    """Where the reports are, and the zone their times are shown in."""

    path: Path
    timezone: str


REPORTS_DIR = web.AppKey("reports_dir", ReportsDir)
"""The directory `serve` writes the scheduled reports into (`reports.directory`)."""
_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True,
                          undefined=jinja2.StrictUndefined)
PREFIX = "/reports/"
FORMAT_ORDER = ("html", "pdf", "md", "json", "csv")
CONTENT_TYPES = {"html": "text/html; charset=utf-8", "pdf": "application/pdf",
                 "md": "text/markdown; charset=utf-8", "json": "application/json",
                 "csv": "text/csv; charset=utf-8"}
NAME = re.compile(r"fabwatch-report-(\d{4}-(?:0[1-9]|1[0-2]))\.(html|pdf|md|json|csv)")
"""The name of a report file, the only names served (matched whole: `fullmatch`, as `$` would let a final
newline through)."""


@dataclass(frozen=True)
class MonthReports:
    month: str
    files: list[ReportFile]
    written: str


def list_reports(directory: Path) -> list[ReportFile]:
    """The report files in `directory`, newest month first (regular files only; none: no directory)."""
    found = []
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        match = NAME.fullmatch(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        info = entry.stat(follow_symlinks=False)
        found.append(ReportFile(name=entry.name, month=match.group(1), format=match.group(2),
                                url=f"reports/{entry.name}", bytes=info.st_size, modified=info.st_mtime))
    return sorted(found, key=lambda f: (-int(f.month.replace("-", "")), FORMAT_ORDER.index(f.format)))


def read_report(directory: Path, name: str) -> bytes | None:
    """The bytes of report file `name` in `directory`; None when it is not a report name, not there, or not
    a regular file in the directory (a symbolic link is never followed)."""
    if NAME.fullmatch(name) is None:
        return None
    try:
        handle = os.open(directory / name, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EACCES, errno.ENXIO):
            return None
        raise
    with os.fdopen(handle, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):  # a FIFO or a device named like a report
            return None
        return file.read()


def by_month(files: list[ReportFile], zone: str) -> list[MonthReports]:
    """The files grouped by month, newest first, with when each month's report was written."""
    months: dict[str, list[ReportFile]] = {}
    for file in files:
        months.setdefault(file.month, []).append(file)
    tz = ZoneInfo(zone)
    return [MonthReports(month, group, dt.datetime.fromtimestamp(max(f.modified for f in group), tz)
                         .strftime("%Y-%m-%d %H:%M %Z")) for month, group in months.items()]


async def listing(request: web.Request) -> web.Response:
    """GET /reports/: the reports in the directory, newest first."""
    where = request.app[REPORTS_DIR]
    files = await asyncio.to_thread(list_reports, where.path)
    body = _ENV.get_template("reports.html").render(months=by_month(files, where.timezone), size=_size)
    return web.Response(text=body, content_type="text/html", charset="utf-8", headers={"Cache-Control": "no-cache"})


async def report_file(request: web.Request) -> web.Response:
    """GET /reports/<name>: one report file with its content type; 404 for anything else."""
    name = request.match_info["name"]
    data = await asyncio.to_thread(read_report, request.app[REPORTS_DIR].path, name)
    if data is None:
        raise web.HTTPNotFound(text=f"no report named {name}\n")
    extension = name.rsplit(".", 1)[1]
    return web.Response(body=data, headers={
        "Content-Type": CONTENT_TYPES[extension], "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
        "Content-Disposition": f'inline; filename="{name}"'})


async def api_reports(request: web.Request) -> web.Response:
    """GET /api/v1/reports: the same files as `/reports/` lists, as JSON."""
    files = await asyncio.to_thread(list_reports, request.app[REPORTS_DIR].path)
    return web.Response(body=ReportList(reports=files).model_dump_json(), content_type="application/json")


async def _to_listing(request: web.Request) -> web.Response:
    raise web.HTTPPermanentRedirect("reports/")


def _size(count: int) -> str:
    return f"{count / 1024:.0f} KiB" if count >= 1024 else f"{count} B"


def add_routes(app: web.Application, directory: Path, timezone: str) -> None:
    """Serve `directory` at /reports/ (and /reports, redirected); times shown in `timezone`."""
    app[REPORTS_DIR] = ReportsDir(directory, timezone)
    app.router.add_get("/reports", _to_listing)
    app.router.add_get(PREFIX, listing)
    app.router.add_get(PREFIX + "{name}", report_file)
