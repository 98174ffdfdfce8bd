"""The cost CSV source: monthly costs from finance into the record store, bad rows named by file and line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector.errors import SourceError
from collector.inventory.load import cross_check
from collector.inventory.models import Inventory
from collector.inventory.sources import CostCsvSource
from collector.kpis import MONTH_SECONDS
from collector.samples import SourceSample
from collector.sampling import build_sampler, monthly_costs
from collector.sources.files import CostCsvSync
from collector.sources.records import open_records
from collector.sources.store import Records
from collector.state import StateStore
from tests.app.test_service import make_records
from tests.sources.helpers import EXAMPLE, sample_source

GOOD = """process,component,amount,currency,month
problem,labour,125000.50,EUR,2026-01
problem,platform,12000,EUR,2026-01
problem,labour,118000,EUR,2026-02
order,labour,99000,EUR,2026-01
"""
FEB_2026 = 1_769_904_000.0  # 2026-02-01T00:00:00Z


def sync(tmp_path: Path, pattern: str, location: str | None = None) -> tuple[CostCsvSync, Records]:
    store = open_records(location or tmp_path / "costs.db", "finance", ["trouble_ticket"])
    return CostCsvSync("finance", CostCsvSource(kind="cost_csv", path=pattern), store), store


def entries(store: Records) -> list[tuple[Any, ...]]:
    return store._db.execute(  # type: ignore[attr-defined,no-any-return]
        "SELECT process, component, month, amount, currency, month_start FROM cost_entry "
                             "ORDER BY process, component, month").fetchall()


async def test_rows_are_stored_and_a_later_file_replaces_a_month(tmp_path: Path, store_location: str) -> None:
    (tmp_path / "costs-2026-01.csv").write_text(GOOD)
    syncer, store = sync(tmp_path, str(tmp_path / "costs-*.csv"), store_location)
    try:
        assert await syncer.sync() == 4
        assert await syncer.sync() == 0  # unchanged files are not read again
        (tmp_path / "costs-2026-02.csv").write_text(
            "\ufeffprocess, component, amount, currency, month\r\nproblem,labour,120000,EUR,2026-02\r\n")
        assert await syncer.sync() == 5  # every file again; Excel's BOM, CRLF and spaces after commas are fine
        assert entries(store) == [
            ("order", "labour", "2026-01", 99000.0, "EUR", 1_767_225_600.0),
            ("problem", "labour", "2026-01", 125000.5, "EUR", 1_767_225_600.0),
            ("problem", "labour", "2026-02", 120000.0, "EUR", FEB_2026),
            ("problem", "platform", "2026-01", 12000.0, "EUR", 1_767_225_600.0),
        ]
    finally:
        store.close()


async def test_value_kpis_read_the_costs_through_the_engine(tmp_path: Path) -> None:
    path = tmp_path / "costs.csv"
    path.write_text(GOOD)
    month_cost = "SELECT SUM(amount) FROM cost_entry WHERE process = 'problem' AND month = '2026-01'"
    sample = await sample_source(tmp_path, {"kind": "cost_csv", "path": str(path)},
                                 {"cost_jan": {"kind": "value", "sql": month_cost}}, FEB_2026)
    assert [(k.kpi, k.value) for k in sample.kpis] == [("cost_jan", 137000.5)]


@pytest.mark.parametrize(("line", "problem"), [
    ("problem,labour,12.5x,EUR,2026-01", "amount '12.5x' is not a number"),
    ("problem,labour,nan,EUR,2026-01", "amount 'nan' is not a number"),
    ("problem,labour,100,eur,2026-01", "currency 'eur' is not an ISO 4217 code"),
    ("problem,labour,100,EUR,2026-13", "month '2026-13' is not YYYY-MM"),
    ("problem,labour,100,EUR,01/2026", "month '01/2026' is not YYYY-MM"),
    (",labour,100,EUR,2026-01", "no process"),
    ("problem,,100,EUR,2026-01", "no component"),
    ("problem,labour,100", "currency '' is not an ISO 4217 code (e.g. EUR); month '' is not YYYY-MM"),
])
async def test_a_bad_row_names_file_and_line(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "costs.csv"
    path.write_text(GOOD + line + "\n")
    syncer, store = sync(tmp_path, str(path))
    try:
        with pytest.raises(SourceError) as caught:
            await syncer.sync()
        assert caught.value.reason == "schema"
        assert f"{path}:6: " in str(caught.value)
        assert problem in str(caught.value)
        assert entries(store) == []  # a bad file stores nothing
    finally:
        store.close()


@pytest.mark.parametrize(("content", "message"), [
    ("process,component,amount,month\nproblem,labour,1,2026-01\n", ":1: missing columns currency"),
    (b"process,component,amount,currency,month\nprobl\xe9m,labour,1,EUR,2026-01\n", "not UTF-8 text"),
])
async def test_an_unreadable_file_is_named(tmp_path: Path, content: str | bytes, message: str) -> None:
    path = tmp_path / "costs.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    syncer, store = sync(tmp_path, str(path))
    try:
        with pytest.raises(SourceError, match=f"{path}{message}" if message.startswith(":") else message) as caught:
            await syncer.sync()
        assert caught.value.reason == "schema"
        assert str(path) in str(caught.value)
    finally:
        store.close()


async def test_no_matching_file_is_a_connection_error(tmp_path: Path) -> None:
    syncer, store = sync(tmp_path, str(tmp_path / "missing-*.csv"))
    try:
        with pytest.raises(SourceError, match="no file matches") as caught:
            await syncer.sync()
        assert caught.value.reason == "connection"
    finally:
        store.close()


async def test_a_directory_the_pattern_matches_is_named_as_unreadable(tmp_path: Path) -> None:
    """A glob like `costs-*` can match a folder (or a file without read permission): a connection
    error naming it, not an internal error without a name."""
    (tmp_path / "costs-2026-01.csv").write_text("process,component,amount,currency,month\n")
    (tmp_path / "costs-archive").mkdir()
    syncer, store = sync(tmp_path, str(tmp_path / "costs-*"))
    try:
        with pytest.raises(SourceError, match=f"{tmp_path / 'costs-archive'}: cannot read: Is a directory") as caught:
            await syncer.sync()
        assert caught.value.reason == "connection"
    finally:
        store.close()


async def test_a_correction_in_a_later_file_stays_when_an_earlier_file_is_touched(tmp_path: Path) -> None:
    """Finance corrects January in the February file; a January file saved again (unchanged) must
    not bring the old amount back. The files, in name order, are the truth."""
    january, february = tmp_path / "costs-2026-01.csv", tmp_path / "costs-2026-02.csv"
    january.write_text("process,component,amount,currency,month\nproblem,platform,1000,EUR,2026-01\n")
    february.write_text("process,component,amount,currency,month\nproblem,platform,1200,EUR,2026-01\n")
    syncer, store = sync(tmp_path, str(tmp_path / "costs-*.csv"))
    try:
        await syncer.sync()
        assert [e[3] for e in entries(store)] == [1200.0]
        os.utime(january, (2.0, 2.0))  # touched, not changed
        await syncer.sync()
        assert [e[3] for e in entries(store)] == [1200.0]
        february.unlink()  # the correction withdrawn
        await syncer.sync()
        assert [e[3] for e in entries(store)] == [1000.0]
    finally:
        store.close()


async def test_a_fixed_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "costs.csv"
    path.write_text(GOOD + "problem,labour,oops,EUR,2026-03\n")
    syncer, store = sync(tmp_path, str(path))
    try:
        with pytest.raises(SourceError):
            await syncer.sync()
        path.write_text(GOOD + "problem,labour,1,EUR,2026-03\n")
        os.utime(path, (1.0, 1.0))
        assert await syncer.sync() == 5
    finally:
        store.close()


def finance_inventory(tmp_path: Path, costs: dict[str, Any], cost_path: Path, store: str | None = None) -> Inventory:
    """The example's `problem` process on SQLite records, its costs from `costs`, a `finance` cost_csv
    (its record store at `store`, else the default)."""
    document = yaml.safe_load(EXAMPLE.read_text())
    problem = document["processes"]["problem"]
    problem["records"]["source"] = "ops"
    problem["costs"] = costs
    problem["records"]["columns"]["dimensions"] = ["priority", "channel"]  # make_records has no segment
    problem["kpis"] = {k: v for k, v in problem["kpis"].items() if v["kind"] in ("volume", "cost")}
    make_records(tmp_path / "records.db")
    return Inventory.model_validate({
        "service": {"state_path": str(tmp_path / "state.db"), "currency": "EUR", "timezone": "UTC"},
        "sources": {"ops": {"kind": "sql", "dsn": f"sqlite+aiosqlite:///{tmp_path / 'records.db'}"},
                    "finance": {"kind": "cost_csv", "path": str(cost_path),
                                **({"store": store} if store else {})}},
        "processes": {"problem": problem}})


def platform_cost(sample: SourceSample) -> float:
    family = next(f for f in sample.families if f.name == "fab_cost")
    return next(v for labels, v in family.samples if ("component", "platform") in labels)


async def test_monthly_from_feeds_the_cost_model_from_the_finance_file(tmp_path: Path, store_location: str) -> None:
    path = tmp_path / "costs.csv"
    path.write_text("process,component,amount,currency,month\nproblem,platform,30000,EUR,2026-01\n"
                    "problem,platform,45000,EUR,2026-03\nproblem,platform,99,USD,2026-04\n")
    inventory = finance_inventory(tmp_path, {"platform": {"monthly_from": "finance"}}, path, store_location)
    state = StateStore(tmp_path / "state.db")
    finance = build_sampler("finance", inventory.sources["finance"], {}, state, inventory.service, state.path)
    monthly = monthly_costs(inventory, state.path)
    ops = build_sampler("ops", inventory.sources["ops"], inventory.processes, state, inventory.service, state.path,
                        monthly)
    jan, hour = 1_767_225_600.0 + 86_400, 3_600.0
    try:
        await ops.open()
        assert platform_cost(await ops.sample(jan)) == 0.0  # finance has not booked anything yet
        await finance.open()
        await finance.sample(jan)
        at_jan = platform_cost(await ops.sample(jan + hour))  # the month's amount, over the hour since
        assert at_jan == pytest.approx(30_000 * hour / MONTH_SECONDS, rel=1e-12)
        feb = FEB_2026 + 86_400  # no February row: January's amount carries on
        grown = platform_cost(await ops.sample(feb)) - at_jan
        assert grown == pytest.approx(30_000 * (feb - jan - hour) / MONTH_SECONDS, rel=1e-12)
        mar = 1_772_323_200.0 + 86_400  # 2026-03-02
        before = platform_cost(await ops.sample(mar))
        after = platform_cost(await ops.sample(mar + hour))
        assert after - before == pytest.approx(45_000 * hour / MONTH_SECONDS, rel=1e-12)
        apr = mar + 31 * 86_400  # April's row is in USD: left out, not converted, cost stops accruing
        assert monthly is not None
        assert monthly("finance", "problem", "platform", apr) is None
    finally:
        await ops.close()
        await finance.close()
        state.close()


def test_monthly_from_must_name_a_cost_csv_source(tmp_path: Path) -> None:
    inventory = finance_inventory(tmp_path, {"platform": {"monthly_from": "ops"}}, tmp_path / "x.csv")
    assert cross_check(inventory) == [("processes.problem.costs.platform.monthly_from",
                                       "'ops' is not a cost_csv source; cost_csv sources: finance")]
