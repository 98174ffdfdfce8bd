"""Group commits of the record store: duplicates and order inside one batch, deletions."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from collector.sources import pgstore
from collector.sources import store as store_module
from collector.sources.records import open_records
from collector.sources.store import Event, Records, RecordStore
from tests.sources.conftest import postgres_store

T0 = 1_767_225_600.0


def event(event_id: str, ticket: str, status: str, updated: float, *, delete: bool = False) -> Event:
    row = None if delete else {"id": ticket, "created_at": T0, "updated_at": updated, "status": status}
    return Event(event_id, "change", "trouble_ticket", row, ticket, updated, delete=delete)


def state(store: Records) -> list[tuple[str, str, float, int]]:
    return [(r["id"], r["status"], r["updated_at"], r["reopened"]) for r in store.rows("trouble_ticket")]


def test_a_batch_stores_each_event_once_and_keeps_the_newest_version(store_location: str) -> None:
    store = open_records(store_location, "s", ["trouble_ticket"], final_statuses={"trouble_ticket": ("resolved",)})
    try:
        assert store.apply_events([event("e1", "T1", "inProgress", T0), event("e3", "T1", "resolved", T0 + 30),
                                   event("e1", "T1", "inProgress", T0), event("e2", "T1", "inProgress", T0 + 10),
                                   event("e4", "T2", "inProgress", T0)]) == [True, True, False, True, True]
        assert state(store) == [("T1", "resolved", T0 + 30, 0), ("T2", "inProgress", T0, 0)]
        assert store.apply_events([event("e3", "T1", "resolved", T0 + 30),
                                   event("e5", "T1", "inProgress", T0 + 60)]) == [False, True]
        assert state(store) == [("T1", "inProgress", T0 + 60, 1), ("T2", "inProgress", T0, 0)]
        assert store.apply_events([event("e6", "T2", "", T0 + 5, delete=True), event("e6", "T2", "", T0 + 5),
                                   event("e7", "T3", "inProgress", T0)]) == [True, False, True]
        assert [r[0] for r in state(store)] == ["T1", "T3"]
        count = store.count("tmf_event")
        assert count == 7
    finally:
        store.close()


def test_a_change_older_than_a_deletion_does_not_bring_the_resource_back(store_location: str) -> None:
    """Create at +10, delete at +30, then a hub's retry of the change at +20: the ticket stays
    deleted. A resource created again later (newer than the deletion) comes back."""
    store = open_records(store_location, "s", ["trouble_ticket"])
    try:
        store.apply_events([event("c", "T1", "acknowledged", T0 + 10), event("d", "T1", "", T0 + 30, delete=True)])
        assert store.apply_events([event("late", "T1", "inProgress", T0 + 20)]) == [True]  # stored: an event id
        assert state(store) == []
        store.close()
        store = open_records(store_location, "s", ["trouble_ticket"])  # a restart remembers the deletion
        store.apply_events([event("later", "T1", "pending", T0 + 29)])
        assert state(store) == []
        store.upsert("trouble_ticket", [{"id": "T1", "created_at": T0, "updated_at": T0 + 25, "status": "x"}])
        assert state(store) == []  # polling goes through the same rule
        store.apply_events([event("again", "T1", "acknowledged", T0 + 40)])
        assert state(store) == [("T1", "acknowledged", T0 + 40, 0)]
        store.apply_events([event("d-old", "T1", "", T0 + 35, delete=True)])  # a deletion older than the row
        assert state(store) == [("T1", "acknowledged", T0 + 40, 0)]
        assert store.forget_events(T0 + 10**9) >= 0
        assert store.count("tmf_deleted") == 0  # pruned with the ids
    finally:
        store.close()


class _Clock:
    now = 1000.0

    @classmethod
    def time(cls) -> float:
        return cls.now


def test_old_event_ids_are_forgotten_oldest_first_a_bounded_batch_at_a_time(
        store_location: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _Clock.now = 1000.0
    monkeypatch.setattr(store_module, "time", _Clock)  # received_at
    monkeypatch.setattr(pgstore, "time", _Clock)
    store = open_records(store_location, "s", ["trouble_ticket"])
    try:
        store.apply_events([event(f"e{n}", f"T{n}", "inProgress", T0) for n in range(1, 6)])  # at 1000
        _Clock.now = 2000.0
        store.apply_events([event(f"e{n}", f"T{n}", "inProgress", T0) for n in range(6, 9)])
        assert store.forget_events(before=1500.0, limit=3) == 3  # e1..e3: the first three rows
        assert store.forget_events(before=1500.0, limit=3) == 2  # e4, e5; e6 is too recent
        assert store.forget_events(before=1500.0, limit=3) == 0
        ids = [r[0] for r in store._db.execute("SELECT event_id FROM tmf_event ORDER BY event_id")]  # type: ignore[attr-defined]
        assert ids == ["e6", "e7", "e8"]
        # A forgotten id is new again; a remembered one is still a duplicate.
        assert store.apply_events([event("e1", "T1", "inProgress", T0), event("e6", "T6", "inProgress", T0)]) == [
            True, False]
    finally:
        store.close()


@pytest.mark.parametrize("shape", ["numbers unset", "numbers set", "a mix", "columns missing"])
def test_rows_are_stored_with_a_missing_number_as_zero_and_nothing_else_changed(store_location: str,
                                                                                shape: str) -> None:
    """The upsert's parameters are built in C for the usual rows; every shape must store the same."""
    numbers = [name for name, _, default in store_module.COLUMNS if default is not None]
    # a value of each column's type (PostgreSQL's columns are typed: 1.5 in an INTEGER would round)
    given = {name: index + (0.5 if name in store_module.FLOATS else 1) for index, name in enumerate(numbers)}
    row: dict[str, object] = dict.fromkeys(store_module.NAMES)
    row.update(id="TT-1", created_at=10.0, updated_at=20.0, status="acknowledged", priority="high", channel=None)
    if shape == "numbers set":
        row.update(given)
    elif shape == "a mix":
        row.update({name: value for index, (name, value) in enumerate(given.items()) if index % 2})
    elif shape == "columns missing":
        row = {k: v for k, v in row.items() if k not in ("priority", "fallout", "amount", "completed_at")}
    store = open_records(store_location, "s", ["trouble_ticket"])
    store.upsert("trouble_ticket", [row])
    expected = {name: row.get(name) for name in store_module.NAMES}
    expected.update({name: row.get(name) if row.get(name) is not None else 0 for name in numbers})
    assert store.rows("trouble_ticket") == [expected]
    store.close()


