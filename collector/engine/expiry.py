"""Expiry: dimension sets nothing happened in for a long time leave the exposition.

A dimension set (say `priority="urgent"`) that no item entered, left or stayed open in for
`service.series_expiry` (at least the process's longest KPI window) is dropped: its counters and
gauges leave `/metrics` instead of lingering at their last values, and its place under
`max_series_per_process` is free for a new value. Should it come back, its counters start again
from zero, as a new series.
"""

import json
from collections.abc import Iterable
from typing import Any

from collector.engine.sums import Groups

_KEYED = ("created", "completed")
"""Counters kept per group key (dimension values first)."""


def mark_seen(state: dict[str, Any], groups: Groups | Iterable[str], dims: int, at: float) -> None:
    """Note that the known dimension sets of `groups` (group keys, or dimension-set keys) saw activity at `at`."""
    seen = state.setdefault("seen", {})
    known = set(state.get("dimsets", []))  # past the cap, groups fold into `other`, which is not kept
    for key in groups:
        dimset = json.dumps(json.loads(key)[:dims])
        if dimset in known and seen.get(dimset, float("-inf")) < at:
            seen[dimset] = at


def expire_unseen(state: dict[str, Any], dims: int, now: float, after: float | None) -> list[str]:
    """Drop the dimension sets unseen for over `after` seconds (None: never); return them.

    A dimension set known from before this bookkeeping counts as seen now."""
    seen = state.setdefault("seen", {})
    known: list[str] = state.get("dimsets", [])
    for dimset in known:
        seen.setdefault(dimset, now)
    if after is None:
        return []
    gone = [d for d in known if now - seen[d] > after]
    if not gone:
        return []
    dropped = set(gone)
    state["dimsets"] = [d for d in known if d not in dropped]
    for dimset in gone:
        del seen[dimset]
    for name in _KEYED:
        counters = state.get(name, {})
        for key in [k for k in counters if json.dumps(json.loads(k)[:dims]) in dropped]:
            del counters[key]
    return gone
