"""KPIs through TMF polling, TMF events and direct SQL agree exactly on the same simulated records."""

from __future__ import annotations

import asyncio
from pathlib import Path

from collector.schema import Process
from collector.service import build_app
from collector.sources.http import HttpClient, Limits
from collector.sources.polling import TmfPoller
from collector.sources.sampler import open_store
from collector.sources.schema import TmfSource
from collector.sources.tmf import APIS
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


async def _settle(server: TmfServer, cursor: float) -> None:
    """Wait until the TMF server has notified every change up to `cursor` and every post was answered."""
    await _wait(lambda: server.notified_until == cursor and server.delivery.pending == 0)


async def _wait(condition: object, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.02)
