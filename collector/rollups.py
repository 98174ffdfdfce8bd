"""Daily rollups: per process, calendar day in `service.timezone` and dimension set, the counts, sums
and histogram buckets the KPIs need, and end-of-day snapshots of the open items.

A day is [its local midnight, the next local midnight): 23, 24 or 25 hours across daylight saving
time. The day boundaries are computed here (zoneinfo) and bound as parameters, each as the type of
the time column it is compared with (`collector.timetypes`), so one statement per chunk of days
works on SQLite, PostgreSQL and MariaDB with every kind of time column: the days of a chunk are told
apart by a `CASE` over their starts (`EdgeQuery.bucketed`), the snapshots by one column per day end
over the rows open at any of them, read once (`snapshot_statement`): a day long past costs one scan of
the rows completed since for the whole chunk, not one per day.

Measures of a day and dimension set (all summed across dimension sets, but `open.oldest_age`: the
largest):

- `created`, `created.ratio_<kpi>`: items created that day, and those matching a ratio's `good`;
- `completed`, `outcome.<label>`, `completed.<sum>`: items completed that day, by outcome, and the
  completion sums of `collector.sql` (`dur_sum`, `le_<i>`, `sla_good_<kpi>`, `sla_valid_<kpi>`,
  `ratio_<kpi>`, `driver_<component>`);
- `cost.<component>`: cost booked that day as the cost KPIs define it (a driver's rate on the items
  completed that day; a fixed monthly amount accrues over the day's seconds, on the dimension set
  `[]`); components read from a `cost_csv` source are not rolled up;
- `open`, `open.overdue`, `open.oldest_age`: items open at the end of the day, read from the records
  (created before the day's end, not completed by it), those of them due before it, and the age of
  the oldest. The live backlog KPI counts open statuses instead; a paused item counts as overdue. A
  day rolled before its end (today, in the serve's re-roll) has none yet: they are counted when it is
  rolled after its end, as every day is before it is final.

The rollups are kept beside the state, in the state store's SQLite file (`RollupStore`), with when each
day was rolled and a fingerprint of each KPI's definitions it was rolled under (`definitions`). A day
is *final* once it was rolled at least the source's late window (`late_of`) after its end: rows may
still change before that, so until then its figures are provisional and the serve re-rolls it
(`pending_days`). A day rolled under other definitions of a KPI than the inventory's has no figure for
that KPI until it is rolled again (`fabwatch report --backfill`).
"""

import hashlib
import json
import sqlite3
import time as clock
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, bindparam, case, func, literal, literal_column, select, text, union_all

from collector.db import AsyncConnection, AsyncEngine, create_engine, guard, read_only
from collector.inventory.models import CostKpi, DurationKpi, Process, SqlSource
from collector.kpis import fixed_cost, variable_cost
from collector.reflect import detect_times
from collector.sql import EdgeQuery, Expr, Statement, Times, build_queries, label, lookups_of, records_relation
from collector.storeurl import BOUNDED_WAITS, postgres_url

Measures = dict[str, float]
DayRollup = dict[str, Measures]
"""One day of one process: measures by dimension set (a JSON list of the dimension labels)."""
CHUNK_DAYS = 31
"""Days read by one edge statement: one round trip per month of history, and a `CASE` short enough to be cheap."""
REROLL_DAYS = 62
"""Days one serve re-roll pass recomputes at most (two chunks): a long outage heals over a few passes."""


def statements(days: int) -> int:
    """How many statements a process's chunk of `days` days runs at most: created, completed, open items."""
    return 3
ALL = "*"
"""The dimension set of a day's totals over all its dimension sets (`RollupStore.read_totals`)."""
NO_DIMENSIONS = "[]"
"""The dimension set of what belongs to the process as a whole (fixed costs)."""


@dataclass(frozen=True)
class Day:
    """A calendar day in a time zone and its bounds as epoch seconds: [start, end)."""

    day: date
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


def midnight(day: date, zone: str) -> float:
    """The first instant of `day` in `zone`, as epoch seconds."""
    return datetime.combine(day, time(0), tzinfo=ZoneInfo(zone)).timestamp()


