"""Monthly cost files from finance: CSV with `process, component, amount, currency, month`.

Rows go to table `cost_entry` of the record store (one per process, component and month; a
later file, in name order, replaces an earlier file's row). When any file is added, changed or
removed, every file is read again and the table replaced in one transaction: re-reading only the
changed file would let an old file touched again undo a later file's correction.
The cost model reads them through `MonthlyCosts` (a cost
component `monthly_from: <source>` accrues the month's amount over the month, into
`fab_cost_total` and cost per item), and `value` KPIs can query them, e.g.
`SELECT SUM(amount) FROM cost_entry WHERE process = 'problem' AND month = strftime('%Y-%m', 'now')`.
"""

import asyncio
import csv
import glob
import logging
import math
import re
import sqlite3
import time
from calendar import timegm
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from collector.errors import SourceUnreachable
from collector.inventory.sources import CostCsvSource
from collector.logs import log_event, safe_dsn
from collector.sources.http import SourceSchemaMismatch
from collector.sources.store import Records
from collector.storeurl import postgres_url

HEADER = ("process", "component", "amount", "currency", "month")
_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
CostRow = tuple[str, str, str, float, str, float, str]


class CostCsvSync:
    """Re-read the cost files when one of them changed (added, modified, removed)."""

    def __init__(self, name: str, source: CostCsvSource, store: Records) -> None:
        self.name = name
        self.source = source
        self.store = store
        self._seen: dict[str, float] = {}

    async def sync(self, now: float | None = None) -> int:
        """Load new or changed files; return the number of cost rows stored."""
        return await asyncio.to_thread(self._sync)

    def _sync(self) -> int:
        paths = sorted(glob.glob(self.source.path))
        if not paths:
            raise SourceUnreachable(self.name, f"no file matches {self.source.path}")
        try:
            seen = {path: Path(path).stat().st_mtime for path in paths}
        except OSError as exc:  # deleted between the glob and the stat
            raise SourceUnreachable(self.name, f"{exc.filename}: cannot read: {exc.strerror or exc}") from exc
        if seen == self._seen:
            return 0
        rows = [row for path in paths for row in read_costs(self.name, path)]  # name order: later wins
        self.store.replace_costs(rows)
        self._seen = seen
        return len(rows)

    async def close(self) -> None:
        return None


def read_costs(source: str, path: str) -> list[CostRow]:
    """Parse one cost CSV; raise `SourceSchemaMismatch` naming the file and line of a bad row."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = set(HEADER) - {(f or "").strip() for f in reader.fieldnames or ()}
            if missing:
                raise SourceSchemaMismatch(source, f"{path}:1: missing columns {', '.join(sorted(missing))}; "
                                                   f"the header must name {', '.join(HEADER)}")
            reader.fieldnames = [(f or "").strip() for f in reader.fieldnames or ()]
            return [_cost_row(source, path, reader.line_num, line) for line in reader]
    except UnicodeDecodeError as exc:
        raise SourceSchemaMismatch(source, f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except csv.Error as exc:
        raise SourceSchemaMismatch(source, f"{path}: not a readable CSV file: {exc}") from exc
    except OSError as exc:  # a directory the pattern matched, a file without read permission, a vanished one
        raise SourceUnreachable(source, f"{path}: cannot read: {exc.strerror or exc}") from exc


def _cost_row(source: str, path: str, number: int, line: dict[str, str | None]) -> CostRow:
    """Check one row; the error names what is wrong with it."""
    def field(name: str) -> str:
        return (line.get(name) or "").strip()

    problems = [f"no {name}" for name in ("process", "component") if not field(name)]
    try:
        amount = float(field("amount"))
        if not math.isfinite(amount):
            raise ValueError
    except ValueError:
        amount = 0.0
        problems.append(f"amount {field('amount')!r} is not a number")
    currency = field("currency")
    if not re.fullmatch(r"[A-Z]{3}", currency):
        problems.append(f"currency {currency!r} is not an ISO 4217 code (e.g. EUR)")
    month = _MONTH.match(field("month"))
    if month is None:
        problems.append(f"month {field('month')!r} is not YYYY-MM")
    if problems or month is None:
        raise SourceSchemaMismatch(source, f"{path}:{number}: " + "; ".join(problems))
    start = float(timegm((int(month.group(1)), int(month.group(2)), 1, 0, 0, 0)))
    return (field("process"), field("component"), month.group(0), amount, currency, start, path)


class MonthlyCosts:
    """The monthly amounts finance booked, read from the record stores of `cost_csv` sources.

    For a month without a row yet (finance books after the month starts), the latest earlier
    month's amount carries on. Rows in another currency than the service's are not converted:
    they are left out, with a warning naming the file.
    """

    def __init__(self, stores: Mapping[str, str | Path], currency: str) -> None:
        self.stores = stores
        self.currency = currency
        self._warned: set[tuple[str, str, str, str]] = set()

    def __call__(self, source: str, process: str, component: str, now: float) -> float | None:
        """The amount per month of `component` of `process` for the UTC month of `now`, or None."""
        location = self.stores.get(source)
        if location is None:
            return None
        month = time.strftime("%Y-%m", time.gmtime(now))
        url = postgres_url(str(location))
        try:
            if url is not None:
                row = _postgres_cost(url, source, (process, component, month))
            elif not Path(location).exists():
                return None
            else:
                row = _sqlite_cost(Path(location), (process, component, month))
        except (sqlite3.Error, OSError, ImportError, ValueError) as exc:
            self._warn((source, process, component, "store"), "cost_store_unreadable", store=safe_dsn(str(location)),
                       error=str(exc))
            return None
        if row is None:
            return None
        if row[1] != self.currency:
            self._warn((source, process, component, row[2]), "cost_currency_mismatch", process=process,
                       component=component, month=row[2], currency=row[1], expected=self.currency, file=row[3])
            return None
        return float(row[0])

    def _warn(self, key: tuple[str, str, str, str], event: str, **fields: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log_event(_LOG, event, logging.WARNING, source=key[0], **fields)


_LOG = logging.getLogger("fabwatch.sources")
_COST = ("SELECT amount, currency, month, file FROM cost_entry WHERE process = {0} AND component = {0} "
         "AND month <= {0} ORDER BY month DESC LIMIT 1")


def _sqlite_cost(path: Path, key: tuple[str, str, str]) -> tuple[Any, ...] | None:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row: tuple[Any, ...] | None = db.execute(_COST.format("?"), key).fetchone()
        return row
    finally:
        db.close()


def _postgres_cost(url: str, source: str, key: tuple[str, str, str]) -> tuple[Any, ...] | None:
    """The cost row from a record store in PostgreSQL (a connection a lookup: samples are minutes apart)."""
    import psycopg

    from collector.sources.pgstore import schema_of

    try:
        with psycopg.connect(url, options=f"-c search_path={schema_of(source)}", connect_timeout=10) as db:
            return db.execute(_COST.format("%s"), key).fetchone()
    except psycopg.Error as exc:
        raise ValueError(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__) from exc
