"""Poll a TMF list endpoint into the record store: incremental by `lastUpdate`, full now and then.

Each sync asks for `lastUpdate.gt=<watermark - overlap>` (or everything on a full sync), page by
page (`Link` rel=next when the server gives one, relative or not; else `offset` up to
`X-Total-Count`, or until an empty page when the server gives no total), maps each resource to a
row and upserts the page. The overlap re-reads what a plain `gt` on the watermark would miss:
updates in the watermark's own second, transactions committed late, resources a page shift
skipped (a change during a sync moves a resource to the end of an offset listing). Rows read
twice are written once: the newer-version rule keeps them right. A full sync also removes the
stored resources it did not list, once the server answers 404 for each. The watermark moves,
with the time of the last full sync, in the transaction of the last page, so a crash re-reads at
most one sync worth of pages.
"""

import asyncio
import logging
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, quote, urljoin

from collector.errors import SourceError
from collector.inventory.sources import TmfEventsSource, TmfSource
from collector.logs import log_event
from collector.sources.http import HttpClient, Reply, SourceSchemaMismatch
from collector.sources.store import Records, Row
from collector.sources.times import format_time
from collector.sources.tmf import APIS, MappingError, resource_to_row

_LINK = re.compile(r"<([^>]*)>\s*((?:;\s*[^;,]+)*)")
MAX_PAGES = 100_000
"""Stop a sync after this many pages (a server that never stops paging)."""
MAX_DELETION_CHECKS = 1000
"""Stored resources a full sync asks for by id at most (`GET .../{id}`, 404: deleted); the rest
wait for the next full sync."""
_LOG = logging.getLogger("fabwatch.sources")


class TmfPoller:
    """Syncs one TMF source into its record store."""

    def __init__(self, name: str, source: TmfSource, client: HttpClient, store: Records) -> None:
        self.name = name
        self.source = source
        self.api = APIS[source.kind]
        self.client = client
        self.store = store
        self.url = f"{source.base_url.rstrip('/')}/{self.api.resource}"
        self.last_count = 0

    async def sync(self, now: float | None = None) -> int:
        """Fetch what changed since the watermark; return the number of resources stored."""
        now = time.time() if now is None else now
        watermark = _float(self.store.meta("watermark"))
        full_at = _float(self.store.meta("full_sync_at"))
        incremental = self.source.incremental
        if incremental is None:  # by the specification: is there a lastUpdate to filter changes by?
            incremental = self.source.version in self.api.last_update
        full = watermark is None or full_at is None or now - full_at >= self.source.full_sync or not incremental
        params = self._params(None if full or watermark is None else watermark - self.source.overlap)
        newest = watermark
        stored = 0
        listed: set[str] = set()
        # The newest a watermark may be: a resource dated later (a clock off, a mistyped year) would
        # make every incremental sync ask for changes after it, and miss them all.
        ahead = now + self.source.overlap
        future: tuple[int, Row | None] = (0, None)  # how many resources were dated later, and the first
        async for rows in self._pages(params, now):
            later = [r for r in rows if r["updated_at"] > ahead]
            future = (future[0] + len(later), future[1] or (later[0] if later else None))
            newest = max([newest or float("-inf"), *(min(r["updated_at"], ahead) for r in rows)])
            await self._write(rows, {})
            stored += len(rows)
            if full:
                listed.update(r["id"] for r in rows)
        if future[1] is not None:
            log_event(_LOG, "tmf_future_last_update", logging.WARNING, source=self.name, resources=future[0],
                      first=future[1]["id"], last_update=format_time(future[1]["updated_at"]),
                      watermark_at_most=format_time(ahead))
        meta = {"watermark": repr(newest)} if newest is not None else {}
        if full:
            stored += await self._remove_deleted(listed, now)
            meta["full_sync_at"] = repr(now)
        await self._write([], meta)
        self.last_count = stored
        return stored

    def _params(self, watermark: float | None) -> dict[str, str]:
        params = dict(parse_qsl(self.source.query))
        params["limit"] = str(self.source.page_size)
        if self.source.fields:
            params["fields"] = ",".join(self.api.top_fields(self.source.version))
        if watermark is not None:
            params["lastUpdate.gt"] = format_time(watermark)
        return params

    async def _pages(self, params: Mapping[str, str], now: float) -> Any:
        """Yield the rows of each page until the collection is exhausted."""
        url: str | None = self.url
        query: dict[str, str] | None = {**params, "offset": "0"}
        offset = 0
        linked = False
        seen: set[int] = set()
        """The pages read so far, by the hash of their ids: a page answered again means a loop."""
        for _ in range(MAX_PAGES):
            assert url is not None
            reply = await self.client.request("GET", url, params=query)
            rows = [self._row(item, now) for item in self._items(reply)]
            page = hash(tuple(r["id"] for r in rows))
            if rows and page in seen:
                raise SourceSchemaMismatch(self.name, f"{reply.url} answered a page it had already answered: the "
                                                      "server ignores offset (or its Link rel=next points back)")
            seen.add(page)
            yield rows
            offset += len(rows)
            link = _next_link(", ".join(reply.headers.getall("Link", ())))
            linked = linked or link is not None
            url, query = self._next(reply, params, offset, len(rows), link, linked)
            if url is None:
                return
        raise SourceSchemaMismatch(self.name, f"more than {MAX_PAGES} pages")

    def _next(self, reply: Reply, params: Mapping[str, str], offset: int, count: int, link: str | None,
              linked: bool) -> tuple[str | None, dict[str, str] | None]:
        """The next page: `Link` rel=next; once a server has paged by `Link` (`linked`), a page without
        one is the last (it may know no `offset`); else the next offset while `X-Total-Count` says there
        is more; without a total, until an empty page (a server may cap `limit` below `page_size`, so a
        short page is not the last one)."""
        if count == 0:
            return None, None
        if link is not None:
            return urljoin(reply.url or self.url, link), None
        if linked:
            return None, None
        total = reply.headers.get("X-Total-Count", "").strip()
        more = offset < int(total) if total.isdigit() else True
        return (self.url, {**params, "offset": str(offset)}) if more else (None, None)

    async def _remove_deleted(self, listed: set[str], now: float) -> int:
        """Delete the stored resources the full listing did not hold and the server no longer has;
        return how many it read again instead (they exist: a page shift hid them from the listing)."""
        unlisted = await asyncio.to_thread(self._unlisted, listed)
        # Beyond MAX_DELETION_CHECKS, each full sync goes on after the last id the one before checked:
        # always the first ones, and a deleted resource listed after them would never go.
        cursor = self.store.meta("deletion_cursor") or ""
        batch = ([i for i in unlisted if i > cursor] + [i for i in unlisted if i <= cursor])[:MAX_DELETION_CHECKS]
        gone: list[str] = []
        found: list[Row] = []
        query = {"fields": ",".join(self.api.top_fields(self.source.version))} if self.source.fields else None
        for ident in batch:
            reply = await self.client.request("GET", f"{self.url}/{quote(ident, safe='')}", params=query,
                                              missing_ok=True)
            if reply.status == 404:
                gone.append(ident)
            else:
                found.append(self._row(reply.body, now))
        if gone or found:
            await self._write(found, {"deletion_cursor": batch[-1] if len(unlisted) > len(batch) else ""})
            await asyncio.to_thread(self._delete, gone)
            log_event(_LOG, "tmf_deletions_applied", source=self.name, deleted=len(gone), still_there=len(found),
                      left_for_next_full_sync=max(0, len(unlisted) - MAX_DELETION_CHECKS))
        return len(found)

    def _unlisted(self, listed: set[str]) -> list[str]:
        return sorted({i for table in self.store.tables for i in self.store.ids_missing(table, listed)})

    def _delete(self, ids: Sequence[str]) -> None:
        for table in self.store.tables:
            self.store.delete(table, ids)

    def _items(self, reply: Reply) -> Sequence[Any]:
        if not isinstance(reply.body, list):
            raise SourceSchemaMismatch(self.name, f"expected a JSON array of {self.api.resource}, "
                                                  f"got {type(reply.body).__name__}")
        return reply.body

    def _row(self, item: Any, observed: float) -> Row:
        try:
            return resource_to_row(self.api, self.source.version, item, observed)
        except MappingError as exc:
            ident = item.get("id") if isinstance(item, dict) else None
            where = f" (id {ident!r})" if isinstance(ident, str) else ""
            raise SourceSchemaMismatch(self.name, f"{exc}{where}") from exc

    async def _write(self, rows: Sequence[Row], meta: Mapping[str, str]) -> None:
        def write() -> None:
            for table in self.store.tables:
                self.store.upsert(table, rows, meta)

        await asyncio.to_thread(write)


