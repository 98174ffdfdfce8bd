"""Poll a TMF list endpoint into the record store: incremental by `lastUpdate`, full now and then.

Each sync asks for `lastUpdate.gt=<watermark>` (or everything on a full sync), page by page
(`Link` rel=next when the server gives one, else `offset` up to `X-Total-Count`), maps each
resource to a row and upserts the page. The watermark moves, with the time of the last full sync,
in the transaction of the last page, so a crash re-reads at most one sync worth of pages.
"""

import asyncio
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

from collector.sources.http import HttpClient, Reply, SourceSchemaMismatch
from collector.sources.schema import TmfSource
from collector.sources.store import RecordStore, Row
from collector.sources.times import format_time
from collector.sources.tmf import APIS, MappingError, resource_to_row

_LINK = re.compile(r"<([^>]*)>\s*((?:;\s*[^;,]+)*)")
MAX_PAGES = 100_000
"""Stop a sync after this many pages (a server that never stops paging)."""


class TmfPoller:
    """Syncs one TMF source into its record store."""

    def __init__(self, name: str, source: TmfSource, client: HttpClient, store: RecordStore) -> None:
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
        full = watermark is None or full_at is None or now - full_at >= self.source.full_sync
        params = self._params(None if full else watermark)
        newest = watermark
        stored = 0
        async for rows in self._pages(params):
            newest = max([newest or float("-inf"), *(r["updated_at"] for r in rows)])
            await self._write(rows, {})
            stored += len(rows)
        meta = {"watermark": repr(newest)} if newest is not None else {}
        if full:
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

    async def _pages(self, params: Mapping[str, str]) -> Any:
        """Yield the rows of each page until the collection is exhausted."""
        url: str | None = self.url
        query: dict[str, str] | None = {**params, "offset": "0"}
        offset = 0
        for _ in range(MAX_PAGES):
            assert url is not None
            reply = await self.client.request("GET", url, params=query)
            items = self._items(reply)
            yield [self._row(item) for item in items]
            offset += len(items)
            url, query = self._next(reply, params, offset, len(items))
            if url is None:
                return
        raise SourceSchemaMismatch(self.name, f"more than {MAX_PAGES} pages")

    def _next(self, reply: Reply, params: Mapping[str, str], offset: int,
              count: int) -> tuple[str | None, dict[str, str] | None]:
        link = _next_link(reply.headers.get("Link", ""))
        if count == 0:
            return None, None
        if link is not None:
            return link, None
        total = reply.headers.get("X-Total-Count")
        more = offset < int(total) if total and total.isdigit() else count >= self.source.page_size
        return (self.url, {**params, "offset": str(offset)}) if more else (None, None)

    def _items(self, reply: Reply) -> Sequence[Any]:
        if not isinstance(reply.body, list):
            raise SourceSchemaMismatch(self.name, f"expected a JSON array of {self.api.resource}, "
                                                  f"got {type(reply.body).__name__}")
        return reply.body

    def _row(self, item: Any) -> Row:
        try:
            return resource_to_row(self.api, self.source.version, item)
        except MappingError as exc:
            raise SourceSchemaMismatch(self.name, str(exc)) from exc

    async def _write(self, rows: Sequence[Row], meta: Mapping[str, str]) -> None:
        def write() -> None:
            for table in self.store.tables:
                self.store.upsert(table, rows, meta)

        await asyncio.to_thread(write)


def _next_link(header: str) -> str | None:
    """Return the URL of `rel="next"` in a Link header, if any."""
    for url, params in _LINK.findall(header):
        if re.search(r'rel\s*=\s*"?next"?', params):
            return str(url)
    return None


def _float(value: str | None) -> float | None:
    return None if value is None else float(value)
