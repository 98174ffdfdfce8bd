"""The TMF poller against servers that behave as real ones do: capped pages, lower-case headers,
relative links, second-resolution `lastUpdate`, late commits, deletions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from multidict import MultiDict

from collector.inventory.sources import TmfSource
from collector.logs import KeyValueFormatter
from collector.sources import polling
from collector.sources.http import HttpClient, SourceSchemaMismatch, limits_of
from collector.sources.polling import TmfPoller
from collector.sources.records import open_records
from collector.sources.store import Records, RecordStore
from collector.sources.times import format_time, parse_time
from collector.sources.tmf import APIS
from collector.storeurl import postgres_url
from tests.sources.helpers import serve_app

T0 = 1_767_225_600.0
"""2026-01-01T00:00:00Z"""


@dataclass
class FakeTmf:
    """A TMF621 list endpoint over `tickets`, ordered by `lastUpdate` like the simulator's; `headers`
    builds each page's headers (offset, page, limit asked), `cap` is the server's own page limit."""

    tickets: dict[str, dict[str, Any]] = field(default_factory=dict)
    cap: int = 1000
    headers: Callable[[int, list[Any], int], dict[str, str]] = lambda offset, page, limit: {}
    requests: list[str] = field(default_factory=list)
    before_page: Callable[[int], None] = lambda offset: None

    def put(self, ident: str, updated: float, status: str = "inProgress") -> None:
        self.tickets[ident] = {"id": ident, "status": status, "creationDate": format_time(T0),
                               "lastUpdate": format_time(updated)}

    async def list(self, request: web.Request) -> web.Response:
        self.requests.append(request.path_qs)
        offset = int(request.query.get("offset", "0"))
        limit = min(int(request.query.get("limit", "100")), self.cap)
        self.before_page(offset)
        since = request.query.get("lastUpdate.gt")
        ordered = sorted(self.tickets.values(), key=lambda t: (t["lastUpdate"], t["id"]))
        chosen = [t for t in ordered if since is None or parse_time(t["lastUpdate"]) > parse_time(since)]
        page = chosen[offset:offset + limit]
        return web.json_response(page, headers=self.headers(offset, page, limit))

    async def get(self, request: web.Request) -> web.Response:
        self.requests.append(request.path_qs)
        ticket = self.tickets.get(request.match_info["id"])
        if ticket is None:
            return web.json_response({"code": "404", "reason": "not found"}, status=404)
        return web.json_response(ticket)


def total(offset: int, page: list[Any], limit: int, count: int) -> dict[str, str]:
    return {"X-Total-Count": str(count), "X-Result-Count": str(len(page))}


@pytest.fixture
async def server() -> AsyncIterator[tuple[FakeTmf, str]]:
    fake = FakeTmf()
    app = web.Application()

    async def listing(request: web.Request) -> web.Response:
        return await fake.list(request)  # looked up per request: tests replace it

    app.router.add_get("/tt/troubleTicket", listing)
    app.router.add_get("/tt/troubleTicket/{id}", fake.get)
    async with serve_app(app) as url:
        yield fake, f"{url}/tt"


@pytest.fixture
async def poller(tmp_path: Path, store_location: str) -> AsyncIterator[Callable[..., tuple[TmfPoller, Records]]]:
    """Pollers, each with a store of its own: a SQLite file, or a schema of one PostgreSQL database."""
    made: list[TmfPoller] = []

    def make(base: str, **options: Any) -> tuple[TmfPoller, Records]:
        source = TmfSource(kind="tmf621", base_url=base, retries=0, timeout=5, fields=False, **options)
        location = str(tmp_path / f"store{len(made)}.db") if postgres_url(store_location) is None else store_location
        store = open_records(location, f"tt{len(made)}", ["tickets"], final_statuses={"tickets": APIS["tmf621"].finals})
        made.append(TmfPoller("tt", source, HttpClient("tt", limits_of(source)), store))
        return made[-1], store

    yield make
    for tt in made:
        await tt.client.close()
        tt.store.close()


def stored(store: Records) -> dict[str, str]:
    return {r["id"]: r["status"] for r in store.rows("tickets")}


async def test_updates_in_the_watermarks_second_and_late_commits_are_read(server, poller) -> None:
    """`lastUpdate` has one-second resolution on many servers, and a long transaction commits a
    `lastUpdate` older than what a sync already saw: a plain `gt` on the watermark misses both."""
    fake, base = server
    fake.put("A", T0 + 5)
    tt, store = poller(base)
    await tt.sync(now=T0 + 10)  # full: watermark T0+5
    fake.put("B", T0 + 5)  # the watermark's own second
    fake.put("C", T0 + 4, status="resolved")  # committed late
    await tt.sync(now=T0 + 20)
    assert stored(store) == {"A": "inProgress", "B": "inProgress", "C": "resolved"}
    assert f"lastUpdate.gt={format_time(T0 + 5 - 120)}" in fake.requests[-1]  # the default overlap, 2 min


async def test_a_resource_dated_in_the_future_does_not_blind_incremental_syncs(
        server, poller, caplog: pytest.LogCaptureFixture) -> None:
    """One mistyped year would otherwise become the watermark, and every later incremental sync
    would ask for changes after it: none until the next full sync."""
    fake, base = server
    fake.put("A", T0 + 5)
    fake.put("BAD", T0 + 365 * 86_400)
    tt, store = poller(base)
    await tt.sync(now=T0 + 10)
    (warned,) = [r for r in caplog.records if r.getMessage() == "tmf_future_last_update"]
    assert " resources=1 first=BAD last_update=2027-01-01T00:00:00Z" in KeyValueFormatter().format(warned)
    fake.put("B", T0 + 20)
    fake.put("A", T0 + 25, status="resolved")
    await tt.sync(now=T0 + 30)  # incremental
    assert f"lastUpdate.gt={format_time(T0 + 10)}" in fake.requests[-1]  # at most now + overlap, less the overlap
    assert stored(store) == {"A": "resolved", "B": "inProgress", "BAD": "inProgress"}


async def test_a_resource_skipped_by_a_page_shift_is_read_by_the_next_sync(server, poller) -> None:
    """Offset paging over a listing ordered by `lastUpdate`: a resource changed while the sync
    reads moves to the end, the others move up one place, and one of them is never listed."""
    fake, base = server
    fake.headers = lambda offset, page, limit: total(offset, page, limit, len(fake.tickets))
    for n in range(30):
        fake.put(f"T{n:02}", T0 + n)
    tt, store = poller(base, page_size=10)
    await tt.sync(now=T0 + 100)
    for n in range(30):
        fake.put(f"T{n:02}", T0 + 200 + n, status="resolved")

    def change_a_read_one(offset: int) -> None:
        if offset == 10:
            fake.put("T00", T0 + 260, status="closed")

    fake.before_page = change_a_read_one
    await tt.sync(now=T0 + 300)
    missed = {i for i, status in stored(store).items() if status == "inProgress"}
    assert len(missed) == 1  # the shift happened: one resource was not listed
    fake.before_page = lambda offset: None
    await tt.sync(now=T0 + 310)
    assert set(stored(store).values()) <= {"resolved", "closed"}


@pytest.mark.parametrize("headers", [
    pytest.param(lambda offset, page, limit: {"x-total-count": "60"}, id="lower-case total"),
    pytest.param(lambda offset, page, limit: {"X-Result-Count": str(len(page))}, id="result count only"),
    pytest.param(lambda offset, page, limit: {}, id="no header"),
    pytest.param(lambda offset, page, limit: {"Link": f'</tt/troubleTicket?offset={offset + len(page)}&limit={limit}>;'
                                                       ' rel="next"'} if offset + len(page) < 60 else {},
                 id="relative link"),
])
async def test_every_page_is_read_when_the_server_caps_the_page_size(server, poller, headers) -> None:
    fake, base = server
    fake.cap, fake.headers = 20, headers
    for n in range(60):
        fake.put(f"T{n:02}", T0 + n)
    tt, store = poller(base, page_size=100)
    assert await tt.sync(now=T0 + 100) == 60
    assert len(stored(store)) == 60


async def test_a_server_that_ignores_offset_fails_the_sync_instead_of_looping(server, poller) -> None:
    fake, base = server
    fake.cap = 5
    for n in range(20):
        fake.put(f"T{n:02}", T0 + n)

    async def same_page(request: web.Request) -> web.Response:
        fake.requests.append(request.path_qs)
        return web.json_response(list(fake.tickets.values())[:5])

    fake.list = same_page  # type: ignore[method-assign]
    tt, _ = poller(base)
    with pytest.raises(SourceSchemaMismatch, match="ignores offset"):
        await tt.sync(now=T0 + 100)
    assert len(fake.requests) == 2


def paged_by_link(fake: FakeTmf, *, split: bool, cycle: bool = False) -> Callable[..., Any]:
    """A listing that knows `page`, not `offset`, and links `first` and `next` (two `Link` lines when
    `split`); the last page has no `next`, or, with `cycle`, links back to the first page."""
    async def listing(request: web.Request) -> web.Response:
        fake.requests.append(request.path_qs)
        number = int(request.query.get("page", "1"))
        ordered = sorted(fake.tickets.values(), key=lambda t: (t["lastUpdate"], t["id"]))
        pages = (len(ordered) + 1) // 2
        links = ['</tt/troubleTicket?page=1>; rel="first"']
        if number < pages or cycle:
            links.append(f'</tt/troubleTicket?page={number % pages + 1}>; rel="next"')
        headers = MultiDict([("Link", link) for link in links] if split else [("Link", ", ".join(links))])
        return web.json_response(ordered[(number - 1) * 2:number * 2], headers=headers)
    return listing


@pytest.mark.parametrize("split", [False, True], ids=["one Link line", "Link on two lines"])
async def test_a_server_paging_by_link_ends_where_its_links_end(server, poller, split: bool) -> None:
    """Its last page has no `rel=next`: that is the end, not a cue to page by `offset`, which it does
    not know (it used to answer its first page again, and the sync looped to `MAX_PAGES`)."""
    fake, base = server
    for n in range(5):
        fake.put(f"T{n}", T0 + n)
    fake.list = paged_by_link(fake, split=split)  # type: ignore[method-assign]
    tt, store = poller(base)
    assert await tt.sync(now=T0 + 100) == 5
    assert len(stored(store)) == 5
    assert [r.split("?")[1] for r in fake.requests] == ["limit=500&offset=0", "page=2", "page=3"]


async def test_links_that_go_round_in_a_circle_fail_the_sync_instead_of_looping(server, poller) -> None:
    fake, base = server
    for n in range(5):
        fake.put(f"T{n}", T0 + n)
    fake.list = paged_by_link(fake, split=False, cycle=True)  # type: ignore[method-assign]
    tt, _ = poller(base)
    with pytest.raises(SourceSchemaMismatch, match="page=1 answered a page it had already answered"):
        await tt.sync(now=T0 + 100)
    assert len(fake.requests) == 4


async def test_a_full_sync_removes_what_the_server_deleted_and_keeps_what_it_did_not_list(server, poller) -> None:
    fake, base = server
    for ident in ("A", "B", "C"):
        fake.put(ident, T0 + 1)
    tt, store = poller(base, full_sync=3600)
    await tt.sync(now=T0 + 10)
    del fake.tickets["B"]  # deleted at the source
    listing = fake.list

    async def hide_c(request: web.Request) -> web.Response:  # C exists, but the listing skips it
        hidden = fake.tickets.pop("C")
        try:
            return await listing(request)
        finally:
            fake.tickets["C"] = hidden

    fake.list = hide_c  # type: ignore[method-assign]
    await tt.sync(now=T0 + 1000)  # incremental: nothing removed
    assert set(stored(store)) == {"A", "B", "C"}
    await tt.sync(now=T0 + 3700)  # full
    assert set(stored(store)) == {"A", "C"}
    assert [r for r in fake.requests if "/troubleTicket/" in r] == ["/tt/troubleTicket/B", "/tt/troubleTicket/C"]


async def test_deletion_checks_beyond_the_cap_go_on_where_the_last_full_sync_stopped(
        server, poller, monkeypatch: pytest.MonkeyPatch) -> None:
    """More unlisted resources than a full sync may check (archived out of the listing, still there):
    the next full sync checks the next ones, so a deletion behind them is found in the end."""
    monkeypatch.setattr(polling, "MAX_DELETION_CHECKS", 2)
    fake, base = server
    for ident in ("A", "B", "C", "D", "Z"):
        fake.put(ident, T0 + 1)
    tt, store = poller(base, full_sync=1)
    await tt.sync(now=T0 + 10)
    listing = fake.list

    async def archived(request: web.Request) -> web.Response:  # none listed any more, all but Z still there
        kept, fake.tickets = fake.tickets, {}
        try:
            return await listing(request)
        finally:
            fake.tickets = kept

    fake.list = archived  # type: ignore[method-assign]
    del fake.tickets["Z"]
    checked = []
    for n in range(1, 4):
        fake.requests.clear()
        await tt.sync(now=T0 + 10 + 10 * n)
        checked.append([r.rsplit("/", 1)[1] for r in fake.requests if "/troubleTicket/" in r])
    assert checked == [["A", "B"], ["C", "D"], ["Z", "A"]]  # then round again
    assert set(stored(store)) == {"A", "B", "C", "D"}


@pytest.mark.parametrize("incremental", [None, True])
async def test_an_api_without_lastupdate_is_read_in_full_at_every_sync(tmp_path: Path,
                                                                       incremental: bool | None) -> None:
    """TMF622 defines no lastUpdate: a `lastUpdate.gt=` filter would be ignored or refused, and the
    rows would carry no version. Each sync reads the collection; each row is versioned by the read.
    `incremental: true` is for a server that filters on it anyway."""
    orders = {"PO-1": {"id": "PO-1", "state": "acknowledged", "orderDate": format_time(T0)}}
    asked: list[str] = []

    async def listing(request: web.Request) -> web.Response:
        asked.append(request.path_qs)
        return web.json_response(list(orders.values()), headers={"X-Total-Count": str(len(orders))})

    app = web.Application()
    app.router.add_get("/om/productOrder", listing)
    async with serve_app(app) as url:
        source = TmfSource(kind="tmf622", base_url=f"{url}/om", retries=0, timeout=5, fields=False,
                           incremental=incremental)
        store = RecordStore(tmp_path / "orders.db", ["orders"], final_statuses={"orders": APIS["tmf622"].finals})
        poller = TmfPoller("om", source, HttpClient("om", limits_of(source)), store)
        try:
            await poller.sync(now=T0 + 10)
            orders["PO-1"] = {**orders["PO-1"], "state": "completed", "completionDate": format_time(T0 + 20)}
            await poller.sync(now=T0 + 30)
            rows = store.rows("orders")
        finally:
            await poller.client.close()
            store.close()
    assert [(r["id"], r["status"], r["updated_at"]) for r in rows] == [("PO-1", "completed", T0 + 30)]
    assert ["lastUpdate.gt=" in a for a in asked] == [False, incremental is True], asked
