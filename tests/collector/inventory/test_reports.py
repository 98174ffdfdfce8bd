"""The inventory's `reports:` section: defaults, the password from the environment, and errors that
name their path."""

from pathlib import Path

import pytest

from collector.inventory.load import ConfigError, load_inventory
from tests.collector.inventory.test_load import GOOD, write


def load(tmp_path: Path, reports: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return load_inventory([write(tmp_path, "inv.yaml", GOOD + reports)], env or {})


def problems(tmp_path: Path, reports: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, reports)
    return str(caught.value)


def test_defaults_and_a_password_from_the_environment(tmp_path: Path) -> None:
    inventory = load(tmp_path, """
reports:
  email: {host: smtp.example.com, username: fab, password: "${SMTP_PASSWORD}", from: fab@example.com,
          to: [boss@example.com]}
""", {"SMTP_PASSWORD": "from-env"})
    reports = inventory.reports
    assert reports is not None
    assert (reports.schedule, reports.directory, reports.formats) == ("0 6 1 * *", None, ["html", "md", "json", "csv"])
    assert reports.email is not None
    assert (reports.email.port, reports.email.security, reports.email.password) == (587, "starttls", "from-env")
    assert load(tmp_path, "").reports is None


@pytest.mark.parametrize(("reports", "path", "says"), [
    ("reports: {schedule: '0 6 1 *'}", "reports.schedule", "five fields"),
    ("reports: {formats: [html, docx]}", "reports.formats.1", "'csv' or 'pdf'"),
    ("reports: {email: {host: h, from: a@b.c, to: []}}", "reports.email.to", "at least 1"),
    ("reports: {email: {host: h, from: a@b.c, to: [x@y.z], username: u}}", "reports.email",
     "username needs password"),
    ("reports: {email: {host: h, from: a@b.c, to: [x@y.z], username: u, password: p, password_file: /f}}",
     "reports.email", "at most one of password, password_file"),
    ("reports: {email: {host: h, from: not-an-address, to: [x@y.z]}}", "reports.email.from", "not-an-address"),
    ("reports: {email: {host: h, from: a@b.c, to: [x@y.z], security: ssl}}", "reports.email.security", "starttls"),
])
def test_a_bad_setting_names_its_path(tmp_path: Path, reports: str, path: str, says: str) -> None:
    text = problems(tmp_path, reports + "\n")
    assert path in text
    assert says in text