def days_between(first: date, last: date, zone: str) -> list[Day]:
    """Every day from `first` to `last` included, with its bounds in `zone` (DST-correct)."""
    out = []
    day = first
    while day <= last:
        following = day + timedelta(days=1)
        out.append(Day(day, midnight(day, zone), midnight(following, zone)))
        day = following
    return out


def day_of(epoch: float, zone: str) -> date:
    """The calendar day in `zone` an instant falls in."""
    return datetime.fromtimestamp(epoch, ZoneInfo(zone)).date()


# --- SQL -----------------------------------------------------------------------------------


def day_index(n: int, time_bind: Callable[[str], Expr]) -> Callable[[Expr], Expr]:
    """The index of the day (0 to n-1) a time falls in, from the starts :d1 ... :d<n-1> of days 1 to n-1."""

    def index(column: Expr) -> Expr:
        if n == 1:
            return literal_column("0")
        # the indices are written inline: constants, not parameters, so the database sees an integer
        return case(*[(column < time_bind(f"d{i + 1}"), literal_column(str(i))) for i in range(n - 1)],
                    else_=literal_column(str(n - 1)))

    return index


def edge_statement(query: EdgeQuery, n: int) -> Statement:
    """The edge's sums per day of a chunk of `n` days: params :d0 ... :d<n> (starts, then the last end)."""
    kind = query.time.bind_type(True)
    return query.bucketed(day_index(n, lambda name: bindparam(name, type_=kind)), "d0", f"d{n}")


@dataclass(frozen=True)
class Snapshot:
    """The statement counting the open items at the end of each day of a chunk, and how to read it."""

    statement: Statement
    dims: int
    days: int
    times: Times
    lookups: tuple[Any, ...]


def snapshot_statement(process: Process, times: Times, n: int) -> Snapshot | None:
    """Items open at the end of each of `n` consecutive days (params :e0 ... :e<n-1>, one per time role), per
    dimension set, with those due before it and the oldest created time, in one scan of the rows open at
    any of them; None without a completion column.

    Each row of the result is a dimension set, then for each day end i its count `n<i>`, overdue `o<i>` and
    oldest created time `c<i>` (the count of a day end where the set had no open item is 0)."""
    records, cols = process.records, process.records.columns
    if cols.completed is None:
        return None
    tbl = records_relation(records, cols.all())
    created, completed = tbl.c[cols.created], tbl.c[cols.completed]
    due = tbl.c[cols.due] if cols.due else None
    dims = [tbl.c[d] for d in cols.dimensions]
    filters: list[Any] = [text(f"({records.where})")] if records.where else []

    def end(i: int, role: str) -> Expr:
        return bindparam(f"e{i}__{role}", type_=getattr(times, role).bind_type(True))

    def branch(still_open: bool) -> Statement:
        # created is wrapped where it is compared: a constant, so a planner without statistics (SQLite)
        # ranges on the completion column (a few rows for recent days) and never on `created`
        made = func.coalesce(created, created)
        columns: list[Any] = []
        for i in range(n):
            open_at = [made < end(i, "created")] + ([] if still_open else [completed >= end(i, "completed")])
            late: Expr = literal(0)
            if due is not None:
                late = func.sum(case((and_(*open_at, due.is_not(None), due < end(i, "due")), 1), else_=0))
            columns += [func.sum(case((and_(*open_at), 1), else_=0)).label(f"n{i}"), late.label(f"o{i}"),
                        func.min(case((and_(*open_at), created), else_=None)).label(f"c{i}")]
        # every row open at one of the day ends, read once: still open now, or completed after the first
        open_then = completed.is_(None) if still_open else completed >= end(0, "completed")
        return (select(*[d.label(f"g{j}") for j, d in enumerate(dims)], *columns)
                .where(open_then, made < end(n - 1, "created"), *filters)
                .group_by(*dims))

    # Two branches, each an index lookup on the completion column: still open now (NULL), and completed
    # after the first day's end. One `OR` would read every row created before the last day's end.
    statement = select(union_all(branch(True), branch(False)).subquery())
    return Snapshot(statement, len(dims), n, times, lookups_of(records, list(cols.dimensions)))


