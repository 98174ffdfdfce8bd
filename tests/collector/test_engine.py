"""The KPI engine against simulated records: values, counters, windows, restarts, safety."""

import asyncio
import contextlib
import math
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from collector.engine import SourceSampler
from collector.errors import SourceQueryFailed, SourceRefused, SourceTimeout, SourceUnreachable, StateFailed
from collector.inventory.load import load_inventory
from collector.inventory.models import Inventory, SqlSource
from collector.samples import SourceSample
from collector.sql import share
from collector.state import StateStore
from simulator import Simulator
from tests.collector.helpers import value_kpi_file
from tests.collector.kpi_oracle import Row, expected_kpis, in_window

EXAMPLE = Path(__file__).parents[2] / "examples" / "operator.yaml"
T0 = 1767225600.0  # 2026-01-01T00:00:00Z
SETTLE = 2.0


def example(dsn: str) -> Inventory:
    return load_inventory([EXAMPLE], {"FABWATCH_DEMO_DSN": dsn})


async def simulate(dsn: str, *, days: float = 8, seed: int = 7, scale: float = 0.5) -> Simulator:
    sim = Simulator(dsn, seed=seed, scale=scale)
    await sim.create_schema()
    await sim.backfill(days, T0)
    return sim


def read_rows(db: Path, inventory: Inventory) -> dict[str, list[Row]]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return {p.records.table: [dict(r) for r in conn.execute(f"SELECT * FROM {p.records.table}")]
                for p in inventory.processes.values()}


def sampler(inventory: Inventory, state: Path) -> SourceSampler:
    return SourceSampler("operator", inventory.sources["operator"], inventory.processes, StateStore(state))


def values(sample: SourceSample) -> dict[tuple[str, str], float | None]:
    return {(k.process, k.kpi): k.value for k in sample.kpis}


def family(sample: SourceSample, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for f in sample.families if f.name == name for labels, value in f.samples}


def assert_same(got: dict[Any, float | None], want: dict[Any, float | None]) -> None:
    assert got.keys() == want.keys()
    wrong = {k: (got[k], want[k]) for k in want
             if (got[k] is None) != (want[k] is None)
             or (want[k] is not None and not math.isclose(got[k], want[k], rel_tol=1e-9, abs_tol=1e-9))}  # type: ignore[arg-type]
    assert not wrong, wrong


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "operator.db"


@pytest.mark.slow
async def test_every_kpi_kind_matches_an_independent_computation(db: Path, tmp_path: Path) -> None:
    dsn = f"sqlite+aiosqlite:///{db}"
    inventory = example(dsn)
    sim = await simulate(dsn)
    engine = sampler(inventory, tmp_path / "state.db")
    first = await engine.sample(T0)
    assert {k.kind for k in first.kpis} == {"volume", "backlog", "overdue", "duration", "sla", "ratio",
                                            "cost", "value"}
    assert_same(values(first), expected_kpis(inventory, read_rows(db, inventory), T0, T0 - SETTLE))

    # Two hours of live operation later, the windows moved by their edges alone: still exact.
    await sim.step(T0 + 7200)
    second = await engine.sample(T0 + 7200)
    assert_same(values(second), expected_kpis(inventory, read_rows(db, inventory), T0 + 7200, T0 + 7200 - SETTLE))
    await engine.close()
    await sim.close()


@pytest.mark.slow
async def test_counters_count_each_row_once_across_samples_and_restarts(db: Path, tmp_path: Path) -> None:
    dsn = f"sqlite+aiosqlite:///{db}"
    inventory = example(dsn)
    sim = await simulate(dsn)
    state = tmp_path / "state.db"
    engine = sampler(inventory, state)
    await engine.sample(T0)
    times = [T0 + 600, T0 + 1800]
    for t in times:
        await sim.step(t)
        await engine.sample(t)
    await engine.close()
    # A new process on the same state file continues the counters from the watermark.
    restarted = sampler(inventory, state)
    await sim.step(T0 + 3600)
    last = await restarted.sample(T0 + 3600)
    await restarted.close()
    await sim.close()

    rows = read_rows(db, inventory)
    lookback = 30 * 86400  # the longest KPI window: how far back the first sample counts
    created = family(last, "fab_items_created")
    for name, process in inventory.processes.items():
        want = sum(1 for r in rows[process.records.table]
                   if in_window(r["created_at"], T0 + 3600 - SETTLE, lookback + 3600))
        got = sum(v for labels, v in created.items() if ("process", name) in labels)
        assert got == want, name


