"""The report mail against a real SMTP server (aiosmtpd) started by each test: plain with a login,
STARTTLS and implicit TLS with a certificate the test made, and each way a delivery fails."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from collector.inventory.reports import ReportEmail
from reports.mail import DeliveryFailed, build_message, send
from tests.servers import free_port
from tests.smtp import server_context, smtp_server
from tests.sources.tls import make_pki

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # a loopback test server
SECRET = "s3cret-Pa55"


def settings(port: int, **extra: Any) -> ReportEmail:
    values = {"host": "127.0.0.1", "port": port, "security": "none", "from": "fabwatch@example.com",
              "to": ["boss@example.com", "cfo@example.com"], "timeout": "10s", **extra}
    return ReportEmail.model_validate(values)


def attachments(tmp_path: Path) -> list[Path]:
    html = tmp_path / "fabwatch-report-2026-11.html"
    html.write_text("<!doctype html><title>r</title><p>Überblick</p>", encoding="utf-8")
    pdf = tmp_path / "fabwatch-report-2026-11.pdf"
    pdf.write_bytes(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    return [html, pdf]


def mail(email: ReportEmail, tmp_path: Path) -> list[str]:
    message = build_message(email, "fabwatch monthly report 2026-11", "# Report 2026-11\n\nAll on track.\n",
                            attachments(tmp_path))
    return asyncio.run(send(email, message))


def failure(email: ReportEmail, tmp_path: Path) -> DeliveryFailed:
    with pytest.raises(DeliveryFailed) as caught:
        mail(email, tmp_path)
    return caught.value


def test_a_mail_arrives_with_its_subject_text_and_attachments(tmp_path: Path) -> None:
    with smtp_server(user="fabwatch", password=SECRET) as server:
        refused = mail(settings(server.port, username="fabwatch", password=SECRET), tmp_path)
        [message] = server.inbox.wait(1)
    assert refused == []
    assert server.inbox.logins == [("fabwatch", True)]
    assert server.inbox.envelopes == [("fabwatch@example.com", ["boss@example.com", "cfo@example.com"])]
    assert message["Subject"] == "fabwatch monthly report 2026-11"
    assert message["To"] == "boss@example.com, cfo@example.com"
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert text.replace("\r\n", "\n") == "# Report 2026-11\n\nAll on track.\n"  # lines end in CRLF on the wire
    parts = {part.get_filename(): part for part in message.iter_attachments()}
    assert set(parts) == {"fabwatch-report-2026-11.html", "fabwatch-report-2026-11.pdf"}
    assert parts["fabwatch-report-2026-11.html"].get_content_type() == "text/html"
    assert "Überblick" in parts["fabwatch-report-2026-11.html"].get_content()
    assert parts["fabwatch-report-2026-11.pdf"].get_content_type() == "application/pdf"
    assert parts["fabwatch-report-2026-11.pdf"].get_content() == (tmp_path / "fabwatch-report-2026-11.pdf").read_bytes()


def test_a_refused_login_says_which_server_and_user_never_the_password(tmp_path: Path) -> None:
    with smtp_server(user="fabwatch", password=SECRET) as server:
        error = failure(settings(server.port, username="fabwatch", password="wrong-" + SECRET), tmp_path)
        assert server.inbox.messages == []
    assert error.reason == "auth"
    assert f"127.0.0.1:{server.port}" in str(error)
    assert "login as fabwatch refused: 535" in str(error)
    assert SECRET not in str(error)


def test_the_password_file_is_read_at_each_delivery(tmp_path: Path) -> None:
    secret = tmp_path / "smtp-password"
    secret.write_text("wrong\n")
    email = settings(25, username="fabwatch", password_file=str(secret))
    with smtp_server(user="fabwatch", password=SECRET) as server:
        email = email.model_copy(update={"port": server.port})
        assert failure(email, tmp_path).reason == "auth"
        secret.write_text(SECRET + "\n")  # rotated: the next delivery uses it
        mail(email, tmp_path)
        assert server.inbox.wait(1)


def test_starttls_with_a_certificate_the_test_made(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    context = server_context(str(pki.server_cert), str(pki.server_key))
    with smtp_server(user="fabwatch", password=SECRET, starttls=context) as server:
        mail(settings(server.port, security="starttls", ca_file=str(pki.ca), username="fabwatch", password=SECRET),
             tmp_path)
        server.inbox.wait(1)
        assert server.inbox.tls == [True]
        untrusted = failure(settings(server.port, security="starttls", username="fabwatch", password=SECRET),
                            tmp_path)  # the system's CAs do not know the test's CA
    assert untrusted.reason == "tls"
    assert "certificate verify failed" in str(untrusted)
    assert f"127.0.0.1:{server.port}" in str(untrusted)


def test_implicit_tls(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    context = server_context(str(pki.server_cert), str(pki.server_key))
    with smtp_server(implicit_tls=context) as server:
        mail(settings(server.port, security="tls", ca_file=str(pki.ca)), tmp_path)
        server.inbox.wait(1)
        assert server.inbox.tls == [True]


def test_starttls_required_but_not_offered_fails_as_tls(tmp_path: Path) -> None:
    with smtp_server() as server:  # no STARTTLS: the report must not go out in clear
        error = failure(settings(server.port, security="starttls"), tmp_path)
        assert server.inbox.messages == []
    assert error.reason == "tls"


def test_a_closed_port_fails_as_connection(tmp_path: Path) -> None:
    port = free_port()
    error = failure(settings(port), tmp_path)
    assert error.reason == "connection"
    assert f"127.0.0.1:{port}" in str(error)


def test_refused_recipients(tmp_path: Path) -> None:
    with smtp_server() as server:
        server.inbox.refuse_rcpt.update({"boss@example.com", "cfo@example.com"})
        error = failure(settings(server.port), tmp_path)
        assert error.reason == "refused"
        assert "550" in str(error)
        server.inbox.refuse_rcpt.discard("cfo@example.com")  # one refused: the other gets it, once
        refused = mail(settings(server.port), tmp_path)
        assert [r.split(":")[0] for r in refused] == ["boss@example.com"]
        assert server.inbox.wait(1)[0]["Subject"] == "fabwatch monthly report 2026-11"


def test_timeout_bounds_the_whole_delivery_not_each_answer(tmp_path: Path) -> None:
    """`timeout` is documented as the longest one delivery may take; aiosmtplib's own timeout bounds each
    answer, so a server answering every command just in time (a tarpit) held a delivery for
    as many timeouts as it has commands."""
    answers = {b"EHLO": b"250 slow.example\r\n", b"MAIL": b"250 ok\r\n", b"RCPT": b"250 ok\r\n",
               b"DATA": b"354 go on\r\n", b"QUIT": b"221 bye\r\n"}

    async def tarpit(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.4)
        writer.write(b"220 slow.example ESMTP\r\n")
        while line := await reader.readline():
            await asyncio.sleep(0.4)
            if line.startswith(b"DATA"):
                writer.write(answers[b"DATA"])
                while (await reader.readline()) not in (b".\r\n", b""):
                    pass
                await asyncio.sleep(0.4)
                writer.write(b"250 queued\r\n")
            else:
                writer.write(answers.get(line[:4].upper(), b"250 ok\r\n"))
            await writer.drain()
        writer.close()

    async def run() -> tuple[DeliveryFailed | None, float]:
        server = await asyncio.start_server(tarpit, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        email = settings(port, timeout="1s")
        message = build_message(email, "fabwatch monthly report 2026-11", "text\n", attachments(tmp_path))
        started = asyncio.get_running_loop().time()
        try:
            await send(email, message)
        except DeliveryFailed as exc:
            return exc, asyncio.get_running_loop().time() - started
        finally:
            server.close()
        return None, asyncio.get_running_loop().time() - started

    error, took = asyncio.run(run())
    assert error is not None, f"delivered after {took:.1f} s with a timeout of 1 s"
    assert error.reason == "timeout"
    assert "127.0.0.1" in str(error)
    assert took < 2.0