def _key(values: Sequence[Any], lookups: Sequence[Any]) -> str:
    return json.dumps([label(v, lk) for v, lk in zip(values, lookups, strict=True)])


def _add(into: Measures, name: str, value: float) -> None:
    into[name] = into.get(name, 0.0) + value


class ProcessRoller:
    """Computes the rollups of one process over chunks of days, on a connection it is given."""

    def __init__(self, name: str, process: Process, times: Times) -> None:
        self.name = name
        self.process = process
        self.times = times
        self.queries = build_queries(process, None, times)
        self._statements: dict[tuple[str, int], Any] = {}

    def _cached(self, key: tuple[str, int], build: Callable[[], Any]) -> Any:
        if key not in self._statements:
            self._statements[key] = build()
        return self._statements[key]

    async def roll(self, conn: AsyncConnection, days: Sequence[Day], now: float | None = None) -> dict[date, DayRollup]:
        """The rollup of each day (at most `CHUNK_DAYS`), read in `statements(len(days))` statements at most;
        the open items only at the end of the days ended by `now` (default: all): a day still running has no
        end-of-day figures yet, and it is rolled again after its end before it is final."""
        n = len(days)
        out: dict[date, DayRollup] = {d.day: {} for d in days}
        bounds = {f"d{i}": d.start for i, d in enumerate(days)} | {f"d{n}": days[-1].end}
        created = self._cached(("created", n), lambda: edge_statement(self.queries.created, n))
        for row in await conn.execute(created, bounds):
            self._add_edge(out, days, self.queries.created, row, "created")
        if self.queries.completed is not None:
            query = self.queries.completed
            completed = self._cached(("completed", n), lambda: edge_statement(query, n))
            for row in await conn.execute(completed, bounds):
                self._add_edge(out, days, query, row, "completed")
        ended = [d for d in days if now is None or d.end <= now]
        snapshot = (self._cached(("open", len(ended)), partial(snapshot_statement, self.process, self.times,
                                                               len(ended))) if ended else None)
        if snapshot is not None:
            params = {f"e{i}__{role}": d.end for i, d in enumerate(ended) for role in ("created", "completed", "due")}
            for row in await conn.execute(snapshot.statement, params):
                self._add_open(out, ended, snapshot, row)
        for day in days:
            self._add_costs(out[day.day], day)
        return out

    def _add_edge(self, out: dict[date, DayRollup], days: Sequence[Day], query: EdgeQuery, row: Any,
                  edge: str) -> None:
        groups = row[1:1 + query.groups]
        dims = len(self.process.records.columns.dimensions)
        measures = out[days[int(row[0])].day].setdefault(_key(groups[:dims], query.lookups[:dims]), {})
        sums = dict(zip(query.sum_names, row[1 + query.groups:], strict=True))
        _add(measures, edge, float(sums.pop("n") or 0))
        if edge == "completed" and query.groups > dims:
            _add(measures, f"outcome.{label(groups[dims], query.lookups[dims])}", float(row[1 + query.groups]))
        for name, value in sums.items():
            _add(measures, f"{edge}.{name}", float(value or 0))

    def _add_open(self, out: dict[date, DayRollup], days: Sequence[Day], snapshot: Snapshot, row: Any) -> None:
        key = _key(row[:snapshot.dims], snapshot.lookups)
        for i, day in enumerate(days):
            count, overdue, oldest = row[snapshot.dims + 3 * i:snapshot.dims + 3 * i + 3]
            if not count:
                continue
            measures = out[day.day].setdefault(key, {})
            _add(measures, "open", float(count))
            _add(measures, "open.overdue", float(overdue or 0))
            oldest_at = snapshot.times.created.to_epoch(oldest)
            if oldest_at is not None:
                measures["open.oldest_age"] = max(measures.get("open.oldest_age", 0.0), day.end - oldest_at)

    def _add_costs(self, rollup: DayRollup, day: Day) -> None:
        for name, component in self.process.costs.items():
            if component.fixed_per_month is not None:
                _add(rollup.setdefault(NO_DIMENSIONS, {}), f"cost.{name}", fixed_cost(component, day.seconds))
                continue
            if component.monthly_from is not None:
                continue
            for measures in rollup.values():
                sums = {"n": measures.get("completed", 0.0),
                        f"driver_{name}": measures.get(f"completed.driver_{name}", 0.0)}
                cost = variable_cost(component, sums, name)
                if cost:
                    _add(measures, f"cost.{name}", cost)


