"""The record store on PostgreSQL: the same tables and rules as `store.RecordStore` (SQLite), in
a schema of its own per source, shared by every process that writes to it (replicas).

The rules are those of the SQLite store, written in SQL: events are kept by `eventId` (primary
key, `ON CONFLICT DO NOTHING RETURNING`), a row is replaced only by a version at least as recent
(`ON CONFLICT DO UPDATE ... WHERE`, which PostgreSQL evaluates on the row locked, newest committed
version), tombstones guard the upsert, partial events are merged or kept in `tmf_incomplete`.

Every write transaction first takes the next ingest sequence number by updating its row of
`sync_meta` (`INSERT ... ON CONFLICT DO UPDATE ... RETURNING`): the row stays locked until the
transaction ends, so two processes writing one store commit one after the other, in the order of
their numbers. A PostgreSQL sequence would hand out numbers without that order: a transaction
holding number 5 could commit after one holding 6, and the KPI engine, having read 6 as the last
number, would never look at the rows numbered 5 (`collector.engine.late.arrived_late`). Stores of
different sources are different schemas, different rows: they never wait for each other.
"""

import hashlib
import json
import threading
import time
from collections.abc import Iterable, Mapping, Sequence, Set
from typing import Any
from urllib.parse import quote

import psycopg

from collector.inventory.sources import COLUMNS, NAMES
from collector.sources.store import (
    COMPLETED,
    INGEST_SEQ,
    SEQ_COLUMNS,
    STICKY,
    Event,
    Row,
    _index_ddl,
    _newest_over,
    _params,
    is_complete,
    merge_partial,
)
from collector.storeurl import BOUNDED_WAITS

_TYPES = {"REAL": "FLOAT8", "INTEGER": "BIGINT"}
"""SQLite's column types as PostgreSQL's: REAL is 4 bytes there (epoch seconds need 8)."""
_SIDE_TABLES = """
CREATE TABLE IF NOT EXISTS sync_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tmf_event (
    event_id TEXT PRIMARY KEY, event_type TEXT NOT NULL, resource_id TEXT NOT NULL,
    event_time DOUBLE PRECISION, received_at DOUBLE PRECISION NOT NULL);
CREATE INDEX IF NOT EXISTS ix_tmf_event_received_at ON tmf_event (received_at);
CREATE TABLE IF NOT EXISTS tmf_deleted (
    tbl TEXT NOT NULL, id TEXT NOT NULL, deleted_at DOUBLE PRECISION NOT NULL,
    received_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (tbl, id));
CREATE TABLE IF NOT EXISTS tmf_incomplete (
    tbl TEXT NOT NULL, id TEXT NOT NULL, attrs TEXT NOT NULL, updated_at DOUBLE PRECISION,
    received_at DOUBLE PRECISION NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (tbl, id));
CREATE TABLE IF NOT EXISTS kpi_value (name TEXT PRIMARY KEY, value DOUBLE PRECISION,
    updated_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS cost_entry (
    process TEXT NOT NULL, component TEXT NOT NULL, month TEXT NOT NULL, amount DOUBLE PRECISION NOT NULL,
    currency TEXT NOT NULL, month_start DOUBLE PRECISION NOT NULL, file TEXT NOT NULL,
    PRIMARY KEY (process, component, month));
"""
_NEXT_SEQ = ("INSERT INTO sync_meta (key, value) VALUES ('ingest_seq', '1') ON CONFLICT (key) DO UPDATE "
             "SET value = (sync_meta.value::bigint + 1)::text RETURNING value::bigint")
_COUNT = ("INSERT INTO sync_meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE "
          "SET value = (sync_meta.value::bigint + excluded.value::bigint)::text")
_PUT_META = ("INSERT INTO sync_meta (key, value) VALUES (%s, %s) "
             "ON CONFLICT (key) DO UPDATE SET value = excluded.value")
_INSERT_EVENTS = ("INSERT INTO tmf_event (event_id, event_type, resource_id, event_time, received_at) "
                  "SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::float8[], %b::float8[]) "
                  "ON CONFLICT (event_id) DO NOTHING RETURNING event_id")