async def test_open_items_committed_late_within_settle_are_followed(db: Path, tmp_path: Path) -> None:
    """Rows committed after a sample, with times before it (within `settle`), must still move the
    backlog at the next sample, not only at the next recount an hour later."""
    dsn = f"sqlite+aiosqlite:///{db}"
    inventory = example(dsn)
    sim = await simulate(dsn, days=2)
    engine = sampler(inventory, tmp_path / "state.db")
    await engine.sample(T0)
    await engine.sample(T0 + 5)  # now following, no longer recounting
    backlog = values(await engine.sample(T0 + 10))[("problem", "backlog")]
    assert backlog is not None
    with sqlite3.connect(db) as conn:  # committed now, dated 1 s before the last sample
        conn.executemany("INSERT INTO trouble_ticket (id, created_at, updated_at, status) VALUES (?, ?, ?, ?)",
                         [(f"LATE-{n}", T0 + 9, T0 + 9, "inProgress") for n in range(20)])
        closed = [r[0] for r in conn.execute("SELECT id FROM trouble_ticket WHERE status = 'inProgress' "
                                             "AND created_at < ? LIMIT 5", (T0,))]
        conn.executemany("UPDATE trouble_ticket SET status = 'resolved', completed_at = ? WHERE id = ?",
                         [(T0 + 9, i) for i in closed])
    assert len(closed) == 5
    later = values(await engine.sample(T0 + 11))[("problem", "backlog")]
    assert later == backlog + 20 - 5
    await engine.close()
    await sim.close()


async def sampled_once(db: Path, tmp_path: Path, days: float) -> SourceSampler:
    """A sampler of the example over `days` of simulated records, sampled once at T0."""
    dsn = f"sqlite+aiosqlite:///{db}"
    sim = await simulate(dsn, days=days)
    await sim.close()
    engine = sampler(example(dsn), tmp_path / "state.db")
    await engine.sample(T0)
    return engine


async def test_a_sqlite_file_replaced_by_another_is_read_again(db: Path, tmp_path: Path) -> None:
    """A restore, `mv` or rsync replaces the file: pooled connections still have the old one open,
    so the samples would read the deleted file for ever, with the source reported up."""
    engine = await sampled_once(db, tmp_path, days=2)
    backlog = values(await engine.sample(T0 + 10))[("problem", "backlog")]
    assert backlog is not None
    replacement = tmp_path / "replacement.db"
    source, copy = sqlite3.connect(db), sqlite3.connect(replacement)
    source.backup(copy)
    with copy:
        copy.executemany("INSERT INTO trouble_ticket (id, created_at, updated_at, status) VALUES (?, ?, ?, ?)",
                         [(f"NEW-{n}", T0 + 9, T0 + 9, "inProgress") for n in range(20)])
    source.close()
    copy.close()
    replacement.replace(db)
    assert values(await engine.sample(T0 + 11))[("problem", "backlog")] == backlog + 20
    await engine.close()


@pytest.mark.slow
async def test_a_state_file_that_cannot_be_written_is_named_as_such(db: Path, tmp_path: Path) -> None:
    """The source answered; fabwatch's own file failed. On-call must not go looking at the database."""
    engine = await sampled_once(db, tmp_path, days=1)
    lock = sqlite3.connect(tmp_path / "state.db", timeout=0)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StateFailed, match=f"fabwatch's own state file {tmp_path / 'state.db'}: database is locked"):
            await engine.sample(T0 + 60)
    finally:
        lock.rollback()
        lock.close()
    await engine.sample(T0 + 120)  # recovers once the file can be written
    await engine.close()