# --- storage -------------------------------------------------------------------------------

_SCHEMA = (
    # one JSON document of measures per dimension set: less than half the size of a row per measure
    """CREATE TABLE IF NOT EXISTS daily_rollup (
        process TEXT NOT NULL, day TEXT NOT NULL, dims TEXT NOT NULL, measures TEXT NOT NULL,
        PRIMARY KEY (process, day, dims)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS daily_total (
        process TEXT NOT NULL, day TEXT NOT NULL, measure TEXT NOT NULL, value REAL NOT NULL,
        PRIMARY KEY (process, day, measure)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS rollup_day (
        process TEXT NOT NULL, day TEXT NOT NULL, timezone TEXT NOT NULL, rolled_at REAL NOT NULL,
        definitions TEXT, PRIMARY KEY (process, day)) WITHOUT ROWID""",
    # the first start's backfill of a source: planned once, when none of its processes had a day rolled
    """CREATE TABLE IF NOT EXISTS rollup_backfill (
        source TEXT PRIMARY KEY, timezone TEXT NOT NULL, first TEXT NOT NULL, last TEXT NOT NULL,
        planned_at REAL NOT NULL, done_at REAL) WITHOUT ROWID""",
)


def definitions(process: Process) -> dict[str, str]:
    """A fingerprint of what each KPI's rolled measures depend on: the KPI itself, the records (table or
    query, filter, columns, dimensions), the histogram buckets and, for a cost KPI, the cost components.
    A day rolled under another fingerprint of a KPI has no figure for it."""
    records = process.records.model_dump(mode="json", exclude={"source", "open_statuses", "paused_statuses",
                                                                "description"})  # the live KPIs' only
    buckets = next((k.buckets for k in process.kpis.values() if isinstance(k, DurationKpi)), ())
    costs = {n: c.model_dump(mode="json") for n, c in process.costs.items()}
    out = {}
    for name, kpi in process.kpis.items():
        relevant = {"kpi": kpi.model_dump(mode="json", exclude={"description", "target", "window", "objective"}),
                    "records": records, "buckets": list(buckets) if isinstance(kpi, DurationKpi) else [],
                    "costs": costs if isinstance(kpi, CostKpi) else {}}
        text_ = json.dumps(relevant, sort_keys=True, separators=(",", ":"))
        out[name] = hashlib.sha256(text_.encode()).hexdigest()[:16]
    return out


@dataclass(frozen=True)
class Rolled:
    """When a day of a process was rolled, and the fingerprints of its KPIs then (None: rolled before
    fingerprints were kept)."""

    rolled_at: float
    definitions: dict[str, str] | None

    def final(self, day: date, zone: str, late: float) -> bool:
        """Whether no late row could have changed the day since it was rolled."""
        return self.rolled_at >= midnight(day + timedelta(days=1), zone) + late