def test_a_store_sees_the_deletions_and_partial_events_another_process_wrote(tmp_path: Path) -> None:
    """Two connections on one store, as two workers of `serve --workers N`: what one knows of
    tombstones and incomplete resources must not be stale when the other wrote them."""
    finals = {"trouble_ticket": ("resolved",)}
    first = RecordStore(tmp_path / "s.db", ["trouble_ticket"], final_statuses=finals, shared=True)
    second = RecordStore(tmp_path / "s.db", ["trouble_ticket"], final_statuses=finals,
                         shared=True)  # opened before any write
    try:
        first.apply_events([event("c", "T1", "acknowledged", T0 + 10), event("d", "T1", "", T0 + 30, delete=True)])
        assert second.apply_events([event("late", "T1", "inProgress", T0 + 20)]) == [True]
        assert state(second) == [], "a change older than the other worker's deletion does not bring T1 back"
        partial = Event("p", "change", "trouble_ticket", {"status": "resolved", "updated_at": T0 + 50}, "T9",
                        T0 + 50, partial=True)
        first.apply_events([partial])  # about a resource not stored: kept aside
        second.apply_events([event("whole", "T9", "inProgress", T0 + 40)])
        assert [(r["id"], r["status"]) for r in second.rows("trouble_ticket")] == [("T9", "resolved")], \
            "the whole row completes what the other worker kept aside, the newer partial merged over it"
        assert second._db.execute("SELECT COUNT(*) FROM tmf_incomplete").fetchone()[0] == 0
    finally:
        first.close()
        second.close()


