"""The realistic schema holds the simulator's rows: read back through the example inventories' queries."""

from __future__ import annotations

import argparse
import asyncio
import math
import re
import signal
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from sqlalchemy import inspect, text
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.schema import CreateTable

from app import simulate as cli
from app.cli import main
from collector.engine import SourceSampler
from collector.inventory.load import load_inventory
from collector.samples import SourceSample
from collector.state import StateStore
from simulator.plans import ROW_DEFAULTS
from simulator.realistic import (
    PO_ORDER,
    TT_STATUS_HISTORY,
    RealisticSimulator,
    RealisticWriter,
    example_name,
    time_codec,
)
from tests.app.test_cli import run_fabwatch, stop, wait_http
from tests.servers import MariaDBServer, PostgresServer, free_port
from tests.simulator.helpers import NOW, dsn, query, scalar

HOUR = 3600.0
DAY = 86400.0
EXAMPLES = Path(__file__).parents[2] / "examples"
BERLIN = ZoneInfo("Europe/Berlin")
# The epoch columns each process's query yields, as (query column, epoch column).
MAPPED = {
    "problem": ("trouble_ticket", ["created_at", "completed_at", "due_at"],
                ["channel", "segment", "paused_seconds", "reopened", "handling_minutes", "outcome"]),
    "order": ("product_order", ["created_at", "completed_at"],
              ["channel", "segment", "paused_seconds", "fallout", "handling_minutes", "amount", "outcome"]),
}  # fmt: skip


def example(kind: str) -> dict[str, Any]:
    """Return the raw mapping of an example inventory (independent of fabwatch's loader)."""
    loaded: dict[str, Any] = yaml.safe_load((EXAMPLES / f"realistic-{kind}.yaml").read_text())
    return loaded


def epoch_seconds(value: Any, zone: ZoneInfo | None = None) -> float | None:
    """Convert a time read from the realistic schema to epoch seconds (naive values only with a zone)."""
    if value is None:
        return None
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    assert isinstance(moment, datetime), value
    if zone is not None and moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    assert moment.tzinfo is not None, value
    return moment.timestamp()


async def simulate(
    url: str, *, end: float = NOW, days: float = 8.0, steps: int = 24, epoch_url: str | None = None
) -> None:
    """Backfill up to a day before end, then step hour by hour to end (the live path)."""
    sim = RealisticSimulator(url, epoch_dsn=epoch_url, scale=0.5, seed=3)
    try:
        await sim.backfill(days, end - DAY)
        for i in range(1, steps + 1):
            await sim.step(end - DAY + i * DAY / steps)
    finally:
        await sim.close()