class RollupStore:
    """The daily rollups, in their own tables of the state store's SQLite file.

    `rollup_day` records which days of a process were rolled up, in which time zone: a day without
    a row there has no figures (as opposed to a day with no items)."""

    def __init__(self, path: str | Path) -> None:
        url = postgres_url(str(path))
        self._db: Any
        if url is not None:  # the state in PostgreSQL: the rollups in its schema `rollups`
            self.path = Path()
            self._db = _PostgresRollups(url)
            return
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        for statement in _SCHEMA:
            self._db.execute(statement)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(rollup_day)")}
        if "definitions" not in columns:  # a state file of an earlier version: its days have no fingerprint
            self._db.execute("ALTER TABLE rollup_day ADD COLUMN definitions TEXT")

    def save(self, process: str, rollups: Mapping[date, DayRollup], zone: str,
             fingerprints: Mapping[str, str] | None = None, now: float | None = None) -> None:
        """Replace the rollups of these days of a process, in one transaction, rolled at `now` (default:
        the clock) under the KPI `fingerprints` (`definitions`)."""
        now = clock.time() if now is None else now
        kept = None if fingerprints is None else json.dumps(dict(fingerprints), sort_keys=True)
        with self._transaction():
            for day, rollup in rollups.items():
                iso = day.isoformat()
                self._db.execute("DELETE FROM daily_rollup WHERE process = ? AND day = ?", (process, iso))
                self._db.executemany(
                    "INSERT INTO daily_rollup (process, day, dims, measures) VALUES (?, ?, ?, ?)",
                    [(process, iso, dims, json.dumps(measures, separators=(",", ":"), sort_keys=True))
                     for dims, measures in rollup.items()])
                self._db.execute("DELETE FROM daily_total WHERE process = ? AND day = ?", (process, iso))
                self._db.executemany("INSERT INTO daily_total (process, day, measure, value) VALUES (?, ?, ?, ?)",
                                     [(process, iso, name, value) for name, value in totals(rollup).items()])
                self._db.execute("INSERT INTO rollup_day (process, day, timezone, rolled_at, definitions) "
                                 "VALUES (?, ?, ?, ?, ?) ON CONFLICT (process, day) DO UPDATE SET "
                                 "timezone = excluded.timezone, rolled_at = excluded.rolled_at, "
                                 "definitions = excluded.definitions", (process, iso, zone, now, kept))

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def rolled(self, process: str, first: date, last: date, zone: str) -> set[date]:
        """The days from `first` to `last` of a process rolled up in `zone`."""
        rows = self._db.execute("SELECT day FROM rollup_day WHERE process = ? AND day BETWEEN ? AND ? "
                                "AND timezone = ?", (process, first.isoformat(), last.isoformat(), zone))
        return {date.fromisoformat(r[0]) for r in rows}

    def states(self, process: str, first: date, last: date, zone: str) -> dict[date, Rolled]:
        """When each day from `first` to `last` of a process was rolled up in `zone`, and under what."""
        rows = self._db.execute("SELECT day, rolled_at, definitions FROM rollup_day WHERE process = ? "
                                "AND day BETWEEN ? AND ? AND timezone = ?",
                                (process, first.isoformat(), last.isoformat(), zone))
        return {date.fromisoformat(d): Rolled(at, None if kept is None else json.loads(kept)) for d, at, kept in rows}

    def last_final(self, process: str, zone: str, late: float) -> date | None:
        """The last final day of a process (None: none)."""
        rows = self._db.execute("SELECT day, rolled_at FROM rollup_day WHERE process = ? AND timezone = ? "
                                "ORDER BY day DESC", (process, zone))
        for iso, rolled_at in rows:
            day = date.fromisoformat(iso)
            if Rolled(rolled_at, None).final(day, zone, late):
                return day
        return None

    def first_pending(self, process: str, zone: str, late: float) -> date | None:
        """The day after the last final day of a process, else its first day rolled; None: none rolled."""
        rows = self._db.execute("SELECT day, rolled_at FROM rollup_day WHERE process = ? AND timezone = ? "
                                "ORDER BY day DESC", (process, zone))
        earliest = None
        for iso, rolled_at in rows:
            day = date.fromisoformat(iso)
            if Rolled(rolled_at, None).final(day, zone, late):
                return day + timedelta(days=1)
            earliest = day
        return earliest

    def read(self, process: str, first: date, last: date, zone: str) -> dict[date, DayRollup]:
        """The rollups of a process from `first` to `last` rolled up in `zone` (days rolled up with no
        items: empty; days not rolled up, or in another zone: absent)."""
        days = {d.isoformat() for d in self.rolled(process, first, last, zone)}
        out: dict[date, DayRollup] = {date.fromisoformat(d): {} for d in days}
        rows = self._db.execute("SELECT day, dims, measures FROM daily_rollup "
                                "WHERE process = ? AND day BETWEEN ? AND ?",
                                (process, first.isoformat(), last.isoformat()))
        for day, dims, measures in rows:
            if day in days:
                out[date.fromisoformat(day)][dims] = json.loads(measures)
        return out

    def read_totals(self, process: str, first: date, last: date, zone: str) -> dict[date, DayRollup]:
        """Like `read`, with each day's measures summed over its dimension sets (`totals`, kept when
        the day is saved), under the one key `ALL`: what a report needs, some 40 rows a day."""
        days = {d.isoformat() for d in self.rolled(process, first, last, zone)}
        out: dict[date, DayRollup] = {date.fromisoformat(d): {} for d in days}
        rows = self._db.execute("SELECT day, measure, value FROM daily_total WHERE process = ? AND day BETWEEN ? AND ?",
                                (process, first.isoformat(), last.isoformat()))
        for day, measure, value in rows:
            if day in days:
                out[date.fromisoformat(day)].setdefault(ALL, {})[measure] = value
        return out

    def any_rolled(self, processes: Iterable[str], zone: str) -> bool:
        """Whether a day of any of the processes was rolled up in `zone`."""
        names = list(processes)
        marks = ", ".join("?" * len(names))
        row = self._db.execute(f"SELECT 1 FROM rollup_day WHERE timezone = ? AND process IN ({marks}) LIMIT 1",
                               (zone, *names)).fetchone()
        return row is not None

    def backfill_plan(self, source: str) -> "BackfillPlan | None":
        """The first start's backfill planned for a source, if one was."""
        row = self._db.execute("SELECT timezone, first, last, done_at FROM rollup_backfill WHERE source = ?",
                               (source,)).fetchone()
        if row is None:
            return None
        zone, first, last, done_at = row
        return BackfillPlan(source, zone, date.fromisoformat(first), date.fromisoformat(last), done_at)

    def plan_backfill(self, source: str, zone: str, first: date, last: date, now: float) -> "BackfillPlan":
        """Keep the plan of a source's first-start backfill: the days from `first` to `last`."""
        self._db.execute("INSERT INTO rollup_backfill (source, timezone, first, last, planned_at, done_at) "
                         "VALUES (?, ?, ?, ?, ?, NULL) ON CONFLICT (source) DO UPDATE SET "
                         "timezone = excluded.timezone, first = excluded.first, last = excluded.last, "
                         "planned_at = excluded.planned_at, done_at = NULL",  # the SQL PostgreSQL shares
                         (source, zone, first.isoformat(), last.isoformat(), now))
        return BackfillPlan(source, zone, first, last, None)

    def backfill_done(self, source: str, now: float) -> None:
        """Mark the first-start backfill of a source done."""
        self._db.execute("UPDATE rollup_backfill SET done_at = ? WHERE source = ?", (now, source))

    def close(self) -> None:
        self._db.close()