class ResourceCompleter:
    """Completes from the API the resources a `tmf_events` source heard of only partially.

    At each sample, up to `complete_max` incomplete resources (the least tried first) are read
    with `GET {base_url}/{resource}/{id}` and stored whole, a kept partial event that is newer
    merged over them. A 404 gives the resource up (counted as failed); another failure leaves it
    for the next sample, and stops this one's round: an API that is down is not asked once per
    resource. The sample itself does not fail: the events it counts are stored.
    """

    def __init__(self, name: str, source: TmfEventsSource, client: HttpClient, store: Records) -> None:
        self.name = name
        self.source = source
        self.api = APIS[source.api]
        self.client = client
        self.store = store
        self.url = f"{(source.base_url or '').rstrip('/')}/{self.api.resource}"

    async def sync(self, now: float | None = None) -> int:
        """Read the incomplete resources of this round from the API; return how many were completed."""
        now = time.time() if now is None else now
        waiting = await asyncio.to_thread(self.store.incomplete, self.source.complete_max)
        found: dict[tuple[str, str], Row] = {}
        gone: list[tuple[str, str]] = []
        failed: list[tuple[str, str]] = []
        for key in waiting:
            try:
                row = await self._read(key[1], now)
            except (SourceError, MappingError) as exc:
                failed.append(key)
                log_event(_LOG, "tmf_completion_failed", logging.WARNING, source=self.name, id=key[1],
                          error=str(exc), retry="at the next sample")
                if isinstance(exc, SourceError):
                    break
                continue
            if row is None:
                gone.append(key)
            else:
                found[key] = row
        if not waiting:
            return 0
        done = await asyncio.to_thread(self.store.complete, found, gone, failed)
        log_event(_LOG, "tmf_resources_completed", source=self.name, completed=done, unknown_to_api=len(gone),
                  failed=len(failed))
        return done

    async def _read(self, ident: str, now: float) -> Row | None:
        """The row of one resource as the API has it now; None when the API answers 404."""
        reply = await self.client.request("GET", f"{self.url}/{quote(ident, safe='')}", missing_ok=True)
        if reply.status == 404:
            return None
        row = resource_to_row(self.api, self.source.version, reply.body, now)
        if row["id"] != ident:
            raise MappingError(f"{self.api.resource} {ident!r}: the API answered id {row['id']!r}")
        return row


def _next_link(header: str) -> str | None:
    """Return the URL of `rel="next"` in a Link header, if any."""
    for url, params in _LINK.findall(header):
        if re.search(r'rel\s*=\s*"?next"?', params):
            return str(url)
    return None


def _float(value: str | None) -> float | None:
    return None if value is None else float(value)
