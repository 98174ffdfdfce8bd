"""The TM Forum Open APIs fabwatch reads, and how a resource becomes a work-item row.

Each API names where the work-item fields live (they differ by API and by version). Fields
without a standard attribute are read from the `fabwatch` extension object when the server adds
one (the simulator does), else they take the records table's default. Lifecycle rules: TMF621
resolved/closed/cancelled -> an open status is a reopen (the record store counts it), TMF622
failed/held/partial count as fallout, and a status history, when given, also reveals reopens.
"""

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from collector.inventory.sources import NAMES
from collector.sources.store import FLOATS, INTEGERS, Row
from collector.sources.times import maybe_time

EXTENSION = "fabwatch"
Path = tuple[str | int, ...]


@dataclass(frozen=True)
class TmfApi:
    """What differs between the APIs: resource name, state attribute, base paths, field paths."""

    kind: str
    resource: str
    type_name: str
    state_key: str
    base_paths: Mapping[int, str]
    finals: tuple[str, ...]
    fallout: tuple[str, ...] = ()
    paths: Mapping[str, Path] = field(default_factory=dict)
    v5_paths: Mapping[str, Path] = field(default_factory=dict)
    history: Mapping[int, str] = field(default_factory=dict)
    """The status history attribute by version; its items date a change by `changeDate` (TMF621 v4)
    or `statusChangeDate` (v5)."""
    change_event: str = ""
    """The status/state change event's name (TMF676 says `paymentStateChangeEvent` for a `status`)."""
    last_update: frozenset[int] = frozenset({4, 5})
    """The versions whose resource defines `lastUpdate`: only those can be synced incrementally
    (`lastUpdate.gt=`); the others are read in full at every sync."""
    change_dates: tuple[str, ...] = ()
    """Attributes that date the last change when the resource has no `lastUpdate` (TMF676
    `statusDate`, TMF683 v4 `statusChangeDate`)."""
    more_changes: tuple[str, ...] = ()
    """Other events of the specification that carry the whole resource after a change."""
    ignored_events: tuple[str, ...] = ()
    """Events of the specification that carry no work-item change (other resources, references,
    milestones): a hub subscribed without a filter sends them; they are acknowledged, not stored."""

    def field_paths(self, version: int) -> dict[str, Path]:
        """Column -> JSON path of the standard attribute holding it, for one version."""
        paths = dict(self.paths)
        if version == 5:
            paths.update(self.v5_paths)
        return paths

    def event_names(self) -> dict[str, str]:
        """Event name (as in `/listener/{eventName}`) -> kind: create, change or delete."""
        prefix = self.resource
        return {f"{prefix}CreateEvent": "create", self.change_event: "change",
                f"{prefix}AttributeValueChangeEvent": "change", f"{prefix}DeleteEvent": "delete",
                **dict.fromkeys(self.more_changes, "change")}

    def top_fields(self, version: int) -> list[str]:
        """Top-level attributes to ask for with `fields=` (id and lastUpdate always)."""
        tops = {str(p[0]) for p in self.field_paths(version).values()}
        tops |= {"id", "lastUpdate", EXTENSION}
        if version in self.history:
            tops.add(self.history[version])
        return sorted(tops)


def _lifecycle_events(resource: str, change: str = "Status") -> tuple[str, ...]:
    """The create, change and delete events of another resource of the same API."""
    return tuple(f"{resource}{kind}Event" for kind in ("Create", "AttributeValueChange", f"{change}Change", "Delete"))


