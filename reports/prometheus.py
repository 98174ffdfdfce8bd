"""The report's second backend: the daily figures read from a Prometheus-compatible query API
(Prometheus, Thanos, Mimir, VictoriaMetrics), in the shape of the daily rollups' totals
(`collector.rollups.RollupStore.read_totals`), so that `reports.summary.summarize` reads either.

Only the standard HTTP API: `GET /api/v1/query_range` (and `/api/v1/query` when a server answers a
range query at other instants than asked, as a server that aligns ranges to its step would).

A day's figure of a counter fabwatch exports is the difference of its readings at the day's two
ends, series by series (a drop is a restart that lost the count: the new reading is the increase;
a series that appears counts from 0): not `increase()`, whose extrapolation to the window's edges
makes a count fractional. Each reading is `last_over_time(counter[lookback])` at the day's end (local
midnight, DST-correct) plus the source's `settle`: the engine counts at a sample `now` the rows up
to `now - settle`, so a scrape at midnight plus `settle` holds exactly the rows before midnight.
Days of 24 hours are read in one range query per metric (step one day), split at the 23- and
25-hour days. Gauges (open items, overdue, oldest age) are read at the end of each day. A day has
figures for a process only when Prometheus holds a reading of the process at both its ends
(`fab_oldest_open_item_age_seconds`, exported at every sample).

What cannot come from Prometheus (no counter of it): ratio KPIs and `value` KPIs; their days lack
the measure, so the summary shows n/a for them.
"""

import asyncio
import base64
import dataclasses
import json
import logging
import math
import re
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp

from collector.inventory.models import DurationKpi, Inventory, Process, RatioKpi, ValueKpi
from collector.logs import log_event
from collector.rollups import ALL, Day, DayRollup, Measures, Rolled, days_between
from reports.summary import Month, Report, Rollups, States, history_span, summarize

DAY_SECONDS = 86400.0
PRESENCE = "fab_oldest_open_item_age_seconds"
"""A gauge every sample exports for every process: a reading of it means fabwatch ran then."""
RETRY_STATUSES = frozenset({429, 502, 503, 504})
_LOG = logging.getLogger("fabwatch.report")


class PrometheusError(Exception):
    """The query API failed, answered an error, or holds no history: the message says which URL,
    which query and what came back."""


@dataclass(frozen=True)
class Connection:
    """How to reach the query API."""

    url: str
    """Base URL, e.g. http://prometheus:9090 (a path prefix is kept: /prometheus, /select/0/prometheus)."""
    token_file: str | None = None
    """A file holding a bearer token."""
    username: str | None = None
    """Basic authentication user (with `password_file`)."""
    password_file: str | None = None
    ca_file: str | None = None
    """PEM file of the CA that signed the server's certificate (default: the system's)."""
    timeout: float = 30.0
    """Seconds one request may take."""
    retries: int = 3
    """Further attempts after a 5xx, a 429 or a timeout (backoff 0.5 s, 1 s, 2 s, ...)."""
    concurrency: int = 4
    """Requests in flight at most."""
    lookback: float = 300.0
    """How far before a day's end a reading may be (at least the scrape interval)."""
    backoff: float = 0.5

    @property
    def masked(self) -> str:
        return mask(self.url)


def mask(url: str) -> str:
    """The URL with any user and password in it replaced by `***` (for messages and logs)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _read_secret(path: str, what: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise PrometheusError(f"cannot read the Prometheus {what} file {path}: {exc.strerror or exc}") from exc


def basic(user: str, password: str) -> str:
    """The Authorization header of basic authentication."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def go_duration(seconds: float) -> str:
    """A range selector's duration: whole milliseconds."""
    return f"{max(1, round(seconds * 1000))}ms"


@dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    values: dict[float, float]
    """Value by evaluation time."""