@pytest.mark.slow
async def test_histogram_and_slo_counters_agree_with_rows(db: Path, tmp_path: Path) -> None:
    dsn = f"sqlite+aiosqlite:///{db}"
    inventory = example(dsn)
    sim = await simulate(dsn, days=3)
    engine = sampler(inventory, tmp_path / "state.db")
    sample = await engine.sample(T0)
    await engine.close()
    await sim.close()
    rows = read_rows(db, inventory)["trouble_ticket"]
    done = [r for r in rows if in_window(r["completed_at"], T0 - SETTLE, 30 * 86400)]
    (hist,) = [h for f in sample.families if f.name == "fab_cycle_time_seconds"
               for labels, h in f.histograms if labels == (("process", "problem"),)]
    assert hist.count == len(done)
    one_hour = dict(hist.buckets)[3600.0]
    assert one_hour == sum(1 for r in done if r["completed_at"] - r["created_at"] - r["paused_seconds"] <= 3600)
    good = family(sample, "fab_sla_good")[(("process", "problem"), ("kpi", "resolved_in_time"))]
    assert good == sum(1 for r in done if r["completed_at"] <= r["due_at"])
    # Three days of rows all lie in the 30d window: its valid count is the counter's, and with the KPI the budget.
    key = (("process", "problem"), ("kpi", "resolved_in_time"))
    valid = family(sample, "fab_sla_window_valid")[key]
    assert valid == family(sample, "fab_sla_valid")[key] > 0
    assert family(sample, "fab_kpi_value")[key] == pytest.approx(good / valid)


async def test_a_sql_source_never_writes(db: Path, tmp_path: Path) -> None:
    dsn = f"sqlite+aiosqlite:///{db}"
    sim = await simulate(dsn, days=1)
    await sim.close()
    extra = value_kpi_file(tmp_path, "sneaky",
                           "WITH gone AS (DELETE FROM trouble_ticket RETURNING 1) SELECT COUNT(*) FROM gone")
    inventory = load_inventory([EXAMPLE, extra], {"FABWATCH_DEMO_DSN": dsn})
    before = read_rows(db, inventory)["trouble_ticket"]
    engine = sampler(inventory, tmp_path / "state.db")
    with pytest.raises((SourceRefused, SourceQueryFailed)):
        await engine.sample(T0)
    await engine.close()
    assert read_rows(db, inventory)["trouble_ticket"] == before


async def test_a_failed_sample_advances_nothing(db: Path, tmp_path: Path) -> None:
    dsn = f"sqlite+aiosqlite:///{db}"
    inventory = example(dsn)
    sim = await simulate(dsn, days=2)
    state = tmp_path / "state.db"
    engine = sampler(inventory, state)
    await engine.sample(T0)
    saved = StateStore(state).load("operator")
    await sim.step(T0 + 600)
    with sqlite3.connect(db) as conn:  # one table disappears between samples
        conn.execute("DROP TABLE bill_inquiry")
    with pytest.raises(SourceQueryFailed):
        await engine.sample(T0 + 600)
    assert StateStore(state).load("operator") == saved
    await engine.close()
    await sim.close()


async def test_missing_sqlite_file_is_unreachable_and_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    engine = sampler(example(f"sqlite+aiosqlite:///{missing}"), tmp_path / "s.db")
    with pytest.raises(SourceUnreachable, match=r"nope\.db"):
        await engine.sample(T0)
    await engine.close()
    assert not missing.exists()


async def test_unreachable_database_is_a_connection_error(tmp_path: Path) -> None:
    source = SqlSource(kind="sql", dsn="postgresql+asyncpg://u:p@127.0.0.1:1/x", timeout=5)
    inventory = example("sqlite+aiosqlite:///unused.db")
    engine = SourceSampler("down", source, inventory.processes, StateStore(tmp_path / "s.db"))
    with pytest.raises(SourceUnreachable) as caught:
        await engine.sample(T0)
    assert caught.value.reason == "connection"
    await engine.close()


SLOW_FUNCTION_SQL = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 60) "
                     "SELECT COUNT(*) FROM c WHERE length(randomblob(20000000)) > 0")
"""A statement of few VM steps, each row slow (~65 ms): about 4 s in all, bounding the tests on old code."""


