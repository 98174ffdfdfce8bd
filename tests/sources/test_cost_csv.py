"""The cost CSV source: monthly costs from finance into the record store, bad rows named by file and line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from collector.errors import SourceError
from collector.sources.files import CostCsvSync
from collector.sources.sampler import build_sampler
from collector.sources.schema import CostCsvSource
from collector.sources.store import RecordStore
from collector.state import StateStore
from tests.sources.helpers import problem_inventory

GOOD = """process,component,amount,currency,month
problem,labour,125000.50,EUR,2026-01
problem,platform,12000,EUR,2026-01
problem,labour,118000,EUR,2026-02
order,labour,99000,EUR,2026-01
"""
FEB_2026 = 1_769_904_000.0  # 2026-02-01T00:00:00Z


def sync(tmp_path: Path, pattern: str) -> tuple[CostCsvSync, RecordStore]:
    store = RecordStore(tmp_path / "costs.db", ["trouble_ticket"])
    return CostCsvSync("finance", CostCsvSource(kind="cost_csv", path=pattern), store), store


def entries(store: RecordStore) -> list[tuple[Any, ...]]:
    return store._db.execute("SELECT process, component, month, amount, currency, month_start FROM cost_entry "
                             "ORDER BY process, component, month").fetchall()


async def test_rows_are_stored_and_a_later_file_replaces_a_month(tmp_path: Path) -> None:
    (tmp_path / "costs-2026-01.csv").write_text(GOOD)
    syncer, store = sync(tmp_path, str(tmp_path / "costs-*.csv"))
    try:
        assert await syncer.sync() == 4
        assert await syncer.sync() == 0  # unchanged files are not read again
        (tmp_path / "costs-2026-02.csv").write_text(
            "\ufeffprocess, component, amount, currency, month\r\nproblem,labour,120000,EUR,2026-02\r\n")
        assert await syncer.sync() == 1  # Excel's BOM, CRLF and spaces after commas are fine
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
    inventory = problem_inventory(tmp_path, {"kind": "cost_csv", "path": str(path)},
                                  {"cost_jan": {"kind": "value", "sql": month_cost}})
    state = StateStore(tmp_path / "state.db")
    sampler = build_sampler("src", inventory.sources["src"], inventory.processes, state, inventory.service,
                            tmp_path / "state.db")
    try:
        await sampler.open()
        sample = await sampler.sample(FEB_2026)
    finally:
        await sampler.close()
        state.close()
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
