"""The peers' workload through fabwatch: a real Prometheus scraping `fabwatch serve` answers the
peers' five KPIs with the PromQL of bench/kpi_promql.yaml, equal to the peers' own SQL.

The data is the peers' generator (../shared/bench/peers/make_db.py, 40,000 rows, timestamps ending
at its fixed NOW). fabwatch runs with `--clock-start NOW`, so it samples that data as if live; the
peers' SQL (kpi_queries.py, text unchanged but for its three time constants) is evaluated by sqlite3
at the instant fabwatch's first sample read up to (its watermark, saved in the state file).

Comparison: counts exactly; means, ratios and sums to 1e-9 relative (the same float sums added in
another order); the p90 to its histogram bucket. The peers' p90 is the nearest-rank one, the
smallest cycle time with at least ceil(0.9 n) items at or below it: it lies in the first bucket
whose cumulative count reaches 0.9 n, the very bucket `histogram_quantile` interpolates in. So the
test checks every bucket count exactly and that the peers' p90 lies in the estimate's bucket.
"""

import bisect
import json
import math
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporters.prometheus import go_float
from tests.conftest import PrometheusFactory
from tests.servers import free_port, stop_process

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[1]
PEERS = ROOT.parent / "shared" / "bench" / "peers"
INVENTORY = ROOT / "bench" / "kpi_workload.yaml"
PROMQL = yaml.safe_load((ROOT / "bench" / "kpi_promql.yaml").read_text())
ROWS = 40_000
NOW = 1767225600.0  # make_db.py's and kpi_queries.py's fixed instant
PROMETHEUS = """
global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: fabwatch
    static_configs: [{targets: ["%s"]}]
"""


def peer_kpis() -> list[dict[str, Any]]:
    """The peers' KPI set, imported from their kpi_queries.py."""
    sys.path.insert(0, str(PEERS))
    try:
        from kpi_queries import KPIS  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(PEERS))
    return list(KPIS)


def at_instant(sql: str, now: float) -> str:
    """The peers' SQL with its fixed NOW (and NOW - 24 h, NOW - 7 d) moved to `now`."""
    for old, new in ((NOW - 86400, now - 86400), (NOW - 7 * 86400, now - 7 * 86400), (NOW, now)):
        sql = sql.replace(str(int(old)), repr(new))
    return sql


def peer_answers(db: Path, now: float) -> dict[str, dict[tuple[str, ...], float]]:
    """Each peer metric: {label values: value}, from the peers' SQL run by sqlite3."""
    answers: dict[str, dict[tuple[str, ...], float]] = {}
    with sqlite3.connect(db) as conn:
        for kpi in peer_kpis():
            labels, values = len(kpi["labels"]), kpi["values"]
            for row in conn.execute(at_instant(kpi["sql"], now)):
                for i, metric in enumerate(values):
                    answers.setdefault(metric, {})[tuple(row[:labels])] = float(row[labels + i])
    return answers


def bucket_counts(db: Path, now: float, bounds: list[float]) -> dict[tuple[str, str], float]:
    """Cumulative cycle-time bucket counts per process over the 7-day window, by plain SQL."""
    counts: dict[tuple[str, str], float] = {}
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT process, resolved_at - created_at FROM records "
                            "WHERE resolved_at > ? AND resolved_at <= ?", (now - 7 * 86400, now)).fetchall()
    for process, _ in rows:
        for bound in [*bounds, math.inf]:
            counts.setdefault((process, _le(bound)), 0.0)
    for process, cycle in rows:
        for bound in [*bounds, math.inf]:
            if cycle <= bound:
                counts[(process, _le(bound))] += 1
    return counts


def _le(bound: float) -> str:
    return go_float(bound)


def series(prometheus: Any, expr: str, *labels: str) -> dict[tuple[str, ...], float]:
    return {tuple(s["metric"].get(name, "") for name in labels): float(s["value"][1])
            for s in prometheus.query(expr)}


def watermark(state: Path) -> float:
    """The instant fabwatch's first sample read up to (every process shares it)."""
    with sqlite3.connect(state) as conn:
        (document,) = conn.execute("SELECT state FROM source_state WHERE source = 'kpi'").fetchone()
    marks = {process["hi"] for process in json.loads(document).values()}
    assert len(marks) == 1, marks
    return float(marks.pop())


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("workload") / "kpi.sqlite"
    subprocess.run([sys.executable, str(PEERS / "make_db.py"), str(db), "--rows", str(ROWS)],
                   check=True, capture_output=True, timeout=120)
    return db


@pytest.fixture
def fabwatch(workload: Path, tmp_path: Path):
    address = f"127.0.0.1:{free_port()}"
    state = tmp_path / "state.db"
    env = {**os.environ, "FABWATCH_BENCH_DSN": f"sqlite+aiosqlite:///{workload}", "FABWATCH_STATE": str(state),
           "FABWATCH_INTERVAL": "1h", "FABWATCH_SETTLE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "-c", str(INVENTORY),
                             "--listen", address, "--clock-start", repr(NOW)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    yield address, state, proc
    stop_process(proc)  # type: ignore[arg-type]


def test_promql_answers_equal_the_peers_sql(fabwatch, workload: Path, prometheus_factory: PrometheusFactory) -> None:
    address, state, proc = fabwatch
    prometheus = prometheus_factory(PROMETHEUS % address)
    prometheus.wait_for('fab_kpi_value{kpi="cycle_time_p90"}', lambda r: len(r) == 8, timeout=60)
    assert proc.poll() is None
    now = watermark(state)
    assert NOW - 1 < now < NOW + 60  # the shifted clock: the data's NOW plus start-up, minus the settle delay
    peers = peer_answers(workload, now)

    for name in ("created_24h", "backlog", "cycle_time_mean", "sla_compliance", "labour_cost_24h"):
        spec = PROMQL[name]
        labels = ("process", "priority") if name == "backlog" else ("process",)
        want = peers[spec["peer"]]
        for form in ("now", "first_sample"):
            if form not in spec:
                continue
            got = series(prometheus, spec[form], *labels)
            assert {k for k, v in got.items() if v} == set(want), (name, form)
            wrong = {k: (got[k], v) for k, v in want.items() if not math.isclose(got[k], v, rel_tol=1e-9)}
            assert not wrong, (name, form, wrong)
    assert all(v == int(v) for v in series(prometheus, PROMQL["created_24h"]["now"], "process").values())

    bounds = [float(b) for b in _inventory_buckets()]
    got_buckets = series(prometheus, "fab_cycle_time_seconds_bucket", "process", "le")
    assert got_buckets == bucket_counts(workload, now, bounds)
    for form in ("now", "first_sample"):
        estimates = series(prometheus, PROMQL["cycle_time_p90"][form], "process")
        assert set(estimates) == set(peers["kpi_cycle_time_p90_seconds"])
        for key, p90 in peers["kpi_cycle_time_p90_seconds"].items():
            index = bisect.bisect_left(bounds, estimates[key])  # the bucket (bounds[i-1], bounds[i]]
            low = bounds[index - 1] if index > 0 else 0.0
            high = bounds[index] if index < len(bounds) else math.inf
            assert low < p90 <= high, (key, form, estimates[key], p90)


def _inventory_buckets() -> list[str | float]:
    from collector.inventory.load import load_inventory

    inventory = load_inventory([INVENTORY], {"FABWATCH_BENCH_DSN": "sqlite+aiosqlite:///unused.db"})
    kpi = inventory.processes["problem"].kpis["cycle_time_p90"]
    return list(kpi.buckets)  # type: ignore[union-attr]

