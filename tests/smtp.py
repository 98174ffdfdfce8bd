"""A real SMTP server for the mail tests: aiosmtpd on a free loopback port, in its own thread, with
a login, STARTTLS or implicit TLS as the test asks, keeping every message it accepts."""

from __future__ import annotations

import asyncio
import email
import email.policy
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.servers import free_port


@dataclass
class Inbox:
    """What the server accepted, and the logins it was offered."""

    refuse_rcpt: set[str] = field(default_factory=set)
    """Recipients answered 550."""
    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    logins: list[tuple[str, bool]] = field(default_factory=list)
    tls: list[bool] = field(default_factory=list)
    """Whether each accepted message came over TLS."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if address in self.refuse_rcpt:
            return "550 5.1.1 no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        message = email.message_from_bytes(content, policy=email.policy.default)
        with self.lock:
            self.messages.append(message)  # type: ignore[arg-type]
            self.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
            self.tls.append(server.transport.get_extra_info("ssl_object") is not None)
        return "250 Message accepted"

    def wait(self, count: int, timeout: float = 90.0) -> list[EmailMessage]:
        """The messages once there are `count` of them (fails after `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.05)
        raise AssertionError(f"the SMTP server received {len(self.messages)} messages, not {count}")


    async def arrived(self, count: int, timeout: float = 90.0) -> list[EmailMessage]:
        """`wait` without blocking the event loop (for a test whose sender runs in the same loop)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            await asyncio.sleep(0.05)
        raise AssertionError(f"the SMTP server received {len(self.messages)} messages, not {count}")


@dataclass
class SmtpServer:
    host: str
    port: int
    inbox: Inbox


class _Login:
    """Accepts one user and password; records every attempt."""

    def __init__(self, inbox: Inbox, user: str, password: str) -> None:
        self.inbox, self.user, self.password = inbox, user, password

    def __call__(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                 auth_data: Any) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login.decode() == self.user
              and auth_data.password.decode() == self.password)
        login = auth_data.login.decode() if isinstance(auth_data, LoginPassword) else "?"
        with self.inbox.lock:
            self.inbox.logins.append((login, ok))
        return AuthResult(success=ok, handled=False)


@contextmanager
def smtp_server(*, user: str | None = None, password: str | None = None, starttls: ssl.SSLContext | None = None,
                implicit_tls: ssl.SSLContext | None = None, inbox: Inbox | None = None) -> Iterator[SmtpServer]:
    """Run an SMTP server on 127.0.0.1 until the block ends. `user`/`password`: a login is required;
    `starttls`: STARTTLS offered and required with this context; `implicit_tls`: TLS from the first byte."""
    inbox = inbox or Inbox()
    port = free_port()
    options: dict[str, Any] = {}
    if user is not None:
        assert password is not None
        options.update(authenticator=_Login(inbox, user, password), auth_required=True,
                       auth_require_tls=starttls is not None or implicit_tls is not None)
    if starttls is not None:
        options.update(tls_context=starttls, require_starttls=True)
    controller = Controller(inbox, hostname="127.0.0.1", port=port, ssl_context=implicit_tls,
                            server_hostname="127.0.0.1", ready_timeout=10, **options)
    controller.start()
    try:
        yield SmtpServer("127.0.0.1", port, inbox)
    finally:
        controller.stop()


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """The server side's TLS context for a certificate and its key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context
