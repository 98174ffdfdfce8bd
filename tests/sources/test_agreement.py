"""KPIs through TMF polling, TMF events and direct SQL agree exactly on the same simulated records."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from app.service import build_app
from collector.engine import SourceSampler
from collector.inventory.models import Process, SqlSource
from collector.inventory.sources import TmfSource
from collector.samples import SourceSample
from collector.sampling import open_store
from collector.sources.http import HttpClient, Limits
from collector.sources.polling import TmfPoller
from collector.sources.store import RecordStore
from collector.sources.tmf import APIS
from collector.state import StateStore
from simulator import Simulator
from simulator.tmf import TmfServer
from tests.servers import free_port
from tests.sources.helpers import API_OF, comparable, example, sample_sql, serve_app, tmf_server

DAY = 86400.0
START = 1_767_225_600.0  # 2026-01-01T00:00:00Z, so the run does not depend on the clock


def _query(ticket_type: str | None) -> str:
    return f"ticketType={ticket_type}" if ticket_type else ""


async def _poll_all(url: str, processes: dict[str, Process], tmp: Path, version: int) -> dict[str, str]:
    """Poll every process through its API into one record store per process; return process -> DSN."""
    dsns = {}
    for name, process in processes.items():
        api, ticket_type = API_OF[name]
        source = TmfSource(kind=api, base_url=url + APIS[api].base_paths[version], version=version,  # type: ignore[arg-type]
                           query=_query(ticket_type), page_size=97, store=str(tmp / f"poll-{name}.db"))
        store = open_store(name, source, {name: process}, tmp / "state.db")
        client = HttpClient(name, Limits(10, 0, 0.1, 1 << 26))
        try:
            poller = TmfPoller(name, source, client, store)
            await poller.sync()
            await poller.sync()  # incremental: nothing new, nothing changes
        finally:
            await client.close()
            store.close()
        dsns[name] = f"sqlite+aiosqlite:///{tmp / f'poll-{name}.db'}"
    return dsns


@pytest.mark.slow
async def test_polling_events_and_sql_agree(tmp_path: Path) -> None:
    sim_db = tmp_path / "operator.db"
    dsn = f"sqlite+aiosqlite:///{sim_db}"
    simulator = Simulator(dsn, seed=7, scale=0.15)
    await simulator.create_schema()
    async with tmf_server(dsn, tick=0.05) as (server, url):
        port = free_port()
        sources = {}
        for name, (api, ticket_type) in API_OF.items():
            version = 4 if api == "tmf676" else 5
            sources[f"ev_{name}"] = {
                "kind": "tmf_events", "api": api, "version": version, "interval": "1h",
                "hub_url": url + APIS[api].base_paths[version], "query": _query(ticket_type),
                "store": str(tmp_path / f"ev-{name}.db"), "durability": "normal",
                "callback": f"http://127.0.0.1:{port}/tmf/ev_{name}"}
        inventory = example(sources, {p: f"ev_{p}" for p in API_OF}, tmp_path / "fw-state.db")
        async with serve_app(build_app(inventory), port=port):
            # the service registers with the hubs at the first sample of each source
            await _wait(lambda: len(server.hubs) == len(sources))
            await simulator.backfill(12, START)
            await _settle(server, START)
            for hours in (1, 5, 13, 30):
                await simulator.step(START + hours * 3600)
                await _settle(server, START + hours * 3600)
        await simulator.close()
        assert server.delivery.failed == 0
        assert server.delivery.sent > 1000
        processes = dict(inventory.processes)
        polled = await _poll_all(url, processes, tmp_path, version=4)
    now = START + 30 * 3600 + 1
    for name, process in processes.items():
        direct = comparable(await sample_sql(f"sql_{name}", dsn, {name: process}, tmp_path, now))
        by_poll = comparable(await sample_sql(f"poll_{name}", polled[name], {name: process}, tmp_path, now))
        by_events = comparable(await sample_sql(f"ev_{name}", f"sqlite+aiosqlite:///{tmp_path / f'ev-{name}.db'}",
                                                {name: process}, tmp_path, now))
        assert direct["kpis"], name
        assert by_poll == direct, f"{name}: polling disagrees with SQL"
        assert by_events == direct, f"{name}: events disagree with SQL"


STEPS = (1, 2, 3, 5, 8, 13, 20, 30)
"""Hours after START at which the simulator steps and fabwatch samples during the messy run."""


class _Readers:
    """One sampler per process over SQL and one per event store, each kept across the run's samples
    (a store's looks for late records at every sample, as `build_sampler` builds it)."""

    def __init__(self, dsn: str, stores: dict[str, Path], processes: dict[str, Process], state: StateStore,
                 *, late_every_sample: bool = True) -> None:
        self.sql = {name: SourceSampler(f"sql_{name}", SqlSource(kind="sql", dsn=dsn, settle=0), {name: p}, state)
                    for name, p in processes.items()}
        self.events = {name: SourceSampler(f"ev_{name}", SqlSource(kind="sql", dsn=f"sqlite+aiosqlite:///{stores[name]}",
                                                                   settle=0),
                                           {name: p}, state, late_every_sample=late_every_sample)
                       for name, p in processes.items()}

    async def sample(self, now: float) -> dict[str, tuple[SourceSample, SourceSample]]:
        """Sample every process at `now` through SQL and through its event store."""
        return {name: (await self.sql[name].sample(now), await self.events[name].sample(now)) for name in self.sql}

    async def close(self) -> None:
        for sampler in (*self.sql.values(), *self.events.values()):
            await sampler.close()


def _without_late(sample: SourceSample) -> dict[str, Any]:
    """`comparable` to 9 significant digits (late records are added in another order: sums differ in
    the last bits), less the count of late records (only a store knows what arrived when)."""
    out: dict[str, Any] = _rounded(comparable(sample))
    out["families"].pop("fab_items_late", None)
    return out


def _rounded(value: Any) -> Any:
    """Every float in a nest of dicts, lists and tuples rounded to 9 significant digits."""
    if isinstance(value, float):
        return float(f"{value:.9g}")
    if isinstance(value, Mapping):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def _differences(got: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """What differs between two `comparable` samples: family by family, then KPI by KPI."""
    out = []
    for family in sorted(set(got["families"]) | set(wanted["families"])):
        mine, theirs = got["families"].get(family), wanted["families"].get(family)
        if mine != theirs:
            samples = (set(mine[0]) ^ set(theirs[0])) if mine and theirs else "missing"
            out.append(f"{family}: {samples}")
    out += [f"kpi {a} != {b}" for a, b in zip(got["kpis"], wanted["kpis"], strict=False) if a != b]
    return out


def _late(sample: SourceSample) -> float:
    """How many records a sample counted late, both edges."""
    return sum(value for f in sample.families if f.name == "fab_items_late" for _, value in f.samples)


@pytest.mark.slow
async def test_late_and_partial_events_agree_with_sql_sampled_during_the_run(tmp_path: Path) -> None:
    """Change events carry only what changed and 30 % of events come a round late, while fabwatch
    samples after every round: once everything has arrived, every family and KPI equals SQL's."""
    dsn = f"sqlite+aiosqlite:///{tmp_path / 'operator.db'}"
    simulator = Simulator(dsn, seed=11, scale=0.15)
    await simulator.create_schema()
    async with tmf_server(dsn, tick=0.05, partial_changes=True, hold_back=0.3) as (server, url):
        port = free_port()
        stores = {name: tmp_path / f"ev-{name}.db" for name in API_OF}
        sources = {f"ev_{name}": _events_source(name, url, stores[name], port) for name in API_OF}
        inventory = example(sources, {p: f"ev_{p}" for p in API_OF}, tmp_path / "fw-state.db")
        state = StateStore(tmp_path / "readers-state.db")
        readers = _Readers(dsn, stores, dict(inventory.processes), state)
        try:
            async with serve_app(build_app(inventory), port=port):
                await _wait(lambda: len(server.hubs) == len(sources))
                await simulator.backfill(12, START)
                await _settle(server, START)
                await readers.sample(START)
                held = server.held
                for hours in STEPS:
                    await simulator.step(START + hours * 3600)
                    await _settle(server, START + hours * 3600)
                    held += server.held
                    await readers.sample(START + hours * 3600)
                server.release()
                await _wait(lambda: server.held == 0 and server.delivery.pending == 0)
                final = await readers.sample(START + STEPS[-1] * 3600 + 60)
        finally:
            await readers.close()
            state.close()
            await simulator.close()
    assert server.delivery.failed == 0
    assert held > 100  # events did come a round late
    disagreements = []
    for name, (direct, by_events) in final.items():
        assert comparable(direct)["kpis"], name
        disagreements += [f"{name}: {d}" for d in _differences(_without_late(by_events), _without_late(direct))]
    assert disagreements == [], "late, partial events disagree with SQL:\n" + "\n".join(disagreements)
    assert sum(_late(by_events) for _, by_events in final.values()) > 0  # and were counted as late
    # a partial change event overtook its held create event, and the create completed it
    incomplete = [_incomplete(store) for store in stores.values()]
    assert [waiting for waiting, _ in incomplete] == [0] * len(stores)
    assert sum(counts["event"] for _, counts in incomplete) > 0


def _incomplete(path: Path) -> tuple[int, dict[str, int]]:
    """How many resources of a record store are incomplete, and how many were completed, by how."""
    store = RecordStore(path, [])
    try:
        return store.incomplete_counts()
    finally:
        store.close()


def _events_source(name: str, url: str, store: Path, port: int) -> dict[str, Any]:
    """A `tmf_events` source of one simulated process, registering with the simulator's hub."""
    api, ticket_type = API_OF[name]
    version = 4 if api == "tmf676" else 5
    return {"kind": "tmf_events", "api": api, "version": version, "interval": "1h",
            "hub_url": url + APIS[api].base_paths[version], "query": _query(ticket_type),
            "store": str(store), "durability": "normal", "callback": f"http://127.0.0.1:{port}/tmf/ev_{name}"}


async def _settle(server: TmfServer, cursor: float) -> None:
    """Wait until the TMF server has notified every change up to `cursor` and every post was answered."""
    await _wait(lambda: server.notified_until == cursor and server.delivery.pending == 0)


async def _wait(condition: object, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.02)


async def test_a_store_in_postgres_samples_as_the_same_store_in_sqlite(tmp_path: Path, postgres: Any) -> None:
    """The KPI engine reads a record store in PostgreSQL (psycopg, the source's schema) as it reads
    the SQLite one: the same families and KPIs from the same polled records, equal to direct SQL."""
    from tests.sources.conftest import postgres_store

    dsn = f"sqlite+aiosqlite:///{tmp_path / 'operator.db'}"
    simulator = Simulator(dsn, seed=11, scale=0.05)
    await simulator.create_schema()
    await simulator.backfill(5, START)
    await simulator.close()
    url = postgres_store(postgres)
    now = START + 1
    async with tmf_server(dsn) as (_, base):
        inventory = example({"sql": {"kind": "sql", "dsn": dsn}}, dict.fromkeys(API_OF, "sql"), tmp_path / "s.db")
        for name, process in inventory.processes.items():
            api, ticket_type = API_OF[name]
            version = 4 if api == "tmf676" else 5
            readings = []
            for location in (str(tmp_path / f"{name}.db"), url):
                source = TmfSource(kind=api, base_url=base + APIS[api].base_paths[version], version=version,  # type: ignore[arg-type]
                                   query=_query(ticket_type), page_size=97, store=location)
                store = open_store(name, source, {name: process}, tmp_path / "state.db")
                client = HttpClient(name, Limits(10, 0, 0.1, 1 << 26))
                try:
                    await TmfPoller(name, source, client, store).sync()
                    readings.append(comparable(await sample_sql(f"{name}{len(readings)}", store.dsn, {name: process},
                                                                tmp_path, now)))
                finally:
                    await client.close()
                    store.close()
            direct = comparable(await sample_sql(f"sql_{name}", dsn, {name: process}, tmp_path, now))
            assert direct["kpis"], name
            assert readings[0] == direct, f"{name}: the SQLite store disagrees with SQL"
            # PostgreSQL sums floats in its own order: equal to the last few bits (808.8639999999998)
            assert _rounded(readings[1]) == _rounded(direct), f"{name}: the PostgreSQL store disagrees with SQL"


def _rounded(value: Any) -> Any:
    """A comparable sample with every float rounded to 9 decimals."""
    if isinstance(value, float):
        return round(value, 9)
    if isinstance(value, Mapping):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value
