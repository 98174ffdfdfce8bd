"""Group sums: the aggregates an edge statement returns per group, and how they are added up.

A group key is a JSON list of label values (dimensions, then the outcome of a completion); its sums
are named aggregates (`n`, `dur_sum`, `le_0`, `sla_good_<kpi>`, ...). Past `max_series` dimension
sets a process's new groups fold into the `other` set.
"""

import json
from collections.abc import Mapping, Sequence
from typing import Any

from collector.sql import Lookup, label

OTHER = "other"
"""Dimension value standing for every label set beyond the per-process cap."""

Sums = dict[str, float]
Groups = dict[str, Sums]
"""Aggregates per group key (a JSON list of label values)."""


def group_key(values: Any, lookups: Sequence[Lookup] = ()) -> str:
    """The JSON key of a group: its values as labels (through their lookups)."""
    return json.dumps([label(v, lookups[i] if i < len(lookups) else None) for i, v in enumerate(values)])


def add(into: Sums, sums: Mapping[str, float], sign: float = 1.0) -> None:
    """Add (or with sign -1 subtract) named sums into `into`."""
    for name, value in sums.items():
        into[name] = into.get(name, 0.0) + sign * value


def total(groups: Groups) -> Sums:
    """The sums of every group added together."""
    out: Sums = {}
    for sums in groups.values():
        add(out, sums)
    return out


def cap(key: str, known: list[str], dims: int, limit: int) -> str:
    """Map a group key to itself while the process has room for its dimension set (recording it in
    `known`), else to the overflow set."""
    values = json.loads(key)
    dimset = json.dumps(values[:dims])
    if dimset in known:
        return key
    if len(known) < limit:
        known.append(dimset)
        return key
    return json.dumps([OTHER] * dims + values[dims:])
