"""The state store: sources' state and the OTLP exporter's series, kept across reopenings; on SQLite
and on a PostgreSQL shared by replicas, where a save is fenced by the source's lease."""

from pathlib import Path

import pytest

from collector.leases import Leases
from collector.state import LeaseLost, PostgresStateStore, StateStore, open_state, state_file_problem
from tests.servers import PostgresServer, free_port


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    """A PostgreSQL URL of a fresh database (no other test's tables)."""
    return postgres.dsn(database=postgres.create_database(), driver="postgresql")


def open_at(where: str, tmp_path: Path) -> StateStore:
    return open_state(tmp_path / "state.db" if where == "sqlite" else where)


@pytest.mark.parametrize("where", ["sqlite", "postgres"])
def test_otlp_series_are_kept_across_reopenings_and_replaced_by_key(where: str, tmp_path: Path,
                                                                    request: pytest.FixtureRequest) -> None:
    location = "sqlite" if where == "sqlite" else request.getfixturevalue("pg_url")
    store = open_at(location, tmp_path)
    assert store.otlp_series() == {}
    store.save_otlp_series([("a", 1, "[1.0]", 2), ("b", 3, "[4.0]", 5)])
    store.save_otlp_series([("a", 1, "[7.0]", 8)])
    store.save("crm", {"watermark": 3})
    store.save("crm", {"watermark": 4, "counts": {"x": 1.5}})
    store.close()
    again = open_at(location, tmp_path)
    assert again.otlp_series() == {"a": (1, "[7.0]", 8), "b": (3, "[4.0]", 5)}
    assert again.load("crm") == {"watermark": 4, "counts": {"x": 1.5}}  # beside the sources' state
    assert again.load("never") == {}
    again.close()


def test_a_postgres_url_puts_the_state_in_postgres(pg_url: str, postgres: PostgresServer) -> None:
    store = open_state(pg_url)
    assert isinstance(store, PostgresStateStore)
    store.save("crm", {"hi": 12.5})
    store.close()
    database = pg_url.rsplit("/", 1)[1]
    assert postgres.psql("SELECT state FROM source_state WHERE source = 'crm'", database=database).strip() == \
        '{"hi":12.5}'


def test_a_save_needs_the_lease_of_its_holder(pg_url: str) -> None:
    first = Leases(pg_url, "a", {"crm": 30.0})
    second = Leases(pg_url, "b", {"crm": 30.0})
    store_a, store_b = PostgresStateStore(pg_url, holder="a"), PostgresStateStore(pg_url, holder="b")
    with pytest.raises(LeaseLost):  # nobody holds it yet
        store_a.save("crm", {"n": 1})
    assert first.round().gained == {"crm"}
    store_a.save("crm", {"n": 1})
    assert second.round().gained == set()  # held by a
    with pytest.raises(LeaseLost):
        store_b.save("crm", {"n": 99})
    # a's lease lapses (it hung): b takes it, and a's late save cannot overwrite b's state
    store_a._run("UPDATE source_lease SET expires = now() - interval '1 second'")
    assert second.round().gained == {"crm"}
    store_b.save("crm", {"n": 2})
    with pytest.raises(LeaseLost):
        store_a.save("crm", {"n": 1000})
    assert store_b.load("crm") == {"n": 2}
    for closing in (store_a, store_b):
        closing.close()
    first._close()
    second._close()


def test_an_unreachable_postgres_is_named_at_start_with_the_password_masked() -> None:
    problem = state_file_problem(f"postgresql://fabwatch:s3cret@127.0.0.1:{free_port()}/fabwatch")
    assert problem is not None
    assert "s3cret" not in problem
    assert "127.0.0.1" in problem


def test_a_reachable_postgres_state_is_usable(pg_url: str) -> None:
    assert state_file_problem(pg_url) is None
@pytest.mark.parametrize("where", ["sqlite", "postgres"])
def test_report_deliveries_are_kept_by_month_across_a_reopen(where: str, tmp_path: Path,
                                                             request: pytest.FixtureRequest) -> None:
    location = "sqlite" if where == "sqlite" else request.getfixturevalue("pg_url")
    store = open_at(location, tmp_path)
    assert store.delivery("2026-11") is None
    assert store.last_delivered() is None
    store.record_delivery("2026-11", False, 10.0, "auth: login refused")
    store.record_delivery("2026-10", True, 5.0, "delivered")
    store.close()
    store = open_at(location, tmp_path)
    assert store.delivery("2026-11") == (False, 10.0, "auth: login refused")
    store.record_delivery("2026-11", True, 20.0, "delivered")  # the retry succeeded: replaces the failure
    assert store.delivery("2026-11") == (True, 20.0, "delivered")
    assert store.last_delivered() == 20.0
    store.close()


def test_a_months_report_is_claimed_by_one_replica_until_it_lapses_and_never_once_delivered(pg_url: str) -> None:
    first, second = open_state(pg_url), open_state(pg_url)
    assert first.claim_delivery("2026-11", "first", 60)
    assert not second.claim_delivery("2026-11", "second", 60)  # the first one's claim is current
    assert first.claim_delivery("2026-11", "first", 60)  # renewed by its holder
    assert second.claim_delivery("2026-12", "second", 60)  # another month: another claim
    first.hold_delivery("2026-12", "first", 0.0)  # only the holder moves its claim
    assert not first.claim_delivery("2026-12", "first", 60)
    first.hold_delivery("2026-11", "first", 0.0)  # lapsed (as when its holder died): taken over
    assert second.claim_delivery("2026-11", "second", 60)
    second.record_delivery("2026-11", True, 1.0, "delivered")
    second.hold_delivery("2026-11", "second", 0.0)
    assert not first.claim_delivery("2026-11", "first", 60)  # delivered: claimed by nobody again
    assert not second.claim_delivery("2026-11", "second", 60)
    first.close()
    second.close()


def test_a_save_of_a_state_read_under_an_older_lease_of_the_same_holder_is_refused(pg_url: str) -> None:
    """A holder whose slow sample outlived its lease, and that took the source again after another
    replica had sampled it, must not overwrite that replica's state with the one it read before:
    the other replica's counts would be lost and counted again from the older watermark."""
    first = Leases(pg_url, "a", {"crm": 30.0})
    second = Leases(pg_url, "b", {"crm": 30.0})
    store_a, store_b = PostgresStateStore(pg_url, holder="a"), PostgresStateStore(pg_url, holder="b")
    assert first.round().gained == {"crm"}
    store_a.save("crm", {"watermark": 1})
    assert store_a.load("crm") == {"watermark": 1}  # a's slow sample starts from this state
    store_a._run("UPDATE source_lease SET expires = now() - interval '1 second'")  # a's lease lapses
    assert second.round().gained == {"crm"}
    assert store_b.load("crm") == {"watermark": 1}
    store_b.save("crm", {"watermark": 5})  # b samples it on
    store_b._run("UPDATE source_lease SET expires = now() - interval '1 second'")  # b dies
    assert first.round().gained == {"crm"}  # a takes it again, its slow sample still running
    with pytest.raises(LeaseLost):
        store_a.save("crm", {"watermark": 2})  # the slow sample's save: read before b's
    assert store_a.load("crm") == {"watermark": 5}  # a new term reads b's state again ...
    store_a.save("crm", {"watermark": 6})  # ... and saves on from there
    assert store_b.load("crm") == {"watermark": 6}
    for closing in (store_a, store_b):
        closing.close()
    first._close()
    second._close()
