"""Delivering a monthly report: its files written into the reports directory atomically (a reader of
`/reports/` never sees half a file), then mailed (`reports.mail`) when `reports.email` is set.

What a directory holds is listed by `exporters.reportfiles`, which knows the file names this
module writes (`fabwatch-report-<YYYY-MM>.<format>`).
"""

import asyncio
import importlib.util
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from collector.inventory.reports import ReportEmail
from reports import render
from reports.mail import DeliveryFailed, build_message, send
from reports.summary import Report


@dataclass(frozen=True)
class Delivered:
    """What a delivery wrote, whom it mailed, what it left out and why."""

    paths: list[Path]
    mailed_to: list[str]
    notes: list[str]


def renderable(name: str) -> bool:
    """Whether this installation renders format `name` (`pdf` needs WeasyPrint, an optional dependency)."""
    return name in render.RENDERERS or (name == "pdf" and importlib.util.find_spec("weasyprint") is not None)


def available(formats: Sequence[str]) -> tuple[list[str], list[str]]:
    """The formats this installation can render, and those it cannot (`pdf` without its renderer)."""
    return [f for f in formats if renderable(f)], [f for f in formats if not renderable(f)]


def rendered(report: Report, name: str) -> bytes:
    """The report in format `name`, as the file holds it (the PDF laid out from the HTML, as `render.write`)."""
    if name == "pdf":
        from reports.pdf import render_pdf  # here: WeasyPrint is loaded only when a PDF is asked for

        return render_pdf(render.render_html(report))
    return render.RENDERERS[name](report).encode("utf-8")


def write_atomic(report: Report, directory: Path, formats: Sequence[str]) -> list[Path]:
    """Write the report in each format as `fabwatch-report-<month>.<ext>`, each file first under a
    temporary name in the same directory, then renamed over the final one; raise OSError."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in formats:
        data = rendered(report, name)
        path = directory / f"fabwatch-report-{report.month}.{name}"
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temporary, 0o644)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        paths.append(path)
    return paths


def subject(report: Report) -> str:
    """The mail's subject: the month, and how many processes are on track or need modification."""
    total = len(report.processes)
    on_track = sum(1 for p in report.processes if p.status == "on track")
    modify = sum(1 for p in report.processes if p.status == "needs modification")
    incomplete = sum(1 for p in report.processes if p.status == "incomplete")
    text = f"fabwatch monthly report {report.month}: {on_track} of {total} processes on track"
    return text + (f", {modify} need modification" if modify else "") + (
        f", {incomplete} without figures for every day" if incomplete else "")


async def deliver(report: Report, directory: Path, formats: Sequence[str], email: ReportEmail | None) -> Delivered:
    """Write the report into `directory`, then mail it when `email` is set; raise `DeliveryFailed`."""
    known, missing = available(formats)
    notes = [f"format {name} is not available in this installation: not written" for name in missing]
    try:
        paths = await asyncio.to_thread(write_atomic, report, directory, known)  # a PDF takes seconds: not in the loop
    except OSError as exc:
        raise DeliveryFailed("write", f"cannot write the report into {directory}: {exc.strerror or exc}") from None
    if email is None:
        return Delivered(paths, [], notes)
    attached = [p for p in paths if p.suffix.lstrip(".") in email.attach]
    text = render.render_markdown(report)
    refused = await send(email, build_message(email, subject(report), text, attached))
    notes += [f"recipient refused: {who}" for who in refused]
    return Delivered(paths, [to for to in email.to if not any(r.startswith(f"{to}:") for r in refused)], notes)
