"""Typed decoding of TMF events: the common shape is checked and picked out in C.

msgspec decodes an event body straight into structs that hold only the attributes a work item
needs, typed (a string, a number, an object, a list of objects), so the attributes nobody reads
are skipped instead of built into dicts, and a value of another type stops the decoding. What
decodes is mapped to the row `event_row` gives (a whole row, or a partial one), with the same rules; anything unusual (a
value of another type, an empty one, a date-time that does not parse, malformed JSON) makes
`event` return None, and the listener takes the general path, which gives the same row or the
error. A test checks that both paths agree on every event shape it generates.

The mapping is written out as Python source for each API and version (`_compile_row`) and
compiled once: a loop over the field plan cost about as much as the decoding itself. The
structs are not tracked by the cyclic garbage collector (`gc=False`): decoded JSON holds no cycle.
"""

import time
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

import msgspec

from collector.inventory.sources import NAMES
from collector.sources.store import FLOATS, INTEGERS, Event, Row
from collector.sources.times import parse_time
from collector.sources.tmf import (
    EXTENSION,
    MAX_TEXT,
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
_ESCAPE, _NUL = b"\\", b"\\u0000"
"""How JSON writes a NUL in a string (a raw one is malformed JSON), and the byte it starts with,
looked for first (memchr: most bodies have no escape at all). `\\u0000` escaped (`\\\\u0000`)
steps aside too, harmlessly."""
_EVENTTIMES = ("eventTime", "timeOccurred", "timeOcurred")
Tree = dict[str | int, Any]
"""A path tree: a key leads to a subtree, or to the column its value fills (a leaf)."""


class _Change(msgspec.Struct, gc=False):
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
        payload = msgspec.defstruct(f"{api.type_name}Payload", [(api.resource, resource | None, None)], gc=False)
        envelope = msgspec.defstruct(f"{api.type_name}Event", [
            ("eventId", _TEXT | None, None), ("eventType", str | None, None),
            *((key, str | None, None) for key in _EVENTTIMES), ("event", payload | None, None)], gc=False)
        self.decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(envelope)
        self.row: Callable[[Any, float], tuple[Row, bool] | None] = _compile_row(api, version, self.plan, self.history)
        """`row(resource, observed)`: the row of a decoded resource and whether it is partial, as
        `event_row` maps it; None when it has no id, version or an empty status (the general path
        says which). It raises `ValueError` (a date-time that does not parse) or `MappingError`:
        the general path then."""

    def event(self, name: str, raw: bytes | bytearray) -> Event | None:
        """The event of a create or change body, or None: take the general path."""
        if _ESCAPE in raw and _NUL in raw:  # a NUL in a string: the general path refuses it where it is kept
            return None
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
            when = body.eventTime or body.timeOccurred or body.timeOcurred
            when = parse_time(when) if when else None  # `maybe_time`: "" and None are no time
            mapped = self.row(resource, when if when is not None else time.time())
        except _UNUSUAL:
            return None
        if mapped is None:
            return None
        row, partial = mapped
        return _TUPLE(Event, (event_id, name, self.table, row, resource.id, when, False, partial))


_INT64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
"""An integer column's attribute: msgspec takes up to 2**64 - 1, which `convert` refuses (the store
cannot keep it); the general path says so. (A JSON float is finite: msgspec refuses 1e400.)"""
_TEXT = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]
"""A string the store keeps: a longer one is the general path's to refuse (a NUL: see `_NUL`)."""
_DATETIME = datetime.fromisoformat
_TUPLE = tuple.__new__
"""`Event(...)` without the Python-level `__new__` of a named tuple: a call less per event."""