class QueryClient:
    """A small client of the query API: bounded concurrency, retries, clear errors."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.requests = 0
        headers = {"Accept": "application/json"}
        parts = urlsplit(connection.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PrometheusError(f"the Prometheus URL must be http:// or https:// with a host, "
                                  f"got {connection.masked}")
        if connection.token_file:
            headers["Authorization"] = f"Bearer {_read_secret(connection.token_file, 'bearer token')}"
        elif connection.username is not None:
            password = _read_secret(connection.password_file, "password") if connection.password_file else ""
            headers["Authorization"] = basic(connection.username, password)
        elif parts.username is not None:
            headers["Authorization"] = basic(unquote(parts.username), unquote(parts.password or ""))
        self._base = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path.rstrip("/"), "", ""))
        self._ssl: ssl.SSLContext | bool = True
        if connection.ca_file:
            try:
                self._ssl = ssl.create_default_context(cafile=connection.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise PrometheusError(f"cannot read the Prometheus CA file {connection.ca_file}: {exc}") from exc
        self._headers = headers
        self._limit = asyncio.Semaphore(max(1, connection.concurrency))
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "QueryClient":
        self._session = aiohttp.ClientSession(headers=self._headers,
                                              timeout=aiohttp.ClientTimeout(total=self.connection.timeout))
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def query_range(self, expr: str, start: float, end: float, step: float) -> list[Series]:
        """A range query's matrix."""
        data = await self._get("query_range", {"query": expr, "start": _num(start), "end": _num(end),
                                               "step": _num(step)})
        return [Series(dict(r.get("metric", {})), {float(t): float(v) for t, v in r.get("values", [])})
                for r in data.get("result", [])]

    async def query(self, expr: str, at: float) -> list[Series]:
        """An instant query's vector, each value keyed by `at`."""
        data = await self._get("query", {"query": expr, "time": _num(at)})
        if data.get("resultType") != "vector":
            raise PrometheusError(f"{self.connection.masked}/api/v1/query?query={expr}: expected a vector, got "
                                  f"{data.get('resultType')!r}")
        return [Series(dict(r.get("metric", {})), {at: float(r["value"][1])}) for r in data.get("result", [])]

    async def _get(self, endpoint: str, params: Mapping[str, str]) -> dict[str, Any]:
        assert self._session is not None, "use `async with QueryClient(...)`"
        url = f"{self._base}/api/v1/{endpoint}"
        where = f"{self.connection.masked.rstrip('/')}/api/v1/{endpoint} (query {params['query']!r})"
        attempts = self.connection.retries + 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                async with self._limit:
                    self.requests += 1
                    log_event(_LOG, "prometheus_query", logging.DEBUG, url=f"{self.connection.masked}/api/v1/"
                              f"{endpoint}", query=params["query"], attempt=attempt + 1)
                    async with self._session.get(url, params=params, ssl=self._ssl) as response:
                        body = await response.text()
                        status = response.status
            except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
                if last:
                    raise PrometheusError(f"{where}: no answer within {self.connection.timeout:g} s "
                                          f"({attempts} attempts)") from exc
            except aiohttp.ClientError as exc:
                if last:
                    raise PrometheusError(f"{where}: cannot connect ({attempts} attempts): {exc}") from exc
            else:
                if status == 200:
                    return _data(where, body)
                if (status < 500 and status not in RETRY_STATUSES) or last:
                    raise PrometheusError(f"{where}: HTTP {status}: {_error_text(body)}")
            await asyncio.sleep(self.connection.backoff * 2 ** attempt)
        raise AssertionError("unreachable")


def _num(value: float) -> str:
    return repr(round(value, 3))


def _error_text(body: str) -> str:
    try:
        parsed = json.loads(body)
        return f"{parsed.get('errorType', 'error')}: {parsed.get('error', body[:300])}"
    except (ValueError, AttributeError):
        return body[:300].strip() or "(empty body)"


def _data(where: str, body: str) -> dict[str, Any]:
    try:
        parsed = json.loads(body)
    except ValueError as exc:
        raise PrometheusError(f"{where}: not a JSON answer: {body[:200]!r}") from exc
    if not isinstance(parsed, dict) or parsed.get("status") != "success" or not isinstance(parsed.get("data"), dict):
        raise PrometheusError(f"{where}: {_error_text(body)}")
    data: dict[str, Any] = parsed["data"]
    return data


# --- what to read ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """A metric fabwatch exports, and how its series become measures of a day."""

    name: str
    counter: bool
    combine: str = "sum"
    """How the series of a process add up: "sum", or "max" (the oldest age)."""


COUNTERS = (Metric("fab_items_created_total", True), Metric("fab_items_completed_total", True),
            Metric("fab_sla_good_total", True), Metric("fab_sla_valid_total", True), Metric("fab_cost_total", True),
            Metric("fab_cycle_time_seconds_bucket", True), Metric("fab_cycle_time_seconds_sum", True))
GAUGES = (Metric("fab_backlog_items", False), Metric("fab_overdue_items", False),
          Metric(PRESENCE, False, "max"))


