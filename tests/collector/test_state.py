"""The state store: sources' state and the OTLP exporter's series, kept across reopenings."""

from collector.state import StateStore


def test_otlp_series_are_kept_across_reopenings_and_replaced_by_key(tmp_path):
    store = StateStore(tmp_path / "state.db")
    assert store.otlp_series() == {}
    store.save_otlp_series([("a", 1, "[1.0]", 2), ("b", 3, "[4.0]", 5)])
    store.save_otlp_series([("a", 1, "[7.0]", 8)])
    store.save("crm", {"watermark": 3})
    store.close()
    again = StateStore(tmp_path / "state.db")
    assert again.otlp_series() == {"a": (1, "[7.0]", 8), "b": (3, "[4.0]", 5)}
    assert again.load("crm") == {"watermark": 3}  # beside the sources' state, not instead of it
    again.close()


def test_report_deliveries_are_kept_by_month_across_a_reopen(tmp_path):
    store = StateStore(tmp_path / "state.db")
    assert store.delivery("2026-11") is None
    assert store.last_delivered() is None
    store.record_delivery("2026-11", False, 10.0, "auth: login refused")
    store.record_delivery("2026-10", True, 5.0, "delivered")
    store.close()
    store = StateStore(tmp_path / "state.db")
    assert store.delivery("2026-11") == (False, 10.0, "auth: login refused")
    store.record_delivery("2026-11", True, 20.0, "delivered")  # the retry succeeded: replaces the failure
    assert store.delivery("2026-11") == (True, 20.0, "delivered")
    assert store.last_delivered() == 20.0
    store.close()
