"""Structured logs: one key=value event per line, passwords never shown."""

import io
import logging

from collector.logs import log_event, quote, safe_dsn, setup_logging


def test_safe_dsn_hides_the_password():
    assert safe_dsn("postgresql+asyncpg://fab:s3cret@db:5432/crm") == \
        "postgresql+asyncpg://fab:***@db:5432/crm"
    assert safe_dsn("https://fab:s3cret@tt.example/tmf-api/troubleTicket/v4") == \
        "https://fab:***@tt.example/tmf-api/troubleTicket/v4"
    assert safe_dsn("://no scheme") == "<unparsable DSN>"
    assert safe_dsn("/data/finance/costs-*.csv") == "/data/finance/costs-*.csv"  # a cost_csv source: a path


def test_quote():
    assert quote("crm") == "crm"
    assert quote("two words") == '"two words"'
    assert quote('a "b"\nc') == '"a \\"b\\"\\nc"'
    assert quote(0.25) == "0.25"
    assert quote(None) == '""'


def test_one_event_per_line_with_traceback_inline():
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        setup_logging("debug", stream)
        setup_logging("debug", stream)  # a second call replaces, not duplicates, the handler
        logger = logging.getLogger("fabwatch.test")
        log_event(logger, "sample_done", source="crm", seconds=0.5, note="a b")
        try:
            raise ValueError("boom")
        except ValueError:
            log_event(logger, "sample_failed", logging.ERROR, exc_info=True, source="crm")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert "level=info logger=fabwatch.test event=sample_done source=crm seconds=0.5 " \
           'note="a b"' in lines[0]
    assert lines[1].startswith("ts=")
    assert "event=sample_failed" in lines[1]
    assert 'exc="Traceback' in lines[1]
    assert "ValueError: boom" in lines[1]


def test_apschedulers_skip_warnings_are_left_to_fabwatchs_own_events():
    """A skipped run is logged once, by the scheduler's `run_skipped_still_running` with its source."""
    import io
    import logging

    stream = io.StringIO()
    setup_logging("info", stream)
    logging.getLogger("apscheduler.executors.default").warning(
        'Execution of job "crm" skipped: maximum number of running instances reached (1)')
    assert stream.getvalue() == ""
    logging.getLogger("apscheduler.scheduler").error("Error adding job")
    assert "Error adding job" in stream.getvalue()