def _compile_row(api: TmfApi, version: int, columns: Plan,
                 history: str | None) -> Callable[[Any, float], tuple[Row, bool] | None]:
    """The mapping of a decoded resource to its row, written out for one API and version.

    The same rules as a loop over the plan (`tmf.event_row`), unrolled: each attribute is read
    into a local, a date-time parsed in place (the common `...Z` form in C, any other through
    `parse_time`), and the row built as one dict display in the order of `NAMES`. A loop over the
    plan costs a tuple unpacking, a lookup and two tests per column on every event.
    """
    lines = ["def row(r, observed):"]
    local = {name: f"c_{name}" for name, _, _ in columns}
    for name, _, path in columns:
        lines += _read(path, local[name], name in TIMES)
    values = ", ".join(f"{name!r}: {local.get(name, 'None')}" for name in NAMES[1:])
    updated, status, created = (local.get(n, "None") for n in ("updated_at", "status", "created_at"))
    lines += [
        f"    row = {{'id': r.id, {values}}}",
        f"    extension = r.{EXTENSION}",
        "    if extension:",
        "        fill_from_extension(api, row, extension)",
        "        updated, status, created = row['updated_at'], row['status'], row['created_at']",
        "    else:",
        f"        updated, status, created = {updated}, {status}, {created}",
        "    if updated is None:",
        "        updated = row['updated_at'] = version_of(api, lambda key: getattr(r, key), observed)",
    ]
    if api.fallout:
        lines += ["    if status in api.fallout:", "        row['fallout'] = 1"]
    if history is not None:
        lines += [
            f"    history = r.{history}",
            "    if history is not None:",
            "        changes = [(when, change.status) for change in history",
            "                   if (when := change.changeDate or change.statusChangeDate)]",
            "        if reopened_in(api, changes):",
            "            row['reopened'] = 1",
        ]
    lines += [
        "    if updated is None or status == '':",
        "        return None",
        "    if created is None or status is None:",
        "        return {name: value for name, value in row.items() if value is not None}, True",
        "    return row, False",
    ]
    scope: dict[str, Any] = {"api": api, "fill_from_extension": fill_from_extension, "version_of": version_of,
                             "reopened_in": reopened_in, "parse_time": parse_time, "_DATETIME": _DATETIME}
    exec(compile("\n".join(lines), f"<typed row of {api.kind} v{version}>", "exec"), scope)
    return scope["row"]  # type: ignore[no-any-return]


def _read(path: Path, target: str, is_time: bool) -> list[str]:
    """Lines that set `target` to the value at `path` under `r` (None where it leads nowhere), as
    `_dig` follows it, then parsed when it is a date-time ("" is no time, as `maybe_time` has it)."""
    if len(path) == 1 and isinstance(path[0], str):  # a top-level attribute: most columns
        if not is_time:
            return [f"    {target} = r.{path[0]}"]
        return [f"    v0 = r.{path[0]}", f"    {target} = ({_plain('v0')}) if v0 else None"]
    lines, indent, node = [f"    {target} = None"], "    ", "r"
    for number, step in enumerate(path):
        last = number == len(path) - 1
        value = f"v{number}"
        access = f"{node}.{step}" if isinstance(step, str) else f"({node}[{step}] if len({node}) > {step} else None)"
        lines.append(f"{indent}{value} = {access}")
        if not last:
            lines.append(f"{indent}if {value} is not None:")
            indent += "    "
        node = value
    if is_time:
        lines += [f"{indent}if {node}:", f"{indent}    {target} = {_plain(node)}"]
    else:
        lines.append(f"{indent}{target} = {node}")
    return lines


def _plain(value: str) -> str:
    """The expression that parses the date-time string `value` as `parse_time` does: the common
    `YYYY-MM-DDTHH:MM:SSZ` in C (not with a NUL, where `fromisoformat` stops reading), any other
    form through `parse_time`."""
    return (f"_DATETIME({value}).timestamp() if len({value}) == 20 and {value}[4:20:3] == '--T::Z' "
            f"and '\\0' not in {value} else parse_time({value})")


def _resource_type(api: TmfApi, version: int, columns: Plan, history: str | None) -> type[msgspec.Struct]:
    """The struct of a resource: its id, the attributes of the plan, the version's fallbacks, the
    extension and the status history."""
    tree: Tree = {}
    for name, _, path in columns:
        _add(tree, path, name)
    for key in ("lastUpdate", *api.change_dates):
        tree.setdefault(key, "updated_at")
    fields: list[tuple[str, Any, None]] = [("id", _TEXT | None, None)]
    fields += [(str(key), _type(f"{api.type_name}_{key}", sub) | None, None) for key, sub in tree.items()]
    fields.append((EXTENSION, dict[str, Any] | None, None))
    if history is not None:
        fields.append((history, list[_Change] | None, None))
    return msgspec.defstruct(f"{api.type_name}V{version}", fields, gc=False)


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
        return float if node in FLOATS and node not in TIMES else _INT64 if node in INTEGERS else _TEXT
    if 0 in node:
        return list[_type(f"{name}_item", node[0])]  # type: ignore[misc]
    return msgspec.defstruct(name, [(str(key), _type(f"{name}_{key}", sub) | None, None) for key, sub in node.items()],
                             gc=False)
