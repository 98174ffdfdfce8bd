"""A dimension set nothing happened in for `series_expiry` leaves the exposition (issue 18)."""

import json
import logging
from pathlib import Path

import pytest

from collector.engine import SourceSampler
from collector.engine.expiry import expire_unseen, mark_seen
from collector.inventory.load import load_inventory
from collector.samples import SourceSample
from collector.state import StateStore
from tests.collector.test_late_rows import INVENTORY, T0, make_db

DAY = 86_400.0


def labels_of(sample: SourceSample, family: str) -> set[str]:
    return {dict(ls).get("priority", "") for f in sample.families if f.name == family for ls, _ in f.samples}


def engine(tmp_path: Path, expiry: float | None) -> SourceSampler:
    path = tmp_path / "inv.yaml"
    path.write_text(INVENTORY.format(db=tmp_path / "ops.db"))
    inventory = load_inventory([path])
    return SourceSampler("db", inventory.sources["db"], inventory.processes,  # type: ignore[arg-type]
                         StateStore(tmp_path / "state.db"), series_expiry=expiry)


async def test_a_priority_unused_for_longer_than_the_expiry_leaves_and_comes_back_from_zero(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = make_db(tmp_path / "ops.db")
    db.execute("INSERT INTO ticket VALUES ('u', ?, ?, ?, 'done', 'urgent', 5)", (T0 - 500, T0 - 400, T0 + 100))
    db.execute("INSERT INTO ticket VALUES ('h', ?, NULL, NULL, 'open', 'high', 0)", (T0 - 300,))
    sampler = engine(tmp_path, 3 * DAY)  # shorter than the longest KPI window (30 days): that rules
    try:
        first = await sampler.sample(T0)
        assert labels_of(first, "fab_items_created") == {"urgent", "high"}
        # 29 days on, nothing urgent: still there (an item may still count in a 30-day window)
        assert labels_of(await sampler.sample(T0 + 29 * DAY), "fab_items_created") == {"urgent", "high"}
        with caplog.at_level(logging.INFO, logger="collector.engine"):
            later = await sampler.sample(T0 + 31 * DAY)
        # `high` stayed open all along: seen at every sample, kept; `urgent` is gone everywhere
        assert labels_of(later, "fab_items_created") == {"high"}
        assert labels_of(later, "fab_items_completed") == set()
        assert labels_of(later, "fab_backlog_items") == {"high"}
        assert any(r.getMessage() == "series_expired" for r in caplog.records)
        db.execute("INSERT INTO ticket VALUES ('u2', ?, NULL, NULL, 'open', 'urgent', 0)", (T0 + 31 * DAY + 10,))
        back = await sampler.sample(T0 + 31 * DAY + 100)
        created = {dict(ls)["priority"]: v for f in back.families if f.name == "fab_items_created"
                   for ls, v in f.samples}
        assert created == {"high": 1.0, "urgent": 1.0}  # a new series, from zero
    finally:
        await sampler.close()
        db.close()


async def test_without_an_expiry_every_set_stays(tmp_path: Path) -> None:
    db = make_db(tmp_path / "ops.db")
    db.execute("INSERT INTO ticket VALUES ('u', ?, ?, ?, 'done', 'urgent', 5)", (T0 - 500, T0 - 400, T0 + 100))
    sampler = engine(tmp_path, None)
    try:
        await sampler.sample(T0)
        assert labels_of(await sampler.sample(T0 + 400 * DAY), "fab_items_created") == {"urgent"}
    finally:
        await sampler.close()
        db.close()


def test_a_state_from_before_the_bookkeeping_counts_its_sets_as_seen_now() -> None:
    state = {"dimsets": ['["a"]', '["b"]'], "created": {'["a"]': 3.0, '["b"]': 1.0}}
    assert expire_unseen(state, 1, 1000.0, 10.0) == []
    mark_seen(state, ['["a"]', '["zzz"]'], 1, 1005.0)  # a set over the cap (not known) is not kept
    assert state["seen"] == {'["a"]': 1005.0, '["b"]': 1000.0}
    assert expire_unseen(state, 1, 1012.0, 10.0) == ['["b"]']
    assert state["dimsets"] == ['["a"]']
    assert state["created"] == {'["a"]': 3.0}
    assert json.dumps(state["seen"]) == '{"[\\"a\\"]": 1005.0}'
