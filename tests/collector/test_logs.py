"""Structured logs: one key=value event per line, passwords never shown."""

import io
import logging

from collector.logs import log_event, mask_secrets, quote, safe_dsn, setup_logging


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


def test_safe_dsn_hides_credentials_in_the_query_and_an_http_password() -> None:
    assert safe_dsn("https://api.example/v1/items?api_key=kE&page=2&Token=tO&sig=sI&X-Amz-Signature=aS") == \
        "https://api.example/v1/items?api_key=***&page=2&Token=***&sig=***&X-Amz-Signature=***"
    assert safe_dsn("https://fab:pA@sS@api.example:8443/v1?apiKey=kE#top") == \
        "https://fab:***@api.example:8443/v1?apiKey=***#top"  # aiohttp reads the last '@' as the host's
    assert safe_dsn("postgresql+asyncpg://fab:pW@db/crm?password=pQ&ssl=require") == \
        "postgresql+asyncpg://fab:***@db/crm?password=***&ssl=require"


def test_mask_secrets_in_an_error_quoting_a_url() -> None:
    text = "GET https://api.example/v1: 302, message='Found', url='https://api.example/v1?access_token=tO&a=1'"
    assert mask_secrets(text) == \
        "GET https://api.example/v1: 302, message='Found', url='https://api.example/v1?access_token=***&a=1'"


def test_safe_dsn_hides_an_all_digit_password_and_one_that_cut_the_address_short() -> None:
    assert safe_dsn("http://u:1234@host/") == "http://u:***@host/"
    assert safe_dsn("http://u:1234@host") == "http://u:***@host"
    assert safe_dsn("https://u:1234@[::1]:8443/x?a=1") == "https://u:***@[::1]:8443/x?a=1"
    # a '/', '?' or '#' in the password: parsers read host "u" and port 1234, the rest as the path
    assert safe_dsn("http://u:1234/5678@host/v1") == "http://u:***@host/v1"
    assert safe_dsn("http://u:1234?5678@host/v1?token=tK") == "http://u:***@host/v1?token=***"
    assert safe_dsn("http://u:1234#5678@host/") == "http://u:***@host/"
    assert safe_dsn("http://host:8080/users/a@b.example") == "http://host:8080/users/a@b.example"


def test_safe_dsn_hides_a_token_given_as_the_user_name() -> None:
    """GitHub-style `https://TOKEN@host` and `https://TOKEN:@host`: the user name is the credential."""
    assert safe_dsn("https://ghp_SECRET@api.example/v1") == "https://***@api.example/v1"
    assert safe_dsn("https://SECRET:@api.example/v1?page=2") == "https://***@api.example/v1?page=2"
    assert safe_dsn("https://fab:pW@api.example/v1") == "https://fab:***@api.example/v1"  # a user name kept
    assert safe_dsn("https://api.example/users/a@b.example") == "https://api.example/users/a@b.example"


def test_mask_secrets_knows_more_credential_names_and_reads_a_value_up_to_amp_or_hash() -> None:
    assert mask_secrets("https://h/cb?code=c0dE&state=s") == "https://h/cb?code=***&state=s"
    for name in ("Authorization", "id_jwt", "bearer", "client_assertion", "auth_code"):
        assert mask_secrets(f"https://h/x?{name}=sEcret&a=1") == f"https://h/x?{name}=***&a=1", name
    assert mask_secrets("https://h/x?token=ab;cd&a=1#f") == "https://h/x?token=***&a=1#f"  # not `***;cd`
    assert mask_secrets("https://h/x?page=1;token=tK&a=1") == "https://h/x?page=1;token=***&a=1"
    assert mask_secrets("https://h/x?country_code=&a=1") == "https://h/x?country_code=&a=1"  # nothing to hide
