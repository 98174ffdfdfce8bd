"""Typed decoding of TMF events: the common shape is checked and picked out in C.

msgspec decodes an event body straight into structs that hold only the attributes a work item
needs, typed (a string, a number, an object, a list of objects), so the attributes nobody reads
are skipped instead of built into dicts, and a value of another type stops the decoding. What
decodes is mapped to the row `event_row` gives (a whole row, or a partial one), with the same rules; anything unusual (a
value of another type, an empty one, a date-time that does not parse, malformed JSON) makes
`event` return None, and the listener takes the general path, which gives the same row or the
error. A test checks that both paths agree on every event shape it generates.
"""

import time
from typing import Any

import msgspec

from collector.inventory.sources import NAMES
from collector.sources.store import FLOATS, INTEGERS, Event, Row
from collector.sources.times import maybe_time, parse_time
from collector.sources.tmf import (
    EXTENSION,
    TIMES,
    MappingError,
    Path,
    Plan,
    TmfApi,
    fill_from_extension,
    plan,
    reopened_in,
    version_of,
)

_UNUSUAL = (msgspec.DecodeError, RecursionError, MappingError, ValueError)
"""What sends an event to the general path: it refuses the event with the right code and text."""
_EVENTTIMES = ("eventTime", "timeOccurred", "timeOcurred")
Tree = dict[str | int, Any]
"""A path tree: a key leads to a subtree, or to the column its value fills (a leaf)."""


class _Change(msgspec.Struct):
    """One item of a status history; values of any type, as the general path reads them."""

    status: Any = None
    changeDate: Any = None
    statusChangeDate: Any = None


class TypedEvents:
    """Decodes and maps the create and change events of one API and version; None when unusual."""

    def __init__(self, api: TmfApi, version: int, table: str) -> None:
        self.api, self.table = api, table
        self.plan = plan(api, version)
        self.history = api.history.get(version)
        resource = _resource_type(api, version, self.plan, self.history)
        payload = msgspec.defstruct(f"{api.type_name}Payload", [(api.resource, resource | None, None)])
        envelope = msgspec.defstruct(f"{api.type_name}Event", [
            ("eventId", str | None, None), ("eventType", str | None, None),
            *((key, str | None, None) for key in _EVENTTIMES), ("event", payload | None, None)])
        self.decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(envelope)

    def event(self, name: str, raw: bytes | bytearray) -> Event | None:
        """The event of a create or change body, or None: take the general path."""
        try:
            body = self.decoder.decode(raw)
        except _UNUSUAL:
            return None
        declared, event_id, payload = body.eventType, body.eventId, body.event
        if (declared is not None and declared.lower() != name.lower()) or not event_id or payload is None:
            return None
        resource = getattr(payload, self.api.resource)
        if resource is None or not resource.id:
            return None
        try:
            when = maybe_time(body.eventTime or body.timeOccurred or body.timeOcurred)
            mapped = self.row(resource, when if when is not None else time.time())
        except _UNUSUAL:
            return None
        if mapped is None:
            return None
        row, partial = mapped
        return Event(event_id, name, self.table, row, resource.id, when, False, partial)  # positional: faster

    def row(self, resource: Any, observed: float) -> tuple[Row, bool] | None:
        """The row of a decoded resource and whether it is partial, as `event_row` maps it; None
        when it has no id, version or an empty status (the general path says which)."""
        api = self.api
        row: Row = dict.fromkeys(NAMES)
        row["id"] = resource.id
        for name, key, path in self.plan:
            value = getattr(resource, key) if key is not None else _dig(resource, path)
            if value is not None:  # a string when it is a time: "" is no time, as `maybe_time` has it
                row[name] = (parse_time(value) if value else None) if name in TIMES else value
        extension = getattr(resource, EXTENSION)
        if extension:
            fill_from_extension(api, row, extension)
        if row["updated_at"] is None:
            row["updated_at"] = version_of(api, lambda key: getattr(resource, key), observed)
        if row["status"] in api.fallout:
            row["fallout"] = 1
        if self.history is not None and (history := getattr(resource, self.history)) is not None:
            changes = [(when, change.status) for change in history
                       if (when := change.changeDate or change.statusChangeDate)]
            if reopened_in(api, changes):
                row["reopened"] = 1
        if row["updated_at"] is None or row["status"] == "":
            return None
        if row["created_at"] is None or row["status"] is None:
            return {name: value for name, value in row.items() if value is not None}, True
        return row, False


def _dig(node: Any, path: Path) -> Any:
    """Follow a path through decoded structs and lists; None where it leads nowhere."""
    for step in path:
        node = (node[step] if len(node) > step else None) if isinstance(step, int) else getattr(node, step)
        if node is None:
            return None
    return node


def _resource_type(api: TmfApi, version: int, columns: Plan, history: str | None) -> type[msgspec.Struct]:
    """The struct of a resource: its id, the attributes of the plan, the version's fallbacks, the
    extension and the status history."""
    tree: Tree = {}
    for name, _, path in columns:
        _add(tree, path, name)
    for key in ("lastUpdate", *api.change_dates):
        tree.setdefault(key, "updated_at")
    fields: list[tuple[str, Any, None]] = [("id", str | None, None)]
    fields += [(str(key), _type(f"{api.type_name}_{key}", sub) | None, None) for key, sub in tree.items()]
    fields.append((EXTENSION, dict[str, Any] | None, None))
    if history is not None:
        fields.append((history, list[_Change] | None, None))
    return msgspec.defstruct(f"{api.type_name}V{version}", fields)


def _add(tree: Tree, path: Path, column: str) -> None:
    """Add one column's path to the tree; a list index stands for every item of the list (key 0)."""
    *steps, last = [0 if isinstance(step, int) else step for step in path]
    node = tree
    for step in steps:
        node = node.setdefault(step, {})
        if not isinstance(node, dict):
            raise ValueError(f"{column}: {path} goes through another column's value")
    if last in node:
        raise ValueError(f"{column}: {path} is also another column's path")
    node[last] = column


def _type(name: str, node: "Tree | str") -> Any:
    """The type of a subtree: a leaf is a string or a number; keys make a struct; an index, a list."""
    if isinstance(node, str):
        return float if node in FLOATS and node not in TIMES else int if node in INTEGERS else str
    if 0 in node:
        return list[_type(f"{name}_item", node[0])]  # type: ignore[misc]
    return msgspec.defstruct(name, [(str(key), _type(f"{name}_{key}", sub) | None, None) for key, sub in node.items()])