def measures_of(metric: str, labels: Mapping[str, str], process: Process) -> list[str]:
    """The rollup measures a series of a metric adds to (none: not one the report reads)."""
    if metric == "fab_items_created_total":
        return ["created"]
    if metric == "fab_items_completed_total":
        return ["completed", f"outcome.{labels.get('outcome', 'unknown')}"]
    if metric in ("fab_sla_good_total", "fab_sla_valid_total"):
        kind = "good" if metric == "fab_sla_good_total" else "valid"
        return [f"completed.sla_{kind}_{labels.get('kpi', '')}"]
    if metric == "fab_cost_total":
        component = process.costs.get(labels.get("component", ""))
        return [] if component is None or component.monthly_from is not None else [f"cost.{labels['component']}"]
    if metric == "fab_cycle_time_seconds_sum":
        return ["completed.dur_sum"]
    if metric == "fab_cycle_time_seconds_bucket":
        index = bucket_index(labels.get("le", "+Inf"), buckets_of(process))
        return [] if index is None else [f"completed.le_{index}"]
    if metric == "fab_backlog_items":
        return ["open"]
    if metric == "fab_overdue_items":
        return ["open.overdue"]
    if metric == PRESENCE:
        return ["open.oldest_age"]
    return []


def buckets_of(process: Process) -> tuple[float, ...]:
    return next((k.buckets for k in process.kpis.values() if isinstance(k, DurationKpi)), ())


def bucket_index(le: str, buckets: Sequence[float]) -> int | None:
    """The index of a histogram bucket's upper bound among the process's buckets (None: +Inf, or not one)."""
    try:
        bound = float(le)
    except ValueError:
        return None
    return next((i for i, b in enumerate(buckets) if math.isclose(b, bound, rel_tol=1e-12)), None)


def runs(times: Sequence[float], step: float = DAY_SECONDS) -> list[list[float]]:
    """The instants split into runs evenly `step` apart (one range query each): a 23- or 25-hour day
    starts a new run."""
    out: list[list[float]] = []
    for t in times:
        if out and math.isclose(t - out[-1][-1], step, abs_tol=1e-3):
            out[-1].append(t)
        else:
            out.append([t])
    return out


def selector(processes: Iterable[str]) -> str:
    names = sorted(processes)
    # a regular expression in a PromQL string: its backslashes escaped once more
    return "|".join(re.escape(n) for n in names).replace("\\", "\\\\").replace('"', '\\"')


# --- reading the history -----------------------------------------------------------------------


@dataclass
class History:
    """The daily figures read from Prometheus, in the shape the summary reads (`summarize`)."""

    rollups: dict[str, dict[date, DayRollup]]
    states: dict[str, dict[date, Rolled]]
    missing: dict[str, list[date]] = field(default_factory=dict)
    """The days of each process Prometheus holds no reading of at one of its ends."""
    queries: int = 0


Readings = dict[str, dict[tuple[tuple[str, str], ...], dict[float, float]]]
"""By process, then series (its labels), the value at each instant."""


async def read_metric(client: QueryClient, metric: Metric, processes: Sequence[str], times: Sequence[float],
                      lookback: float) -> Readings:
    """The readings of a metric's series of the processes at each instant (`last_over_time` over
    `lookback`): one range query per run of instants a day apart, else one instant query each."""
    expr = f'last_over_time({metric.name}{{process=~"{selector(processes)}"}}[{go_duration(lookback)}])'
    out: Readings = {}

    async def one_run(run: list[float]) -> list[Series]:
        if len(run) == 1:
            return await client.query(expr, run[0])
        found = await client.query_range(expr, run[0], run[-1], DAY_SECONDS)
        wanted = {round(t, 3) for t in run}
        if all(round(t, 3) in wanted for s in found for t in s.values):
            return found
        # a server that aligns a range to its step answers at other instants: ask each instant
        answers = await asyncio.gather(*[client.query(expr, t) for t in run])
        return [s for answer in answers for s in answer]

    results = await asyncio.gather(*[one_run(run) for run in runs(times)])
    for series in (s for result in results for s in result):
        process = series.labels.get("process", "")
        key = tuple(sorted((k, v) for k, v in series.labels.items() if k != "__name__"))
        values = out.setdefault(process, {}).setdefault(key, {})
        values.update({round(t, 3): v for t, v in series.values.items()})
    return out


def day_figures(metric: Metric, readings: Mapping[tuple[tuple[str, str], ...], Mapping[float, float]],
                process: Process, days: Sequence[Day], offset: float) -> dict[date, Measures]:
    """The measures each day gets from a metric's series: a counter's increase between the day's
    ends, a gauge's reading at its end."""
    out: dict[date, Measures] = {d.day: {} for d in days}
    for key, values in readings.items():
        labels = dict(key)
        names = measures_of(metric.name, labels, process)
        if not names:
            continue
        for day in days:
            end = values.get(round(day.end + offset, 3))
            if end is None:
                continue
            if metric.counter:
                start = values.get(round(day.start + offset, 3))
                value = end - start if start is not None and end >= start else end
            else:
                value = end
            measures = out[day.day]
            for name in names:
                if metric.combine == "max":
                    measures[name] = max(measures.get(name, 0.0), value)
                else:
                    measures[name] = measures.get(name, 0.0) + value
    return out


