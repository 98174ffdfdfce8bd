"""Group commits of the record store: duplicates and order inside one batch, deletions."""

from __future__ import annotations

from pathlib import Path

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