async def read_both(
    url: str, kind: str, process: str, epoch_url: str | None = None
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Return the epoch rows by id and the rows of the example's query for a process."""
    records = example(kind)["processes"][process]["records"]
    by_id = {row["id"]: row for row in await fetch(epoch_url or url, f"SELECT * FROM {MAPPED[process][0]}")}
    return by_id, await fetch(url, records["query"])


async def fetch(url: str, sql: str) -> list[dict[str, Any]]:
    """Return the rows of one query as dicts."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return [dict(row) for row in (await conn.execute(text(sql))).mappings()]
    finally:
        await engine.dispose()


def assert_same_rows(kind: str, process: str, epoch: dict[str, dict[str, Any]], mapped: list[dict[str, Any]]) -> None:
    """Assert that the query's rows, converted back, are the epoch rows."""
    records = example(kind)["processes"][process]["records"]
    lookups = records["lookups"]
    zone = ZoneInfo(example(kind)["sources"]["ops"].get("timezone", "UTC"))
    _, times, plain = MAPPED[process]
    assert len(mapped) == len(epoch) > 100
    for row in mapped:
        old = epoch[row["id"]]
        for column in times:
            got, want = epoch_seconds(row[column], zone if kind == "mariadb" else None), old[column]
            assert (got is None) == (want is None), (column, row, old)
            assert got is None or abs(got - want) <= 1e-6, (column, row, old)
        if process == "order":
            assert abs(row["due_at"] / 1000 - old["due_at"]) <= 5e-4, row
        for column in plain:
            value = float(row[column]) if isinstance(row[column], Decimal) else row[column]
            assert value == old[column], (column, row, old)
        assert lookups["state_id"][row["state_id"]] == old["status"], row
        assert lookups["priority"][row["priority"]] == old["priority"], row
        unmapped = set(ROW_DEFAULTS) - {*times, *plain, "due_at", "priority"}
        assert {c: old[c] for c in unmapped} == {c: ROW_DEFAULTS[c] for c in unmapped}, old


def assert_lifecycles_covered(epoch: dict[str, dict[str, Any]], process: str) -> None:
    """Assert the data has the cases the mapping must get right (else the test proves little)."""
    statuses = {row["status"] for row in epoch.values()}
    if process == "problem":
        assert {"inProgress", "resolved", "closed", "cancelled"} <= statuses
        assert any(r["reopened"] and r["completed_at"] is not None for r in epoch.values())
        assert any(r["status"] == "closed" and r["completed_at"] < r["updated_at"] for r in epoch.values())
    else:
        assert {"inProgress", "completed", "failed", "partial", "cancelled"} <= statuses


@pytest.mark.slow
@pytest.mark.parametrize("process", ["problem", "order"])
async def test_sqlite_iso_text_schema_reads_back_as_the_epoch_rows(tmp_path: Path, process: str) -> None:
    url = dsn(tmp_path / "operator.db")
    await simulate(url)
    epoch, mapped = await read_both(url, "sqlite", process)
    assert_lifecycles_covered(epoch, process)
    assert_same_rows("sqlite", process, epoch, mapped)


@pytest.mark.integration
@pytest.mark.parametrize("process", ["problem", "order"])
async def test_postgres_timestamptz_schema_reads_back_as_the_epoch_rows(postgres: PostgresServer, process: str) -> None:
    url = postgres.dsn(database=postgres.create_database())
    await simulate(url)
    epoch, mapped = await read_both(url, "postgres", process)
    assert_lifecycles_covered(epoch, process)
    assert_same_rows("postgres", process, epoch, mapped)
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            kind = await conn.scalar(
                text(
                    "SELECT data_type FROM information_schema.columns "
                    "WHERE table_name = 'tt_ticket' AND column_name = 'opened_at'"
                )
            )
    finally:
        await engine.dispose()
    assert kind == "timestamp with time zone"


@pytest.mark.slow
async def test_sync_again_from_scratch_adds_no_duplicate_and_changes_nothing(tmp_path: Path) -> None:
    url = dsn(tmp_path / "operator.db")
    await simulate(url, steps=6)
    before = await read_both(url, "sqlite", "problem")
    writer = RealisticWriter(url)
    try:
        history = await writer.count(TT_STATUS_HISTORY)
        async with writer.engine.begin() as conn:
            await conn.execute(text("DELETE FROM rt_sync"))  # as if the conversion had never run
        assert await writer.sync() == len(before[0]) + await writer.count(PO_ORDER)
        assert await writer.count(TT_STATUS_HISTORY) == history
        assert await writer.sync() == 0  # nothing changed since
    finally:
        await writer.close()
    assert await read_both(url, "sqlite", "problem") == before


async def test_time_columns_have_indexes(tmp_path: Path) -> None:
    url = dsn(tmp_path / "operator.db")
    await simulate(url, days=0.5, steps=1)
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            indexed = await conn.run_sync(
                lambda sync: {
                    (table, column)
                    for table in ("tt_ticket", "tt_status_history", "tt_sla", "po_order")
                    for index in inspect(sync).get_indexes(table)
                    for column in [tuple(index["column_names"])]
                }
            )
    finally:
        await engine.dispose()
    assert {
        ("tt_ticket", ("opened_at",)), ("tt_ticket", ("last_modified",)), ("tt_sla", ("expected_resolution_at",)),
        ("tt_status_history", ("state_id", "changed_at")), ("po_order", ("order_date",)),
        ("po_order", ("completion_date",)),
    } <= indexed  # fmt: skip


def test_mariadb_times_are_naive_local_datetime6_unique_across_the_spring_change() -> None:
    ddl = str(CreateTable(PO_ORDER).compile(dialect=mysql.dialect()))
    assert "order_date DATETIME(6) NOT NULL" in ddl
    assert "requested_ms BIGINT" in ddl
    to_db = time_codec("mariadb", "Europe/Berlin")
    change = datetime(2026, 3, 29, 1, 0, tzinfo=UTC).timestamp()  # 02:00 CET becomes 03:00 CEST
    instants = [change + k * 600.5 for k in range(-12, 12)]
    local = [to_db(t) for t in instants]
    assert all(v.tzinfo is None for v in local)
    assert local == sorted(local)
    assert len(set(local)) == len(local)
    assert [v.replace(tzinfo=BERLIN).timestamp() for v in local] == pytest.approx(instants, abs=1e-6)
    assert not any(v.hour == 2 for v in local)  # the skipped hour is never written


def test_mariadb_repeated_autumn_hour_is_the_naive_type_s_loss() -> None:
    to_db = time_codec("mariadb", "Europe/Berlin")
    first = datetime(2026, 10, 25, 0, 30, tzinfo=UTC).timestamp()  # 02:30 CEST
    assert to_db(first) == to_db(first + HOUR) == datetime(2026, 10, 25, 2, 30)  # 02:30 CET, an hour later


def test_iso_text_is_fixed_width_utc_so_text_order_is_time_order() -> None:
    to_db = time_codec("sqlite")
    instants = [NOW, NOW + 0.5, NOW + 1, NOW + 1e-6, NOW - 7 * DAY, NOW + 200 * DAY]
    texts = [to_db(t) for t in instants]
    assert {len(t) for t in texts} == {32}
    assert all(t.endswith("+00:00") for t in texts)
    assert sorted(texts) == [to_db(t) for t in sorted(instants)]


def test_unknown_dialect_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'oracle'"):
        time_codec("oracle")


def parse_simulate(*argv: str) -> argparse.Namespace:
    """Parse `fabwatch simulate` arguments."""
    parser = argparse.ArgumentParser(prog="fabwatch")
    cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["simulate", *argv])


