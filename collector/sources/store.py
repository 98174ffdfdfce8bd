"""The record store: an embedded SQLite file (WAL) holding the work items non-SQL sources sync.

Its records tables have the columns of the simulator's tables, so the KPI engine samples it as
an ordinary SQL source. A row is replaced only by a version at least as recent (`updated_at`),
which resolves out-of-order events; `reopened` and `fallout` never go back to 0, and a move out
of a final status is a reopen. Received events are kept by `eventId`, so a redelivered event is
acknowledged again but applied once. Writes happen on one connection, serialized by the caller.

A partial event (a change event with only what changed) is merged into the stored row; about a
resource not stored yet, it is kept in `tmf_incomplete` until the API or a later event completes
it. Every write transaction takes the next number of an ingest sequence (`sync_meta.ingest_seq`):
each row keeps the number of its first insert (`fab_created_seq`) and of its last completion
(`fab_completed_seq`), so the KPI engine can count what arrived since its last sample, whatever
the rows' own dates say.
"""

import functools
import json
import logging
import operator
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence, Set
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from collector.inventory.sources import COLUMNS, NAMES
from collector.logs import log_event
from collector.storeurl import postgres_url

Row = dict[str, Any]
_LOG = logging.getLogger("fabwatch.sources")

FLOATS = frozenset({"created_at", "completed_at", "due_at", "updated_at", "paused_seconds", "wait_seconds",
                    "handling_minutes", "amount"})
INTEGERS = frozenset({"reopened", "fallout", "first_contact_resolved", "abandoned", "adjusted", "ebill",
                      "saved", "written_off"})
STICKY = ("reopened", "fallout")
_INDEXED = ("status", "created_at", "completed_at", "fab_created_seq", "fab_completed_seq")
"""What the KPI engine's statements filter on (open items; creation and completion edges; what
arrived since a sample). Each index costs every write of an event; `updated_at` is compared only
through the primary key. The completion sequence's index is partial (NOT NULL): writes of open
items skip it, and the engine's range conditions on it imply NOT NULL, so SQLite still uses it."""
SEQ_COLUMNS = ("fab_created_seq", "fab_completed_seq")
"""The ingest sequence's columns, after `COLUMNS`: written by the upsert itself, never given by a row."""
INGEST_SEQ = "ingest_seq"
"""The `sync_meta` key of the last ingest sequence number given (written with the rows)."""
COMPLETED = ("api", "event", "failed")
"""How an incomplete resource left `tmf_incomplete`: completed from the API, by a later event, or
given up (the API answered 404)."""

