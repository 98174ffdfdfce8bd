"""The demo's monthly report: the last full month of its simulated history, written to the working
directory as HTML and PDF while the demo serves.

The daily rollups are backfilled and the report written by a child `fabwatch report --backfill`,
started once the service is up: it runs on the other core, so the status page, the first samples
and the scrapes do not wait for it, and Ctrl+C stops it with the demo.
"""

import asyncio
import contextlib
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from app.report import last_full_month
from collector.rollups import midnight
from reports.summary import Month

DAY = 86400.0
DEFAULT_DAYS = 35.0
HISTORY_FILE = "history-start"
"""In the data directory: when the simulated history starts (epoch seconds), written at the first start."""
FORMATS = "html,pdf"


def history_days(days: float | None, zone: str, now: float) -> float:
    """The days of history a first start simulates: `days` when given, else 35, or more when needed to
    reach back to the first midnight of last month, so that its report is of a whole month."""
    if days is not None:
        return days
    start = midnight(last_full_month(zone, now).first, zone)
    return max(DEFAULT_DAYS, float(math.ceil((now - start) / DAY)))


def remember_start(data_dir: Path, start: float) -> None:
    (data_dir / HISTORY_FILE).write_text(f"{start:.3f}\n", encoding="utf-8")


def history_start(data_dir: Path) -> float | None:
    """When the demo's history starts (None: unknown, data written by a version that did not say)."""
    try:
        return float((data_dir / HISTORY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def month_to_report(data_dir: Path, zone: str, now: float) -> Month | None:
    """The last full month, when the simulated history covers every one of its days (else None)."""
    start = history_start(data_dir)
    month = last_full_month(zone, now)
    return month if start is not None and start <= midnight(month.first, zone) else None


@dataclass(frozen=True)
class DemoReport:
    """What the child `fabwatch report` needs: the demo's inventory file, its environment, its state."""

    config: Path
    environ: Mapping[str, str]
    state: Path
    data_dir: Path
    zone: str
    out: Path


async def write_report(demo: DemoReport, now: float, out: TextIO, err: TextIO) -> list[Path]:
    """Backfill the rollups and write the last full month's report; print `report: PATH` for each file.
    Return the paths (none when the history does not cover the month or the child failed)."""
    month = month_to_report(demo.data_dir, demo.zone, now)
    if month is None:
        print(f"report: none (the simulated history does not cover {last_full_month(demo.zone, now)}: "
              f"start the demo on a new --data-dir to simulate it)", file=out, flush=True)
        return []
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.cli", "report", "-c", str(demo.config), "--state", str(demo.state),
        "--backfill", "--since", str(month), "--month", str(month), "--format", FORMATS, "--out", str(demo.out),
        env={**os.environ, **demo.environ}, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        stdout, stderr = await proc.communicate()
    finally:
        if proc.returncode is None:  # the demo stops (Ctrl+C): stop the child with it
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            await proc.wait()
    warnings = [line for line in stderr.decode(errors="replace").splitlines() if line.startswith("fabwatch:")]
    for line in warnings:
        print(line, file=err, flush=True)
    if proc.returncode != 0:
        print(f"fabwatch: the demo's report of {month} failed (exit status {proc.returncode})", file=err, flush=True)
        return []
    paths = [Path(line) for line in stdout.decode().splitlines() if line.strip()]
    for path in paths:
        print(f"report: {path}", file=out, flush=True)
    return paths
