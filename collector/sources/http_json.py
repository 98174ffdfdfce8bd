"""HTTP JSON sources: a URL, auth, and JMESPath expressions mapping the payload to work items
(`items` + `columns`) or directly to named values (table `kpi_value`, read by `value` KPIs)."""

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError

from collector.inventory.sources import HttpJsonSource
from collector.sources.http import HttpClient, SourceSchemaMismatch
from collector.sources.store import FLOATS, INTEGERS, Records, Row
from collector.sources.times import parse_time


class HttpJsonSync:
    """Fetch the document and store its items or values."""

    def __init__(self, name: str, source: HttpJsonSource, client: HttpClient, store: Records) -> None:
        self.name = name
        self.source = source
        self.client = client
        self.store = store
        self._items = jmespath.compile(source.items) if source.items else None
        self._columns = {c: jmespath.compile(e) for c, e in source.columns.items()}
        self._values = {n: jmespath.compile(e) for n, e in source.values.items()}

    async def sync(self, now: float | None = None) -> int:
        """Fetch once; return the number of items stored."""
        now = time.time() if now is None else now
        payload = (await self.client.request("GET", self.source.url)).body
        rows = self._rows(payload, now) if self._items is not None else []
        values = {n: self._number(n, self._search(f"values.{n}", e, payload)) for n, e in self._values.items()}
        await asyncio.to_thread(self._write, rows, values, now)
        return len(rows)

    def _write(self, rows: list[Row], values: Mapping[str, float | None], now: float) -> None:
        for table in self.store.tables:
            if rows:
                self.store.upsert(table, rows)
        if values:
            self.store.put_values(values, now)

    def _rows(self, payload: Any, now: float) -> list[Row]:
        assert self._items is not None
        try:
            items = self._items.search(payload)
        except JMESPathError as exc:
            raise SourceSchemaMismatch(self.name, f"items: {exc}") from exc
        if not isinstance(items, list):
            raise SourceSchemaMismatch(self.name, f"items {self.source.items!r} is not a list in the payload")
        return [self._row(item, now) for item in items]

    def _row(self, item: Any, now: float) -> Row:
        row: Row = {}
        for column, expression in self._columns.items():
            row[column] = self._convert(column, self._search(f"columns.{column}", expression, item))
        row.setdefault("updated_at", None)
        if row["updated_at"] is None:
            row["updated_at"] = now
        for needed in ("id", "created_at", "status"):
            if row.get(needed) is None:
                raise SourceSchemaMismatch(self.name, f"an item has no {needed}")
        row["id"] = str(row["id"])
        return row

    def _search(self, where: str, expression: Any, document: Any) -> Any:
        """Evaluate a compiled expression; a runtime error (a function given the wrong type) is the
        payload's shape, not a bug: `reason="schema"`, naming the expression."""
        try:
            return expression.search(document)
        except JMESPathError as exc:
            raise SourceSchemaMismatch(self.name, f"{where}: {exc}") from exc

    def _convert(self, column: str, value: Any) -> Any:
        if value is None:
            return None
        try:
            if column.endswith("_at"):
                return float(value) if isinstance(value, int | float) else parse_time(str(value))
            if column in FLOATS:
                return float(value)
            if column in INTEGERS:
                return int(value)
        except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: float() of a 400-digit integer
            raise SourceSchemaMismatch(self.name, f"{column}: {exc}") from exc
        return str(value)

    def _number(self, name: str, value: Any) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SourceSchemaMismatch(self.name, f"value {name} is not a number: {value!r}")
        try:
            return float(value)
        except OverflowError as exc:
            raise SourceSchemaMismatch(self.name, f"value {name} is out of range: {exc}") from exc

    async def close(self) -> None:
        await self.client.close()
