"""Backlog: the open items of each process (how many, how many overdue, the oldest one's age).

Counted in full from the status index at start and every `reconcile`, and followed in between by
the items created and completed since (`Book`). Kept in memory only: a restart recounts.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from collector.db import AsyncConnection
from collector.engine.sums import Groups, cap, group_key
from collector.sql import UPCOMING, OpenQueries, Shared, expand

HORIZON_MARGIN = 60.0
"""How far past the next recount a book keeps the due times of open items (seconds)."""


@dataclass
class Open:
    """The open items of one process as published: by group, `n` and `overdue`; the oldest's creation."""

    backlog: Groups = field(default_factory=dict)
    oldest: float | None = None


@dataclass
class Book:
    """Open items of one process, counted in full at times and followed by their changes between.

    A recount reads every open item (the status index); in between, each sample reads only the
    items created since (still open) and those completed since (they left), on the time indexes.
    `upcoming` keeps the due times of open items falling due before the next recount, so that
    `overdue` follows the clock. Status changes that leave no completion time (cancelled, paused,
    reopened) show at the next recount, every `reconcile` of the source.
    """

    recounted_at: float
    counted_at: float
    horizon: float
    backlog: dict[str, float] = field(default_factory=dict)
    overdue: dict[str, float] = field(default_factory=dict)
    upcoming: dict[str, list[float]] = field(default_factory=dict)
    oldest: float | None = None

    def add(self, key: str, n: float, overdue: float, due: float | None, sign: float = 1.0) -> None:
        """Add (or with sign -1 remove) a group of open items."""
        self.backlog[key] = self.backlog.get(key, 0.0) + sign * n
        self.overdue[key] = self.overdue.get(key, 0.0) + sign * overdue
        if due is None:
            return
        dues = self.upcoming.setdefault(key, [])
        for _ in range(int(n)):
            if sign > 0:
                dues.append(due)
            elif due in dues:
                dues.remove(due)

    def fold(self, now: float) -> None:
        """Count as overdue the upcoming items whose due time has passed."""
        for key, dues in self.upcoming.items():
            passed = [d for d in dues if d < now]
            if passed:
                self.overdue[key] = self.overdue.get(key, 0.0) + len(passed)
                dues[:] = [d for d in dues if d >= now]

    def snapshot(self) -> Open:
        found = Open(oldest=self.oldest)
        for key, n in self.backlog.items():
            found.backlog[key] = {"n": max(0.0, n), "overdue": max(0.0, self.overdue.get(key, 0.0))}
        return found

    def add_row(self, row: Any, queries: OpenQueries, known: list[str], limit: int, sign: float = 1.0,
                skip: int = 0) -> None:
        """Add one row of an open-items statement; `skip` leading columns route it (shared statements)."""
        dims = queries.dims
        key = cap(group_key(row[skip:dims], queries.lookups[skip:dims]), known, dims - skip, limit)
        mapping = row._mapping
        due = queries.times.due.to_epoch(mapping[UPCOMING])
        self.add(key, float(row.n or 0), float(row.overdue or 0), due, sign)
        oldest = queries.times.created.to_epoch(mapping.get("oldest"))
        if oldest is not None:
            self.oldest = oldest if self.oldest is None else min(self.oldest, oldest)


class Backlog:
    """The books of every process of one source, recounted or followed at each sample as of
    `now - settle`: a row committed late (within `settle`) with a time the previous sample already
    followed past would otherwise be missed until the next recount (`reconcile`)."""

    def __init__(self, settle: float, reconcile: float, limit: int) -> None:
        self.settle = settle
        self.reconcile = reconcile
        self.limit = limit
        self.books: dict[str, Book] = {}
        self.followed: set[str] = set()
        """Processes whose open items a shared statement already followed in this sample."""

    def forget(self, name: str) -> None:
        """Recount a process's open items at its next sample (a late row may be open)."""
        self.books.pop(name, None)

    def needs_recount(self, book: Book | None, queries: OpenQueries, now: float) -> bool:
        return book is None or not queries.followable or now - book.recounted_at >= self.reconcile \
            or now > book.horizon or now < book.counted_at

    def _fresh(self, now: float) -> Book:
        return Book(recounted_at=now, counted_at=now, horizon=now + self.reconcile + HORIZON_MARGIN)

    async def follow(self, conn: AsyncConnection, name: str, queries: OpenQueries, state: dict[str, Any],
                     now: float) -> Open:
        """Recount the open items of one process, or follow them by what was created and completed since."""
        now -= self.settle
        book = self.books.get(name)
        if name in self.followed and book is not None:
            pass  # a shared statement did it
        elif self.needs_recount(book, queries, now):
            book = self._fresh(now)
            params = {"now": now, "horizon": book.horizon}
            for row in await conn.execute(queries.recount, expand(params)):
                book.add_row(row, queries, state.setdefault("dimsets", []), self.limit)
            self.books[name] = book
        elif book is not None and now > book.counted_at:
            params = {"lo": book.counted_at, "now": now, "horizon": book.horizon}
            assert queries.changes is not None
            for row in await conn.execute(queries.changes, expand(params)):
                book.add_row(row, queries, state.setdefault("dimsets", []), self.limit,
                             sign=-1.0 if row.part else 1.0)
            book.counted_at = now
        assert book is not None
        book.fold(now)
        return book.snapshot()

    async def follow_shared(self, conn: AsyncConnection, shared: Shared, own: Mapping[str, OpenQueries],
                            state: dict[str, Any], now: float) -> None:
        """Recount, or follow, the open items of the shared processes in one statement when they agree
        (`own`: each process's own open-items statements, which say whether it needs a recount)."""
        now -= self.settle
        names = list(shared.processes.values())
        books = [self.books.get(name) for name in names]
        if all(self.needs_recount(book, own[name], now) for name, book in zip(names, books, strict=True)):
            await self._recount_shared(conn, shared, state, now)
        elif all(book is not None and not self.needs_recount(book, own[name], now)
                 and (book.counted_at, book.horizon) == (books[0].counted_at, books[0].horizon)  # type: ignore[union-attr]
                 and now > book.counted_at for name, book in zip(names, books, strict=True)):
            assert books[0] is not None
            await self._follow_shared(conn, shared, state, now, books[0])
        else:
            return
        self.followed.update(names)

    async def _recount_shared(self, conn: AsyncConnection, shared: Shared, state: dict[str, Any], now: float) -> None:
        queries = shared.queries.open_items
        fresh = {name: self._fresh(now) for name in shared.processes.values()}
        horizon = now + self.reconcile + HORIZON_MARGIN
        for row in await conn.execute(queries.recount, expand({"now": now, "horizon": horizon})):
            name = shared.processes.get(str(row[0]))
            if name is not None:
                fresh[name].add_row(row, queries, state.setdefault(name, {}).setdefault("dimsets", []),
                                    self.limit, skip=1)
        self.books.update(fresh)

    async def _follow_shared(self, conn: AsyncConnection, shared: Shared, state: dict[str, Any], now: float,
                             first: Book) -> None:
        queries = shared.queries.open_items
        assert queries.changes is not None
        params = {"lo": first.counted_at, "now": now, "horizon": first.horizon}
        for row in await conn.execute(queries.changes, expand(params)):
            name = shared.processes.get(str(row[0]))
            if name is not None:
                self.books[name].add_row(row, queries, state.setdefault(name, {}).setdefault("dimsets", []),
                                         self.limit, sign=-1.0 if row.part else 1.0, skip=1)
        for name in shared.processes.values():
            self.books[name].counted_at = now