def test_simulate_schema_realistic_writes_both_schemas_and_steps_both(tmp_path: Path) -> None:
    path = tmp_path / "cli.db"
    args = parse_simulate("--dsn", dsn(path), "--days", "1", "--scale", "0.3", "--schema", "realistic")
    assert cli.run(args) == 0
    assert cli.run(args) == 0  # history present: a step, converted too
    for epoch, realistic in (("trouble_ticket", "tt_ticket"), ("product_order", "po_order")):
        assert scalar(path, f"SELECT COUNT(*) FROM {realistic}") == scalar(path, f"SELECT COUNT(*) FROM {epoch}") > 10
    assert scalar(path, "SELECT value FROM rt_sync") == scalar(path, "SELECT value FROM sim_state")


def test_simulate_refuses_an_unknown_schema_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("FABWATCH_SIMULATE_SCHEMA", "itsm")
    assert cli.run(parse_simulate("--dsn", dsn(tmp_path / "x.db"))) == 2
    assert "FABWATCH_SIMULATE_SCHEMA='itsm' is not one of epoch, realistic" in caplog.text
    assert not (tmp_path / "x.db").exists()


def test_example_name_follows_the_url_s_dialect() -> None:
    assert example_name("postgresql+asyncpg://u@h/db") == "realistic-postgres.yaml"
    assert example_name("mariadb+aiomysql://u@h/db") == "realistic-mariadb.yaml"
    assert example_name("mysql+aiomysql://u@h/db") == "realistic-mariadb.yaml"
    assert example_name("sqlite+aiosqlite:///x.db") == "realistic-sqlite.yaml"
    with pytest.raises(ValueError, match="not 'oracle'"):
        example_name("oracle+oracledb://u@h/db")
    with pytest.raises(ValueError, match="not a database URL"):
        example_name("operator.db")


# --- the same data read both ways gives the same metrics ---------------------------------------

DST_END = datetime(2026, 3, 30, 12, 0, tzinfo=UTC).timestamp()  # a day after the spring change in Europe


def samplers(
    url: str, kind: str, state: Path, timezone: str | None, epoch_url: str | None
) -> tuple[SourceSampler, SourceSampler]:
    """Return samplers of the epoch tables (operator.yaml) and of the realistic ones, both named `ops`."""
    epoch = load_inventory([EXAMPLES / "operator.yaml"], {"FABWATCH_DEMO_DSN": epoch_url or url})
    real = load_inventory([EXAMPLES / f"realistic-{kind}.yaml"], {"FABWATCH_DEMO_DSN": url})
    source = real.sources["ops"]
    if timezone is not None:  # the realistic SQLite file written in local wall time
        # Reading wall times as instants on SQLite (a CASE over the zone's changes per row) takes
        # ~10 s a sample here, beyond the example's 10 s timeout: this test is about the values.
        source = source.model_copy(update={"timezone": timezone, "timeout": 120.0})
    processes = {p: epoch.processes[p] for p in real.processes}
    return (
        SourceSampler("ops", epoch.sources["operator"], processes, StateStore(state / "epoch.state")),  # type: ignore[arg-type]
        SourceSampler("ops", source, real.processes, StateStore(state / "real.state")),  # type: ignore[arg-type]
    )


