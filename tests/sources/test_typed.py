"""The listener's typed path gives exactly the event the general path gives, or steps aside.

The events are the simulator's (every API and version, open and completed work items, with the
`fabwatch` extension and status histories), then each of them with one value changed: every
attribute, at every depth, deleted or set to a value of each JSON type, an empty string, a
date-time with a fraction and an offset. Whatever the typed path accepts, the general path must
map to the same event; what it does not accept, the general path maps or refuses.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from collector.inventory.sources import TmfEventsSource
from collector.sources.listener import BadEvent, Listener
from collector.sources.store import Event, RecordStore
from collector.sources.tmf import APIS
from collector.sources.typed import _type
from simulator.profiles import PROFILES
from simulator.tmf_render import API_PROCESSES, event, resource
from tests.simulator.helpers import NOW, backfill

ENDPOINTS = [(kind, version) for kind in API_PROCESSES for version in sorted(APIS[kind].base_paths)]
VALUES: list[Any] = [None, "", "x", "held", "resolved", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00.123456789+02:00",
                     "2026-01-01t10:00:00z", "2026-01-01T10:00:00+00:00", "2026-13-01T00:00:00Z",
                     "2026-01-01T10:00:Z\x00Z", "a\x00b", "x" * 513,
                     0, 1, 2.5, True, 10**30, -1e300, "12.5", [], [{}], [{"name": "x", "status": "resolved"}],
                     [{"status": "resolved", "changeDate": "2026-01-01T00:00:00Z"},
                      {"status": "open", "statusChangeDate": "2026-01-02T00:00:00Z"}],
                     {}, {"name": "x", "value": 3},
                     {"status": "held", "updated_at": "", "amount": "12.5", "reopened": "1"}]
"""Each attribute is set to each of these: every JSON type, empty ones, date-times in other forms and
not ones, huge numbers, a status history that reopens, what the `fabwatch` extension may hold."""
ADDED = ("fabwatch", "statusChange", "statusChangeHistory", "lastUpdate", "statusDate", "statusChangeDate",
         "eventTime", "timeOccurred", "timeOcurred", "eventType", "channel", "relatedChannel", "interactionDate")
"""Attributes the simulator's events may lack that one path or the other reads: each is added too."""
DELETE = object()
FROZEN = NOW + 123.0
"""`time.time()` in these tests: an event without a time is versioned by it, in both paths alike."""


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """An open and a completed row of each simulated process (of those it has)."""
    import sqlite3

    path = tmp_path_factory.mktemp("typed") / "operator.db"
    backfill(path, 4, seed=11, scale=0.2)
    picked: dict[str, list[dict[str, Any]]] = {}
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        for process, profile in PROFILES.items():
            rows = [dict(r) for r in db.execute(f"SELECT * FROM {profile.table} ORDER BY id")]
            for completed in (False, True):
                picked.setdefault(process, []).extend(
                    [r for r in rows if (r["completed_at"] is not None) == completed][:1])
    return picked


def listener_for(kind: str, version: int, directory: Path) -> Listener:
    source = TmfEventsSource(kind="tmf_events", api=kind, version=version)
    return Listener(f"{kind}v{version}", source, RecordStore(directory / f"{kind}v{version}.db", ["records"]))


def general(listener: Listener, name: str, raw: bytes) -> Event | str:
    """The general path's event, or the code it refuses the body with."""
    try:
        return listener._parse(name, listener._decode(raw))
    except BadEvent as exc:
        return exc.code