async def slow_sampler(db: Path, tmp_path: Path, timeout: float, rows: int, sql: str = "") -> SourceSampler:
    """A sampler of the example whose problem process has a value KPI counting to `rows` (slowly),
    or running `sql`."""
    dsn = f"sqlite+aiosqlite:///{db}"
    sim = await simulate(dsn, days=1)
    await sim.close()
    slow = value_kpi_file(tmp_path, "slow", sql or "WITH RECURSIVE c(x) AS "
                          f"(SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {rows}) SELECT MAX(x) FROM c")
    inventory = load_inventory([EXAMPLE, slow], {"FABWATCH_DEMO_DSN": dsn})
    source = inventory.sources["operator"].model_copy(update={"timeout": timeout})
    return SourceSampler("operator", source, inventory.processes, StateStore(tmp_path / "s.db"))


async def test_slow_sqlite_query_times_out(db: Path, tmp_path: Path) -> None:
    engine = await slow_sampler(db, tmp_path, 0.5, 100_000_000)
    started = asyncio.get_running_loop().time()
    with pytest.raises(SourceTimeout):
        await engine.sample(T0)
    assert asyncio.get_running_loop().time() - started < 5
    await engine.close()


async def test_a_sqlite_statement_slow_on_each_row_stops_at_its_timeout(db: Path, tmp_path: Path) -> None:
    """A progress handler is not called while `randomblob` runs: checked every 10,000 VM steps,
    the deadline let such a statement run 18 s past a 2 s timeout. The interrupt stops it."""
    engine = await slow_sampler(db, tmp_path, 0.5, 0, SLOW_FUNCTION_SQL)
    started = asyncio.get_running_loop().time()
    with pytest.raises(SourceTimeout, match="interrupted"):
        await engine.sample(T0)
    assert asyncio.get_running_loop().time() - started < 0.5 + 1
    assert await engine.check_columns() == []  # the next transaction is not interrupted
    await engine.close()


@pytest.mark.slow
@pytest.mark.parametrize("sql", ["", SLOW_FUNCTION_SQL], ids=["many-steps", "slow-function"])
async def test_a_cancelled_sqlite_sample_stops_its_query_at_once(db: Path, tmp_path: Path, sql: str) -> None:
    """A stop cancels the samples still running after its grace; SQLite's query runs on in
    aiosqlite's thread, and the connection's release waited for it: the whole timeout."""
    engine = await slow_sampler(db, tmp_path, 60.0, 1_000_000_000, sql)
    task = asyncio.create_task(engine.sample(T0))
    await asyncio.sleep(0.5 if sql else 2.0)  # well into the slow query
    started = asyncio.get_running_loop().time()
    engine.abort()  # what the scheduler does before it cancels a sample
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert asyncio.get_running_loop().time() - started < 3
    await engine.close()


async def test_an_abort_applies_to_the_cancelled_sample_only(db: Path, tmp_path: Path) -> None:
    """A reload cancels a late sample and keeps its sampler: `abort` left the engine interrupting
    every later statement (the source down, reason=timeout, until a restart)."""
    engine = await slow_sampler(db, tmp_path, 60.0, 0, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL "
                                "SELECT x + 1 FROM c WHERE x < (SELECT n FROM knob)) SELECT MAX(x) FROM c")
    set_knob(db, 1_000_000_000)
    task = asyncio.create_task(engine.sample(T0))
    await asyncio.sleep(0.5)  # into the slow query
    engine.abort()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    set_knob(db, 2_000_000)  # a query of some 0.5 s, over many interrupt periods (0.05 s)
    assert (await engine.sample(T0)).families  # not interrupted
    await engine.close()


def set_knob(db: Path, n: int) -> None:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS knob (n INTEGER)")
        conn.execute("DELETE FROM knob")
        conn.execute("INSERT INTO knob VALUES (?)", (n,))
        conn.commit()


async def test_a_sqlite_database_locked_for_the_whole_timeout_is_a_timeout(db: Path, tmp_path: Path) -> None:
    """Not `query`, which sends on-call to the SQL: a writer held the lock past the source's timeout."""
    dsn = f"sqlite+aiosqlite:///{db}"
    sim = await simulate(dsn, days=1)
    await sim.close()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")  # in WAL mode readers are never blocked
    inventory = example(dsn)
    source = inventory.sources["operator"].model_copy(update={"timeout": 0.5})
    engine = SourceSampler("operator", source, inventory.processes, StateStore(tmp_path / "s.db"))
    lock = sqlite3.connect(db)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(SourceTimeout, match="database is locked"):
            await engine.sample(T0)
    finally:
        lock.rollback()
        lock.close()
        await engine.close()