def readings(sample: SourceSample) -> dict[tuple[Any, ...], float | None]:
    """Return every KPI, counter, gauge and histogram value of a sample (not the source's own health)."""
    out: dict[tuple[Any, ...], float | None] = {("kpi", k.process, k.kpi): k.value for k in sample.kpis}
    for family in sample.families:
        if family.name.startswith("fab_source_"):
            continue
        out.update({(family.name, labels): value for labels, value in family.samples})
        for labels, histogram in family.histograms:
            out.update({(family.name, labels, "le", le): count for le, count in histogram.buckets})
            out[(family.name, labels, "sum")], out[(family.name, labels, "count")] = histogram.sum, histogram.count
    return out


def assert_same_readings(got: dict[Any, float | None], want: dict[Any, float | None], clock: float = 0.0) -> None:
    """Assert equal keys and values: counts exact, the rest to 1e-9, cycle-time sums to `clock` per item.

    SQLite reads ISO text as epoch seconds through julianday(), whose clock counts milliseconds:
    each cycle time may differ by that much there (SQLite's limit, not the data's).
    """
    assert got.keys() == want.keys()
    wrong = {}
    for key, value in want.items():
        slack = clock * (want[(*key[:2], "count")] or 0) if key[-1] == "sum" else 0.0
        if (got[key] is None) != (value is None) or (
            value is not None and not math.isclose(got[key], value, rel_tol=1e-9, abs_tol=max(1e-9, slack))  # type: ignore[arg-type]
        ):
            wrong[key] = (got[key], value)
    assert not wrong, wrong


async def assert_same_metrics_both_ways(
    url: str, kind: str, state: Path, clock: float = 0.0, timezone: str | None = None, epoch_url: str | None = None
) -> int:
    """Simulate across the spring change, sample both schemas after each step, restart half-way."""
    sim = RealisticSimulator(url, epoch_dsn=epoch_url, scale=0.5, seed=5, local_text=timezone is not None)
    start = DST_END - 2 * DAY
    epoch, real = samplers(url, kind, state, timezone, epoch_url)
    compared = 0
    try:
        await sim.backfill(6, start)
        for i in range(7):
            now = start + i * 8 * HOUR
            if i:
                await sim.step(now)
            if i == 4:  # a restart: counters continue from the saved watermarks on both sides
                await epoch.close()
                await real.close()
                epoch, real = samplers(url, kind, state, timezone, epoch_url)
            want, got = readings(await epoch.sample(now)), readings(await real.sample(now))
            assert sum(v is not None for v in want.values()) > 100
            assert_same_readings(got, want, clock)
            compared += len(want)
    finally:
        await epoch.close()
        await real.close()
        await sim.close()
    return compared


@pytest.mark.slow
async def test_sqlite_iso_text_schema_gives_the_metrics_of_the_epoch_tables(tmp_path: Path) -> None:
    assert await assert_same_metrics_both_ways(dsn(tmp_path / "operator.db"), "sqlite", tmp_path, 1e-3) > 1000


@pytest.mark.slow
async def test_sqlite_local_wall_time_across_the_spring_change_gives_the_metrics_of_the_epoch_tables(
    tmp_path: Path,
) -> None:
    """Naive local times (as MariaDB's DATETIME holds them) on both sides of 2026-03-29 02:00 CET."""
    url = dsn(tmp_path / "operator.db")
    assert await assert_same_metrics_both_ways(url, "sqlite", tmp_path, 1e-3, "Europe/Berlin") > 1000
    night = [
        row[0]
        for row in query(tmp_path / "operator.db", "SELECT changed_at FROM tt_status_history "
                         "WHERE changed_at BETWEEN '2026-03-28 23' AND '2026-03-29 06'")
    ]  # fmt: skip
    assert any(t < "2026-03-29 02" for t in night)  # rows on both sides of the change...
    assert any(t >= "2026-03-29 03" for t in night)
    assert not any(t.startswith("2026-03-29 02") for t in night)  # ...and none in the hour it skips


