"""Issue acceptance on the real thing: `fabwatch demo` as a user starts it, scraped by a real Prometheus,
writing the report of the last full month of its history."""

import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from app.report import last_full_month
from tests.conftest import PrometheusFactory
from tests.servers import free_port, require_binary, stop_process

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[1]
PROCESSES = {"interface", "order", "problem", "retention", "qos_sla", "invoice", "payments", "bill_inquiry"}
CONTRACT = ("fab_items_created_total", "fab_backlog_items", "fab_cycle_time_seconds_bucket", "fab_sla_good_total",
            "fab_sla_valid_total", "fab_cost_total", "fab_kpi_value", "fab_kpi_target")
PROMETHEUS = """
global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: fabwatch
    static_configs: [{targets: ["%s"]}]
"""


def processes_of(body: str, metric: str) -> set[str]:
    return set(re.findall(rf'^{metric}\{{[^}}]*process="([a-z_]+)"', body, re.MULTILINE))


def complete(body: str) -> bool:
    up = 'fab_source_up{source="operator"} 1.0' in body
    return up and all(processes_of(body, metric) == PROCESSES for metric in CONTRACT)


class Lines:
    """The lines a process prints, read as they come (so that its pipe never fills)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stdout is not None
        stream = proc.stdout
        threading.Thread(target=lambda: self.lines.extend(iter(stream.readline, "")), daemon=True).start()

    def starting(self, prefix: str, count: int, timeout: float) -> list[str]:
        """Wait (at most `timeout` seconds) for `count` lines starting with `prefix`; return those seen."""
        deadline = time.monotonic() + timeout
        while True:
            found = [line.rstrip("\n") for line in list(self.lines) if line.startswith(prefix)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.2)


@pytest.fixture
def demo(tmp_path: Path):
    """Start the demo exactly as the README does (default 35-day backfill), on a free port, in a working
    directory of its own (where it writes its report)."""
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    workdir = tmp_path / "work"
    workdir.mkdir()
    with (tmp_path / "stderr").open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "demo", "--data-dir", str(tmp_path / "demo"), "--listen", address],
            cwd=workdir, stdout=subprocess.PIPE, stderr=err, text=True)
    yield address, proc, started, Lines(proc), workdir
    stop_process(proc)  # type: ignore[arg-type]


def test_demo_serves_the_contract_for_all_eight_processes_within_30_seconds(demo, promtool, prometheus_factory:
                                                                            PrometheusFactory) -> None:
    address, proc, started, printed, workdir = demo
    body = ""
    while time.monotonic() - started < 30 and not complete(body):
        assert proc.poll() is None, printed.lines
        try:
            with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
                body = response.read().decode()
        except OSError:
            pass
        time.sleep(0.2)
    elapsed = time.monotonic() - started
    missing = {m: PROCESSES - processes_of(body, m) for m in CONTRACT if processes_of(body, m) != PROCESSES}
    assert complete(body), f"after {elapsed:.1f}s, missing processes per metric: {missing}"

    lint = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, text=True, check=False)
    assert lint.returncode == 0, lint
    assert not (lint.stdout + lint.stderr).strip(), lint

    prometheus = prometheus_factory(PROMETHEUS % address)
    series = prometheus.wait_for("sum by (process) (fab_items_created_total)",
                                 lambda result: len(result) == len(PROCESSES), timeout=30)
    assert {s["metric"]["process"] for s in series} == PROCESSES
    assert all(float(s["value"][1]) > 0 for s in series)

    # the report of the last full month, in the working directory, its paths printed
    month = str(last_full_month("Europe/Berlin"))  # examples/operator.yaml's service.timezone
    reports = printed.starting("report: ", 2, timeout=180)
    assert reports == [f"report: {workdir / f'fabwatch-report-{month}.{ext}'}" for ext in ("html", "pdf")], \
        printed.lines
    html = (workdir / f"fabwatch-report-{month}.html").read_text(encoding="utf-8")
    assert f"monthly summary, {month}" in html
    assert "days have figures" not in html  # every day of the month rolled up: none is missing
    assert html.count('<td class="status-') == len(PROCESSES)
    first = subprocess.run([require_binary("pdftotext"), "-l", "1", str(workdir / f"fabwatch-report-{month}.pdf"),
                            "-"], capture_output=True, text=True, check=True, timeout=60).stdout
    first = " ".join(first.split())
    assert f"monthly summary, {month}" in first
    assert "Overview" in first
    assert "Support Customer Problem Management" in first
    assert re.search(r"\bon track\b|\battention\b|\bneeds modification\b", first)
