"""The inventory's `reports:` section: when `serve` writes the monthly summary, where, in which
formats, and the mail server it sends it through."""

from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from collector.inventory.base import Model, examples
from collector.inventory.durations import Duration
from collector.inventory.sources import Credential
from collector.inventory.types import CronExpression

ReportFormat = Literal["html", "md", "json", "csv", "pdf"]
"""A format of the monthly summary (`pdf` only where fabwatch was installed with its PDF renderer)."""
Address = Annotated[str, StringConstraints(pattern=r"^[^@\s<>,;]+@[^@\s<>,;]+$", max_length=254)]
"""An e-mail address, e.g. `fabwatch@example.com` (no display name)."""


class ReportEmail(Model):
    """The mail server the monthly summary is sent through, and who gets it."""

    model_config = examples(
        {"host": "smtp.example.com", "port": 587, "security": "starttls", "username": "fabwatch",
         "password_file": "/run/secrets/smtp", "from": "fabwatch@example.com",
         "to": ["managers@example.com"]},
    )

    host: Annotated[str, StringConstraints(pattern=r"^[^\s/]+$")]
    """Host name or address of the mail server, e.g. `smtp.example.com` (an IPv6 address in brackets)."""
    port: Annotated[int, Field(gt=0, lt=65536)] = 587
    """TCP port of the mail server: 587 for submission with STARTTLS, 465 for implicit TLS, 25 for none."""
    security: Literal["starttls", "tls", "none"] = "starttls"
    """`starttls`: connect in plain text and require the server to switch to TLS before anything else is said;
    `tls`: TLS from the first byte (port 465); `none`: no encryption (a relay on the same host only: the
    password and the report cross the network in clear)."""
    username: Credential | None = None
    """SMTP user name; none: no authentication (needs `password` or `password_file` when given)."""
    password: Credential | None = None
    """The SMTP password; give it as `${ENV}` or `${file:/run/secrets/...}`, not inline; never logged."""
    password_file: Credential | None = None
    """A file holding the SMTP password, read at each delivery (a rotated password is used at once)."""
    from_: Annotated[Address, Field(alias="from")]
    """Sender address of the report mails; the YAML key is `from`."""
    to: Annotated[list[Address], Field(min_length=1)]
    """Recipients of the report, e.g. `[managers@example.com]`."""
    ca_file: str | None = None
    """PEM bundle of the CA that signed the mail server's certificate; none: the system's trusted CAs."""
    timeout: Duration = 60.0
    """Longest one delivery may take, connecting, TLS, login and sending included."""
    attach: list[ReportFormat] = ["html", "pdf"]
    """Formats attached to the mail (those written: `formats`); the mail's text is the Markdown report."""

    @model_validator(mode="after")
    def _credentials(self) -> "ReportEmail":
        if self.password is not None and self.password_file is not None:
            raise ValueError("give at most one of password, password_file")
        if self.username is not None and self.password is None and self.password_file is None:
            raise ValueError("username needs password (as ${ENV}) or password_file")
        if self.username is None and (self.password is not None or self.password_file is not None):
            raise ValueError("a password needs a username")
        return self


class ReportsConfig(Model):
    """Write the monthly summary on a schedule while serving, serve it at `/reports/`, and mail it."""

    model_config = examples(
        {"schedule": "0 6 1 * *", "directory": "/var/lib/fabwatch/reports", "formats": ["html", "md", "json", "csv"],
         "email": {"host": "smtp.example.com", "username": "fabwatch", "password": "${SMTP_PASSWORD}",
                   "from": "fabwatch@example.com", "to": ["managers@example.com"]}},
    )

    schedule: CronExpression = "0 6 1 * *"
    """When to write (and mail) the report of the previous calendar month: a five-field crontab on the wall clock
    of `service.timezone` (default: 06:00 on the 1st)."""
    directory: str | None = None
    """Directory the reports are written to and served from at `/reports/`; none: `reports` beside the state
    file (`service.state_path`, or `--state`), or in the working directory when the state is a PostgreSQL URL."""
    formats: Annotated[list[ReportFormat], Field(min_length=1)] = ["html", "md", "json", "csv"]
    """Formats written, as `fabwatch report --format` takes them."""
    email: ReportEmail | None = None
    """Mail each report to these recipients; none: the reports are only written."""
    retries: Annotated[int, Field(ge=0, le=20)] = 6
    """Attempts after a failed delivery, each after twice the wait of the one before, starting at `retry_after`
    (1, 2, 4 ... minutes); the next scheduled run, or a restart, tries again too."""
    retry_after: Duration = 60.0
    """Wait before the first retry of a failed delivery."""
