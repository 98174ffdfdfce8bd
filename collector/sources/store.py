"""The record store: an embedded SQLite file (WAL) holding the work items non-SQL sources sync.

Its records tables have the columns of the simulator's tables, so the KPI engine samples it as
an ordinary SQL source. A row is replaced only by a version at least as recent (`updated_at`),
which resolves out-of-order events; `reopened` and `fallout` never go back to 0, and a move out
of a final status is a reopen. Received events are kept by `eventId`, so a redelivered event is
acknowledged again but applied once. Writes happen on one connection, serialized by the caller.
"""

import functools
import json
import operator
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence, Set
from pathlib import Path
from typing import Any, NamedTuple

Row = dict[str, Any]

COLUMNS: tuple[tuple[str, str, str | None], ...] = (
    ("id", "TEXT PRIMARY KEY", None),
    ("created_at", "REAL NOT NULL", None),
    ("completed_at", "REAL", None),
    ("due_at", "REAL", None),
    ("updated_at", "REAL NOT NULL", None),
    ("status", "TEXT NOT NULL", None),
    ("outcome", "TEXT", None),
    ("priority", "TEXT", None),
    ("channel", "TEXT", None),
    ("segment", "TEXT", None),
    ("paused_seconds", "REAL NOT NULL", "0"),
    ("reopened", "INTEGER NOT NULL", "0"),
    ("fallout", "INTEGER NOT NULL", "0"),
    ("first_contact_resolved", "INTEGER NOT NULL", "0"),
    ("abandoned", "INTEGER NOT NULL", "0"),
    ("wait_seconds", "REAL NOT NULL", "0"),
    ("adjusted", "INTEGER NOT NULL", "0"),
    ("ebill", "INTEGER NOT NULL", "0"),
    ("saved", "INTEGER NOT NULL", "0"),
    ("written_off", "INTEGER NOT NULL", "0"),
    ("handling_minutes", "REAL NOT NULL", "0"),
    ("amount", "REAL NOT NULL", "0"),
)
"""The records table shape (the simulator's `record_table`), with the defaults of a missing value."""
NAMES = tuple(name for name, _, _ in COLUMNS)
FLOATS = frozenset({"created_at", "completed_at", "due_at", "updated_at", "paused_seconds", "wait_seconds",
                    "handling_minutes", "amount"})
INTEGERS = frozenset({"reopened", "fallout", "first_contact_resolved", "abandoned", "adjusted", "ebill",
                      "saved", "written_off"})
STICKY = ("reopened", "fallout")
_INDEXED = ("status", "created_at", "completed_at")
"""What the KPI engine's statements filter on (open items; creation and completion edges). Each
index costs every write of an event; `updated_at` is compared only through the primary key."""

_SIDE_TABLES = """
CREATE TABLE IF NOT EXISTS sync_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tmf_event (
    event_id TEXT PRIMARY KEY, event_type TEXT NOT NULL, resource_id TEXT NOT NULL,
    event_time REAL, received_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tmf_deleted (
    tbl TEXT NOT NULL, id TEXT NOT NULL, deleted_at REAL NOT NULL, received_at REAL NOT NULL,
    PRIMARY KEY (tbl, id));
CREATE TABLE IF NOT EXISTS kpi_value (name TEXT PRIMARY KEY, value REAL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS cost_entry (
    process TEXT NOT NULL, component TEXT NOT NULL, month TEXT NOT NULL, amount REAL NOT NULL,
    currency TEXT NOT NULL, month_start REAL NOT NULL, file TEXT NOT NULL,
    PRIMARY KEY (process, component, month));
"""


class Event(NamedTuple):
    """One received notification, reduced to what the store needs (a tuple: built per event, fast)."""

    event_id: str
    event_type: str
    table: str
    row: Row | None
    resource_id: str
    event_time: float | None
    delete: bool = False