class _PostgresRollups:
    """The rollup tables in schema `rollups` of a PostgreSQL database, behind the few calls of
    `sqlite3.Connection` that `RollupStore` makes (its statements are written in the SQL both
    share, `?` marks turned into psycopg's `%s`). Replicas share them: a day saved by two at once
    is one transaction each, the later one's rows kept."""

    schema = "rollups"

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn = self._connect()

    def _connect(self) -> Any:
        """A connection with the state store's bounded waits (the serve calls these in its event loop:
        an unreachable server fails a pass instead of hanging the service), the tables created."""
        import psycopg

        from collector.state import STATEMENT_TIMEOUT_MS

        conn = psycopg.connect(self._url, autocommit=True,
                               options=f"-c search_path={self.schema} -c statement_timeout={STATEMENT_TIMEOUT_MS}",
                               **BOUNDED_WAITS)
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('fabwatch rollups'))")
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
            for statement in _SCHEMA:
                conn.execute(statement.replace(" WITHOUT ROWID", "").replace(" REAL ", " DOUBLE PRECISION "))
        return conn

    def _connection(self) -> Any:
        """The connection, opened again after a failure broke it (PostgreSQL restarted, a partition)."""
        if self._conn.closed or self._conn.broken:
            self._conn = self._connect()
        return self._conn

    def execute(self, statement: str, params: Sequence[Any] = ()) -> Any:
        return self._connection().execute(statement.replace("?", "%s").replace("BEGIN IMMEDIATE", "BEGIN"), params)

    def executemany(self, statement: str, params: Iterable[Sequence[Any]]) -> None:
        self._connection().cursor().executemany(statement.replace("?", "%s"), params)

    def close(self) -> None:
        self._conn.close()