@pytest.mark.parametrize(("kpi", "sql", "error"), [
    ("broken", "SELECT no_such_column FROM trouble_ticket", "process problem: no such column: no_such_column"),
    ("worst_status", "SELECT MAX(status) FROM trouble_ticket",
     r"process problem: kpi worst_status: the statement gave str '[a-zA-Z]+', not a number"),
], ids=["a failing statement", "a value that is no number"])
async def test_a_failing_value_kpi_names_its_process(db: Path, tmp_path: Path, kpi: str, sql: str, error: str) -> None:
    """One source feeds many processes: the error must say whose statement failed, and why."""
    dsn = f"sqlite+aiosqlite:///{db}"
    sim = await simulate(dsn, days=1)
    await sim.close()
    inventory = load_inventory([EXAMPLE, value_kpi_file(tmp_path, kpi, sql)], {"FABWATCH_DEMO_DSN": dsn})
    engine = SourceSampler("operator", inventory.sources["operator"], inventory.processes, StateStore(tmp_path / "s"))
    with pytest.raises(SourceQueryFailed, match=f"source operator: {error}"):
        await engine.sample(T0)
    await engine.close()


async def test_check_columns_names_missing_tables_and_columns(db: Path, tmp_path: Path) -> None:
    dsn = f"sqlite+aiosqlite:///{db}"
    sim = await simulate(dsn, days=1)
    await sim.close()
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE sla_case")
        conn.execute("ALTER TABLE payment DROP COLUMN written_off")
    engine = sampler(example(dsn), tmp_path / "s.db")
    assert await engine.check_columns() == [
        "process qos_sla: table 'sla_case' not found",
        "process payments: table payment has no column written_off",
    ]
    await engine.close()


SPLIT = """
sources:
  operator: {{kind: sql, dsn: "{dsn}"}}
processes:
  high:
    etom: "1.3.1.3"
    name: High priority tickets
    team: ops
    records: {{source: operator, table: trouble_ticket, columns: {{measures: [priority]}}, where: "priority = 'high'",
              open_statuses: [{high}]}}
    kpis: {{backlog: {{kind: backlog}}}}
  low:
    etom: "1.3.1.3"
    name: Low priority tickets
    team: ops
    records: {{source: operator, table: trouble_ticket, columns: {{measures: [priority]}}, where: "priority = 'low'",
              open_statuses: [inProgress, pending, held, acknowledged]}}
    kpis: {{backlog: {{kind: backlog}}}}
"""


@pytest.mark.parametrize("high", ["inProgress", "inProgress, pending, held, acknowledged"])
async def test_processes_split_from_one_table_keep_their_own_open_statuses(
        db: Path, tmp_path: Path, high: str) -> None:
    """Two processes on one table, split by `where`, read it with one statement when their
    statements agree; open statuses that differ must not be taken from the first process."""
    dsn = f"sqlite+aiosqlite:///{db}"
    sim = await simulate(dsn, days=2)
    await sim.close()
    path = tmp_path / "split.yaml"
    path.write_text(SPLIT.format(dsn=dsn, high=high))
    inventory = load_inventory([path], {})
    assert len(share(inventory.processes)) == (1 if "," in high else 0)  # one statement only when they agree
    together = SourceSampler("operator", inventory.sources["operator"], inventory.processes,
                             StateStore(tmp_path / "together.db"))
    alone = {name: SourceSampler("operator", inventory.sources["operator"], {name: process},
                                 StateStore(tmp_path / f"{name}.db"))
             for name, process in inventory.processes.items()}
    got = values(await together.sample(T0))
    want = {key: value for engine in alone.values() for key, value in values(await engine.sample(T0)).items()}
    for engine in (together, *alone.values()):
        await engine.close()
    assert got == want
    assert got[("low", "backlog")] > got[("high", "backlog")] > 0