def bodies(kind: str, version: int, records: dict[str, list[dict[str, Any]]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The simulator's create and change events of each picked row of the API's processes."""
    api = APIS[kind]
    for number, process in enumerate(API_PROCESSES[kind]):
        for row in records[process]:
            doc = resource(api, version, process, row, f"/{api.resource}")
            for name in (f"{api.resource}CreateEvent", api.change_event):
                yield name, event(api, version, name, doc, f"E-{number}-{row['id']}-{name}", row["updated_at"])


def paths(node: Any, prefix: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Every attribute and list item under a JSON value, depth first."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield (*prefix, key)
        yield from paths(value, (*prefix, key))


def changed(body: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    """A copy of `body` with the value at `path` replaced (or deleted, for `DELETE`)."""
    copied = copy.deepcopy(body)
    node: Any = copied
    for step in path[:-1]:
        node = node[step]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return copied


@pytest.fixture(autouse=True)
def frozen_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: FROZEN)


@pytest.mark.parametrize(("kind", "version"), ENDPOINTS)
def test_the_simulators_events_take_the_typed_path_and_map_as_in_general(
        kind: str, version: int, records: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    listener = listener_for(kind, version, tmp_path)
    seen = 0
    for name, body in bodies(kind, version, records):
        raw = json.dumps(body).encode()
        typed = listener._typed.event(name, raw)
        assert typed is not None, body
        assert typed == general(listener, name, raw)
        seen += 1
    assert seen >= 4


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "version"), ENDPOINTS)
def test_any_one_change_to_an_event_maps_as_in_general_or_takes_the_general_path(
        kind: str, version: int, records: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    listener = listener_for(kind, version, tmp_path)
    typed_accepted = general_refused = 0
    for name, body in bodies(kind, version, records):
        for path in paths(body):
            for value in (DELETE, *VALUES):
                raw = json.dumps(changed(body, path, value)).encode()
                typed = listener._typed.event(name, raw)
                expected = general(listener, name, raw)
                if typed is not None:
                    assert typed == expected, (path, value)
                    typed_accepted += 1
                general_refused += isinstance(expected, str)
    assert typed_accepted > 100  # both sides of the comparison were exercised
    assert general_refused > 100


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "version"), ENDPOINTS)
def test_an_attribute_added_to_an_event_maps_as_in_general_or_takes_the_general_path(
        kind: str, version: int, records: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    """An extension, a status history, a change date or an event time where the event had none, at
    the top and in the resource, with each value: what the typed path accepts maps as in general."""
    listener = listener_for(kind, version, tmp_path)
    resource_key = APIS[kind].resource
    typed_accepted = 0
    for name, body in bodies(kind, version, records):
        for key in ADDED:
            for path in ((key,), ("event", resource_key, key)):
                for value in VALUES:
                    raw = json.dumps(changed(body, path, value)).encode()
                    typed = listener._typed.event(name, raw)
                    if typed is not None:
                        assert typed == general(listener, name, raw), (path, value)
                        typed_accepted += 1
    assert typed_accepted > 100


@pytest.mark.parametrize("raw", [
    b'{"eventId": "E1", "eventId": "E2", "event": {"troubleTicket": {"id": "TT-1", "status": "x", '
    b'"creationDate": "2026-01-01T00:00:00Z", "lastUpdate": "2026-01-02T00:00:00Z", "status": "resolved"}}}',
    b'{"eventId": "E1", "event": {"troubleTicket": {"id": "TT-1", "status": "acknowledged", '
    b'"creationDate": "2026-01-01T00:00:00Z", "lastUpdate": "2026-01-02T00:00:00Z", '
    b'"statusChange": [{"status": "resolved", "changeDate": "2026-01-01T10:00:00Z"}, '
    b'{"status": "acknowledged", "changeDate": "2026-01-01T11:00:00Z"}, {"status": "x"}, "odd"]}}}',
    b'{"eventId": "E1", "event": {"troubleTicket": {"id": "TT-1", "status": "acknowledged", '
    b'"creationDate": "2026-01-01T00:00:00Z", "fabwatch": {"updated_at": "2026-01-03T00:00:00Z", '
    b'"paused_seconds": "12", "reopened": 1, "unknown": [[[[1]]]]}}}}',
    b'{"eventId": "E1", "event": {"troubleTicket": {"id": "TT-1", "status": "acknowledged", '
    b'"creationDate": "2026-01-01T00:00:00Z", "lastUpdate": "2026-01-02T00:00:00Z", "note": '
    + b"[" * 3000 + b"]" * 3000 + b"}}}",
    b'{"eventId": "E1", "event": {"troubleTicket": {"id": "TT-1"',
])
def test_odd_bodies_map_as_in_general(raw: bytes, tmp_path: Path) -> None:
    """Repeated keys (the last one counts), a history with items of other shapes, extension values
    as strings, deep nesting in an attribute nobody reads, a truncated body."""
    listener = listener_for("tmf621", 4, tmp_path)
    name = "troubleTicketAttributeValueChangeEvent"
    typed = listener._typed.event(name, raw)
    expected = general(listener, name, raw)
    if typed is not None:
        assert typed == expected
    else:
        assert expected is not None


@pytest.mark.parametrize(("kind", "version"), ENDPOINTS)
def test_a_change_event_with_only_what_changed_is_partial_on_both_paths(
        kind: str, version: int, records: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    """`{"id": "TT-1", "status": "closed", "statusChangeDate": ...}`: no creation date, so not a whole
    work item; both paths give the same partial row (the store merges it), neither refuses it."""
    listener = listener_for(kind, version, tmp_path)
    api = APIS[kind]
    seen = 0
    for name, body in bodies(kind, version, records):
        doc = body["event"][api.resource]
        kept = {"id", api.state_key, "lastUpdate", *api.change_dates}
        body["event"][api.resource] = {k: v for k, v in doc.items() if k in kept}
        raw = json.dumps(body).encode()
        typed = listener._typed.event(name, raw)
        assert typed is not None, body
        assert typed.partial
        assert typed.row is not None
        assert "created_at" not in typed.row
        assert typed.row["status"] == doc[api.state_key]
        assert typed == general(listener, name, raw)
        seen += 1
    assert seen >= 4


NOT_TIMES = ["2026-01-01T10:00:Z\x00Z", "2026-01-01T10:Z\x00:00Z", "2026-13-01T00:00:00Z", "2026-02-30T10:00:00Z",
             "2026-01-01T23:59:60Z", "2026-01-01T10:00:0\u0663Z", "abcd-ef-ghTij:kl:mnZ"]
"""Twenty characters with the separators of `YYYY-MM-DDTHH:MM:SSZ` in place that are no date-time:
a NUL (where `fromisoformat` stops reading), a month or day the calendar has not, a leap second,
a digit that is not ASCII, letters."""


@pytest.mark.parametrize(("kind", "version"), ENDPOINTS)
@pytest.mark.parametrize("text", NOT_TIMES)
def test_a_date_time_that_is_not_one_is_refused_on_both_paths(
        kind: str, version: int, text: str, records: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    """At each date-time the plan reads (top-level or nested) and at `eventTime`: the typed path
    steps aside and the general path refuses the event (400 invalidResource), nothing is stored."""
    listener = listener_for(kind, version, tmp_path)
    api = APIS[kind]
    name, body = next(bodies(kind, version, records))
    times = [("event", api.resource, *path) for column, _, path in listener._typed.plan if column.endswith("_at")]
    seen = 0
    for path in [("eventTime",), *times]:
        try:
            raw = json.dumps(changed(body, path, text)).encode()
        except (KeyError, IndexError, TypeError):  # not in this event: the simulator leaves it out
            continue
        assert listener._typed.event(name, raw) is None, path
        assert general(listener, name, raw) == "invalidResource", path
        seen += 1
    assert seen >= 2  # eventTime and the creation date at least


def test_an_integer_column_past_64_bits_is_left_to_the_general_path() -> None:
    """msgspec takes integers up to 2**64 - 1; the store keeps 64-bit signed ones and `convert` refuses
    the others: an integer column read by the typed path steps aside for them."""
    holder = msgspec.defstruct("Holder", [("value", _type("Holder_value", "reopened"))])
    decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(holder)
    assert decoder.decode(b'{"value": 9223372036854775807}').value == 2**63 - 1
    for raw in (b'{"value": 9223372036854775808}', b'{"value": -9223372036854775809}'):
        with pytest.raises(msgspec.ValidationError):
            decoder.decode(raw)