@dataclass(frozen=True)
class BackfillPlan:
    """The days the first start of `serve` rolls up in the background for a source (`first` to `last`), and
    when that was done (None: not yet; a restart continues it)."""

    source: str
    timezone: str
    first: date
    last: date
    done_at: float | None

    def missing(self, store: RollupStore, processes: Iterable[str],
                step: int = CHUNK_DAYS) -> list[tuple[str, list[Day]]]:
        """What is still to roll up: per month (newest first, so last month's report is complete soonest),
        each process's days of the plan not rolled up in its zone yet, as (process, days) in that month's
        order; a process's days are consecutive runs of at most `step` days (`CHUNK_DAYS` at most)."""
        days = days_between(self.first, self.last, self.timezone)
        names = list(processes)
        rolled = {name: store.rolled(name, self.first, self.last, self.timezone) for name in names}
        out: list[tuple[str, list[Day]]] = []
        for month in sorted({(d.day.year, d.day.month) for d in days}, reverse=True):
            in_month = [d for d in days if (d.day.year, d.day.month) == month]
            for name in names:
                todo = [d for d in in_month if d.day not in rolled[name]]
                out.extend((name, run) for run in _runs(todo, min(step, CHUNK_DAYS)))
        return out


def _runs(days: Sequence[Day], most: int) -> Iterator[list[Day]]:
    """Consecutive days, split where a day is missing or a run reaches `most` days."""
    run: list[Day] = []
    for day in days:
        if run and (day.day != run[-1].day + timedelta(days=1) or len(run) >= most):
            yield run
            run = []
        run.append(day)
    if run:
        yield run


def backfill_since(today: date) -> date:
    """The first day a backfill rolls up by default: the first of the same month a year before `today`."""
    return date(today.year - 1, today.month, 1)


def totals(rollup: DayRollup) -> Measures:
    """A day's measures summed over its dimension sets (the oldest age: the largest). A day of one dimension
    set (as `RollupStore.read_totals` gives) is its own total: its measures are returned as they are, not
    copied, so a report summing a year of days does not copy each day at every KPI; do not change them."""
    if len(rollup) == 1:
        return next(iter(rollup.values()))
    out: Measures = {}
    for measures in rollup.values():
        for name, value in measures.items():
            if name == "open.oldest_age":
                out[name] = max(out.get(name, 0.0), value)
            else:
                _add(out, name, value)
    return out


# --- rolling a source ----------------------------------------------------------------------


Progress = Callable[[int, int], None]
"""Called with (days done, days to do) after each chunk of each process."""