@pytest.mark.slow
async def test_a_clock_stepped_back_accrues_no_negative_fixed_cost(db: Path, tmp_path: Path) -> None:
    """NTP stepping the clock back, or a VM resumed, must not make `fab_cost_total` go down: Prometheus
    would read it as a counter reset and count the whole total again."""
    dsn = f"sqlite+aiosqlite:///{db}"
    sim = await simulate(dsn, days=1)
    await sim.close()
    engine = sampler(example(dsn), tmp_path / "state.db")
    platform = (("process", "problem"), ("component", "platform"), ("currency", "EUR"))
    seen = []
    for now in (T0, T0 + 60, T0 + 50, T0 + 55, T0 + 120):
        seen.append(family(await engine.sample(now), "fab_cost")[platform])
    await engine.close()
    assert seen[1] > seen[0]
    assert seen[2] == seen[3] == seen[1]  # nothing accrues until the clock is back where it was
    assert seen[4] > seen[1]


def _remapped(inventory: Inventory, name: str, **columns: Any) -> Inventory:
    """The inventory with other `records.columns` for one process."""
    process = inventory.processes[name]
    records = process.records.model_copy(update={"columns": process.records.columns.model_copy(update=columns)})
    processes = {**inventory.processes, name: process.model_copy(update={"records": records})}
    return inventory.model_copy(update={"processes": processes})


@pytest.mark.parametrize("columns", [{"dimensions": ("priority", "channel")}, {"dimensions": ()}],
                         ids=["a dimension added", "dimensions removed"])
@pytest.mark.slow
async def test_a_process_whose_dimensions_changed_counts_again_from_its_lookback(
        db: Path, tmp_path: Path, columns: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    """Saved counts are keyed by dimension values: after a restart with other dimensions they crashed
    every sample (a dimension added) or landed on other labels (one removed)."""
    dsn = f"sqlite+aiosqlite:///{db}"
    sim = await simulate(dsn, days=2)
    await sim.close()
    inventory = example(dsn)
    before = sampler(inventory, tmp_path / "state.db")
    await before.sample(T0)
    await before.close()
    remapped = _remapped(inventory, "problem", **columns)
    after = sampler(remapped, tmp_path / "state.db")
    fresh = sampler(remapped, tmp_path / "fresh.db")
    got, want = await after.sample(T0 + 60), await fresh.sample(T0 + 60)
    for engine in (after, fresh):
        await engine.close()
    assert [r.getMessage() for r in caplog.records].count("process_mapping_changed") == 1  # problem only
    assert family(got, "fab_items_created") == family(want, "fab_items_created")
    assert_same(values(got), values(want))


@pytest.mark.slow
async def test_a_new_rate_books_later_completions_and_leaves_booked_cost_alone(db: Path, tmp_path: Path) -> None:
    """`fab_cost_total` is a counter of cost booked on completion: a rate changed (and fabwatch
    restarted) used to reprice every completion since the start, so the counter fell (a reset to
    Prometheus) or jumped."""
    dsn = f"sqlite+aiosqlite:///{db}"
    sim = await simulate(dsn, days=2)
    inventory = example(dsn)
    labour = (("process", "problem"), ("component", "labour"), ("currency", "EUR"))
    before = sampler(inventory, tmp_path / "state.db")
    booked = family(await before.sample(T0), "fab_cost")[labour]
    await before.close()
    problem = inventory.processes["problem"]
    costs = {**problem.costs, "labour": problem.costs["labour"].model_copy(update={"rate_per_hour": 21.0})}
    cheaper = inventory.model_copy(update={"processes": {
        **inventory.processes, "problem": problem.model_copy(update={"costs": costs})}})
    after = sampler(cheaper, tmp_path / "state.db")
    assert family(await after.sample(T0 + 1), "fab_cost")[labour] == booked
    await sim.step(T0 + 7200)
    later = await after.sample(T0 + 7200)
    await after.close()
    await sim.close()
    rows = read_rows(db, inventory)["trouble_ticket"]
    minutes = sum(r["handling_minutes"] or 0.0 for r in rows
                  if r["completed_at"] is not None and T0 + 1 - SETTLE < r["completed_at"] <= T0 + 7200 - SETTLE)
    assert family(later, "fab_cost")[labour] == pytest.approx(booked + minutes * 21.0 / 60)