APIS: dict[str, TmfApi] = {
    "tmf621": TmfApi(
        "tmf621", "troubleTicket", "TroubleTicket", "status",
        {4: "/tmf-api/troubleTicket/v4", 5: "/tmf-api/troubleTicket/v5"},
        finals=("resolved", "closed", "cancelled", "rejected"),
        paths={"created_at": ("creationDate",), "updated_at": ("lastUpdate",),
               "due_at": ("expectedResolutionDate",), "completed_at": ("resolutionDate",),
               "status": ("status",), "priority": ("priority",), "channel": ("channel", "name")},
        history={4: "statusChange", 5: "statusChangeHistory"}, change_event="troubleTicketStatusChangeEvent",
        change_dates=("statusChangeDate",),
        more_changes=("troubleTicketResolvedEvent",),
        ignored_events=("troubleTicketInformationRequiredEvent", *_lifecycle_events("troubleTicketSpecification"))),
    "tmf622": TmfApi(
        "tmf622", "productOrder", "ProductOrder", "state",
        {4: "/tmf-api/productOrderingManagement/v4", 5: "/tmf-api/productOrderingManagement/v5"},
        finals=("completed", "failed", "partial", "cancelled", "rejected"), fallout=("failed", "held", "partial"),
        paths={"created_at": ("orderDate",), "due_at": ("requestedCompletionDate",),
               "completed_at": ("completionDate",), "status": ("state",), "priority": ("priority",),
               "channel": ("channel", 0, "name"), "segment": ("category",)},
        v5_paths={"created_at": ("creationDate",), "channel": ("channel", 0, "channel", "name")},
        change_event="productOrderStateChangeEvent", last_update=frozenset(),
        ignored_events=("productOrderInformationRequiredEvent", "productOrderMilestoneEvent",
                        "productOrderJeopardyAlertEvent", "productOrderErrorMessageEvent",
                        "cancelProductOrderCreateEvent", "cancelProductOrderStateChangeEvent",
                        "cancelProductOrderInformationRequiredEvent")),
    "tmf678": TmfApi(
        "tmf678", "customerBill", "CustomerBill", "state",
        {4: "/tmf-api/customerBillManagement/v4", 5: "/tmf-api/customerBillManagement/v5"},
        finals=("sent", "settled", "partiallyPaid"),
        paths={"created_at": ("billDate",), "updated_at": ("lastUpdate",), "status": ("state",),
               "amount": ("amountDue", "value")}, change_event="customerBillStateChangeEvent",
        ignored_events=("customerBillOnDemandCreateEvent", "customerBillOnDemandStateChangeEvent")),
    "tmf676": TmfApi(
        "tmf676", "payment", "Payment", "status",
        {4: "/payment/v4"},
        finals=("settled", "writtenOff"),
        paths={"created_at": ("paymentDate",), "status": ("status",), "channel": ("channel", "name"),
               "amount": ("amount", "value")},
        change_event="paymentStateChangeEvent", last_update=frozenset(), change_dates=("statusDate",),
        ignored_events=_lifecycle_events("refund", "State")),
    "tmf683": TmfApi(
        "tmf683", "partyInteraction", "PartyInteraction", "status",
        {4: "/tmf-api/partyInteraction/v4", 5: "/tmf-api/partyInteraction/v5"},
        finals=("completed", "abandoned"),
        paths={"created_at": ("creationDate",), "completed_at": ("interactionDate", "endDateTime"),
               "status": ("status",), "channel": ("channel", 0, "name")},
        v5_paths={"updated_at": ("lastUpdate",), "channel": ("relatedChannel", 0, "channel", "name")},
        change_event="partyInteractionStatusChangeEvent", last_update=frozenset({5}),
        change_dates=("statusChangeDate",)),
}


class MappingError(ValueError):
    """A resource lacks what a work item needs, or holds a value of the wrong type."""


def dig(document: Any, path: Path) -> Any:
    """Follow a JSON path (keys and list indexes); None where it leads nowhere."""
    node = document
    for step in path:
        if isinstance(step, int):
            node = node[step] if isinstance(node, list) and len(node) > step else None
        else:
            node = node.get(step) if isinstance(node, dict) else None
        if node is None:
            return None
    return node


def resource_to_row(api: TmfApi, version: int, resource: Mapping[str, Any], observed: float | None = None) -> Row:
    """Map one TMF resource to a records-table row; raise `MappingError` when it cannot.

    A column takes its standard attribute, else the `fabwatch` extension's value; columns with
    neither stay None (the store's default). `updated_at`, the version the newer-version rule
    compares, is `lastUpdate`, else the API's change dates (`change_dates`), else `observed`: when
    the state was seen (the event's time, the poll's time), for the APIs that date no change
    (TMF622 defines no `lastUpdate`).
    """
    row = _mapped(api, version, resource, observed)
    for needed in ("id", "created_at", "updated_at", "status"):
        if row[needed] is None or row[needed] == "":
            raise MappingError(f"{api.resource} {resource.get('id')!r} has no {needed}")
    _check_id(api, row)
    return row


def event_row(api: TmfApi, version: int, resource: Mapping[str, Any], observed: float) -> tuple[Row, bool]:
    """Map the resource of an event: a whole row as `resource_to_row` gives it, or, when it lacks the
    creation date or the status (a change event with only what changed), the columns it gives and
    True: a partial row the record store merges. A value of the wrong type is still a `MappingError`."""
    row = _mapped(api, version, resource, observed)
    for needed in ("id", "updated_at"):
        if row[needed] is None or row[needed] == "":
            raise MappingError(f"{api.resource} {resource.get('id')!r} has no {needed}")
    _check_id(api, row)
    if row["status"] == "":
        raise MappingError(f"{api.resource} {resource.get('id')!r} has no status")
    if row["created_at"] is None or row["status"] is None:
        return {name: value for name, value in row.items() if value is not None}, True
    return row, False


def _mapped(api: TmfApi, version: int, resource: Mapping[str, Any], observed: float | None) -> Row:
    """The columns a resource gives (None where it gives none); raise `MappingError` for a value of
    the wrong type."""
    if not isinstance(resource, dict):
        raise MappingError(f"a {api.resource} must be a JSON object")
    row: Row = dict.fromkeys(NAMES)
    row["id"] = resource.get("id")
    for name, key, path in plan(api, version):
        value = resource.get(key) if key is not None else dig(resource, path)
        if value is not None:
            row[name] = convert(api, name, value)
    extension = resource.get(EXTENSION)
    if isinstance(extension, dict) and extension:
        fill_from_extension(api, row, extension)
    if row["updated_at"] is None:
        row["updated_at"] = version_of(api, resource.get, observed)
    _lifecycle(api, version, resource, row)
    return row


