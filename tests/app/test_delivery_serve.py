"""A real `fabwatch serve` delivering the scheduled report to a real SMTP server (aiosmtpd): the
schedule fires on the service clock (`--clock-start`), a refused login is logged, retried and
counted, the generated alert fires on the values the service exported (promtool), the report is
served at `/reports/`, and a restart does not mail it again."""

from __future__ import annotations

import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from alerts.build import HEALTH, build, rule_files
from alerts.unittests import Steps, report_tests
from alerts.writer import dump, write
from collector.inventory.load import load_inventory
from tests.app.test_cli import run_fabwatch
from tests.app.test_delivery import FIRE, inventory_with_reports
from tests.servers import free_port
from tests.smtp import Inbox, smtp_server
from tests.test_secrets import Drained

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # a loopback test server
SECRET = "serve-Mail-Pa55-91"


def metric(url: str, name: str, **labels: str) -> float | None:
    """One sample of `/metrics`, or None when it is not exported."""
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    selector = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = "^" + re.escape(name) + (r"\{" + re.escape(selector) + r"\}" if labels else "") + r" (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return None if found is None else float(found.group(1))


def wait_for(condition, what: str, serving: Drained, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert serving.proc.poll() is None, f"serve exited while waiting for {what}: {''.join(serving.err)}"
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {''.join(serving.err[-20:])}")


def serve(inventory: Path, port: int) -> Drained:
    proc = run_fabwatch("serve", "-c", str(inventory), "--listen", f"127.0.0.1:{port}",
                        "--clock-start", str(FIRE - 4))  # the schedule fires 4 s after start
    drained = Drained(proc)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "".join(drained.err)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5):
                return drained
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    drained.stop()
    raise AssertionError("serve never answered")


def test_serve_delivers_on_schedule_retries_a_refused_login_and_never_mails_twice(tmp_path: Path,
                                                                                 promtool: str) -> None:
    password_file = tmp_path / "smtp-password"
    password_file.write_text("wrong\n")
    inbox = Inbox()
    with smtp_server(user="fabwatch", password=SECRET, inbox=inbox) as server:
        inventory_with_reports(tmp_path, server, SECRET, retries=8, retry_after="1s")
        path = tmp_path / "inventory.yaml"
        data = yaml.safe_load(path.read_text())
        del data["reports"]["email"]["password"]
        data["reports"]["email"]["password_file"] = str(password_file)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        port = free_port()
        url = f"http://127.0.0.1:{port}/metrics"

        drained = serve(path, port)
        try:
            assert metric(url, "fab_report_deliveries_total", result="auth") == 0  # every result from the start
            observed: list[float] = []

            def failed_twice() -> bool:
                value = metric(url, "fab_report_delivery_failed_attempts") or 0.0
                if value and (not observed or observed[-1] != value):
                    observed.append(value)
                return value >= 2

            wait_for(failed_twice, "two failed attempts", drained)
            assert inbox.messages == []
            password_file.write_text(SECRET + "\n")  # fixed: the next retry reads it
            [message] = inbox.wait(1, timeout=60)
            wait_for(lambda: metric(url, "fab_report_deliveries_total", result="delivered") == 1, "the delivery",
                     drained)
            assert metric(url, "fab_report_delivery_failed_attempts") == 0
            auth_failures = metric(url, "fab_report_deliveries_total", result="auth")
            assert auth_failures is not None
            assert auth_failures >= 2
            last = metric(url, "fab_report_last_success_timestamp_seconds")
            assert last is not None
            assert FIRE <= last < FIRE + 120
            listing = urllib.request.urlopen(f"http://127.0.0.1:{port}/reports/", timeout=5).read().decode()
            assert 'data-month="2026-11"' in listing
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/reports/fabwatch-report-2026-11.html",
                                        timeout=5) as reply:
                assert reply.headers["Content-Type"] == "text/html; charset=utf-8"
                assert reply.read() == (tmp_path / "reports" / "fabwatch-report-2026-11.html").read_bytes()
        finally:
            code, _, err = drained.stop()
        assert code == 0, err
        assert "2026-11" in message["Subject"]
        assert [p.get_filename() for p in message.iter_attachments()] == ["fabwatch-report-2026-11.html"]
        failed = [line for line in err.splitlines() if "event=report_delivery_failed" in line]
        assert failed
        assert all("reason=auth" in line and f"server=127.0.0.1:{server.port}" in line for line in failed), failed
        assert "login as fabwatch refused: 535" in failed[0]
        assert "event=report_retry_scheduled" in err
        assert "event=report_delivered" in err
        assert SECRET not in err

        again = serve(path, port)  # restarted: 06:00 comes again on its clock
        try:
            wait_for(lambda: any("event=report_already_delivered" in line for line in again.err),
                     "the run after the restart", again)
        finally:
            code, _, err = again.stop()
        assert code == 0, err
        assert len(inbox.messages) == 1  # not mailed twice

    # the alert the rules generate for this inventory fires on what the service exported
    inventory = load_inventory([path])
    rules = tmp_path / "alerts"
    write(build(inventory).documents, rules)
    steps = Steps(inventory.alerting.slo.evaluation_interval)
    tests = report_tests(inventory, rule_files(inventory)[HEALTH], steps, failing=observed)
    assert tests
    (rules / "tests" / "delivery.test.yml").write_text(dump({
        "rule_files": [f"../rules/{HEALTH}.rules.yml"], "evaluation_interval": f"{steps.interval:g}s",
        "tests": tests}))
    result = subprocess.run([promtool, "test", "rules", str(rules / "tests" / "delivery.test.yml")],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