class RecordStore:
    """One SQLite file with a records table per process of a source, plus sync bookkeeping."""

    def __init__(self, path: str | Path, tables: Iterable[str], *, synchronous: str = "NORMAL",
                 final_statuses: Mapping[str, Sequence[str]] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tables = tuple(dict.fromkeys(tables))
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(_SIDE_TABLES + "".join(_table_ddl(t) for t in self.tables))
        finals = final_statuses or {}
        self._plain = {t: _upsert_sql(t, tuple(finals.get(t, ()))) for t in self.tables}
        self._guarded = {t: _upsert_sql(t, tuple(finals.get(t, ())), guarded=True) for t in self.tables}
        self._tombstoned = _tombstoned(self._db)
        """Tables with deletion tombstones: only their upserts pay for the check (3 µs a row)."""

    @property
    def dsn(self) -> str:
        """The SQLAlchemy URL the KPI engine samples."""
        return f"sqlite+aiosqlite:///{self.path}"

    def close(self) -> None:
        self._db.close()

    def upsert(self, table: str, rows: Sequence[Row], meta: Mapping[str, str] | None = None) -> int:
        """Write rows (newer versions win) and bookkeeping in one transaction; return rows given."""
        with self._transaction() as db:
            db.executemany(self._upsert(table), [_params(r) for r in rows])
            self._put_meta(db, meta or {})
        return len(rows)

    def apply_events(self, events: Sequence[Event]) -> list[bool]:
        """Store events in one transaction; return for each whether it was new (not a duplicate)."""
        fresh = self.stage_events(events)
        self.commit()
        return fresh

    def stage_events(self, events: Sequence[Event]) -> list[bool]:
        """Write events in a transaction left open for `commit` (or `rollback`); return for each
        whether it was new. The listener stages on its event loop (CPU work) and commits in a
        thread (the fsync), so requests are parsed while the disk syncs.

        Without deletions the batch is written with one multi-row insert of the event ids and one
        `executemany` of rows per table, in arrival order (the upsert keeps the newest version
        whatever the order); with one, event by event.
        """
        now = time.time()
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if any(event.delete for event in events):
                return [self._apply_one(db, event, now) for event in events]
            inserted = self._insert_event_ids(db, events, now)
            fresh: list[bool] = []
            for event in events:
                fresh.append(event.event_id in inserted)
                inserted.discard(event.event_id)  # a repeat within the batch is a duplicate
            for table in dict.fromkeys(e.table for e in events if e.row is not None):
                db.executemany(self._upsert(table),
                               [_params(e.row) for e, new in zip(events, fresh, strict=True)
                                if new and e.row is not None and e.table == table])
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return fresh

    def commit(self) -> None:
        """Commit the transaction `stage_events` opened (durable per `synchronous`)."""
        self._db.execute("COMMIT")

    def rollback(self) -> None:
        """Undo a staged transaction, if one is open."""
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def last_received(self) -> float | None:
        """When the newest event id still remembered was received (None: no event)."""
        row = self._db.execute("SELECT MAX(received_at) FROM tmf_event").fetchone()
        return None if row[0] is None else float(row[0])

    def forget_events(self, before: float, limit: int = 10_000) -> int:
        """Delete event ids received before `before`, oldest first, looking at `limit` rows at most
        (bounded work whatever the table's size); return how many were deleted. Deletion tombstones
        received before `before` go too."""
        bound = self._db.execute("SELECT rowid FROM tmf_event ORDER BY rowid LIMIT 1 OFFSET ?",
                                 (limit - 1,)).fetchone()
        with self._transaction() as db:
            if bound is None:  # fewer than `limit` rows
                cursor = db.execute("DELETE FROM tmf_event WHERE received_at < ?", (before,))
            else:
                cursor = db.execute("DELETE FROM tmf_event WHERE rowid <= ? AND received_at < ?", (bound[0], before))
            db.execute("DELETE FROM tmf_deleted WHERE received_at < ?", (before,))  # deletions are rare: few rows
            self._tombstoned = _tombstoned(db)
        return int(cursor.rowcount)

    @staticmethod
    def _insert_event_ids(db: sqlite3.Connection, events: Sequence[Event], now: float) -> set[str]:
        """Insert the events not stored yet; return the ids that were inserted."""
        inserted: set[str] = set()
        for start in range(0, len(events), _CHUNK):
            chunk = events[start:start + _CHUNK]
            params = [v for e in chunk for v in (e.event_id, e.event_type, e.resource_id, e.event_time, now)]
            inserted.update(r[0] for r in db.execute(_insert_events_sql(len(chunk)), params))
        return inserted

    def _apply_one(self, db: sqlite3.Connection, event: Event, now: float) -> bool:
        cursor = db.execute(
            "INSERT OR IGNORE INTO tmf_event (event_id, event_type, resource_id, event_time, received_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (event.event_id, event.event_type, event.resource_id, event.event_time, now))
        if cursor.rowcount != 1:
            return False
        self._apply(db, event, now)
        return True

    def _apply(self, db: sqlite3.Connection, event: Event, now: float) -> None:
        if event.delete:
            # A tombstone, dated by the event: a change event older than the deletion that arrives
            # after it (a hub's retry) must not bring the resource back.
            deleted_at = event.event_time if event.event_time is not None else now
            db.execute(f'DELETE FROM "{event.table}" WHERE id = ? AND updated_at <= ?', (event.resource_id, deleted_at))
            db.execute("INSERT INTO tmf_deleted (tbl, id, deleted_at, received_at) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT (tbl, id) DO UPDATE SET deleted_at = MAX(deleted_at, excluded.deleted_at), "
                       "received_at = excluded.received_at", (event.table, event.resource_id, deleted_at, now))
            self._tombstoned.add(event.table)  # a rolled-back batch leaves it set: only a little slower
        elif event.row is not None:
            db.execute(self._upsert(event.table), _params(event.row))

    def _upsert(self, table: str) -> str:
        return self._guarded[table] if table in self._tombstoned else self._plain[table]

    def put_values(self, values: Mapping[str, float | None], now: float) -> None:
        """Replace named KPI values (table `kpi_value`)."""
        with self._transaction() as db:
            db.executemany("INSERT INTO kpi_value (name, value, updated_at) VALUES (?, ?, ?) ON CONFLICT(name) "
                           "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                           [(k, v, now) for k, v in values.items()])

    def replace_costs(self, rows: Sequence[tuple[str, str, str, float, str, float, str]]) -> None:
        """Replace every cost entry (process, component, month, amount, currency, month_start, file)
        in one transaction; of two rows for one process, component and month, the later wins."""
        with self._transaction() as db:
            db.execute("DELETE FROM cost_entry")
            db.executemany("INSERT OR REPLACE INTO cost_entry (process, component, month, amount, currency, "
                           "month_start, file) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM sync_meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, values: Mapping[str, str]) -> None:
        with self._transaction() as db:
            self._put_meta(db, values)

    def count(self, table: str) -> int:
        return int(self._db.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0])

    def ids_missing(self, table: str, seen: Set[str]) -> list[str]:
        """The ids of `table` that are not in `seen`, in id order."""
        cursor = self._db.execute(f'SELECT id FROM "{table}" ORDER BY id')
        return [ident for (ident,) in cursor if ident not in seen]

    def delete(self, table: str, ids: Sequence[str]) -> int:
        """Delete rows by id in one transaction; return how many there were."""
        with self._transaction() as db:
            cursor = db.executemany(f'DELETE FROM "{table}" WHERE id = ?', [(i,) for i in ids])
        return int(cursor.rowcount)

    def rows(self, table: str) -> list[Row]:
        """Return every row of a table, by id (for tests and `fabwatch check`)."""
        cursor = self._db.execute(f'SELECT {", ".join(NAMES)} FROM "{table}" ORDER BY id')
        return [dict(zip(NAMES, r, strict=True)) for r in cursor]

    @staticmethod
    def _put_meta(db: sqlite3.Connection, values: Mapping[str, str]) -> None:
        db.executemany("INSERT OR REPLACE INTO sync_meta (key, value) VALUES (?, ?)", list(values.items()))

    def _transaction(self) -> "_Tx":
        return _Tx(self._db)


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc is None else "ROLLBACK")


_CHUNK = 1000
"""Events per multi-row insert (5 parameters each, well under SQLite's 32,766)."""


@functools.lru_cache(maxsize=64)
def _insert_events_sql(rows: int) -> str:
    return ("INSERT INTO tmf_event (event_id, event_type, resource_id, event_time, received_at) VALUES "
            + ", ".join(["(?, ?, ?, ?, ?)"] * rows) + " ON CONFLICT (event_id) DO NOTHING RETURNING event_id")


def _table_ddl(table: str) -> str:
    columns = ", ".join(f"{n} {t}" + (f" DEFAULT {d}" if d is not None else "") for n, t, d in COLUMNS)
    indexes = "".join(f'CREATE INDEX IF NOT EXISTS "ix_{table}_{c}" ON "{table}" ({c});' for c in _INDEXED)
    return f'CREATE TABLE IF NOT EXISTS "{table}" ({columns});{indexes}'


def _tombstoned(db: sqlite3.Connection) -> set[str]:
    """The tables that have deletion tombstones."""
    return {r[0] for r in db.execute("SELECT DISTINCT tbl FROM tmf_deleted")}


def _upsert_sql(table: str, finals: tuple[str, ...], *, guarded: bool = False) -> str:
    """An upsert that keeps the newer version, sticky flags, and counts a move out of a final status;
    `guarded`, not over a deletion at least as recent (`tmf_deleted`; a re-created resource is newer)."""
    names = ", ".join(NAMES)
    marks = ", ".join(f"?{n}" for n in range(1, len(NAMES) + 1))
    updated = NAMES.index("updated_at") + 1
    plain = [f"{n} = excluded.{n}" for n in NAMES if n != "id" and n not in STICKY]
    reopen = "0"
    if finals:
        listed = ", ".join(json.dumps(s).replace('"', "'") for s in finals)
        reopen = f'CASE WHEN "{table}".status IN ({listed}) AND excluded.status NOT IN ({listed}) THEN 1 ELSE 0 END'
    sticky = [f'reopened = MAX(excluded.reopened, "{table}".reopened, {reopen})',
              f'fallout = MAX(excluded.fallout, "{table}".fallout)']
    deleted = f"SELECT 1 FROM tmf_deleted WHERE tbl = '{table}' AND id = ?1 AND deleted_at >= ?{updated}"
    rows = f"SELECT {marks} WHERE NOT EXISTS ({deleted})" if guarded else f"VALUES ({marks})"
    return (f'INSERT INTO "{table}" ({names}) {rows} '
            "ON CONFLICT(id) DO UPDATE SET "
            + ", ".join(plain + sticky) + f' WHERE excluded.updated_at >= "{table}".updated_at')


_NUMBERS = next(i for i, (_, _, default) in enumerate(COLUMNS) if default is not None)
"""Where the columns with a default of 0 start: they are the last ones, all of them."""
if any(default is None for _, _, default in COLUMNS[_NUMBERS:]):
    raise AssertionError("the columns with a default must come last")
_VALUES = operator.itemgetter(*NAMES)
_UNSET = (None,) * (len(NAMES) - _NUMBERS)
_ZEROS = (0,) * (len(NAMES) - _NUMBERS)


def _params(row: Row) -> tuple[Any, ...]:
    """The upsert's positional parameters (columns in `NAMES` order; a missing number is 0).

    Written for the two usual rows, in C: every number unset (a TMF resource without the
    extension) or every one set (the simulator's, a SQL copy); a mix is mended one by one.
    """
    try:
        values: tuple[Any, ...] = _VALUES(row)
    except KeyError:  # a row without some columns
        values = tuple(map(row.get, NAMES))
    numbers = values[_NUMBERS:]
    if numbers == _UNSET:
        return values[:_NUMBERS] + _ZEROS
    if None not in numbers:
        return values
    return values[:_NUMBERS] + tuple(0 if value is None else value for value in numbers)


def records_path(state_path: str | Path, source: str) -> Path:
    """Default record store of a source: `<state stem>-records-<source>.db` next to the state file."""
    state = Path(state_path)
    return state.with_name(f"{state.stem}-records-{source}.db")
