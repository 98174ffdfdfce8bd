"""A planned work item (its whole life decided at arrival) and its record row at any time."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from simulator.profiles import PROFILES

Row = dict[str, Any]

# Column defaults of the records tables (see store.py); doubles are floats, flags are ints.
ROW_DEFAULTS: Row = {
    "completed_at": None,
    "due_at": None,
    "outcome": None,
    "priority": None,
    "channel": None,
    "segment": None,
    "paused_seconds": 0.0,
    "reopened": 0,
    "fallout": 0,
    "first_contact_resolved": 0,
    "abandoned": 0,
    "wait_seconds": 0.0,
    "adjusted": 0,
    "ebill": 0,
    "saved": 0,
    "written_off": 0,
    "handling_minutes": 0.0,
    "amount": 0.0,
}


@dataclass(slots=True)
class Plan:
    """Events (time, status) from creation on; `static` shows always, `final` once completed."""

    id: str
    process: str
    events: list[tuple[float, str]]
    static: Row
    final: Row

    @property
    def created(self) -> float:
        """Return the creation time."""
        return self.events[0][0]

    def next_event(self, now: float) -> float | None:
        """Return the time of the first event after now, or None when the plan is over."""
        for t, _ in self.events:
            if t > now:
                return t
        return None

    def to_json(self) -> str:
        """Serialise (floats round-trip exactly)."""
        return json.dumps([self.process, self.events, self.static, self.final])

    @classmethod
    def from_json(cls, ident: str, text: str) -> Plan:
        """Deserialise what to_json wrote."""
        process, events, static, final = json.loads(text)
        return cls(ident, process, [(float(t), str(s)) for t, s in events], static, final)


def row_at(plan: Plan, now: float) -> Row:
    """Return the record row of a plan as it stands at `now` (created <= now).

    Only events up to now count, and a pause counts once it has ended, so the row does not
    depend on when it is looked at between two events.
    """
    profile = PROFILES[plan.process]
    final, paused, fallout = profile.final_statuses, profile.paused_statuses, profile.fallout_statuses
    prev_t, prev_s = plan.events[0]
    completed: float | None = None
    pause = 0.0
    reopened = 0
    fell_out = int(prev_s in fallout)
    for t, status in plan.events[1:]:
        if t > now:
            break
        if prev_s in paused:
            pause += t - prev_t
        if status in final and prev_s not in final:
            completed = t
        elif status not in final and prev_s in final:
            completed, reopened = None, 1
        fell_out |= status in fallout
        prev_t, prev_s = t, status
    row = {**ROW_DEFAULTS, **plan.static}
    row.update(
        id=plan.id, created_at=plan.created, updated_at=prev_t, status=prev_s,
        paused_seconds=pause, reopened=reopened, fallout=int(fell_out),
    )  # fmt: skip
    if completed is not None:
        row.update(plan.final, completed_at=completed)
    return row
