"""The monthly report as a mail: the Markdown report as its text, the HTML (and PDF) attached, sent
with aiosmtplib through the inventory's mail server (`reports.email`).

A failed delivery raises `DeliveryFailed` with a `reason` (the `result` label of
`fab_report_deliveries_total`) and a message that says which server and what failed, never a
password.
"""

import asyncio
import ssl
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

import aiosmtplib

from collector.inventory.reports import ReportEmail
from collector.logs import mask_secrets

CONTENT_TYPES = {"html": ("text", "html"), "md": ("text", "markdown"), "json": ("application", "json"),
                 "csv": ("text", "csv"), "pdf": ("application", "pdf")}
"""The MIME type of each report format, for attachments and for `/reports/`."""


class DeliveryFailed(Exception):
    """A report that could not be delivered: `reason` says what failed, the message which server and how."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def server_of(email: ReportEmail) -> str:
    """HOST:PORT of the mail server, for messages."""
    return f"{email.host}:{email.port}"


def build_message(email: ReportEmail, subject: str, text: str, attachments: Sequence[Path]) -> EmailMessage:
    """The mail: `text` (the Markdown report) as its body, each file attached under its own name."""
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = email.from_
    message["To"] = ", ".join(email.to)
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=email.from_.rsplit("@", 1)[1])
    message.set_content(text, subtype="plain", charset="utf-8")
    for path in attachments:
        maintype, subtype = CONTENT_TYPES.get(path.suffix.lstrip("."), ("application", "octet-stream"))
        if maintype == "text":  # with its charset, so that mail clients show the umlauts of a name right
            message.add_attachment(path.read_text(encoding="utf-8"), subtype=subtype, charset="utf-8",
                                   filename=path.name)
        else:
            message.add_attachment(path.read_bytes(), maintype=maintype, subtype=subtype, filename=path.name)
    return message


def password_of(email: ReportEmail) -> str | None:
    """The SMTP password: inline (from `${ENV}`), or read from `password_file` now (a rotated one is used at once)."""
    if email.password_file is None:
        return email.password
    try:
        return Path(email.password_file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise DeliveryFailed("auth", f"cannot read password_file {email.password_file}: {exc.strerror}") from None


def tls_context(email: ReportEmail) -> ssl.SSLContext:
    """The context checking the server's certificate: against `ca_file`, else the system's CAs."""
    try:
        return ssl.create_default_context(cafile=email.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise DeliveryFailed("tls", f"cannot read ca_file {email.ca_file}: {exc}") from None


async def send(email: ReportEmail, message: EmailMessage) -> list[str]:
    """Send `message` to the recipients; raise `DeliveryFailed` saying what went wrong. Return the
    recipients the server refused while it took the others (sent again, the others would get it twice)."""
    password = password_of(email)
    where = f"mail server {server_of(email)}"
    context = tls_context(email) if email.security != "none" else None
    try:
        async with asyncio.timeout(email.timeout):  # the whole delivery: aiosmtplib's timeout bounds each answer
            refused, _ = await aiosmtplib.send(
                message, hostname=email.host.strip("[]"), port=email.port, username=email.username,
                password=password, use_tls=email.security == "tls", start_tls=email.security == "starttls",
                tls_context=context, timeout=email.timeout, recipients=list(email.to))
    except aiosmtplib.SMTPAuthenticationError as exc:
        raise DeliveryFailed("auth", f"{where}: login as {email.username} refused: {_said(exc)}") from None
    except aiosmtplib.SMTPRecipientsRefused as exc:
        said = "; ".join(f"{r.recipient}: {_said(r)}" for r in exc.recipients)
        raise DeliveryFailed("refused", f"{where}: every recipient refused: {said}") from None
    except aiosmtplib.SMTPResponseException as exc:  # sender refused, data refused, any 4xx/5xx answer
        raise DeliveryFailed("refused", f"{where}: {type(exc).__name__}: {_said(exc)}") from None
    except (aiosmtplib.SMTPConnectTimeoutError, aiosmtplib.SMTPTimeoutError) as exc:
        raise DeliveryFailed("timeout", f"{where}: no answer within {email.timeout:g} s: {_clean(exc)}") from None
    except TimeoutError:  # asyncio.timeout: the whole delivery took longer (each answer came in time)
        raise DeliveryFailed("timeout", f"{where}: not delivered within {email.timeout:g} s") from None
    except aiosmtplib.SMTPNotSupported as exc:  # no STARTTLS offered, no AUTH offered
        raise DeliveryFailed("tls" if "TLS" in str(exc).upper() else "auth", f"{where}: {_clean(exc)}") from None
    except ssl.SSLError as exc:
        raise DeliveryFailed("tls", f"{where}: TLS failed: {_clean(exc)}") from None
    except aiosmtplib.SMTPConnectError as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ssl.SSLError):
            raise DeliveryFailed("tls", f"{where}: TLS failed: {_clean(cause)}") from None
        raise DeliveryFailed("connection", f"{where}: cannot connect: {_clean(exc)}") from None
    except (aiosmtplib.SMTPException, OSError) as exc:  # no STARTTLS offered, disconnected mid-way, DNS
        tls = isinstance(exc.__cause__ or exc.__context__, ssl.SSLError) or "STARTTLS" in str(exc).upper()
        reason = "tls" if tls else "connection"
        raise DeliveryFailed(reason, f"{where}: {type(exc).__name__}: {_clean(exc)}") from None
    return [f"{who}: {_said(answer)}" for who, answer in refused.items()]


def _said(answer: object) -> str:
    """What the server answered: its code and text, masked and on one line."""
    code = getattr(answer, "code", None)
    text = getattr(answer, "message", None) or str(answer)
    return _clean(f"{code} {text}" if code is not None else text)


def _clean(exc: object) -> str:
    return mask_secrets(" ".join(str(exc).split()))[:300]