@pytest.mark.integration
async def test_postgres_timestamptz_schema_gives_the_metrics_of_the_epoch_tables(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    url = postgres.dsn(database=postgres.create_database())
    assert await assert_same_metrics_both_ways(url, "postgres", tmp_path) > 1000


# --- fabwatch demo --db ------------------------------------------------------------------------


@pytest.mark.integration
def test_demo_db_runs_the_demo_on_the_realistic_schema_in_postgresql(postgres: PostgresServer, tmp_path: Path) -> None:
    url = postgres.dsn(database=postgres.create_database())
    port = free_port()
    proc = run_fabwatch("demo", "--db", url, "--days", "2", "--data-dir", str(tmp_path / "demo"),
                        "--listen", f"127.0.0.1:{port}")  # fmt: skip
    deadline, body = time.monotonic() + 90, ""
    while time.monotonic() < deadline:
        body = wait_http(f"http://127.0.0.1:{port}/metrics", proc).decode()
        created = set(re.findall(r'^fab_items_created_total\{[^}]*process="([a-z_]+)"', body, re.MULTILINE))
        if 'fab_source_up{source="ops"} 1.0' in body and created == {"problem", "order"}:
            break
        time.sleep(0.5)
    code, out, err = stop(proc, signal.SIGINT)
    assert 'fab_source_up{source="ops"} 1.0' in body, err
    assert created == {"problem", "order"}, err
    assert re.search(r'^fab_backlog_items\{[^}]*priority="high"', body, re.MULTILINE)  # labels, not codes
    assert not re.search(r'priority="\d', body)
    assert code == 0, err
    assert f"{url.split(':')[0]}://fabwatch:***@" in out  # where it writes, the password hidden
    database = url.rsplit("/", 1)[1]
    assert postgres.psql("SELECT COUNT(*) > 100 FROM tt_ticket", database=database).strip() == "t"
    # The simulator's own tables stay in the demo's directory: the database holds the realistic schema.
    assert postgres.psql("SELECT to_regclass('trouble_ticket') IS NULL", database=database).strip() == "t"
    assert scalar(tmp_path / "demo" / "operator.db", "SELECT COUNT(*) FROM trouble_ticket") > 100


def test_demo_db_refuses_tmf_and_an_unsupported_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path / "demo")
    assert main(["demo", "--db", dsn(tmp_path / "x.db"), "--tmf", "--data-dir", data]) == 2
    assert "--db and --tmf exclude each other" in capsys.readouterr().err
    assert main(["demo", "--db", "oracle+oracledb://u@h/db", "--data-dir", data]) == 2
    assert "not 'oracle'" in capsys.readouterr().err
    assert not (tmp_path / "x.db").exists()


# --- MariaDB: naive DATETIME(6) in Europe/Berlin (the simulator's epoch tables stay in SQLite) ---


@pytest.mark.integration
@pytest.mark.parametrize("process", ["problem", "order"])
async def test_mariadb_naive_local_schema_reads_back_as_the_epoch_rows(
    mariadb: MariaDBServer, tmp_path: Path, process: str
) -> None:
    url, epoch_url = mariadb.dsn(database=mariadb.create_database()), dsn(tmp_path / "epoch.db")
    await simulate(url, epoch_url=epoch_url)
    epoch, mapped = await read_both(url, "mariadb", process, epoch_url)
    assert_lifecycles_covered(epoch, process)
    assert_same_rows("mariadb", process, epoch, mapped)
    sql = (
        "SELECT data_type, datetime_precision FROM information_schema.columns "
        "WHERE table_schema = DATABASE() AND table_name = 'po_order' AND column_name = 'order_date'"
    )
    (column,) = await fetch(url, sql)
    assert (column["data_type"], column["datetime_precision"]) == ("datetime", 6)


@pytest.mark.integration
async def test_mariadb_naive_local_across_the_spring_change_gives_the_metrics_of_the_epoch_tables(
    mariadb: MariaDBServer, tmp_path: Path
) -> None:
    url, epoch_url = mariadb.dsn(database=mariadb.create_database()), dsn(tmp_path / "epoch.db")
    assert await assert_same_metrics_both_ways(url, "mariadb", tmp_path, epoch_url=epoch_url) > 1000
    night = [
        str(row["changed_at"])
        for row in await fetch(url, "SELECT changed_at FROM tt_status_history "
                               "WHERE changed_at BETWEEN '2026-03-28 23:00' AND '2026-03-29 06:00'")
    ]  # fmt: skip
    assert any(t < "2026-03-29 02" for t in night)  # rows on both sides of the change...
    assert any(t >= "2026-03-29 03" for t in night)
    assert not any(t.startswith("2026-03-29 02") for t in night)  # ...and none in the hour it skips


