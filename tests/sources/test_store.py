"""The record store's ingest sequence, partial events merged, and resources kept until complete."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from collector.inventory.sources import COLUMNS
from collector.sources.pgstore import schema_of
from collector.sources.records import open_records
from collector.sources.store import Event, Records, RecordStore
from collector.storeurl import postgres_url

T0 = 1_767_225_600.0
TABLE = "trouble_ticket"
FINALS = {TABLE: ("resolved", "closed", "cancelled")}


@pytest.fixture
def store(store_location: str) -> Any:
    opened = open_records(store_location, "s", [TABLE], final_statuses=FINALS)
    yield opened
    opened.close()


def whole(event_id: str, ticket: str, status: str, updated: float, completed: float | None = None,
          **more: Any) -> Event:
    row = {"id": ticket, "created_at": T0, "updated_at": updated, "status": status, "completed_at": completed,
           "priority": "high", **more}
    return Event(event_id, "change", TABLE, row, ticket, updated)


def partial(event_id: str, ticket: str, updated: float, **attrs: Any) -> Event:
    return Event(event_id, "change", TABLE, {"id": ticket, "updated_at": updated, **attrs}, ticket, updated,
                 partial=True)


def seqs(store: Records, ticket: str) -> tuple[int, int | None] | None:
    mark = "?" if isinstance(store, RecordStore) else "%s"
    found = store._db.execute(  # type: ignore[attr-defined]
        f"SELECT fab_created_seq, fab_completed_seq FROM {TABLE} WHERE id = {mark}", (ticket,)).fetchone()
    return None if found is None else (found[0], found[1])


def last_seq(store: Records) -> int:
    return int(store.meta("ingest_seq") or 0)


def row(store: Records, ticket: str) -> dict[str, Any]:
    return next(r for r in store.rows(TABLE) if r["id"] == ticket)


def test_the_sequence_numbers_the_first_insert_and_each_new_completion(store: Records) -> None:
    store.apply_events([whole("e1", "T1", "acknowledged", T0 + 1)])
    first = last_seq(store)
    assert first >= 1
    assert seqs(store, "T1") == (first, None)
    store.apply_events([whole("e2", "T1", "inProgress", T0 + 2)])  # an update: no completion change
    assert last_seq(store) > first
    assert seqs(store, "T1") == (first, None)
    store.apply_events([whole("e3", "T1", "resolved", T0 + 3, completed=T0 + 3)])
    resolved = last_seq(store)
    assert seqs(store, "T1") == (first, resolved)
    store.apply_events([whole("e4", "T1", "closed", T0 + 4, completed=T0 + 3)])  # same completion date: kept
    assert seqs(store, "T1") == (first, resolved)
    store.apply_events([whole("e5", "T1", "inProgress", T0 + 5)])  # a reopen: no completion
    assert seqs(store, "T1") == (first, None)
    store.apply_events([whole("e6", "T1", "resolved", T0 + 6, completed=T0 + 6)])
    again = last_seq(store)
    assert again > resolved
    assert seqs(store, "T1") == (first, again)
    store.apply_events([whole("e7", "T1", "inProgress", T0 + 1)])  # an older version changes nothing
    assert seqs(store, "T1") == (first, again)
    store.apply_events([Event("d", "delete", TABLE, None, "T1", T0 + 7, delete=True)])
    assert seqs(store, "T1") is None
    store.apply_events([whole("e8", "T1", "acknowledged", T0 + 8)])  # created again: a new arrival
    assert seqs(store, "T1") == (last_seq(store), None)
    assert last_seq(store) > again


def test_polling_writes_take_numbers_from_the_same_sequence(store: Records) -> None:
    store.apply_events([whole("e1", "T1", "acknowledged", T0 + 1)])
    store.upsert(TABLE, [{"id": "T2", "created_at": T0, "updated_at": T0, "status": "resolved",
                          "completed_at": T0 + 9}], {"watermark": "1"})
    polled = last_seq(store)
    assert seqs(store, "T2") == (polled, polled)
    assert seqs(store, "T1")[0] < polled  # type: ignore[index]
    store.set_meta({"x": "y"})  # bookkeeping alone takes no number
    assert last_seq(store) == polled


def test_numbers_increase_strictly_across_commits_and_a_reader_sees_them_with_the_rows(
        store: Records, store_location: str) -> None:
    given = []
    for n in range(5):
        store.apply_events([whole(f"e{n}", f"T{n}", "acknowledged", T0)])
        given.append(last_seq(store))
    assert given == sorted(set(given))
    reader = _Reader(store_location)
    try:
        meta = int(reader.one("SELECT value FROM sync_meta WHERE key = 'ingest_seq'"))
        store.apply_events([whole("late", "T9", "acknowledged", T0)])  # committed while the reader reads
        newest = reader.one(f"SELECT MAX(fab_created_seq) FROM {TABLE}")
        assert newest == meta  # one snapshot: the number and the rows it numbers
    finally:
        reader.close()


class _Reader:
    """A read transaction on the store (one snapshot: SQLite's, or PostgreSQL's REPEATABLE READ)."""

    def __init__(self, location: str) -> None:
        self._pg = postgres_url(location)
        if self._pg is None:
            self._db: Any = sqlite3.connect(location)
            self._db.execute("BEGIN")
        else:
            import psycopg

            self._db = psycopg.connect(self._pg, options=f"-c search_path={schema_of('s')}")
            self._db.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")

    def one(self, sql: str) -> Any:
        return self._db.execute(sql).fetchone()[0]

    def close(self) -> None:
        self._db.rollback()
        self._db.close()


def test_an_older_store_gets_the_sequence_columns_and_its_rows_seq_0(tmp_path: Path) -> None:
    """A store written before the sequence: its rows arrived before it, so they are numbered 0."""
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    columns = ", ".join(f"{n} {t}" + (f" DEFAULT {d}" if d is not None else "") for n, t, d in COLUMNS)
    old.execute(f"CREATE TABLE {TABLE} ({columns})")
    old.execute(f"CREATE INDEX ix_{TABLE}_status ON {TABLE} (status)")
    old.execute(f"INSERT INTO {TABLE} (id, created_at, updated_at, status) VALUES ('OPEN', 1, 1, 'inProgress')")
    old.execute(f"INSERT INTO {TABLE} (id, created_at, completed_at, updated_at, status) "
                "VALUES ('DONE', 1, 2, 2, 'resolved')")
    old.commit()
    old.close()
    store = RecordStore(path, [TABLE], final_statuses=FINALS)
    try:
        assert seqs(store, "OPEN") == (0, None)
        assert seqs(store, "DONE") == (0, 0)
        indexes = {r[1] for r in store._db.execute(f"PRAGMA index_list({TABLE})")}
        assert {f"ix_{TABLE}_fab_created_seq", f"ix_{TABLE}_fab_completed_seq"} <= indexes
        store.apply_events([whole("e1", "OPEN", "resolved", T0, completed=T0)])
        assert seqs(store, "OPEN") == (0, last_seq(store))  # its arrival stays "before the sequence"
        store.close()
        store = RecordStore(path, [TABLE], final_statuses=FINALS)  # opened again: migrated once
        assert seqs(store, "DONE") == (0, 0)
    finally:
        store.close()


def test_a_partial_event_is_merged_into_the_stored_row(store: Records) -> None:
    store.apply_events([whole("e1", "T1", "inProgress", T0 + 10, channel="phone", handling_minutes=12)])
    created = seqs(store, "T1")[0]  # type: ignore[index]
    assert store.apply_events([partial("p1", "T1", T0 + 60, status="closed")]) == [True]
    merged = row(store, "T1")
    assert (merged["status"], merged["completed_at"], merged["updated_at"]) == ("closed", T0 + 60, T0 + 60)
    assert (merged["priority"], merged["channel"], merged["handling_minutes"], merged["created_at"]) == (
        "high", "phone", 12, T0)  # what the event did not say is kept
    assert seqs(store, "T1") == (created, last_seq(store))
    store.apply_events([partial("p0", "T1", T0 + 30, status="inProgress")])  # older than the row: refused
    assert row(store, "T1")["status"] == "closed"
    store.apply_events([partial("p2", "T1", T0 + 90, status="inProgress", priority="low")])
    reopened = row(store, "T1")
    assert (reopened["status"], reopened["completed_at"], reopened["reopened"], reopened["priority"]) == (
        "inProgress", None, 1, "low")
    store.apply_events([partial("p3", "T1", T0 + 95, fallout=0, reopened=0)])  # flags never go back to 0
    assert row(store, "T1")["reopened"] == 1
    store.apply_events([partial("p4", "T1", T0 + 99, status="resolved", completed_at=T0 + 97)])
    assert row(store, "T1")["completed_at"] == T0 + 97  # a completion date the event gives wins


def test_a_partial_event_about_an_unseen_resource_is_kept_until_an_event_completes_it(store: Records) -> None:
    assert store.apply_events([partial("p1", "T1", T0 + 60, status="closed")]) == [True]
    assert store.rows(TABLE) == []  # no creation date: it counts in nothing yet
    assert store.incomplete_counts() == (1, {"api": 0, "event": 0, "failed": 0})
    store.apply_events([partial("p2", "T1", T0 + 30, created_at=T0, status="inProgress", priority="low")])
    done = row(store, "T1")  # the older event gives the creation date; the newer one's status wins
    assert (done["status"], done["created_at"], done["completed_at"], done["priority"], done["updated_at"]) == (
        "closed", T0, T0 + 60, "low", T0 + 60)
    assert seqs(store, "T1") == (last_seq(store), last_seq(store))
    assert store.incomplete_counts() == (0, {"api": 0, "event": 1, "failed": 0})


def test_a_whole_event_completes_a_kept_resource_in_a_batch_a_newer_partial_merged_over_it(
        store: Records) -> None:
    store.apply_events([partial("p1", "T1", T0 + 60, status="closed"), partial("p2", "T2", T0 + 5, priority="low")])
    assert store.incomplete_counts()[0] == 2
    store.apply_events([whole("w1", "T1", "inProgress", T0 + 20), whole("w2", "T2", "inProgress", T0 + 20),
                        whole("w3", "T3", "acknowledged", T0)])
    assert (row(store, "T1")["status"], row(store, "T1")["completed_at"]) == ("closed", T0 + 60)  # newer partial
    assert (row(store, "T2")["status"], row(store, "T2")["priority"]) == ("inProgress", "high")  # older partial
    assert store.incomplete_counts() == (0, {"api": 0, "event": 2, "failed": 0})


def test_a_partial_event_older_than_a_deletion_is_not_kept(store: Records) -> None:
    store.apply_events([whole("e1", "T1", "inProgress", T0), Event("d", "delete", TABLE, None, "T1", T0 + 50,
                                                                    delete=True)])
    store.apply_events([partial("p1", "T1", T0 + 40, status="closed")])
    assert store.rows(TABLE) == []
    assert store.incomplete_counts()[0] == 0


def test_what_the_api_says_completes_kept_resources_or_gives_them_up(store: Records) -> None:
    store.apply_events([partial("p1", "T1", T0 + 60, status="closed"), partial("p2", "T2", T0 + 60, status="held"),
                        partial("p3", "T3", T0 + 60, status="held")])
    assert store.incomplete(10) == [(TABLE, "T1"), (TABLE, "T2"), (TABLE, "T3")]
    api_row = {"id": "T1", "created_at": T0, "updated_at": T0 + 30, "status": "inProgress", "priority": "low"}
    assert store.complete({(TABLE, "T1"): api_row}, [(TABLE, "T2")], [(TABLE, "T3")]) == 1
    done = row(store, "T1")
    assert (done["status"], done["priority"], done["completed_at"]) == ("closed", "low", T0 + 60)
    assert seqs(store, "T1") == (last_seq(store), last_seq(store))
    assert store.incomplete(10) == [(TABLE, "T3")]
    assert store.incomplete_counts() == (1, {"api": 1, "event": 0, "failed": 1})
    assert store.complete({(TABLE, "T1"): api_row}, [], []) == 0  # completed already: not twice
