"""The state store: watermarks, cumulative counters and window sums, kept across restarts.

One SQLite file (WAL) with one JSON document per source (and the start time of each series the OTLP
exporter pushes as cumulative, which must last as long as the counters do). A source's state is replaced whole
and atomically after each successful sample, so a crash loses at most the sample in flight
and never counts a row twice: the next sample re-reads from the last saved watermark.
"""

import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS source_state (
    source TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    saved_at REAL NOT NULL
)
"""
_SERIES_SCHEMA = """
CREATE TABLE IF NOT EXISTS otlp_series (
    series TEXT PRIMARY KEY,
    start_ns INTEGER NOT NULL,
    level TEXT NOT NULL,
    seen_ns INTEGER NOT NULL
)
"""
_DELIVERY_SCHEMA = """
CREATE TABLE IF NOT EXISTS report_delivery (
    month TEXT PRIMARY KEY,
    delivered INTEGER NOT NULL,
    at REAL NOT NULL,
    detail TEXT NOT NULL
)
"""


class StateStore:
    """Per-source JSON state in a local SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._db.execute(_SERIES_SCHEMA)
        self._db.execute(_DELIVERY_SCHEMA)

    def load(self, source: str) -> dict[str, Any]:
        """Return the saved state of a source, or an empty state if it was never sampled."""
        row = self._db.execute("SELECT state FROM source_state WHERE source = ?", (source,)).fetchone()
        return json.loads(row[0]) if row else {}

    def save(self, source: str, state: dict[str, Any]) -> None:
        """Replace the state of a source in one transaction."""
        document = json.dumps(state, separators=(",", ":"), sort_keys=True)
        self._db.execute(
            "INSERT INTO source_state (source, state, saved_at) VALUES (?, ?, ?) "
            "ON CONFLICT(source) DO UPDATE SET state = excluded.state, saved_at = excluded.saved_at",
            (source, document, time.time()),
        )

    def otlp_series(self) -> dict[str, tuple[int, str, int]]:
        """The OTLP exporter's cumulative series: key -> (start time, last level as JSON, when seen), in ns."""
        rows = self._db.execute("SELECT series, start_ns, level, seen_ns FROM otlp_series")
        return {series: (start, level, seen) for series, start, level, seen in rows}

    def save_otlp_series(self, rows: Iterable[tuple[str, int, str, int]]) -> None:
        """Replace the given series (key, start time, level, when seen) in one transaction."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO otlp_series (series, start_ns, level, seen_ns) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(series) DO UPDATE SET start_ns = excluded.start_ns, level = excluded.level, "
                "seen_ns = excluded.seen_ns", rows)

    def delivery(self, month: str) -> tuple[bool, float, str] | None:
        """Whether the scheduled report of `month` (YYYY-MM) was delivered, when it was last tried, and
        what happened then; None: never tried."""
        row = self._db.execute("SELECT delivered, at, detail FROM report_delivery WHERE month = ?", (month,)).fetchone()
        return None if row is None else (bool(row[0]), row[1], row[2])

    def record_delivery(self, month: str, delivered: bool, at: float, detail: str) -> None:
        """Remember the outcome of the last attempt at delivering the report of `month`."""
        self._db.execute("INSERT INTO report_delivery (month, delivered, at, detail) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT(month) DO UPDATE SET delivered = excluded.delivered, at = excluded.at, "
                         "detail = excluded.detail", (month, int(delivered), at, detail))

    def last_delivered(self) -> float | None:
        """When a scheduled report was last delivered (Unix time); None: never."""
        row = self._db.execute("SELECT max(at) FROM report_delivery WHERE delivered = 1").fetchone()
        return None if row is None else row[0]

    def close(self) -> None:
        self._db.close()


def state_file_problem(path: str | Path) -> str | None:
    """Why the state file cannot be used (not a database, a directory, read-only, locked), or None.
    Checked before serving, so the fault is named at start instead of as every source's failure."""
    try:
        store = StateStore(path)
    except (sqlite3.Error, OSError) as exc:
        return str(exc)
    try:
        store._db.execute("BEGIN IMMEDIATE")  # the write lock a save takes
        store._db.execute("ROLLBACK")
    except sqlite3.Error as exc:
        return str(exc)
    finally:
        store.close()
    return None
