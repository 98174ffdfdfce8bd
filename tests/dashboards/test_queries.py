"""Every panel, variable and annotation query returns data from a real Prometheus scraping fabwatch.

The test runs `fabwatch demo` (the simulator backfilled, then live, sampled by fabwatch), a real
Prometheus scraping it every second and evaluating a rule file whose alerts always fire (so the
`ALERTS` annotations have something to show), substitutes Grafana's variables the way Grafana
would, and evaluates each query: an empty answer (a misspelt metric or label) fails the test.
"""

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collector.inventory.load import load_inventory
from dashboards import promql
from dashboards.selfmon import self_dashboard
from tests.dashboards import lint
from tests.servers import HOST, PrometheusServer, free_port, http_get, start_prometheus, stop_process
from tests.sources.helpers import EVENT_PATH, FabwatchProcess, events_inventory, ticket_event

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RATE_INTERVAL = "20s"
"""What Grafana gives `$__rate_interval` for a short range with a 1 s scrape interval and step."""
RANGE = "1m"
ALL = ".+"
"""The `All` value of every query variable (allValue)."""
ALWAYS_FIRING = """\
groups:
  - name: dashboards-test
    rules:
      - alert: DashboardTestProcess
        expr: count by (process) (fab_backlog_items) >= 0
        labels: {severity: warning}
      - alert: DashboardTestSource
        expr: fab_source_up >= 0
        labels: {severity: warning}
"""
_LABEL_VALUES = re.compile(r"^label_values\((?P<metric>.+),\s*(?P<label>\w+)\)$")


@pytest.fixture(scope="module")
def fabwatch_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Run `fabwatch demo` (35 backfilled days, then live, sampled every second); yield its address.

    One demo for the module: its backfill is the slowest part, and the tests only read what it serves."""
    port = free_port()
    env = {**os.environ, "FABWATCH_INTERVAL": "1s"}
    data = tmp_path_factory.mktemp("demo")
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "demo", "--data-dir", str(data),
                             "--days", "35", "--speed", "60", "--listen", f"{HOST}:{port}"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_ready(f"http://{HOST}:{port}/readyz", proc)
        yield f"{HOST}:{port}"
    finally:
        stop_process(proc, signal.SIGINT)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def demo_prometheus(tmp_path_factory: pytest.TempPathFactory, fabwatch_demo: str) -> Iterator[PrometheusServer]:
    """A Prometheus scraping the demo every second, with alerts that always fire (for the annotations)."""
    prometheus = start_prometheus(
        tmp_path_factory.mktemp("prometheus"),
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "rule_files: [rules.yml]\n"
        f"scrape_configs:\n  - job_name: fabwatch\n    static_configs: [{{targets: ['{fabwatch_demo}']}}]\n",
        {"rules.yml": ALWAYS_FIRING}, ())
    try:
        yield prometheus
    finally:
        prometheus.stop()


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"fabwatch demo exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            if http_get(url)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"fabwatch demo not ready within {timeout}s")


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Replace Grafana's variables the way Grafana would for one choice of values."""
    text = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__range", RANGE)
    for name, value in variables.items():
        text = text.replace(f"${name}", value)
    return text


def custom_choices(model: dict[str, Any]) -> list[dict[str, str]]:
    """Every choice of the custom variables (the query variables are at All)."""
    choices: list[dict[str, str]] = [{}]
    for variable in model["templating"]["list"]:
        if variable["type"] == "custom":
            values = variable["query"].split(",")
            choices = [{**c, variable["name"]: v} for c in choices for v in values]
    return choices


def variable_query(definition: str) -> tuple[str, str]:
    """Turn `label_values(metric, label)` into the series query Grafana runs, and the label."""
    match = _LABEL_VALUES.match(definition)
    assert match, f"unsupported variable query {definition}"
    return f"count by ({match['label']}) ({match['metric']})", match["label"]