def test_two_writers_on_one_store_store_each_event_once_and_the_newest_version(store_location: str) -> None:
    """Two connections (two replicas) write the same events at once, in batches: each event id is
    acknowledged new by exactly one of them, and every ticket ends at its newest version."""
    finals = {"trouble_ticket": ("resolved",)}
    writers = [open_records(store_location, "s", ["trouble_ticket"], final_statuses=finals) for _ in range(2)]
    tickets, versions = 60, 5
    events = [event(f"T{t}-v{v}", f"T{t}", "resolved" if v == versions - 1 else "inProgress", T0 + v)
              for v in range(versions) for t in range(tickets)]
    orders = [events, events[::-1]]  # one writer sends the newest versions first
    fresh: list[list[bool]] = [[], []]

    def write(n: int) -> None:
        for start in range(0, len(events), 25):
            fresh[n] += writers[n].apply_events(orders[n][start:start + 25])

    try:
        threads = [threading.Thread(target=write, args=(n,)) for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        new = {e.event_id for e, is_new in zip(orders[0], fresh[0], strict=True) if is_new}
        also = {e.event_id for e, is_new in zip(orders[1], fresh[1], strict=True) if is_new}
        assert not new & also  # never new for both
        assert new | also == {e.event_id for e in events}
        assert state(writers[0]) == sorted((f"T{t}", "resolved", T0 + versions - 1, 0) for t in range(tickets))
    finally:
        for writer in writers:
            writer.close()


def test_a_writer_waits_for_the_other_and_takes_the_next_number(store_location: str) -> None:
    """The ingest numbers follow the commits, whoever writes: a second writer's transaction waits
    for the first's commit, then numbers its rows after them (the KPI engine reads "arrived since
    number n" and must never see a smaller number commit later)."""
    first, second = (open_records(store_location, "s", ["trouble_ticket"]) for _ in range(2))
    try:
        first.stage_events([event("a", "A", "inProgress", T0)])
        done = threading.Event()
        writer = threading.Thread(target=lambda: (second.apply_events([event("b", "B", "inProgress", T0)]),
                                                  done.set()))
        writer.start()
        assert not done.wait(0.5)  # waits for the first writer's commit
        first.commit()
        assert done.wait(30)
        writer.join()
        numbers = dict(first._db.execute(  # type: ignore[attr-defined]
            "SELECT id, fab_created_seq FROM trouble_ticket").fetchall())
        assert numbers["B"] == numbers["A"] + 1
    finally:
        first.close()
        second.close()


def test_a_reopen_within_one_batch_is_counted(store_location: str) -> None:
    """Versions of one ticket in one group commit are applied in order: resolved, then back in
    progress, is a reopen (the PostgreSQL store writes the n-th version of each id in a round n)."""
    store = open_records(store_location, "s", ["trouble_ticket"], final_statuses={"trouble_ticket": ("resolved",)})
    try:
        store.apply_events([event("a1", "A", "inProgress", T0), event("b1", "B", "inProgress", T0),
                            event("a2", "A", "resolved", T0 + 10), event("a3", "A", "inProgress", T0 + 20),
                            event("b2", "B", "resolved", T0 + 10)])
        assert state(store) == [("A", "inProgress", T0 + 20, 1), ("B", "resolved", T0 + 10, 0)]
    finally:
        store.close()


@pytest.mark.integration
def test_a_writer_sees_the_tombstones_and_kept_partials_another_process_wrote(postgres: Any) -> None:
    """Replicas: one store in PostgreSQL, written by two processes. The first opened it before the
    second wrote a deletion and a partial event; an older change must not bring the deleted ticket
    back, and a whole ticket must complete the kept partial, whoever writes them. (The SQLite store
    keeps per-process caches of both, which only its own writes update.)"""
    location = postgres_store(postgres)
    first, second = (open_records(location, "s", ["trouble_ticket"]) for _ in range(2))
    try:
        first.apply_events([event("c", "T1", "acknowledged", T0 + 10)])
        second.apply_events([event("d", "T1", "", T0 + 30, delete=True),
                             Event("p", "change", "trouble_ticket", {"id": "T2", "updated_at": T0 + 60,
                                                                       "status": "resolved"}, "T2", T0 + 60,
                                   partial=True)])
        first.apply_events([event("late", "T1", "inProgress", T0 + 20), event("w", "T2", "inProgress", T0 + 40)])
        assert state(first) == [("T2", "resolved", T0 + 60, 0)]
        assert first.incomplete_counts() == (0, {"api": 0, "event": 1, "failed": 0})
    finally:
        first.close()
        second.close()