class SourceRoller:
    """Rolls up the days of every process of one SQL source into a `RollupStore`."""

    def __init__(self, name: str, source: SqlSource, processes: Mapping[str, Process], store: RollupStore,
                 zone: str) -> None:
        self.name = name
        self.source = source
        self.processes = dict(processes)
        self.store = store
        self.zone = zone
        self._engine: AsyncEngine | None = None
        self._rollers: dict[str, ProcessRoller] = {}

    async def roll(self, days: Sequence[Day], progress: Progress | None = None,
                   clock_: Callable[[], float] = clock.time) -> None:
        """Compute and store the rollups of `days` for every process, a chunk at a time, each chunk
        marked rolled at the `clock_` time its statements started."""
        chunks = [days[i:i + CHUNK_DAYS] for i in range(0, len(days), CHUNK_DAYS)]
        done, todo = 0, len(days) * len(self.processes)
        for name in self.processes:
            for chunk in chunks:
                await self.roll_process(name, chunk, clock_)
                done += len(chunk)
                if progress is not None:
                    progress(done, todo)

    async def roll_process(self, name: str, days: Sequence[Day], clock_: Callable[[], float] = clock.time) -> None:
        """Compute and store the rollups of `days` (at most `CHUNK_DAYS`) for one process, marked rolled at
        the `clock_` time its statements started."""
        if self._engine is None:
            self._engine = create_engine(self.source)
        process = self.processes[name]
        started = clock_()
        async with guard(self.name, self.source.timeout * statements(len(days))), \
                read_only(self.name, self._engine, self.source.timeout) as conn:
            roller = await self._roller(conn, name, process, days[-1].day.year)
            rollups = await roller.roll(conn, days, started)
        self.store.save(name, rollups, self.zone, definitions(process), started)

    async def _roller(self, conn: AsyncConnection, name: str, process: Process, year: int) -> ProcessRoller:
        roller = self._rollers.get(name)
        if roller is None or roller.times.created.year != year:
            times = await detect_times(conn, process.records, self.source, year)
            roller = self._rollers[name] = ProcessRoller(name, process, times)
        return roller

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None


async def roll_sources(sources: Mapping[str, Any], processes: Mapping[str, Process], store: RollupStore,
                       zone: str, days: Sequence[Day], progress: Progress | None = None) -> list[str]:
    """Roll up `days` for every process whose records are in a SQL source; return the processes that
    cannot be rolled up (their records come from another kind of source)."""
    rollers = [SourceRoller(n, s, processes_in(processes, n), store, zone)
               for n, s in sql_sources(sources).items() if processes_in(processes, n)]
    todo = len(days) * sum(len(r.processes) for r in rollers)
    done = 0

    def step(finished: int, _total: int) -> None:
        if progress is not None:
            progress(done + finished, todo)

    for roller in rollers:
        try:
            await roller.roll(days, step)
        finally:
            await roller.close()
        done += len(days) * len(roller.processes)
    rolled = {p for r in rollers for p in r.processes}
    return [p for p in processes if p not in rolled]


async def reroll(roller: SourceRoller, now: float, clock_: Callable[[], float] | None = None) -> list[Day]:
    """Recompute the days not final yet (`pending_days`) of the source's processes, oldest first; return
    the days recomputed."""
    days = pending_days(roller.store, roller.processes, roller.zone, late_of(roller.source), now)
    await roller.roll(days, clock_=clock_ or (lambda: now))
    return days


def pending_days(store: RollupStore, processes: Iterable[str], zone: str, late: float, now: float,
                 limit: int = REROLL_DAYS) -> list[Day]:
    """The days a re-roll at `now` recomputes: from the day after the last final day of any of the
    processes (else its first day rolled), or the first day within `late` before now if earlier, to
    today; the oldest `limit` of them."""
    first = day_of(now - late, zone)
    for process in processes:
        pending = store.first_pending(process, zone, late)
        if pending is not None:
            first = min(first, pending)
    return days_between(first, day_of(now, zone), zone)[:limit]


def final_through(store: RollupStore, processes: Iterable[str], zone: str, late: float) -> float | None:
    """The end of the last day final for every one of the processes (epoch seconds; None: one has none)."""
    ends = []
    for process in processes:
        day = store.last_final(process, zone, late)
        if day is None:
            return None
        ends.append(midnight(day + timedelta(days=1), zone))
    return min(ends, default=None)


def reroll_days(now: float, zone: str, late: float) -> list[Day]:
    """Today and every day within `late` seconds before now."""
    return days_between(day_of(now - late, zone), day_of(now, zone), zone)


def late_of(source: SqlSource) -> float:
    """How far back rows may change: the source's `late_window`, else its `reconcile` period."""
    return source.late_window if source.late_window is not None else source.reconcile


def sql_sources(sources: Mapping[str, Any]) -> dict[str, SqlSource]:
    return {n: s for n, s in sources.items() if isinstance(s, SqlSource)}


def processes_in(processes: Mapping[str, Process], source: str) -> dict[str, Process]:
    return {n: p for n, p in processes.items() if p.records.source == source}