def queries(model: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Yield (where, PromQL) for every query of a dashboard, variables substituted."""
    query_vars = {v["name"]: ALL for v in model["templating"]["list"] if v["type"] == "query"}
    for choice in custom_choices(model):
        variables = {**query_vars, **choice}
        for panel in lint.panels(model):
            for target in panel["targets"]:
                yield f"{model['uid']} / {panel['title']} {choice}", substitute(target["expr"], variables)
        for annotation in model["annotations"]["list"]:
            yield f"{model['uid']} / annotation {annotation['name']}", substitute(annotation["expr"], variables)


@pytest.mark.xdist_group("dashboards-demo")  # one worker, one demo (module-scoped)
def test_every_query_returns_data(demo_prometheus, dashboards):
    prometheus = demo_prometheus
    prometheus.wait_for("count_over_time(fab_source_up[1m]) >= 15", timeout=60)
    prometheus.wait_for('ALERTS{alertstate="firing"}', timeout=30)
    empty = []
    for model in dashboards.values():
        for variable in model["templating"]["list"]:
            if variable["type"] == "query":
                expr, label = variable_query(substitute(variable["definition"], {"job": ALL, "instance": ALL}))
                if not [r for r in prometheus.query(expr) if r["metric"].get(label)]:
                    empty.append(f"{model['uid']} / variable {variable['name']}: {expr}")
        empty += [f"{where}: {expr}" for where, expr in queries(model) if not prometheus.query(expr)]
    assert not empty, "queries without data:\n" + "\n".join(empty)


@pytest.mark.xdist_group("dashboards-demo")  # one worker, one demo (module-scoped)
def test_a_misspelt_metric_returns_nothing(demo_prometheus):
    prometheus = demo_prometheus
    prometheus.wait_for("fab_backlog_items")
    assert prometheus.query(substitute('sum(fab_backlog_item{job=~"$job"})', {"job": ALL})) == []


def _post(url: str, body: bytes) -> int:
    """POST one event; return the status (4xx answers included)."""
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_the_event_intake_row_shows_what_a_listener_received(prometheus_factory, tmp_path):
    """With a `tmf_events` source, the self-monitoring dashboard gains the event intake row; its
    queries return data from a real Prometheus scraping `fabwatch serve`, and the refused share is
    the share of the events posted that were refused."""
    port = free_port()
    inventory_path = events_inventory(tmp_path, interval="1s")
    model = self_dashboard(load_inventory([inventory_path], {}))
    intake = [p["title"] for p in lint.panels(model) if "fab_events_received_total" in str(p["targets"])]
    assert intake == ["Events received by result", "Refused share", "Events per commit"]
    assert {"Time since last event", "Group commit duration"} <= {p["title"] for p in lint.panels(model)}
    fabwatch = FabwatchProcess(inventory_path, port, log=tmp_path / "fabwatch.log")
    fabwatch.start()
    try:
        prometheus = prometheus_factory(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "rule_files: [rules.yml]\n"
            f"scrape_configs:\n  - job_name: fabwatch\n    static_configs: [{{targets: ['{HOST}:{port}']}}]\n",
            files={"rules.yml": ALWAYS_FIRING})
        prometheus.wait_for("count_over_time(fab_events_received_total[1m]) >= 2")  # the zeros, scraped
        prometheus.wait_for('ALERTS{alertstate="firing"}', timeout=30)
        url = f"http://{HOST}:{port}{EVENT_PATH}"
        events = [ticket_event(n, n, 1) for n in range(30)] + [ticket_event(0, 0, 1)] * 2  # 2 redeliveries
        statuses = [_post(url, event) for event in events] + [_post(url, b"{") for _ in range(10)]
        assert statuses == [201] * 32 + [400] * 10
        prometheus.wait_for("sum(fab_events_received_total) == 42", timeout=30)
        empty = [f"{where}: {expr}" for where, expr in queries(model) if not prometheus.query(expr)]
        every = {"job": ALL, "instance": ALL, "source": ALL}
        share = prometheus.query(substitute(promql.events_refused_share(), every))
        per_commit = prometheus.query(substitute(promql.events_per_commit(), every))
    finally:
        fabwatch.stop()
    assert not empty, "queries without data:\n" + "\n".join(empty)
    assert [(s["metric"]["source"], round(float(s["value"][1]), 6)) for s in share] == [("events", round(10 / 42, 6))]
    # one event at a time: each of the 32 stored or redelivered events had a commit of its own
    assert [(s["metric"]["source"], round(float(s["value"][1]), 6)) for s in per_commit] == [("events", 1.0)]