async def read_history(client: QueryClient, inventory: Inventory, first: date, last: date,
                       now: float) -> History:
    """The daily figures of every process from `first` to `last` (days not ended by `now` left out),
    as `RollupStore.read_totals` and `read_states` give them."""
    zone = inventory.service.timezone
    days = [d for d in days_between(first, last, zone) if d.end <= now]
    groups: dict[float, list[str]] = {}
    for name, process in inventory.processes.items():
        source = inventory.sources.get(process.records.source)
        groups.setdefault(float(getattr(source, "settle", 0.0) or 0.0), []).append(name)
    history = History({n: {} for n in inventory.processes}, {n: {} for n in inventory.processes})
    if not days:
        return history
    lookback = client.connection.lookback
    for offset, names in groups.items():
        times = [d.start + offset for d in days] + [days[-1].end + offset]
        metrics = (*COUNTERS, *GAUGES)
        readings = await asyncio.gather(*[read_metric(client, m, names, times, lookback) for m in metrics])
        for name in names:
            process = inventory.processes[name]
            presence = readings[-1].get(name, {})
            held = {round(t, 3) for values in presence.values() for t in values}
            present = [d for d in days if round(d.start + offset, 3) in held and round(d.end + offset, 3) in held]
            history.missing[name] = [d.day for d in days if d not in present]
            rollups: dict[date, DayRollup] = {d.day: {ALL: {}} for d in present}
            for metric, found in zip(metrics, readings, strict=True):
                for day, measures in day_figures(metric, found.get(name, {}), process, present, offset).items():
                    rollups[day][ALL].update(measures)
            history.rollups[name] = rollups
            # read now: a day whose late window had not passed may still change (provisional, as a rollup)
            history.states[name] = {d.day: Rolled(now, None) for d in present}
    history.queries = client.requests
    return history


async def read_prometheus(connection: Connection, inventory: Inventory, month: Month, now: float) -> History:
    """The daily figures a month's report reads (`history_span`), from the query API."""
    first, last = history_span(month)
    async with QueryClient(connection) as client:
        return await read_history(client, inventory, first, last, now)


def records_only(inventory: Inventory) -> list[str]:
    """The KPIs no counter fabwatch exports gives a day's figure of (process.kpi)."""
    return [f"{p}.{k}" for p, process in inventory.processes.items() for k, kpi in process.kpis.items()
            if isinstance(kpi, RatioKpi | ValueKpi)]


def months_lacking(days: Iterable[date]) -> list[str]:
    """The months some of `days` fall in, in order."""
    return sorted({f"{d.year:04d}-{d.month:02d}" for d in days})


def prometheus_notes(inventory: Inventory, report: Report, history: History, month: Month) -> list[str]:
    """What the report read from Prometheus lacks, one line each: the months without a reading at
    every day's ends, the KPIs only the records give, the days still within their late window."""
    lines = []
    for name in inventory.processes:
        lacking = months_lacking(history.missing.get(name, []))
        if str(month) in lacking:
            days = [d for d in history.missing[name] if d.year == month.year and d.month == month.month]
            lines.append(f"{month}: Prometheus holds no reading of {name} at the ends of {len(days)} of its days "
                         f"({days[0]} to {days[-1]}): no figures for the month")
        earlier = [m for m in lacking if m != str(month)]
        if earlier:
            lines.append(f"{name}: no complete history in Prometheus for {', '.join(earlier)} (trend and "
                         "year-on-year change leave them out)")
    only = records_only(inventory)
    if only:
        lines.append(f"not computed from Prometheus (no counter of them; the rollups of the records have them): "
                     f"{', '.join(only)}")
    provisional = [p.name for p in report.processes if not p.final]
    if provisional:
        lines.append(f"{month} is provisional for {', '.join(provisional)}: days read before their late window "
                     "had passed")
    return lines


def summarize_history(inventory: Inventory, history: History, month: Month) -> Report:
    """The month's summary from the daily figures read from Prometheus: the KPIs only the records
    give are marked so (not "backfill needed": no backfill brings them)."""
    rollups: dict[str, Rollups] = dict(history.rollups)
    states: dict[str, States] = dict(history.states)
    report = summarize(inventory, rollups, month, states)
    only = set(records_only(inventory))
    processes = [dataclasses.replace(p, kpis=[
        dataclasses.replace(k, needs_backfill=False, records_only=True) if f"{p.name}.{k.kpi}" in only else k
        for k in p.kpis]) for p in report.processes]
    return dataclasses.replace(report, processes=processes, source="prometheus")