_SIDE_TABLES = """
CREATE TABLE IF NOT EXISTS sync_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tmf_event (
    event_id TEXT PRIMARY KEY, event_type TEXT NOT NULL, resource_id TEXT NOT NULL,
    event_time REAL, received_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tmf_deleted (
    tbl TEXT NOT NULL, id TEXT NOT NULL, deleted_at REAL NOT NULL, received_at REAL NOT NULL,
    PRIMARY KEY (tbl, id));
CREATE TABLE IF NOT EXISTS tmf_incomplete (
    tbl TEXT NOT NULL, id TEXT NOT NULL, attrs TEXT NOT NULL, updated_at REAL, received_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (tbl, id));
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
    partial: bool = False
    """`row` holds only the columns the event gave (no creation date, or no status): merged."""


class Records(Protocol):
    """What the syncers, the listener and the samplers use of a record store, whichever it is:
    `RecordStore` (SQLite) or `pgstore.PostgresRecordStore` (the same tables and rules)."""

    tables: tuple[str, ...]
    remote: bool
    """Whether each statement is a round trip to a server (written in a thread, not on a loop)."""

    @property
    def dsn(self) -> str: ...
    def close(self) -> None: ...
    def upsert(self, table: str, rows: Sequence[Row], meta: Mapping[str, str] | None = None) -> int: ...
    def apply_events(self, events: Sequence[Event]) -> list[bool]: ...
    def stage_events(self, events: Sequence[Event]) -> list[bool]: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def last_received(self) -> float | None: ...
    def forget_events(self, before: float, limit: int = 10_000) -> int: ...
    def incomplete(self, limit: int) -> list[tuple[str, str]]: ...
    def complete(self, found: Mapping[tuple[str, str], Row], gone: Sequence[tuple[str, str]],
                 failed: Sequence[tuple[str, str]]) -> int: ...
    def incomplete_counts(self) -> tuple[int, dict[str, int]]: ...
    def put_values(self, values: Mapping[str, float | None], now: float) -> None: ...
    def replace_costs(self, rows: Sequence[tuple[str, str, str, float, str, float, str]]) -> None: ...
    def meta(self, key: str) -> str | None: ...
    def set_meta(self, values: Mapping[str, str]) -> None: ...
    def count(self, table: str) -> int: ...
    def ids_missing(self, table: str, seen: Set[str]) -> list[str]: ...
    def delete(self, table: str, ids: Sequence[str]) -> int: ...
    def rows(self, table: str) -> list[Row]: ...


class RecordStore:
    """One SQLite file with a records table per process of a source, plus sync bookkeeping."""

    remote = False

    def __init__(self, path: str | Path, tables: Iterable[str], *, synchronous: str = "NORMAL",
                 final_statuses: Mapping[str, Sequence[str]] | None = None, shared: bool = False) -> None:
        self.path = Path(path)
        self.shared = shared
        """Other processes write events into this store too (the workers of `serve --workers N`)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tables = tuple(dict.fromkeys(tables))
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(_SIDE_TABLES + "".join(_table_ddl(t) for t in self.tables))
        for table in self.tables:
            _migrate(self._db, table, self.path)
        self._db.executescript("".join(_index_ddl(t) for t in self.tables))
        finals = final_statuses or {}
        self._finals = {t: tuple(finals.get(t, ())) for t in self.tables}
        self._plain = {t: _upsert_sql(t, tuple(finals.get(t, ()))) for t in self.tables}
        self._guarded = {t: _upsert_sql(t, tuple(finals.get(t, ())), guarded=True) for t in self.tables}
        self._tombstoned = _tombstoned(self._db)
        """Tables with deletion tombstones: only their upserts pay for the check (3 µs a row)."""
        self._incomplete = _incomplete_tables(self._db)
        """Tables with incomplete resources: only their batches look for one the batch completes."""
        self._version = self._db.execute("PRAGMA data_version").fetchone()[0]
        """SQLite's count of commits by other connections as last seen, in a `shared` store: when it
        moves, another worker may have added tombstones or incomplete resources, and the two sets
        above are read again. (Alone, only this connection writes tombstones, and a stale set of
        incomplete tables costs a lookup, not a wrong row.)"""

    @property
    def dsn(self) -> str:
        """The SQLAlchemy URL the KPI engine samples."""
        return f"sqlite+aiosqlite:///{self.path}"

    def close(self) -> None:
        self._db.close()

    def upsert(self, table: str, rows: Sequence[Row], meta: Mapping[str, str] | None = None) -> int:
        """Write rows (newer versions win) and bookkeeping in one transaction; return rows given."""
        with self._transaction() as db:
            if rows:
                seq = next_seq(db)
                db.executemany(self._upsert(table), [_params(r) + (seq,) for r in rows])
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

        Without deletions or partial events the batch is written with one multi-row insert of the
        event ids and one `executemany` of rows per table, in arrival order (the upsert keeps the
        newest version whatever the order); with one, event by event (a merge reads the row the
        events before it wrote). The batch takes one ingest sequence number.
        """
        now = time.time()
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if self.shared:
                self._others_wrote(db)
            seq = next_seq(db)
            if any(event.delete or event.partial for event in events):
                return [self._apply_one(db, event, now, seq) for event in events]
            inserted = self._insert_event_ids(db, events, now)
            fresh: list[bool] = []
            for event in events:
                fresh.append(event.event_id in inserted)
                inserted.discard(event.event_id)  # a repeat within the batch is a duplicate
            for table in dict.fromkeys(e.table for e in events if e.row is not None):
                written = [e.row for e, new in zip(events, fresh, strict=True)
                           if new and e.row is not None and e.table == table]
                db.executemany(self._upsert(table), [_params(row) + (seq,) for row in written])
                if table in self._incomplete:
                    self._completed_by(db, table, written, seq)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return fresh

    def _others_wrote(self, db: sqlite3.Connection) -> None:
        """Read which tables have tombstones and incomplete resources again, in the write transaction,
        when another connection committed since this one last looked (one pragma a batch otherwise)."""
        version = db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._version:
            self._version = version
            self._tombstoned = {t for t in self.tables if db.execute(
                "SELECT 1 FROM tmf_deleted WHERE tbl = ? LIMIT 1", (t,)).fetchone()}
            self._incomplete = {t for t in self.tables if db.execute(
                "SELECT 1 FROM tmf_incomplete WHERE tbl = ? LIMIT 1", (t,)).fetchone()}

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

    def _apply_one(self, db: sqlite3.Connection, event: Event, now: float, seq: int) -> bool:
        cursor = db.execute(
            "INSERT OR IGNORE INTO tmf_event (event_id, event_type, resource_id, event_time, received_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (event.event_id, event.event_type, event.resource_id, event.event_time, now))
        if cursor.rowcount != 1:
            return False
        self._apply(db, event, now, seq)
        return True

    def _apply(self, db: sqlite3.Connection, event: Event, now: float, seq: int) -> None:
        if event.delete:
            # A tombstone, dated by the event: a change event older than the deletion that arrives
            # after it (a hub's retry) must not bring the resource back.
            deleted_at = event.event_time if event.event_time is not None else now
            db.execute(f'DELETE FROM "{event.table}" WHERE id = ? AND updated_at <= ?', (event.resource_id, deleted_at))
            db.execute("INSERT INTO tmf_deleted (tbl, id, deleted_at, received_at) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT (tbl, id) DO UPDATE SET deleted_at = MAX(deleted_at, excluded.deleted_at), "
                       "received_at = excluded.received_at", (event.table, event.resource_id, deleted_at, now))
            self._tombstoned.add(event.table)  # a rolled-back batch leaves it set: only a little slower
        elif event.partial and event.row is not None:
            self._merge(db, event.table, event.resource_id, event.row, now, seq)
        elif event.row is not None:
            db.execute(self._upsert(event.table), _params(event.row) + (seq,))
            if event.table in self._incomplete:
                self._completed_by(db, event.table, [event.row], seq)

    def _merge(self, db: sqlite3.Connection, table: str, ident: str, part: Row, now: float, seq: int) -> None:
        """Merge a partial event into the stored row; about a resource not stored, keep it in
        `tmf_incomplete` (merged with what is kept already) until it is complete."""
        if table in self._tombstoned and db.execute(
                "SELECT 1 FROM tmf_deleted WHERE tbl = ? AND id = ? AND deleted_at >= ?",
                (table, ident, part["updated_at"])).fetchone():
            return  # about a resource deleted since: as the guarded upsert does for a whole one
        stored = db.execute(f'SELECT {", ".join(NAMES)} FROM "{table}" WHERE id = ?', (ident,)).fetchone()
        if stored is not None:
            merged = merge_partial(dict(zip(NAMES, stored, strict=True)), part, self._finals[table])
            db.execute(self._upsert(table), _params(merged) + (seq,))
            return
        held = db.execute("SELECT attrs FROM tmf_incomplete WHERE tbl = ? AND id = ?", (table, ident)).fetchone()
        attrs = part if held is None else _newest_over(json.loads(held[0]), part)
        if held is not None and is_complete(attrs):
            db.execute("DELETE FROM tmf_incomplete WHERE tbl = ? AND id = ?", (table, ident))
            row = merge_partial(dict.fromkeys(NAMES), {"id": ident, **attrs}, self._finals[table])
            db.execute(self._upsert(table), _params(row) + (seq,))
            _count(db, "event", 1)
            return
        db.execute("INSERT INTO tmf_incomplete (tbl, id, attrs, updated_at, received_at) VALUES (?, ?, ?, ?, ?) "
                   "ON CONFLICT (tbl, id) DO UPDATE SET attrs = excluded.attrs, updated_at = excluded.updated_at",
                   (table, ident, json.dumps(attrs), attrs.get("updated_at"), now))
        self._incomplete.add(table)  # a rolled-back batch leaves it set: only a little slower

    def _completed_by(self, db: sqlite3.Connection, table: str, rows: Sequence[Row], seq: int) -> None:
        """Complete the incomplete resources that whole rows just written are about: what a kept
        partial event says more recently than the row is merged over it."""
        latest = {row["id"]: row for row in rows}
        ids = list(latest)
        held: list[tuple[str, str]] = []
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            held += db.execute(f"DELETE FROM tmf_incomplete WHERE tbl = ? AND id IN ({', '.join('?' * len(chunk))}) "
                               "RETURNING id, attrs", (table, *chunk)).fetchall()
        for ident, attrs in held:
            part = json.loads(attrs)
            if (part.get("updated_at") or 0.0) > latest[ident]["updated_at"]:
                row = merge_partial(dict(latest[ident]), part, self._finals[table])
                db.execute(self._upsert(table), _params(row) + (seq,))
        if held:
            _count(db, "event", len(held))

    def incomplete(self, limit: int) -> list[tuple[str, str]]:
        """Up to `limit` incomplete resources as (table, id): the least tried first, then the oldest."""
        return [(str(t), str(i)) for t, i in self._db.execute(
            "SELECT tbl, id FROM tmf_incomplete ORDER BY attempts, received_at LIMIT ?", (limit,))]

    def complete(self, found: Mapping[tuple[str, str], Row], gone: Sequence[tuple[str, str]],
                 failed: Sequence[tuple[str, str]]) -> int:
        """Record what the API said of incomplete resources in one transaction: `found` (whole rows,
        merged under a kept partial event that is newer), `gone` (404: given up), `failed` (tried
        again later); return how many were completed (an event may have completed one meanwhile)."""
        with self._transaction() as db:
            seq = next_seq(db)
            done = 0
            for (table, ident), row in found.items():
                held = db.execute("DELETE FROM tmf_incomplete WHERE tbl = ? AND id = ? RETURNING attrs",
                                  (table, ident)).fetchone()
                if held is None:
                    continue
                part = json.loads(held[0])
                if (part.get("updated_at") or 0.0) > row["updated_at"]:
                    row = merge_partial(dict(row), part, self._finals[table])
                db.execute(self._upsert(table), _params(row) + (seq,))
                done += 1
            db.executemany("DELETE FROM tmf_incomplete WHERE tbl = ? AND id = ?", gone)
            db.executemany("UPDATE tmf_incomplete SET attempts = attempts + 1 WHERE tbl = ? AND id = ?", failed)
            _count(db, "api", done)
            _count(db, "failed", len(gone))
        return done

    def incomplete_counts(self) -> tuple[int, dict[str, int]]:
        """How many resources are incomplete now, and how many left `tmf_incomplete`, by how (`COMPLETED`)."""
        waiting = int(self._db.execute("SELECT COUNT(*) FROM tmf_incomplete").fetchone()[0])
        keys = {f"records_completed_{how}": how for how in COMPLETED}
        counts = dict.fromkeys(COMPLETED, 0)
        for key, value in self._db.execute(
                f"SELECT key, value FROM sync_meta WHERE key IN ({', '.join('?' * len(keys))})", tuple(keys)):
            counts[keys[key]] = int(value)
        return waiting, counts

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
    return f'CREATE TABLE IF NOT EXISTS "{table}" ({columns}, {_SEQ_DDL[0]}, {_SEQ_DDL[1]});'


_SEQ_DDL = ("fab_created_seq INTEGER NOT NULL DEFAULT 0", "fab_completed_seq INTEGER")
"""0: the row was there before the sequence existed (a migrated store); the engine counts it as old."""


def _index_ddl(table: str) -> str:
    """The indexes of a records table (after a migration added the sequence columns)."""
    return "".join(f'CREATE INDEX IF NOT EXISTS "ix_{table}_{c}" ON "{table}" ({c})'
                   + (f" WHERE {c} IS NOT NULL" if c == "fab_completed_seq" else "") + ";" for c in _INDEXED)


def _migrate(db: sqlite3.Connection, table: str, path: Path) -> None:
    """Add the ingest sequence's columns to a records table of an older store: its rows get 0
    ("arrived before the sequence existed"), a completed one a completion number of 0 as well."""
    if "fab_created_seq" in {r[1] for r in db.execute(f'PRAGMA table_info("{table}")')}:
        return
    with _Tx(db):
        for ddl in _SEQ_DDL:
            db.execute(f'ALTER TABLE "{table}" ADD COLUMN {ddl}')
        db.execute(f'UPDATE "{table}" SET fab_completed_seq = 0 WHERE completed_at IS NOT NULL')
    log_event(_LOG, "record_store_migrated", store=str(path), table=table, added=",".join(SEQ_COLUMNS))


def next_seq(db: sqlite3.Connection) -> int:
    """Take the next ingest sequence number, in the caller's write transaction: it is read there
    (not kept in memory), so numbers increase strictly across commits whoever writes."""
    row = db.execute("SELECT value FROM sync_meta WHERE key = ?", (INGEST_SEQ,)).fetchone()
    seq = (0 if row is None else int(row[0])) + 1
    db.execute("INSERT OR REPLACE INTO sync_meta (key, value) VALUES (?, ?)", (INGEST_SEQ, str(seq)))
    return seq


def _count(db: sqlite3.Connection, how: str, count: int) -> None:
    """Add to the count of incomplete resources completed `how` (kept in `sync_meta`: it survives restarts)."""
    if count:
        db.execute("INSERT INTO sync_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                   "value = CAST(value AS INTEGER) + CAST(excluded.value AS INTEGER)",
                   (f"records_completed_{how}", str(count)))


def _incomplete_tables(db: sqlite3.Connection) -> set[str]:
    """The tables that have incomplete resources."""
    return {r[0] for r in db.execute("SELECT DISTINCT tbl FROM tmf_incomplete")}


def is_complete(attrs: Mapping[str, Any]) -> bool:
    """Whether merged partial attributes make a work item: a creation date, a version and a status."""
    return all(attrs.get(name) not in (None, "") for name in ("created_at", "updated_at", "status"))


def merge_partial(base: Row, part: Mapping[str, Any], finals: Sequence[str]) -> Row:
    """The row `base` with what a partial event gives replacing its values. A status that becomes
    final without a completion date completes the item at the event's version date; one that leaves
    a final status reopens it (no completion date, the upsert counts the reopen)."""
    row = {**base, **part}
    if "status" in part and "completed_at" not in part:
        was, now = base.get("status") in finals, row["status"] in finals
        if now and (not was or row.get("completed_at") is None):
            row["completed_at"] = row["updated_at"]
        elif was and not now:
            row["completed_at"] = None
    return row


def _newest_over(older: Mapping[str, Any], newer: Mapping[str, Any]) -> Row:
    """Two partial events' attributes merged, the more recent version's winning."""
    if (newer.get("updated_at") or 0.0) < (older.get("updated_at") or 0.0):
        older, newer = newer, older
    return {**older, **newer}


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
    # The ingest sequence: the number (the last parameter) of the first insert is kept; that of
    # the completion is renewed when completed_at changes to another non-NULL value.
    seq = len(NAMES) + 1
    completed = NAMES.index("completed_at") + 1
    marks += f", ?{seq}, CASE WHEN ?{completed} IS NULL THEN NULL ELSE ?{seq} END"
    sequence = [f'fab_completed_seq = CASE WHEN excluded.completed_at IS NULL THEN NULL WHEN excluded.completed_at '
                f'IS "{table}".completed_at THEN "{table}".fab_completed_seq ELSE excluded.fab_completed_seq END']
    deleted = f"SELECT 1 FROM tmf_deleted WHERE tbl = '{table}' AND id = ?1 AND deleted_at >= ?{updated}"
    rows = f"SELECT {marks} WHERE NOT EXISTS ({deleted})" if guarded else f"VALUES ({marks})"
    return (f'INSERT INTO "{table}" ({names}, {", ".join(SEQ_COLUMNS)}) {rows} '
            "ON CONFLICT(id) DO UPDATE SET "
            + ", ".join(plain + sticky + sequence) + f' WHERE excluded.updated_at >= "{table}".updated_at')


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


def records_path(state_path: str | Path, source: str) -> str | Path:
    """Default record store of a source: `<state stem>-records-<source>.db` next to the state file;
    with the state in PostgreSQL, the same database (the source's schema there)."""
    if postgres_url(str(state_path)) is not None:
        return str(state_path)
    state = Path(state_path)
    return state.with_name(f"{state.stem}-records-{source}.db")
