"""The report's Prometheus backend reads the same figures from VictoriaMetrics as from Prometheus.

The history of tests/reports/test_prometheus.py (15 days around the end of October 2025 in
Europe/Berlin, the 25-hour day included, sampled hourly and backfilled into Prometheus TSDB blocks)
is copied into a real single-node VictoriaMetrics with `vmctl prometheus`, the way an operator moves
a Prometheus history into the long-term store (remote write then carries the new samples:
tests/test_remote_write.py). The backend then reads every daily figure, the KPIs over the days (a
month's are sums of days) and October's report from both query APIs: the same days, counts and open
items exactly, money and durations within VictoriaMetrics' rounding (docs/long-term-storage.md).
"""

import asyncio
import math
from typing import Any

import pytest

from reports.prometheus import Connection, History, read_prometheus
from reports.summary import Month, buckets_of, kpi_value, span_totals, summarize
from tests.reports.test_prometheus import (  # noqa: F401 (the history's fixtures, shared)
    NOW,
    SCRAPE,
    blocks,
    history,
    prometheus,
    read,
)
from tests.test_remote_write import RELATIVE

pytestmark = pytest.mark.slow  # the simulated days, sampled hourly: some 30 s
OCTOBER = Month(2025, 10)


def readings(server: Any) -> dict[tuple[str, str], float]:
    """The largest reading of each fractional counter (money, seconds) by process and measure: a day's
    figure is the difference of two readings, each rounded to `RELATIVE` of its own size."""
    out: dict[tuple[str, str], float] = {}
    for expr, measure in (("max by (process, component) (max_over_time(fab_cost_total[70d]))", "cost.{component}"),
                          ("max by (process) (max_over_time(fab_cycle_time_seconds_sum[70d]))", "completed.dur_sum")):
        for r in server.query(expr, at=NOW):
            out[r["metric"]["process"], measure.format(**r["metric"])] = float(r["value"][1])
    return out


def same(got: float | None, want: float | None, reading: float = 0.0, days: int = 1) -> bool:
    """Equal as VictoriaMetrics stores values: whole numbers exactly, others to `RELATIVE`; a figure
    made of `days` differences of counter readings up to `reading`, within their rounding (2 a day)."""
    if got is None or want is None:
        return got is None and want is None
    if float(want).is_integer() and not reading:
        return got == want
    return math.isclose(got, want, rel_tol=RELATIVE, abs_tol=2 * days * RELATIVE * reading)


def compare_days(local: History, remote: History, sizes: dict[tuple[str, str], float]) -> int:
    """Assert every daily figure is the same from both; return how many were compared."""
    compared = 0
    assert local.rollups.keys() == remote.rollups.keys()
    for process, days in local.rollups.items():
        assert days.keys() == remote.rollups[process].keys(), process
        for day, by_dimensions in days.items():
            theirs = remote.rollups[process][day]
            assert by_dimensions.keys() == theirs.keys(), (process, day)
            for dimensions, measures in by_dimensions.items():
                assert measures.keys() == theirs[dimensions].keys(), (process, day, dimensions)
                wrong = {m: (v, theirs[dimensions][m]) for m, v in measures.items()
                         if not same(theirs[dimensions][m], v, sizes.get((process, m), 0.0))}
                assert not wrong, (process, day, dimensions, wrong)
                compared += len(measures)
    return compared


def test_every_figure_reads_the_same_from_victoriametrics(
        history: dict[str, Any], blocks: Any, prometheus: Any, victoriametrics_factory: Any) -> None:  # noqa: F811
    inventory = history["inventory"]
    vm = victoriametrics_factory()
    vm.import_prometheus_blocks(blocks)
    sizes = readings(prometheus)
    local, remote = read(prometheus, inventory), read(vm, inventory)
    assert compare_days(local, remote, sizes) > 500
    worst: dict[str, float] = {}
    checked = 0
    for name, process in inventory.processes.items():  # the KPIs over the 15 days, as a month's
        days = sorted(local.rollups[name])
        assert len(days) == 15
        mine = span_totals([remote.rollups[name][d] for d in days])
        theirs = span_totals([local.rollups[name][d] for d in days])
        for kpi_name, kpi in process.kpis.items():
            a, b = (kpi_value(kpi_name, kpi, sums, buckets_of(process)) for sums in (mine, theirs))
            assert same(a, b), (name, kpi_name, a, b)
            if a is not None and b:
                worst[kpi.kind] = max(worst.get(kpi.kind, 0.0), abs(a - b) / abs(b))
                checked += 1
    assert checked >= 14
    month = [asyncio.run(read_prometheus(Connection(server.url, lookback=SCRAPE), inventory, OCTOBER, NOW))
             for server in (vm, prometheus)]
    got, want = (summarize(inventory, h.rollups, OCTOBER, h.states) for h in month)
    for mine_p, theirs_p in zip(got.processes, want.processes, strict=True):
        assert (mine_p.created, mine_p.completed, mine_p.by_outcome) == (theirs_p.created, theirs_p.completed,
                                                                         theirs_p.by_outcome), mine_p.name
        assert mine_p.created > 50
        assert mine_p.cost_by_component.keys() == theirs_p.cost_by_component.keys()
        for component, cost in theirs_p.cost_by_component.items():
            reading = sizes[mine_p.name, f"cost.{component}"]
            assert same(mine_p.cost_by_component[component], cost, reading, 31), (mine_p.name, component)
            worst["month cost, EUR"] = max(worst.get("month cost, EUR", 0.0),
                                           abs(mine_p.cost_by_component[component] - cost))
        for a, b in zip(mine_p.kpis, theirs_p.kpis, strict=True):
            assert same(a.value, b.value), (mine_p.name, a.kpi, a.value, b.value)
            assert (a.met, [d for d, _ in a.worst_days]) == (b.met, [d for d, _ in b.worst_days]), (mine_p.name, a.kpi)
    print("largest differences (KPIs: relative):", worst)