def _check_id(api: TmfApi, row: Row) -> None:
    if not isinstance(row["id"], str):
        raise MappingError(f"{api.resource} id must be a string")
    checked_text(f"{api.resource} id", row["id"], MappingError)  # a polled id too, not only an event's


def fill_from_extension(api: TmfApi, row: Row, extension: Mapping[str, Any]) -> None:
    """Give the columns still without a value the `fabwatch` extension's, where it has one."""
    for name in NAMES[1:]:
        if row[name] is None and (value := extension.get(name)) is not None:
            row[name] = convert(api, name, value)


def version_of(api: TmfApi, get: Callable[[str], Any], observed: float | None) -> float | None:
    """`updated_at` of a resource whose standard attributes gave none: `lastUpdate`, else the API's
    change dates, else `observed` (`get` reads a top-level attribute)."""
    for key in ("lastUpdate", *api.change_dates):
        if (updated := get(key)) is not None:
            return convert(api, "updated_at", updated)  # type: ignore[no-any-return]
    return observed


Plan = tuple[tuple[str, str | None, Path], ...]
"""Column, top-level key when the attribute is one (a plain `get`), and its path."""
_PLANS: dict[tuple[str, int], Plan] = {}


def plan(api: TmfApi, version: int) -> Plan:
    """The columns after id that have a standard attribute, with its path; cached."""
    columns = _PLANS.get((api.kind, version))
    if columns is None:
        paths = api.field_paths(version)
        columns = _PLANS[(api.kind, version)] = tuple((name, _single_key(paths[name]), paths[name])
                                                      for name in NAMES[1:] if name in paths)
    return columns


def _single_key(path: Path) -> str | None:
    return path[0] if len(path) == 1 and isinstance(path[0], str) else None


TIMES = frozenset(name for name in NAMES if name.endswith("_at"))
"""The time columns: RFC 3339 date-times in the APIs, epoch seconds in the store."""


_INT64 = (-(2**63), 2**63 - 1)
"""What an integer column keeps (SQLite INTEGER, PostgreSQL BIGINT): one past it would fail the
group commit of every event it joined, not only its own."""


def convert(api: TmfApi, name: str, value: Any) -> Any:
    """A standard attribute's or the extension's value as the column keeps it; `MappingError` if it cannot be."""
    if value is None:
        return None
    try:
        if name in TIMES:
            return maybe_time(value)
        if name in FLOATS:
            number = float(value)
            if not math.isfinite(number):  # "nan" would be stored as NULL, "inf" summed into every KPI
                raise ValueError(f"{value!r} is not a finite number")
            return number
        if name in INTEGERS:
            integer = int(value)
            if not _INT64[0] <= integer <= _INT64[1]:  # the store's INTEGER/BIGINT: its commit would fail
                raise ValueError(f"{value!r} is past a 64-bit integer")
            return integer
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: float() of a 400-digit integer
        raise MappingError(f"{api.resource} {name}: {exc}") from exc
    if not isinstance(value, str):
        raise MappingError(f"{api.resource} {name}: expected a string, got {type(value).__name__}")
    return checked_text(f"{api.resource} {name}", value, MappingError)


MAX_TEXT = 512
"""Characters a string the store keeps may have (2,048 bytes of UTF-8 at most): a PostgreSQL index
row (event id, resource id, status) holds 2,704 bytes, and one past it fails the commit."""


def checked_text(what: str, value: str, error: type[Exception]) -> str:
    """`value`, a string the store keeps, or `error`: PostgreSQL cannot keep a NUL, nor index more
    than 2,704 bytes, and the group commit the event joined would fail for every event in it."""
    if "\0" in value:
        raise error(f"{what}: a NUL character")
    if len(value) > MAX_TEXT:
        raise error(f"{what}: over {MAX_TEXT} characters")
    return value


def _lifecycle(api: TmfApi, version: int, resource: Mapping[str, Any], row: Row) -> None:
    """Derive fallout and reopens from the state and the status history, where the source has them."""
    if row["status"] in api.fallout:
        row["fallout"] = 1
    history = resource.get(api.history.get(version, ""), None)
    if not isinstance(history, list):
        return
    changes = [(when, h.get("status")) for h in history
               if isinstance(h, dict) and (when := h.get("changeDate") or h.get("statusChangeDate"))]
    if reopened_in(api, changes):
        row["reopened"] = 1


def reopened_in(api: TmfApi, changes: list[tuple[Any, Any]]) -> bool:
    """Whether a status history, as (change date, status) pairs, moves out of a final status."""
    try:
        ordered = sorted(changes, key=lambda change: maybe_time(change[0]) or 0.0)
    except ValueError as exc:  # a change date that is not one: the mapping's error, as for the other dates
        raise MappingError(f"{api.resource} status history: {exc}") from exc
    statuses = [status for _, status in ordered]
    return any(before in api.finals and after not in api.finals for before, after in itertools.pairwise(statuses))
