"""Render the simulator's record rows as TM Forum resources and event notifications (v4 and v5).

Standard attributes carry what the APIs define (dates, status, priority, channel); the other
record columns travel in a `fabwatch` extension object, which the specifications allow
(their resources are not closed with `additionalProperties: false`).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from collector.inventory.sources import NAMES
from collector.sources.times import format_time
from collector.sources.tmf import APIS, EXTENSION, TmfApi

Row = Mapping[str, Any]
Doc = dict[str, Any]

API_PROCESSES: dict[str, tuple[str, ...]] = {
    "tmf621": ("problem", "qos_sla", "retention", "bill_inquiry"),
    "tmf622": ("order",),
    "tmf678": ("invoice",),
    "tmf676": ("payments",),
    "tmf683": ("interface",),
}
"""Which simulated processes each API serves; TMF621's `ticketType` names the process."""
CURRENCY = "EUR"


def resource(api: TmfApi, version: int, process: str, row: Row, href: str) -> Doc:
    """Return the TMF resource of one record row."""
    paths = api.field_paths(version)
    doc: Doc = {"id": row["id"], "href": f"{href}/{row['id']}", "@type": api.type_name}
    for column, path in paths.items():
        value = row.get(column)
        if value is not None:
            _put(doc, path, format_time(value) if column.endswith("_at") else value)
    if version in api.last_update:  # TMF622, TMF676 and TMF683 v4 define no lastUpdate
        doc.setdefault("lastUpdate", format_time(row["updated_at"]))
    extension = {c: _plain(c, row[c]) for c in NAMES[1:] if c not in paths and row.get(c) is not None}
    extension.pop("updated_at", None)
    doc[EXTENSION] = extension
    _decorate(api, version, process, row, doc)
    return doc


def _plain(column: str, value: Any) -> Any:
    return format_time(value) if column.endswith("_at") else value


def _put(doc: Doc, path: tuple[str | int, ...], value: Any) -> None:
    """Set a value at a JSON path, creating objects and one-element lists on the way."""
    node: Any = doc
    for step, nxt in itertools.pairwise(path):
        empty: Any = [] if isinstance(nxt, int) else {}
        if isinstance(step, int):
            while len(node) <= step:
                node.append(empty)
            node = node[step]
        else:
            node = node.setdefault(step, empty)
    node[path[-1]] = value


def _decorate(api: TmfApi, version: int, process: str, row: Row, doc: Doc) -> None:
    """Add the attributes each specification requires or expects around the mapped values."""
    channel = row.get("channel")
    if api.kind == "tmf621":
        doc["ticketType"] = process
        doc["name"] = f"{process} {row['id']}"
        doc["statusChangeDate"] = doc["lastUpdate"]
        history = "statusChange" if version == 4 else "statusChangeHistory"
        dated = "changeDate" if version == 4 else "statusChangeDate"
        doc[history] = [{dated: doc["lastUpdate"], "status": row["status"], "@type": "StatusChange"}]
    if api.kind == "tmf622":
        doc["productOrderItem"] = [{"id": "1", "action": "add", "quantity": 1, "@type": "ProductOrderItem"}]
    if api.kind == "tmf676":
        doc["account"] = {"id": f"ACC-{row['id']}", "@type": "AccountRef"}
        doc["paymentMethod"] = {"id": str(channel or "unknown"), "@type": "PaymentMethodRef"}
        doc["statusDate"] = format_time(row["updated_at"])
    if api.kind == "tmf683":
        doc.setdefault("interactionDate", {})["startDateTime"] = format_time(row["created_at"])
        doc["statusChangeDate"] = format_time(row["updated_at"])
        doc["direction"] = "inbound"
    for money in ("amountDue", "amount"):
        if isinstance(doc.get(money), dict):
            doc[money]["unit"] = CURRENCY
    _channel_refs(doc, channel)


def _channel_refs(doc: Doc, channel: Any) -> None:
    """Give channel references the id and `@type` the specifications require."""
    if channel is None:
        return
    for key in ("channel", "relatedChannel"):
        value = doc.get(key)
        if isinstance(value, dict):
            value.update(id=channel, **{"@type": "ChannelRef"})
        elif isinstance(value, list):
            for related in value:
                related.update(role="salesChannel", **{"@type": "RelatedChannel"})
                if "channel" in related:  # v5: a RelatedChannel holds a ChannelRef
                    related["channel"].update(id=channel, **{"@type": "ChannelRef"})
                else:  # v4: a flat reference
                    related.update(id=channel, href=f"/channel/{channel}")


def event(api: TmfApi, version: int, name: str, resource_doc: Doc, event_id: str, at: float) -> Doc:
    """Wrap a resource in an event notification (v4 `timeOcurred`, v5 `timeOccurred` and `@type`)."""
    when = format_time(at)
    type_name = name[0].upper() + name[1:]
    envelope: Doc = {"eventId": event_id, "eventTime": when, "eventType": type_name,
                     "event": {api.resource: resource_doc}}
    if version == 4:
        envelope["timeOcurred"] = when
    else:
        envelope.update({"@type": type_name, "timeOccurred": when})
    return envelope


def api(kind: str) -> TmfApi:
    """Return the API descriptor of a kind (`tmf621`...)."""
    return APIS[kind]
