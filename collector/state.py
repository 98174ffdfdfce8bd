"""The state store: watermarks, cumulative counters and window sums, kept across restarts.

One SQLite file (WAL) with one JSON document per source (and the start time of each series the OTLP
exporter pushes as cumulative, which must last as long as the counters do). A source's state is replaced whole
and atomically after each successful sample, so a crash loses at most the sample in flight
and never counts a row twice: the next sample re-reads from the last saved watermark.

With a PostgreSQL URL for `service.state_path` the same tables live in PostgreSQL, shared by the
replicas of the service (see `collector.leases`): there a save is fenced by the source's lease, so
a replica that lost it (paused, partitioned) cannot overwrite the state its successor saves.
"""

import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collector.logs import safe_dsn
from collector.storeurl import BOUNDED_WAITS, postgres_url

if TYPE_CHECKING:
    import psycopg

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


class StateError(Exception):
    """The shared state store (PostgreSQL) could not be read or written."""


class LeaseLost(StateError):
    """A save refused: this replica no longer holds the source's lease (another one samples it now)."""


class StateStore:
    """Per-source JSON state in a local SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.where = str(self.path)
        """Where the state lives, fit for messages (a URL's password masked)."""
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

    def claim_delivery(self, month: str, holder: str, seconds: float) -> bool:
        """Whether `holder` may write and mail the report of `month` now, for `seconds` (renewed by
        calling again). One process owns a SQLite file: always, unless the month was delivered."""
        record = self.delivery(month)
        return record is None or not record[0]

    def hold_delivery(self, month: str, holder: str, until: float) -> None:
        """Keep the claim of `holder` on `month` until `until` (Unix time): a month given up is not
        taken by another replica before the next run. Nothing to keep in a SQLite file."""

    def close(self) -> None:
        self._db.close()


PG_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS source_state (source TEXT PRIMARY KEY, state TEXT NOT NULL,"
    " saved_at DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE IF NOT EXISTS otlp_series (series TEXT PRIMARY KEY, start_ns BIGINT NOT NULL,"
    " level TEXT NOT NULL, seen_ns BIGINT NOT NULL)",
    # Who samples each source, until when (the holder renews it); `term` counts the hand-overs.
    "CREATE TABLE IF NOT EXISTS source_lease (source TEXT PRIMARY KEY, holder TEXT NOT NULL,"
    " expires TIMESTAMPTZ NOT NULL, term BIGINT NOT NULL DEFAULT 1)",
    # The live replicas (a heartbeat each), for a fair share of the sources.
    "CREATE TABLE IF NOT EXISTS fabwatch_replica (replica TEXT PRIMARY KEY, expires TIMESTAMPTZ NOT NULL)",
    # The scheduled report's outcome by month, as in the SQLite file.
    "CREATE TABLE IF NOT EXISTS report_delivery (month TEXT PRIMARY KEY, delivered BOOLEAN NOT NULL,"
    " at DOUBLE PRECISION NOT NULL, detail TEXT NOT NULL)",
    # Which replica writes and mails a month's report, until when (renewed while it works on it).
    "CREATE TABLE IF NOT EXISTS report_claim (month TEXT PRIMARY KEY, holder TEXT NOT NULL,"
    " expires TIMESTAMPTZ NOT NULL)",
)
_SCHEMA_LOCK = 7_020_001
"""The advisory lock held while creating the tables: replicas starting together would otherwise race
on `CREATE TABLE IF NOT EXISTS` (a unique violation in PostgreSQL's catalog)."""
STATEMENT_TIMEOUT_MS = 10_000
"""A statement of the shared store waits at most this long (a lock, a server that stopped answering)."""


def connect_pg(url: str) -> "psycopg.Connection[Any]":
    """Open an autocommit connection to the shared store, its tables created if missing; bounded
    waits (connection, statements, TCP keepalives) so a partition fails a call instead of hanging it."""
    import psycopg

    conn = psycopg.connect(url, autocommit=True, options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
                           application_name="fabwatch", **BOUNDED_WAITS)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        for statement in PG_SCHEMA:
            conn.execute(statement)  # type: ignore[arg-type]  # constant DDL
    return conn


_FENCED_SAVE = """
WITH lease AS (
    SELECT 1 FROM source_lease
    WHERE source = %(source)s AND holder = %(holder)s AND expires > now()
      AND (%(term)s::bigint IS NULL OR term = %(term)s::bigint) FOR UPDATE
)
INSERT INTO source_state (source, state, saved_at)
SELECT %(source)s, %(state)s, %(at)s WHERE EXISTS (SELECT 1 FROM lease)
ON CONFLICT (source) DO UPDATE SET state = excluded.state, saved_at = excluded.saved_at
"""
"""A save only while `holder` holds the source's lease, in the term its state was read under (when
read under one): the lease row is locked for the statement, so a replica taking the lease over waits
for it, and then reads the state it saved; and a holder that lost the lease and took it again while
a slow sample ran cannot save that sample's state over the one another replica saved in between."""
_LOAD_FENCED = """
SELECT (SELECT state FROM source_state WHERE source = %(source)s),
       (SELECT term FROM source_lease WHERE source = %(source)s AND holder = %(holder)s AND expires > now())
"""
"""A source's state and, in the same snapshot, the term of `holder`'s lease on it (NULL: not held)."""

_CLAIM = """
INSERT INTO report_claim (month, holder, expires)
SELECT %(month)s, %(holder)s, now() + %(seconds)s * interval '1 second'
WHERE NOT EXISTS (SELECT 1 FROM report_delivery WHERE month = %(month)s AND delivered)
ON CONFLICT (month) DO UPDATE SET holder = excluded.holder, expires = excluded.expires
WHERE report_claim.expires <= now() OR report_claim.holder = excluded.holder
RETURNING month
"""
"""A month's report claimed (or the claim renewed) by `holder`: only when it was not delivered, and
no other replica's claim is current. A delivering replica's claim is not given back when it has
delivered: it lapses long after the delivery was committed, so no replica reading an older
snapshot can claim the month again."""


class PostgresStateStore(StateStore):
    """The same per-source JSON state in PostgreSQL, shared by replicas; saves fenced by `holder`'s
    lease when given (every call raises `StateError` on a database error, `LeaseLost` when fenced)."""

    def __init__(self, url: str, holder: str | None = None) -> None:  # no SQLite file: not StateStore's
        self.url = url
        self.where = safe_dsn(url)
        self.path = Path(self.where)
        self.holder = holder
        """The replica whose lease every save needs (None: saves are not fenced)."""
        self._terms: dict[str, int] = {}
        """The lease term each source's state was last read under by `holder`: its saves need it."""
        self._conn: psycopg.Connection[Any] | None = None
        self._connection()

    def _connection(self) -> "psycopg.Connection[Any]":
        """The connection, opened again after a failure broke it (PostgreSQL restarted, a partition)."""
        import psycopg

        if self._conn is None or self._conn.closed or self._conn.broken:
            try:
                self._conn = connect_pg(self.url)
            except psycopg.Error as exc:
                raise StateError(f"cannot connect to {self.where}: {exc}") from exc
        return self._conn

    def _run(self, sql: str, params: Any = None) -> "psycopg.Cursor[Any]":
        import psycopg

        try:
            return self._connection().execute(sql, params)  # type: ignore[arg-type]  # this module's constant SQL
        except psycopg.Error as exc:
            raise StateError(f"{self.where}: {exc}") from exc

    def load(self, source: str) -> dict[str, Any]:
        """Return the saved state of a source, or an empty state if it was never sampled; with a
        `holder`, remember the term of its lease then (a later save needs that term)."""
        if self.holder is None:
            row = self._run("SELECT state FROM source_state WHERE source = %s", (source,)).fetchone()
            return json.loads(row[0]) if row else {}
        row = self._run(_LOAD_FENCED, {"source": source, "holder": self.holder}).fetchone()
        state, term = row if row is not None else (None, None)
        if term is None:
            self._terms.pop(source, None)
        else:
            self._terms[source] = int(term)
        return json.loads(state) if state is not None else {}

    def save(self, source: str, state: dict[str, Any]) -> None:
        """Replace the state of a source in one statement; fenced by the lease of `holder` if set."""
        document = json.dumps(state, separators=(",", ":"), sort_keys=True)
        params = {"source": source, "state": document, "at": time.time(), "holder": self.holder,
                  "term": self._terms.get(source)}
        if self.holder is None:
            self._run("INSERT INTO source_state (source, state, saved_at) VALUES (%(source)s, %(state)s, %(at)s) "
                      "ON CONFLICT (source) DO UPDATE SET state = excluded.state, saved_at = excluded.saved_at",
                      params)
            return
        if self._run(_FENCED_SAVE, params).rowcount != 1:
            raise LeaseLost(f"not saved: replica {self.holder} no longer holds the lease of source {source}")

    def otlp_series(self) -> dict[str, tuple[int, str, int]]:
        """The OTLP exporter's cumulative series: key -> (start time, last level as JSON, when seen), in ns."""
        rows = self._run("SELECT series, start_ns, level, seen_ns FROM otlp_series").fetchall()
        return {series: (start, level, seen) for series, start, level, seen in rows}

    def save_otlp_series(self, rows: Iterable[tuple[str, int, str, int]]) -> None:
        """Replace the given series (key, start time, level, when seen) in one transaction."""
        import psycopg

        conn = self._connection()
        try:
            with conn.transaction(), conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO otlp_series (series, start_ns, level, seen_ns) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (series) DO UPDATE SET start_ns = excluded.start_ns, level = excluded.level, "
                    "seen_ns = excluded.seen_ns", list(rows))
        except psycopg.Error as exc:
            raise StateError(f"{self.where}: {exc}") from exc

    def delivery(self, month: str) -> tuple[bool, float, str] | None:
        """Whether the scheduled report of `month` (YYYY-MM) was delivered, when it was last tried, and
        what happened then; None: never tried."""
        row = self._run("SELECT delivered, at, detail FROM report_delivery WHERE month = %s", (month,)).fetchone()
        return None if row is None else (bool(row[0]), row[1], row[2])

    def record_delivery(self, month: str, delivered: bool, at: float, detail: str) -> None:
        """Remember the outcome of the last attempt at delivering the report of `month`."""
        self._run("INSERT INTO report_delivery (month, delivered, at, detail) VALUES (%s, %s, %s, %s) "
                  "ON CONFLICT (month) DO UPDATE SET delivered = excluded.delivered, at = excluded.at, "
                  "detail = excluded.detail", (month, delivered, at, detail))

    def last_delivered(self) -> float | None:
        """When a scheduled report was last delivered (Unix time); None: never."""
        row = self._run("SELECT max(at) FROM report_delivery WHERE delivered").fetchone()
        return None if row is None else row[0]

    def claim_delivery(self, month: str, holder: str, seconds: float) -> bool:
        """Claim the report of `month` for `holder` for `seconds`, or renew its claim: false when it was
        delivered or another replica's claim is current (that one writes and mails it)."""
        params = {"month": month, "holder": holder, "seconds": seconds}
        return self._run(_CLAIM, params).fetchone() is not None

    def hold_delivery(self, month: str, holder: str, until: float) -> None:
        """Keep the claim of `holder` on `month` until `until` (Unix time, may be infinite): a month it
        gave up is not tried again by every other replica in turn before the next run."""
        self._run("UPDATE report_claim SET expires = to_timestamp(%s) WHERE month = %s AND holder = %s",
                  (until, month, holder))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def store_errors() -> tuple[type[Exception], ...]:
    """What reading or writing the state or its rollups raises on a fault of the store: sqlite3's and
    psycopg's errors (psycopg imported only now: a SQLite-only service never loads it)."""
    import psycopg

    return sqlite3.Error, StateError, psycopg.Error


def open_state(location: str | Path, holder: str | None = None) -> StateStore:
    """The state store at `location`: a SQLite file, or PostgreSQL for a PostgreSQL URL (its saves
    fenced by `holder`'s leases when given)."""
    url = postgres_url(str(location))
    return StateStore(location) if url is None else PostgresStateStore(url, holder)


def state_file_problem(path: str | Path) -> str | None:
    """Why the state file cannot be used (not a database, a directory, read-only, locked), or None;
    for a PostgreSQL URL, why it cannot be connected to or written (the URL's password masked).
    Checked before serving, so the fault is named at start instead of as every source's failure."""
    url = postgres_url(str(path))
    if url is not None:
        return _postgres_problem(url)
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


def _postgres_problem(url: str) -> str | None:
    try:
        store = PostgresStateStore(url)
    except StateError as exc:
        return str(exc)
    try:  # the row lock a fenced save takes, on a row no source has
        store._run("SELECT 1 FROM source_lease WHERE source = '' FOR UPDATE")
    except StateError as exc:
        return str(exc)
    finally:
        store.close()
    return None
