"""How a TMF resource becomes a records row: field paths by version, lifecycle rules."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from collector.sources.times import format_time
from collector.sources.tmf import APIS, MappingError, resource_to_row
from tests.sources.tmf_spec import SPEC_DIR as SPECS

T0 = 1_767_225_600.0


def ticket(**extra: Any) -> dict[str, Any]:
    return {"id": "TT-1", "status": "inProgress", "creationDate": format_time(T0),
            "lastUpdate": format_time(T0 + 600), **extra}


def history(version: int, *changes: tuple[str, float]) -> dict[str, Any]:
    """A status history in the spelling of `version`: v4 `statusChange[].changeDate`, v5
    `statusChangeHistory[].statusChangeDate` (TMF621 v5.0.1, schema StatusChange)."""
    key, dated = ("statusChange", "changeDate") if version == 4 else ("statusChangeHistory", "statusChangeDate")
    return {key: [{"status": status, dated: format_time(T0 + at), "@type": "StatusChange"} for status, at in changes]}


@pytest.mark.parametrize("version", [4, 5])
def test_a_move_out_of_a_final_status_in_the_history_is_a_reopen(version: int) -> None:
    # Listed out of order on purpose: the dates decide, not the list order.
    resource = ticket(**history(version, ("inProgress", 300), ("acknowledged", 0), ("resolved", 200)))
    assert resource_to_row(APIS["tmf621"], version, resource)["reopened"] == 1


@pytest.mark.parametrize("version", [4, 5])
def test_a_history_that_only_moves_forward_is_not_a_reopen(version: int) -> None:
    resource = ticket(status="resolved", **history(version, ("acknowledged", 0), ("inProgress", 100),
                                                    ("resolved", 200)))
    assert resource_to_row(APIS["tmf621"], version, resource)["reopened"] is None  # left to the store default, 0


def test_the_other_version_spelling_of_the_history_is_not_read() -> None:
    """v4 reads `statusChange`, v5 `statusChangeHistory`: a v5 history sent to a v4 source is ignored."""
    resource = ticket(**history(5, ("resolved", 200), ("inProgress", 300)))
    assert resource_to_row(APIS["tmf621"], 4, resource)["reopened"] is None  # left to the store default, 0


@pytest.mark.parametrize("state", ["failed", "held", "partial"])
def test_product_order_fallout_states(state: str) -> None:
    order = {"id": "PO-1", "state": state, "orderDate": format_time(T0), "lastUpdate": format_time(T0)}
    assert resource_to_row(APIS["tmf622"], 4, order)["fallout"] == 1


def test_a_bad_date_names_the_column() -> None:
    with pytest.raises(MappingError, match="troubleTicket created_at: not an RFC 3339 date-time"):
        resource_to_row(APIS["tmf621"], 4, ticket(creationDate="yesterday"))


UNSTORABLE = [("reopened", 2**63), ("reopened", -(2**63) - 1), ("fallout", 10**30),
              ("reopened", "99999999999999999999"), ("paused_seconds", "nan"), ("amount", "inf"),
              ("wait_seconds", "-Infinity"), ("amount", "1e400")]
"""Numbers a column cannot keep: an integer past 64 bits (SQLite and PostgreSQL refuse it at the
commit), not a number (stored as NULL, which the column refuses) or an infinity."""


@pytest.mark.parametrize(("column", "value"), UNSTORABLE)
def test_a_number_no_column_can_keep_is_a_mapping_error(column: str, value: object) -> None:
    with pytest.raises(MappingError, match=f"troubleTicket {column}: "):
        resource_to_row(APIS["tmf621"], 4, ticket(fabwatch={column: value}))
    assert resource_to_row(APIS["tmf621"], 4, ticket(fabwatch={column: 2**63 - 1 if column in (
        "reopened", "fallout") else "-1e308"}))[column] is not None  # the largest that fit still do


@pytest.mark.parametrize("value", ["a\x00b", "x" * 513])
@pytest.mark.parametrize("where", ["status", "priority", "fabwatch"])
def test_a_string_the_store_cannot_keep_is_a_mapping_error(where: str, value: str) -> None:
    """A NUL (PostgreSQL text cannot hold it), more than 512 characters (past a PostgreSQL index row)."""
    column = "segment" if where == "fabwatch" else where

    def resource(text: str) -> dict[str, Any]:
        return ticket(fabwatch={column: text}) if where == "fabwatch" else ticket(**{column: text})

    with pytest.raises(MappingError, match=f"troubleTicket {column}: "):
        resource_to_row(APIS["tmf621"], 4, resource(value))
    assert resource_to_row(APIS["tmf621"], 4, resource("x" * 512))[column] == "x" * 512


@pytest.mark.parametrize("value", ["TT\x001", "T" * 513])
def test_a_polled_id_the_store_cannot_keep_is_a_mapping_error(value: str) -> None:
    """A polled resource's id is checked as an event's: the poller reports `reason="schema"` naming it,
    instead of a failed write."""
    with pytest.raises(MappingError, match="troubleTicket id: "):
        resource_to_row(APIS["tmf621"], 4, ticket(id=value))
    assert resource_to_row(APIS["tmf621"], 4, ticket(id="T" * 512))["id"] == "T" * 512


@pytest.mark.parametrize("version", [4, 5])
def test_a_bad_date_in_the_status_history_is_a_mapping_error(version: int) -> None:
    """Not a bare ValueError: the poller reports a mapping error as `reason="schema"`, anything else
    as an internal error."""
    resource = ticket(**history(version, ("acknowledged", 0), ("resolved", 200)))
    next(iter(resource[next(k for k in resource if k.startswith("statusChange"))]))[
        "changeDate" if version == 4 else "statusChangeDate"] = "01/02/2024"
    with pytest.raises(MappingError, match="troubleTicket status history: not an RFC 3339 date-time: '01/02/2024'"):
        resource_to_row(APIS["tmf621"], version, resource)


API_OF_SPEC = {"TMF621": "tmf621", "TMF622": "tmf622", "TMF676": "tmf676", "TMF678": "tmf678", "TMF683": "tmf683"}


@pytest.mark.parametrize("spec", sorted(p.name for p in SPECS.glob("TMF*")))
def test_every_event_of_the_specification_is_known(spec: str) -> None:
    """Each `/listener/<eventName>` the specification defines is applied or acknowledged without
    being stored; none gets `unknownEventType` (a hub sends them all when subscribed without a filter)."""
    api = APIS[API_OF_SPEC[spec.split("-")[0]]]
    text = (SPECS / spec).read_text()
    paths = json.loads(text)["paths"] if spec.endswith(".json") else re.findall(r"^  (/listener/\w+):", text, re.M)
    names = {p.rsplit("/", 1)[1] for p in paths if p.startswith("/listener/")}
    assert names or spec.startswith("TMF678-CustomerBill-v4")  # the only one that lists no listener paths
    assert names <= {*api.event_names(), *api.ignored_events}


def test_a_product_order_as_the_specification_defines_it_is_versioned_by_when_it_was_seen() -> None:
    """TMF622 (v4 and v5) defines no lastUpdate: the version is the event's time or the poll's."""
    order = {"id": "PO-1", "state": "inProgress", "orderDate": format_time(T0), "@type": "ProductOrder"}
    row = resource_to_row(APIS["tmf622"], 4, order, observed=T0 + 42)
    assert (row["created_at"], row["updated_at"], row["status"]) == (T0, T0 + 42, "inProgress")
    v5 = {"id": "PO-1", "state": "completed", "creationDate": format_time(T0), "completionDate": format_time(T0 + 9)}
    assert resource_to_row(APIS["tmf622"], 5, v5, observed=T0 + 50)["updated_at"] == T0 + 50
    with pytest.raises(MappingError, match="productOrder 'PO-1' has no updated_at"):
        resource_to_row(APIS["tmf622"], 4, order)  # nothing to version it by


def test_a_payment_and_a_v4_interaction_date_their_changes_as_the_specifications_do() -> None:
    payment = {"id": "PAY-1", "status": "settled", "paymentDate": format_time(T0), "statusDate": format_time(T0 + 5),
               "amount": {"unit": "EUR", "value": 12.5}}
    row = resource_to_row(APIS["tmf676"], 4, payment, observed=T0 + 99)
    assert (row["created_at"], row["updated_at"], row["amount"]) == (T0, T0 + 5, 12.5)
    interaction = {"id": "PI-1", "status": "completed", "creationDate": format_time(T0),
                   "statusChangeDate": format_time(T0 + 7)}
    assert resource_to_row(APIS["tmf683"], 4, interaction, observed=T0 + 99)["updated_at"] == T0 + 7


@pytest.mark.parametrize(("kind", "versions"), [("tmf621", {4, 5}), ("tmf622", set()), ("tmf676", set()),
                                                 ("tmf678", {4, 5}), ("tmf683", {5})])
@pytest.mark.slow
def test_lastupdate_is_where_the_specifications_define_it(kind: str, versions: set[int]) -> None:
    """Incremental sync filters on lastUpdate: it must only be used where the resource has one."""
    import yaml

    api = APIS[kind]
    for spec in SPECS.glob(f"{kind.upper()}-*"):
        version = 4 if "-v4" in spec.name else 5
        text = spec.read_text()
        if spec.suffix == ".json":
            properties = json.loads(text)["definitions"][api.type_name]["properties"]
        else:
            schema = yaml.safe_load(text)["components"]["schemas"][api.type_name]
            properties = {k: v for part in schema.get("allOf", [schema]) for k, v in part.get("properties", {}).items()}
        assert ("lastUpdate" in properties) is (version in versions), spec.name
        assert (version in api.last_update) is (version in versions), spec.name