if INGEST_SEQ != "ingest_seq":
    raise AssertionError("_NEXT_SEQ names the ingest sequence's key")


def schema_of(source: str) -> str:
    """The schema of a source's record store: `records_<source>` (a long name shortened with a hash:
    PostgreSQL cuts identifiers at 63 bytes, which could make two sources share one)."""
    schema = f"records_{source}"
    if len(schema) <= 63:
        return schema
    return f"{schema[:54]}_{hashlib.sha256(source.encode()).hexdigest()[:8]}"


class PostgresRecordStore:
    """A source's record store in schema `schema` of a PostgreSQL database (`url`: a libpq URL)."""

    remote = True
    """Every statement is a round trip: the listener writes a batch in a thread, not on its loop."""

    def __init__(self, url: str, schema: str, tables: Iterable[str], *,
                 final_statuses: Mapping[str, Sequence[str]] | None = None) -> None:
        self.url = url
        self.schema = schema
        self.tables = tuple(dict.fromkeys(tables))
        self._lock = threading.RLock()
        """One statement at a time on the connection, and a staged transaction's until it ends."""
        self._db = self._connect()
        self._create()
        finals = final_statuses or {}
        self._finals = {t: tuple(finals.get(t, ())) for t in self.tables}
        # Always guarded by the tombstones, and a batch always looks for the incomplete resources
        # it completes: another process (a replica) may have written either since this one
        # started, so unlike the SQLite store's, no cache of which tables have some.
        self._guarded = {t: _upsert_sql(t, self._finals[t], guarded=True) for t in self.tables}
        self._bulk = {t: _upsert_sql(t, self._finals[t], guarded=True, bulk=True) for t in self.tables}

    @property
    def dsn(self) -> str:
        """The SQLAlchemy URL the KPI engine samples: asyncpg, as for any PostgreSQL source, with the
        schema as the search path (`collector.db.create_engine` sets it for the session)."""
        joiner = "&" if "?" in self.url else "?"
        return f"postgresql+asyncpg://{self.url.partition('://')[2]}{joiner}search_path={quote(self.schema)}"

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url, autocommit=True, options=f"-c search_path={self.schema}",
                               application_name="fabwatch", **BOUNDED_WAITS)

    def _conn(self) -> psycopg.Connection[Any]:
        """The connection, opened again when the last one broke (a server restart)."""
        if self._db.closed or self._db.broken:
            self._db.close()
            self._db = self._connect()
        return self._db

    def _create(self) -> None:
        """Create the schema and tables, under an advisory lock: replicas starting together would
        otherwise race on `CREATE ... IF NOT EXISTS` (a unique violation in the catalog)."""
        db = self._db
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"fabwatch records {self.schema}",))
            db.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            db.execute(_SIDE_TABLES)
            for table in self.tables:
                db.execute(_table_ddl(table))
                db.execute(_index_ddl(table))

    def close(self) -> None:
        self._db.close()

    def _transaction(self) -> "_Tx":
        return _Tx(self)

    def upsert(self, table: str, rows: Sequence[Row], meta: Mapping[str, str] | None = None) -> int:
        """Write rows (newer versions win) and bookkeeping in one transaction; return rows given."""
        with self._transaction() as db:
            if rows:
                seq = _next_seq(db)
                self._write_rows(db, table, rows, seq)
            _put_meta(db, meta or {})
        return len(rows)

    def apply_events(self, events: Sequence[Event]) -> list[bool]:
        """Store events in one transaction; return for each whether it was new (not a duplicate)."""
        fresh = self.stage_events(events)
        try:
            self.commit()
        except BaseException:
            self.rollback()
            raise
        return fresh

    def stage_events(self, events: Sequence[Event]) -> list[bool]:
        """Write events in a transaction left open for `commit` (or `rollback`); return for each
        whether it was new. As in the SQLite store: without deletions or partial events, one
        insert of the event ids and one pipelined `executemany` of rows per table; with one, event
        by event. The batch takes one ingest sequence number."""
        self._lock.acquire()
        now = time.time()
        try:
            db = self._conn()
            db.execute("BEGIN")
            seq = _next_seq(db)
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
                self._write_rows(db, table, written, seq)
                self._completed_by(db, table, written, seq)
        except BaseException:
            self.rollback()
            raise
        return fresh

    def commit(self) -> None:
        """Commit the transaction `stage_events` opened (durable: PostgreSQL's synchronous commit).
        A failed commit leaves the transaction to `rollback`, as with the SQLite store."""
        self._db.execute("COMMIT")
        self._lock.release()

    def rollback(self) -> None:
        """Undo a staged transaction, if one is open."""
        try:
            if not self._db.closed and self._db.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                self._db.execute("ROLLBACK")
        except psycopg.OperationalError:
            pass  # the connection broke: the server rolled back; `_conn` opens another
        finally:
            self._lock.release()

    def last_received(self) -> float | None:
        """When the newest event id still remembered was received (None: no event)."""
        with self._lock:
            row = self._conn().execute("SELECT MAX(received_at) FROM tmf_event").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def forget_events(self, before: float, limit: int = 10_000) -> int:
        """Delete up to `limit` event ids received before `before`, oldest first (bounded work);
        return how many were deleted. Deletion tombstones received before `before` go too."""
        with self._transaction() as db:
            cursor = db.execute("DELETE FROM tmf_event WHERE event_id IN (SELECT event_id FROM tmf_event "
                                "WHERE received_at < %s ORDER BY received_at LIMIT %s)", (before, limit))
            db.execute("DELETE FROM tmf_deleted WHERE received_at < %s", (before,))
        return int(cursor.rowcount)

    @staticmethod
    def _insert_event_ids(db: psycopg.Connection[Any], events: Sequence[Event], now: float) -> set[str]:
        """Insert the events not stored yet (one statement, arrays); return the ids inserted."""
        columns = ([e.event_id for e in events], [e.event_type for e in events], [e.resource_id for e in events],
                   [e.event_time for e in events], [now] * len(events))
        return {r[0] for r in db.execute(_INSERT_EVENTS, columns)}

    def _apply_one(self, db: psycopg.Connection[Any], event: Event, now: float, seq: int) -> bool:
        cursor = db.execute(
            "INSERT INTO tmf_event (event_id, event_type, resource_id, event_time, received_at) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING",
            (event.event_id, event.event_type, event.resource_id, event.event_time, now))
        if cursor.rowcount != 1:
            return False
        if event.delete:
            deleted_at = event.event_time if event.event_time is not None else now
            db.execute(f'DELETE FROM "{event.table}" WHERE id = %s AND updated_at <= %s',
                       (event.resource_id, deleted_at))
            db.execute("INSERT INTO tmf_deleted (tbl, id, deleted_at, received_at) VALUES (%s, %s, %s, %s) "
                       "ON CONFLICT (tbl, id) DO UPDATE SET deleted_at = GREATEST(tmf_deleted.deleted_at, "
                       "excluded.deleted_at), received_at = excluded.received_at",
                       (event.table, event.resource_id, deleted_at, now))
        elif event.partial and event.row is not None:
            self._merge(db, event.table, event.resource_id, event.row, now, seq)
        elif event.row is not None:
            db.execute(self._upsert(event.table), _row_params(event.row, seq))
            self._completed_by(db, event.table, [event.row], seq)
        return True

    def _merge(self, db: psycopg.Connection[Any], table: str, ident: str, part: Row, now: float, seq: int) -> None:
        """As `RecordStore._merge`; the stored row is read `FOR UPDATE` (another writer waits)."""
        if db.execute(
                "SELECT 1 FROM tmf_deleted WHERE tbl = %s AND id = %s AND deleted_at >= %s",
                (table, ident, part["updated_at"])).fetchone():
            return
        stored = db.execute(f'SELECT {", ".join(NAMES)} FROM "{table}" WHERE id = %s FOR UPDATE', (ident,)).fetchone()
        if stored is not None:
            merged = merge_partial(dict(zip(NAMES, stored, strict=True)), part, self._finals[table])
            db.execute(self._upsert(table), _row_params(merged, seq))
            return
        held = db.execute("SELECT attrs FROM tmf_incomplete WHERE tbl = %s AND id = %s FOR UPDATE",
                          (table, ident)).fetchone()
        attrs = part if held is None else _newest_over(json.loads(held[0]), part)
        if held is not None and is_complete(attrs):
            db.execute("DELETE FROM tmf_incomplete WHERE tbl = %s AND id = %s", (table, ident))
            row = merge_partial(dict.fromkeys(NAMES), {"id": ident, **attrs}, self._finals[table])
            db.execute(self._upsert(table), _row_params(row, seq))
            _count(db, "event", 1)
            return
        db.execute("INSERT INTO tmf_incomplete (tbl, id, attrs, updated_at, received_at) VALUES (%s, %s, %s, %s, %s) "
                   "ON CONFLICT (tbl, id) DO UPDATE SET attrs = excluded.attrs, updated_at = excluded.updated_at",
                   (table, ident, json.dumps(attrs), attrs.get("updated_at"), now))

    def _completed_by(self, db: psycopg.Connection[Any], table: str, rows: Sequence[Row], seq: int) -> None:
        """As `RecordStore._completed_by`."""
        if not rows:
            return
        latest = {row["id"]: row for row in rows}
        held = db.execute("DELETE FROM tmf_incomplete WHERE tbl = %s AND id = ANY(%s) RETURNING id, attrs",
                          (table, list(latest))).fetchall()
        for ident, attrs in held:
            part = json.loads(attrs)
            if (part.get("updated_at") or 0.0) > latest[ident]["updated_at"]:
                row = merge_partial(dict(latest[ident]), part, self._finals[table])
                db.execute(self._upsert(table), _row_params(row, seq))
        if held:
            _count(db, "event", len(held))

    def incomplete(self, limit: int) -> list[tuple[str, str]]:
        """Up to `limit` incomplete resources as (table, id): the least tried first, then the oldest."""
        with self._lock:
            return [(str(t), str(i)) for t, i in self._conn().execute(
                "SELECT tbl, id FROM tmf_incomplete ORDER BY attempts, received_at LIMIT %s", (limit,))]

    def complete(self, found: Mapping[tuple[str, str], Row], gone: Sequence[tuple[str, str]],
                 failed: Sequence[tuple[str, str]]) -> int:
        """As `RecordStore.complete`."""
        with self._transaction() as db:
            seq = _next_seq(db)
            done = 0
            for (table, ident), row in found.items():
                held = db.execute("DELETE FROM tmf_incomplete WHERE tbl = %s AND id = %s RETURNING attrs",
                                  (table, ident)).fetchone()
                if held is None:
                    continue
                part = json.loads(held[0])
                if (part.get("updated_at") or 0.0) > row["updated_at"]:
                    row = merge_partial(dict(row), part, self._finals[table])
                db.execute(self._upsert(table), _row_params(row, seq))
                done += 1
            cursor = db.cursor()
            cursor.executemany("DELETE FROM tmf_incomplete WHERE tbl = %s AND id = %s", gone)
            cursor.executemany("UPDATE tmf_incomplete SET attempts = attempts + 1 WHERE tbl = %s AND id = %s", failed)
            _count(db, "api", done)
            _count(db, "failed", len(gone))
        return done

    def incomplete_counts(self) -> tuple[int, dict[str, int]]:
        """How many resources are incomplete now, and how many left `tmf_incomplete`, by how (`COMPLETED`)."""
        keys = {f"records_completed_{how}": how for how in COMPLETED}
        counts = dict.fromkeys(COMPLETED, 0)
        with self._lock:
            db = self._conn()
            waiting = db.execute("SELECT COUNT(*) FROM tmf_incomplete").fetchone()
            for key, value in db.execute("SELECT key, value FROM sync_meta WHERE key = ANY(%s)", (list(keys),)):
                counts[keys[key]] = int(value)
        return int(waiting[0] if waiting else 0), counts

    def _upsert(self, table: str) -> str:
        return self._guarded[table]

    def _write_rows(self, db: psycopg.Connection[Any], table: str, rows: Sequence[Row], seq: int) -> None:
        """Upsert rows in order with one statement per round (arrays of columns, `unnest`): a
        multi-row upsert may not touch one row twice, so the n-th version of an id goes in round
        n; ids are independent, so only each id's own order matters (the sequence of versions a
        reopen is counted from)."""
        rounds: list[list[tuple[Any, ...]]] = []
        seen: dict[Any, int] = {}
        for row in rows:
            n = seen[row["id"]] = seen.get(row["id"], -1) + 1
            if n == len(rounds):
                rounds.append([])
            rounds[n].append(_row_params(row, seq))
        statement = self._bulk[table]
        for params in rounds:
            db.execute(statement, [_array(kind, column) for kind, column in zip(_KINDS, zip(*params, strict=True),
                                                                                strict=True)])

    def put_values(self, values: Mapping[str, float | None], now: float) -> None:
        """Replace named KPI values (table `kpi_value`)."""
        with self._transaction() as db:
            db.cursor().executemany(
                "INSERT INTO kpi_value (name, value, updated_at) VALUES (%s, %s, %s) ON CONFLICT (name) "
                "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                [(k, v, now) for k, v in values.items()])

    def replace_costs(self, rows: Sequence[tuple[str, str, str, float, str, float, str]]) -> None:
        """Replace every cost entry in one transaction; of two rows for one key, the later wins."""
        latest = {(r[0], r[1], r[2]): r for r in rows}
        with self._transaction() as db:
            db.execute("DELETE FROM cost_entry")
            db.cursor().executemany("INSERT INTO cost_entry (process, component, month, amount, currency, "
                                    "month_start, file) VALUES (%s, %s, %s, %s, %s, %s, %s)", list(latest.values()))

    def meta(self, key: str) -> str | None:
        with self._lock:
            row = self._conn().execute("SELECT value FROM sync_meta WHERE key = %s", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, values: Mapping[str, str]) -> None:
        with self._transaction() as db:
            _put_meta(db, values)

    def count(self, table: str) -> int:
        with self._lock:
            row = self._conn().execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()
        return int(row[0]) if row else 0

    def ids_missing(self, table: str, seen: Set[str]) -> list[str]:
        """The ids of `table` that are not in `seen`, in id order."""
        with self._lock:
            cursor = self._conn().execute(f'SELECT id FROM "{table}" ORDER BY id COLLATE "C"')
            return [ident for (ident,) in cursor if ident not in seen]

    def delete(self, table: str, ids: Sequence[str]) -> int:
        """Delete rows by id in one transaction; return how many there were."""
        with self._transaction() as db:
            cursor = db.execute(f'DELETE FROM "{table}" WHERE id = ANY(%s)', (list(ids),))
        return int(cursor.rowcount)

    def rows(self, table: str) -> list[Row]:
        """Return every row of a table, by id (for tests and `fabwatch check`)."""
        with self._lock:
            cursor = self._conn().execute(f'SELECT {", ".join(NAMES)} FROM "{table}" ORDER BY id COLLATE "C"')
            return [dict(zip(NAMES, r, strict=True)) for r in cursor]


class _Tx:
    """BEGIN ... COMMIT on the store's connection, under its lock; rolled back on any exception."""

    def __init__(self, store: PostgresRecordStore) -> None:
        self._store = store

    def __enter__(self) -> psycopg.Connection[Any]:
        self._store._lock.acquire()
        try:
            db = self._store._conn()
            db.execute("BEGIN")
        except BaseException:
            self._store._lock.release()
            raise
        return db

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        if exc is not None:
            self._store.rollback()
            return
        try:
            self._store._db.execute("COMMIT")
        except BaseException:
            self._store.rollback()
            raise
        self._store._lock.release()


def _next_seq(db: psycopg.Connection[Any]) -> int:
    """Take the next ingest sequence number; its row stays locked until the transaction ends."""
    row = db.execute(_NEXT_SEQ).fetchone()
    if row is None:
        raise AssertionError("INSERT ... RETURNING returned no row")
    return int(row[0])


def _put_meta(db: psycopg.Connection[Any], values: Mapping[str, str]) -> None:
    if values:
        db.cursor().executemany(_PUT_META, list(values.items()))


def _count(db: psycopg.Connection[Any], how: str, count: int) -> None:
    if count:
        db.execute(_COUNT, (f"records_completed_{how}", str(count)))


def _row_params(row: Row, seq: int) -> tuple[Any, ...]:
    """The upsert's parameters: the row's columns, its creation number, its completion number."""
    values = _params(row)
    return values + (seq, None if values[_COMPLETED] is None else seq)


_COMPLETED = NAMES.index("completed_at")
_KINDS = [_TYPES.get(t.split(" ")[0], t.split(" ")[0]) for _, t, _ in COLUMNS] + ["BIGINT", "BIGINT"]
"""Each upsert parameter's PostgreSQL type, in `_row_params` order."""


def _column_type(sqlite_type: str) -> str:
    kind, _, rest = sqlite_type.partition(" ")
    return f"{_TYPES.get(kind, kind)} {rest}".strip()


def _table_ddl(table: str) -> str:
    columns = ", ".join(f"{n} {_column_type(t)}" + (f" DEFAULT {d}" if d is not None else "") for n, t, d in COLUMNS)
    return (f'CREATE TABLE IF NOT EXISTS "{table}" ({columns}, fab_created_seq BIGINT NOT NULL DEFAULT 0, '
            "fab_completed_seq BIGINT)")


def _array(kind: str, values: tuple[Any, ...]) -> list[Any]:
    """A column's values as one array parameter of its type (a number given as an int in a float column too)."""
    if kind == "FLOAT8":
        return [None if v is None else float(v) for v in values]
    if kind == "BIGINT":
        return [None if v is None else int(v) for v in values]
    return list(values)


def _upsert_sql(table: str, finals: tuple[str, ...], *, guarded: bool = False, bulk: bool = False) -> str:
    """As `store._upsert_sql`, in PostgreSQL's SQL: the newer version wins (`WHERE` of `DO UPDATE`,
    evaluated on the locked row), sticky flags, a reopen counted; `guarded`, not over a deletion at
    least as recent."""
    columns = [*NAMES, *SEQ_COLUMNS]
    marks = ", ".join(f"%s::{kind}" for kind in _KINDS)
    plain = [f"{n} = excluded.{n}" for n in NAMES if n != "id" and n not in STICKY]
    reopen = "0"
    if finals:
        listed = ", ".join(json.dumps(s).replace('"', "'") for s in finals)
        reopen = f"CASE WHEN t.status IN ({listed}) AND excluded.status NOT IN ({listed}) THEN 1 ELSE 0 END"
    sticky = [f"reopened = GREATEST(excluded.reopened, t.reopened, {reopen})",
              "fallout = GREATEST(excluded.fallout, t.fallout)"]
    sequence = ["fab_completed_seq = CASE WHEN excluded.completed_at IS NULL THEN NULL WHEN excluded.completed_at "
                "IS NOT DISTINCT FROM t.completed_at THEN t.fab_completed_seq ELSE excluded.fab_completed_seq END"]
    names = ", ".join(columns)
    given = (f"unnest({', '.join(f'%b::{kind}[]' for kind in _KINDS)})" if bulk else f"(VALUES ({marks}))")
    if guarded:
        rows = (f"SELECT * FROM {given} AS v ({names}) WHERE NOT EXISTS (SELECT 1 FROM tmf_deleted d "
                f"WHERE d.tbl = '{table}' AND d.id = v.id AND d.deleted_at >= v.updated_at)")
    elif bulk:
        rows = f"SELECT * FROM {given} AS v ({names})"
    else:
        rows = f"VALUES ({marks})"
    return (f'INSERT INTO "{table}" AS t ({names}) {rows} ON CONFLICT (id) DO UPDATE SET '
            + ", ".join(plain + sticky + sequence) + " WHERE excluded.updated_at >= t.updated_at")
