"""Group commits of the record store: duplicates and order inside one batch, deletions."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.sources import store as store_module
from collector.sources.store import Event, RecordStore

T0 = 1_767_225_600.0


def event(event_id: str, ticket: str, status: str, updated: float, *, delete: bool = False) -> Event:
    row = None if delete else {"id": ticket, "created_at": T0, "updated_at": updated, "status": status}
    return Event(event_id, "change", "trouble_ticket", row, ticket, updated, delete=delete)


def state(store: RecordStore) -> list[tuple[str, str, float, int]]:
    return [(r["id"], r["status"], r["updated_at"], r["reopened"]) for r in store.rows("trouble_ticket")]


def test_a_batch_stores_each_event_once_and_keeps_the_newest_version(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "s.db", ["trouble_ticket"], final_statuses={"trouble_ticket": ("resolved",)})
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
        count = store._db.execute("SELECT COUNT(*) FROM tmf_event").fetchone()[0]
        assert count == 7
    finally:
        store.close()


def test_a_change_older_than_a_deletion_does_not_bring_the_resource_back(tmp_path: Path) -> None:
    """Create at +10, delete at +30, then a hub's retry of the change at +20: the ticket stays
    deleted. A resource created again later (newer than the deletion) comes back."""
    store = RecordStore(tmp_path / "s.db", ["trouble_ticket"])
    try:
        store.apply_events([event("c", "T1", "acknowledged", T0 + 10), event("d", "T1", "", T0 + 30, delete=True)])
        assert store.apply_events([event("late", "T1", "inProgress", T0 + 20)]) == [True]  # stored: an event id
        assert state(store) == []
        store.close()
        store = RecordStore(tmp_path / "s.db", ["trouble_ticket"])  # a restart remembers the deletion
        store.apply_events([event("later", "T1", "pending", T0 + 29)])
        assert state(store) == []
        store.upsert("trouble_ticket", [{"id": "T1", "created_at": T0, "updated_at": T0 + 25, "status": "x"}])
        assert state(store) == []  # polling goes through the same rule
        store.apply_events([event("again", "T1", "acknowledged", T0 + 40)])
        assert state(store) == [("T1", "acknowledged", T0 + 40, 0)]
        store.apply_events([event("d-old", "T1", "", T0 + 35, delete=True)])  # a deletion older than the row
        assert state(store) == [("T1", "acknowledged", T0 + 40, 0)]
        assert store.forget_events(T0 + 10**9) >= 0
        assert store._db.execute("SELECT COUNT(*) FROM tmf_deleted").fetchone()[0] == 0  # pruned with the ids
    finally:
        store.close()


class _Clock:
    now = 1000.0

    @classmethod
    def time(cls) -> float:
        return cls.now


def test_old_event_ids_are_forgotten_oldest_first_a_bounded_batch_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "time", _Clock)  # received_at
    store = RecordStore(tmp_path / "s.db", ["trouble_ticket"])
    try:
        store.apply_events([event(f"e{n}", f"T{n}", "inProgress", T0) for n in range(1, 6)])  # at 1000
        _Clock.now = 2000.0
        store.apply_events([event(f"e{n}", f"T{n}", "inProgress", T0) for n in range(6, 9)])
        assert store.forget_events(before=1500.0, limit=3) == 3  # e1..e3: the first three rows
        assert store.forget_events(before=1500.0, limit=3) == 2  # e4, e5; e6 is too recent
        assert store.forget_events(before=1500.0, limit=3) == 0
        ids = [r[0] for r in store._db.execute("SELECT event_id FROM tmf_event ORDER BY event_id")]
        assert ids == ["e6", "e7", "e8"]
        # A forgotten id is new again; a remembered one is still a duplicate.
        assert store.apply_events([event("e1", "T1", "inProgress", T0), event("e6", "T6", "inProgress", T0)]) == [
            True, False]
    finally:
        store.close()


@pytest.mark.parametrize("shape", ["numbers unset", "numbers set", "a mix", "columns missing"])
def test_rows_are_stored_with_a_missing_number_as_zero_and_nothing_else_changed(tmp_path: Path, shape: str) -> None:
    """The upsert's parameters are built in C for the usual rows; every shape must store the same."""
    numbers = [name for name, _, default in store_module.COLUMNS if default is not None]
    row: dict[str, object] = dict.fromkeys(store_module.NAMES)
    row.update(id="TT-1", created_at=10.0, updated_at=20.0, status="acknowledged", priority="high", channel=None)
    if shape == "numbers set":
        row.update({name: index + 0.5 for index, name in enumerate(numbers)})
    elif shape == "a mix":
        row.update({name: index + 0.5 for index, name in enumerate(numbers) if index % 2})
    elif shape == "columns missing":
        row = {k: v for k, v in row.items() if k not in ("priority", "fallout", "amount", "completed_at")}
    store = RecordStore(tmp_path / "records.db", ["trouble_ticket"])
    store.upsert("trouble_ticket", [row])
    expected = {name: row.get(name) for name in store_module.NAMES}
    expected.update({name: row.get(name) if row.get(name) is not None else 0 for name in numbers})
    assert store.rows("trouble_ticket") == [expected]


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