@pytest.mark.integration
def test_demo_db_runs_the_demo_on_the_realistic_schema_in_mariadb(mariadb: MariaDBServer, tmp_path: Path) -> None:
    port = free_port()
    proc = run_fabwatch("demo", "--db", mariadb.dsn(database=mariadb.create_database()), "--days", "2",
                        "--data-dir", str(tmp_path / "demo"), "--listen", f"127.0.0.1:{port}")  # fmt: skip
    deadline, body, created = time.monotonic() + 90, "", set()
    while time.monotonic() < deadline:
        body = wait_http(f"http://127.0.0.1:{port}/metrics", proc).decode()
        created = set(re.findall(r'^fab_items_created_total\{[^}]*process="([a-z_]+)"', body, re.MULTILINE))
        if 'fab_source_up{source="ops"} 1.0' in body and created == {"problem", "order"}:
            break
        time.sleep(0.5)
    code, _, err = stop(proc, signal.SIGINT)
    assert 'fab_source_up{source="ops"} 1.0' in body, err
    assert created == {"problem", "order"}, err
    assert re.search(r'^fab_backlog_items\{[^}]*priority="high"', body, re.MULTILINE)
    assert code == 0, err


@pytest.mark.integration
async def test_simulate_realistic_into_mariadb_keeps_the_simulator_s_tables_in_epoch_dsn(
    mariadb: MariaDBServer, tmp_path: Path
) -> None:
    url, epoch = mariadb.dsn(database=mariadb.create_database()), tmp_path / "simulator.db"
    args = parse_simulate(
        "--dsn", url, "--epoch-dsn", dsn(epoch), "--days", "1", "--scale", "0.3", "--schema", "realistic"
    )
    assert await asyncio.to_thread(cli.run, args) == 0
    (tickets,) = await fetch(url, "SELECT COUNT(*) AS n FROM tt_ticket")
    assert tickets["n"] == scalar(epoch, "SELECT COUNT(*) FROM trouble_ticket") > 10


def test_simulate_realistic_refuses_to_put_the_simulator_s_tables_in_mariadb(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    args = parse_simulate("--dsn", "mariadb+aiomysql://u:p@127.0.0.1:1/db", "--schema", "realistic")
    assert cli.run(args) == 2
    assert "cannot live in MariaDB/MySQL" in caplog.text
    assert "--epoch-dsn" in caplog.text


# --- fabwatch check on each example, against the schema the simulator wrote ----------------------

CHECK_KINDS = {"sqlite": "iso_text", "postgres": "timestamptz", "mariadb": "timestamp"}


async def check_example(kind: str, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, epoch: str | None) -> str:
    """Write the realistic schema, run `fabwatch check` on the example of its dialect; return its output."""
    await simulate(url, days=3, steps=2, epoch_url=epoch)
    monkeypatch.setenv("FABWATCH_DEMO_DSN", url)
    monkeypatch.setenv("FABWATCH_STATE", str(tmp_path / "check.state"))
    code = await asyncio.to_thread(main, ["check", "-c", str(EXAMPLES / f"realistic-{kind}.yaml")])
    return f"exit={code}\n"


def assert_checked(kind: str, out: str) -> None:
    """Assert every KPI answered and each time column's kind was found as the example says."""
    assert "1 source(s), 19 ok, 0 failed" in out, out
    for process in ("problem", "order"):
        for role in ("created", "completed"):
            assert f"process {process}: {role} {role}_at: {CHECK_KINDS[kind]}" in out, out
    assert "process order: due due_at: epoch_ms" in out, out


@pytest.mark.slow
async def test_check_passes_on_the_sqlite_example_with_every_edge_on_an_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await check_example("sqlite", dsn(tmp_path / "operator.db"), tmp_path, monkeypatch, None) == "exit=0\n"
    out = capsys.readouterr().out
    assert_checked("sqlite", out)
    assert "full scan" not in out
    assert out.count("edge plan: SEARCH") == 4, out


@pytest.mark.integration
async def test_check_passes_on_the_postgres_example(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = postgres.dsn("fabwatch", database=postgres.create_database())
    assert await check_example("postgres", url, tmp_path, monkeypatch, None) == "exit=0\n"
    assert_checked("postgres", capsys.readouterr().out)


@pytest.mark.integration
async def test_check_passes_on_the_mariadb_example(
    mariadb: MariaDBServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = mariadb.dsn(database=mariadb.create_database())
    assert await check_example("mariadb", url, tmp_path, monkeypatch, dsn(tmp_path / "epoch.db")) == "exit=0\n"
    assert_checked("mariadb", capsys.readouterr().out)
