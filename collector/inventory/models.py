"""The inventory's shape: pydantic v2 models, frozen, with `extra="forbid"` everywhere.

Cross-checks that need the whole inventory (unknown source, unknown column...) live in
`collector.inventory.load`; this module only checks what one value can tell about itself.
"""

import re
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from collector.inventory.alerting import AlertingConfig
from collector.inventory.base import Model, examples
from collector.inventory.durations import Duration
from collector.inventory.exporters import ExportersConfig
from collector.inventory.reports import ReportsConfig
from collector.inventory.sources import CostCsvSource, HttpJsonSource, TmfEventsSource, TmfSource
from collector.inventory.types import CronExpression, TimeKind, TimeZoneName

Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
"""A process, KPI, source or cost component name: also a Prometheus label value."""

Team = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]*$", max_length=64)]
"""A team name: routes alerts; lower case, digits, `-` and `_`."""

Column = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=63)]
"""A plain SQL column name (quoted by SQLAlchemy when the dialect needs it)."""

_LISTEN = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


class Target(Model):
    """An enterprise target: the KPI must stay within [min, max]."""

    model_config = examples({"max": 500}, {"min": 0.7, "max": 1})

    min: float | None = None
    """Lowest acceptable value (exported as `fab_kpi_target{bound="min"}`); none: no lower bound."""
    max: float | None = None
    """Highest acceptable value (exported as `fab_kpi_target{bound="max"}`); none: no upper bound."""

    @model_validator(mode="after")
    def _has_a_bound(self) -> "Target":
        if self.min is None and self.max is None:
            raise ValueError("a target needs a bound: min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class EventsTls(Model):
    """TLS on the events port; with `client_ca_file`, mutual TLS: senders must present a certificate
    that this CA signed."""

    cert_file: str
    """PEM file of the server certificate (with its intermediate certificates)."""
    key_file: str
    """PEM file of the certificate's private key."""
    client_ca_file: str | None = None
    """PEM bundle of the CA that signs the senders' client certificates (mutual TLS); none: any sender may connect (a
    source's `secret` still applies)."""


class ServiceConfig(Model):
    """fabwatch's own server, clock, currency and state."""

    model_config = examples(
        {"listen": "127.0.0.1:9464", "timezone": "Europe/Berlin", "currency": "EUR",
         "state_path": "/var/lib/fabwatch/state.db"},
    )

    listen: str = "127.0.0.1:9464"
    """HOST:PORT of fabwatch's HTTP server (`/metrics`, status page, JSON API, and the TMF event listeners when there
    is no `events_listen`); an IPv6 host in brackets, e.g. `[::1]:9464`; `0.0.0.0` listens on every interface.
    `--listen` overrides it."""
    events_listen: str | None = None
    """HOST:PORT of the events port: the lean server for `tmf_events` listeners (none: main port)."""
    events_tls: EventsTls | None = None
    """Serve the events port over TLS (needs `events_listen`); none: plain HTTP."""
    timezone: TimeZoneName = "UTC"
    """IANA time zone of the service, e.g. Europe/Berlin: the sources' `cron` schedules run on its wall clock,
    daylight saving time included."""
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] = "EUR"
    """ISO 4217 code of every cost amount (the `currency` label of `fab_cost_total`), e.g. EUR."""
    state_path: str = "fabwatch-state.db"
    """SQLite file where fabwatch keeps its counters, watermarks and daily rollups across restarts (relative to the
    working directory), or a PostgreSQL URL (`postgresql://user@host:port/db`) shared by replicas that split the
    sources between them (see the deployment page); `--state` overrides it."""
    max_series_per_process: Annotated[int, Field(gt=0)] = 2000
    """Most dimension sets (label value combinations) exported per process; new ones beyond it are counted as
    `other`, and how much of the cap is used is itself exported."""
    series_expiry: Duration | None = 90 * 86_400.0
    """A dimension set (a priority, a channel value) no item entered, left or stayed open in for this long
    (at least the process's longest KPI window) leaves /metrics instead of lingering at its last values,
    and frees its place under the cap; back later, its counters start again from zero. `null`: never."""
    web_config: str | None = None
    """Web configuration file of the service port, in the Prometheus exporter-toolkit's format (TLS,
    mutual TLS, `basic_auth_users` with bcrypt hashes, response headers); `--web.config.file` wins.
    None: plain HTTP, no authentication."""
    healthz_without_auth: bool = False
    """Answer `/healthz` without basic authentication, for load balancers that cannot send
    credentials (it says only `ok`; TLS still applies). Every other path needs the credentials."""

    @field_validator("listen", "events_listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        match = None if value is None else _LISTEN.match(value)
        if value is not None and (not match or not 0 < int(match.group(2)) < 65536):
            raise ValueError(f"must be HOST:PORT, e.g. 127.0.0.1:9464, got {value!r}")
        return value

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    @model_validator(mode="after")
    def _tls_needs_the_port(self) -> "ServiceConfig":
        if self.events_tls is not None and self.events_listen is None:
            raise ValueError("events_tls needs events_listen: TLS is served on the events port")
        return self

    @property
    def events_address(self) -> tuple[str, int] | None:
        """(host, port) of the events port, when one is configured."""
        if self.events_listen is None:
            return None
        host, port = self.events_listen.rsplit(":", 1)
        return host.strip("[]"), int(port)


ASYNC_DRIVERS = frozenset({"sqlite+aiosqlite", "postgresql+asyncpg", "mariadb+aiomysql", "mysql+aiomysql"})
"""The drivers fabwatch installs (aiosqlite, asyncpg, aiomysql); it samples on an event loop."""
DSN_EXAMPLES = ("sqlite+aiosqlite:///path/to/file.db, postgresql+asyncpg://user:password@host:5432/db "
                "or mariadb+aiomysql://user:password@host:3306/db (mysql+aiomysql:// for MySQL)")


class SqlSource(Model):
    """A database queried where it lives; the dialect comes from the DSN."""

    model_config = examples(
        {"kind": "sql", "dsn": "${CRM_DSN}", "interval": "60s", "timeout": "10s", "timezone": "Europe/Berlin"},
    )

    kind: Literal["sql"]
    """`sql`: a database read where it lives, with generated read-only SQL."""
    dsn: str
    """SQLAlchemy URL with an asyncio driver: `postgresql+asyncpg://user:password@host:5432/db`,
    `mariadb+aiomysql://user:password@host:3306/db` (`mysql+aiomysql://` for MySQL) or
    `sqlite+aiosqlite:///path/to/file.db`. Give it as `${ENV}` or `${file:/run/secrets/...}` so the password is
    not in the file; write an `@` of the user or password as %40, a `/` as %2F."""
    timeout: Duration = 10.0
    """Longest a query may run, enforced by the database itself (`statement_timeout`, `max_statement_time`...); a
    slower sample fails."""
    interval: Duration = 60.0
    """Time between two samples (ignored when `cron` is given)."""
    cron: CronExpression | None = None
    """Sample on this five-field crontab, on the wall clock of `service.timezone`, instead of every `interval`, e.g.
    `*/5 * * * *`."""
    jitter: Duration | None = None
    """Random delay, up to this long, added to each scheduled sample so that sources on one schedule do not query at
    the same instant; none: no delay."""
    pool_size: Annotated[int, Field(ge=1, le=20)] = 2
    """Database connections fabwatch opens at most (1 to 20)."""
    settle: Annotated[float, Field(ge=0)] = 2.0
    """Seconds a row may arrive late: counters only read rows older than `now - settle`."""
    reconcile: Duration = 3600.0
    """How often window sums are recomputed in full instead of from their edges."""
    late_window: Duration | None = None
    """How far behind the watermark the reconcile looks for rows committed late (default: `reconcile`)."""
    timezone: TimeZoneName = "UTC"
    """The zone of the source's naive times (`timestamp`/`DATETIME` without zone, dates, ISO text
    without offset)."""

    @field_validator("dsn")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        from sqlalchemy.engine import make_url  # not the ORM: cheap
        from sqlalchemy.exc import ArgumentError

        # Never quote the DSN or a part of it here: a password that broke the parse is in that part.
        try:
            url = make_url(value)
            url.port  # noqa: B018  (parsed lazily in some versions: a bad port raises here)
        except ArgumentError:
            raise ValueError(f"not a database URL; e.g. {DSN_EXAMPLES}") from None
        except ValueError:
            raise ValueError("the port is not a number (a '/' in the password? write it as %2F); "
                             f"e.g. {DSN_EXAMPLES}") from None
        if url.host and ("@" in url.host or "@" in (url.database or "")):
            # An unescaped `@` or `/` in the user or password: part of it is read as the host or the
            # database, and would reach the logs.
            raise ValueError("an '@' follows the host: write an '@' of the user or password as %40, a '/' as %2F")
        if url.drivername not in ASYNC_DRIVERS:
            raise ValueError(f"{url.drivername!r} is not a supported asyncio driver; use {DSN_EXAMPLES}")
        return value


Source = Annotated[SqlSource | TmfSource | TmfEventsSource | HttpJsonSource | CostCsvSource,
                   Field(discriminator="kind")]


class Columns(Model):
    """Where each work-item field lives in the records table."""

    model_config = examples(
        {"id": "id", "created": "created_at", "completed": "resolved_at", "due": "expected_resolution_at",
         "status": "status", "dimensions": ["priority", "channel"], "measures": ["handling_minutes"]},
    )

    id: Column = "id"
    """Column holding the work item's unique id."""
    created: Column = "created_at"
    """Column holding when the item was created (any time type fabwatch reads: see `time_types`)."""
    completed: Column | None = "completed_at"
    """Column holding when the item was completed, NULL while it is open; null when the records have none (then KPIs
    of completions, durations, SLAs and costs cannot be computed)."""
    due: Column | None = None
    """Column holding when the item is due (TMF's expectedResolutionDate, a promised date); needed by `overdue` KPIs
    and by `sla` KPIs without `good`; none by default."""
    status: Column = "status"
    """Column holding the item's status (text or an integer code), matched against `open_statuses` and
    `paused_statuses`."""
    paused: Column | None = None
    """Column holding the seconds the item spent paused (waiting on the customer), excluded from its cycle time; none:
    nothing is excluded."""
    outcome: Column | None = None
    """Column whose value labels completed items (the `outcome` label of `fab_items_completed_total`), e.g. resolved
    / cancelled; none: no outcome label."""
    dimensions: tuple[Column, ...] = ()
    """Columns whose values label the series (e.g. `[priority, channel]`): keep them few and of few values each; a
    NULL is labelled `unknown`."""
    measures: tuple[Column, ...] = ()
    """Other columns that KPIs and cost drivers may name (handling minutes, amounts, flags)."""

    def all(self) -> set[str]:
        named = {self.id, self.created, self.completed, self.due, self.status, self.paused, self.outcome}
        return {c for c in named if c} | set(self.dimensions) | set(self.measures)


TableName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")]
"""A table, optionally `schema.table`."""
Code = str | int
"""A status or lookup value as the database holds it: text or an integer code."""
Label = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class Records(Model):
    """Where a process's work items are (a table or a query of one source) and how their fields map to columns."""

    model_config = examples(
        {"source": "crm", "table": "trouble_ticket",
         "columns": {"completed": "resolved_at", "due": "expected_resolution_at"},
         "open_statuses": ["acknowledged", "inProgress", "pending", "held"], "paused_statuses": ["pending"]},
    )

    source: Name
    """Name of the source (a key of `sources`) that holds the records."""
    table: TableName | None = None
    """The records table (`schema.table` allowed); or give `query`."""
    query: str | None = None
    """A read-only SELECT yielding the mapped columns (joins, a completion time from a history table):
    every generated statement reads it as a derived table, so filtering and grouping stay in the database."""
    columns: Columns = Columns()
    """Where each work-item field lives in the table or the query's result."""
    open_statuses: tuple[Code, ...]
    """Statuses of items still open, counted in the backlog: text, integer codes, or the labels given in `lookups`,
    e.g. `[acknowledged, inProgress, pending, held]`."""
    paused_statuses: tuple[Code, ...] = ()
    """Open statuses in which an item waits on someone else (e.g. `[pending]`): such an item is not counted overdue
    while paused."""
    where: str | None = None
    """An extra SQL predicate every query of this process adds (e.g. `tenant = 'retail'`)."""
    time_types: dict[Column, TimeKind] = {}
    """The kind of a time column where the database type cannot tell (epoch_ms in a BIGINT); else detected."""
    lookups: dict[Column, dict[Code, Label]] = {}
    """Labels of a status, dimension or outcome column's codes (`{1: critical, 2: high}`); statuses may
    then be given by label."""

    @model_validator(mode="after")
    def _table_or_query(self) -> "Records":
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of table and query")
        if self.query is not None:
            words = self.query.split(None, 1)
            if not words or words[0].lower() not in {"select", "with"}:
                raise ValueError("records.query must be a SELECT (or WITH ... SELECT)")
            if ";" in self.query.strip().rstrip(";"):
                raise ValueError("records.query must be one statement (no ';' inside)")
        return self

    @property
    def relation(self) -> str:
        """The table's name, or the query: what the process reads."""
        return self.table if self.table is not None else f"({self.query})"


class _Kpi(Model):
    description: str = ""
    """What the KPI means, for the people who read it: shown on its dashboard panel (default: the KPI's kind)."""
    target: Target | None = None
    """The enterprise target the KPI must stay within, e.g. `{max: 500}`; a miss raises `FabKpiTargetMissed`, a
    forecast miss `FabKpiTargetMissedByMonthEnd`. None: no target."""


class VolumeKpi(_Kpi):
    """Items created (or completed) in a window: the inflow or the throughput of a process."""

    model_config = examples({"kind": "volume", "of": "completed", "window": "1d"})

    kind: Literal["volume"]
    """`volume`: the number of items created (or completed) in the window."""
    of: Literal["created", "completed"] = "created"
    """Count the items `created` or the items `completed` in the window."""
    window: Duration = 86400.0
    """Period the items are counted over, ending now (e.g. `1d`)."""


class BacklogKpi(_Kpi):
    """Open items now."""

    model_config = examples({"kind": "backlog", "target": {"max": 500}})

    kind: Literal["backlog"]
    """`backlog`: the number of open items now (status in `open_statuses`)."""


class OverdueKpi(_Kpi):
    """Open items past their due time: the SLA risk still in flight, which a completed-item SLO cannot see yet."""

    model_config = examples({"kind": "overdue", "target": {"max": 20}})

    kind: Literal["overdue"]
    """`overdue`: the number of open items past their due time, paused ones excluded (needs `columns.due`)."""


class DurationKpi(_Kpi):
    """Cycle time, created to completed, paused time excluded: a quantile or the mean over a window."""

    model_config = examples(
        {"kind": "duration", "stat": "quantile", "quantile": 0.9, "buckets": ["1h", "4h", "8h", "1d", "2d", "3d"],
         "target": {"max": 172800}},
    )

    kind: Literal["duration"]
    """`duration`: cycle time from created to completed, paused time excluded."""
    buckets: tuple[Duration, ...]
    """Bucket bounds of the cycle-time histogram (`fab_cycle_time_seconds`), strictly increasing, e.g. `[1h, 4h, 8h,
    1d, 2d]`; the duration KPIs of one process share one histogram, so give them the same buckets."""
    stat: Literal["quantile", "mean"] = "quantile"
    """Report a `quantile` of the cycle times (estimated from the buckets) or their `mean`."""
    quantile: Annotated[float, Field(gt=0, lt=1)] = 0.9
    """The quantile reported when `stat` is `quantile`, between 0 and 1 exclusive (0.9 = p90)."""
    window: Duration = 30 * 86400.0
    """Period of completed items the figure covers, ending now."""

    @field_validator("buckets")
    @classmethod
    def _increasing(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value:
            raise ValueError("give at least one bucket bound")
        if list(value) != sorted(set(value)):
            raise ValueError("bucket bounds must be strictly increasing")
        return value


class SlaKpi(_Kpi):
    """The share of items completed in time: an SLO, with an error budget and burn-rate alerts."""

    model_config = examples(
        {"kind": "sla", "objective": 0.9, "window": "30d"},
        {"kind": "sla", "objective": 0.99, "good": "reopened = 0"},
    )

    kind: Literal["sla"]
    """`sla`: the share of items completed in time over the window (good / valid), an SLO with burn-rate alerts."""
    objective: float
    """The share of good items to reach, between 0 and 1 exclusive (0.9 = 90%): the SLO's objective and the KPI's
    minimum target."""
    window: Duration = 30 * 86400.0
    """The SLO window good and valid items are counted over, ending now; no shorter than the longest alert window of
    `alerting.slo.windows`."""
    good: str | None = None
    """SQL predicate for a good event; without it, good means completed by the due time."""

    @field_validator("objective")
    @classmethod
    def _objective(cls, value: float) -> float:
        if not 0 < value < 1:
            raise ValueError(f"objective must be between 0 and 1 exclusive (0.99 = 99%), got {value}")
        return value

    @model_validator(mode="after")
    def _objective_is_the_minimum(self) -> "SlaKpi":
        """The objective is the SLA's minimum target: the burn-rate alerts spend its budget and the
        dashboards measure the budget against `fab_kpi_target{bound="min"}`, which must agree."""
        if self.target is not None and self.target.min is not None and self.target.min != self.objective:
            raise ValueError(f"target.min ({self.target.min}) differs from the objective ({self.objective}): an "
                             "SLA's objective is its minimum target; leave target.min out or make them equal")
        return self


class RatioKpi(_Kpi):
    """The share of items matching a SQL predicate among those of a window."""

    model_config = examples({"kind": "ratio", "good": "reopened = 0", "target": {"min": 0.95}})

    kind: Literal["ratio"]
    """`ratio`: the share of items matching `good` among the items of the window."""
    good: str
    """SQL predicate over the records' columns that makes an item count as good."""
    of: Literal["created", "completed"] = "completed"
    """Count among the items `created` or the items `completed` in the window."""
    window: Duration = 30 * 86400.0
    """Period the items are counted over, ending now."""


class CostKpi(_Kpi):
    """Cost per item: the process's costs over a window divided by its items."""

    model_config = examples({"kind": "cost", "per": "completed", "target": {"max": 9.5}})

    kind: Literal["cost"]
    """`cost`: cost per item, the process's costs in the window divided by the items completed (or created) in it."""
    per: Literal["created", "completed"] = "completed"
    """Divide by the items `completed` or the items `created` in the window."""
    window: Duration = 30 * 86400.0
    """Period costs and items are summed over, ending now."""


class ValueKpi(_Kpi):
    """Any figure one read-only query returns."""

    model_config = examples({"kind": "value", "sql": "SELECT count(*) FROM customer WHERE churned_at IS NULL"})

    kind: Literal["value"]
    """`value`: any figure a read-only SQL query returns."""
    sql: str
    """A SELECT returning one row with one numeric column; read-only like every query."""

    @field_validator("sql")
    @classmethod
    def _select(cls, value: str) -> str:
        words = value.split(None, 1)
        if not words or words[0].lower() not in {"select", "with"}:
            raise ValueError("a value KPI's sql must be a SELECT (or WITH ... SELECT)")
        return value


Kpi = Annotated[
    VolumeKpi | BacklogKpi | OverdueKpi | DurationKpi | SlaKpi | RatioKpi | CostKpi | ValueKpi,
    Field(discriminator="kind"),
]


class CostComponent(Model):
    """Activity-based cost: a driver column times a rate, booked on completion, or a fixed amount."""

    model_config = examples({"driver": "handling_minutes", "rate_per_hour": 42}, {"fixed_per_month": 12000})

    driver: Column | None = None
    """A measure column multiplied by the rate (`rate_per_hour` or `rate_per_unit` only), e.g. `handling_minutes`."""
    rate_per_hour: Annotated[float, Field(ge=0)] | None = None
    """Rate for a driver measured in minutes (handling minutes x rate / 60)."""
    rate_per_unit: Annotated[float, Field(ge=0)] | None = None
    """Amount per unit of the driver column, booked when an item completes (e.g. per dispatch), in
    `service.currency`."""
    per_item: Annotated[float, Field(ge=0)] | None = None
    """Amount per completed item, in `service.currency`."""
    fixed_per_month: Annotated[float, Field(ge=0)] | None = None
    """Fixed amount per month (licences, platform), accrued continuously from fabwatch's first sample of the process,
    in `service.currency`."""
    monthly_from: str | None = None
    """A `cost_csv` source: the monthly amount finance booked for this process and component
    (the latest month up to the current one), accrued over time like `fixed_per_month`."""

    @model_validator(mode="after")
    def _one_rule(self) -> "CostComponent":
        rules = [r for r in ("rate_per_hour", "rate_per_unit", "per_item", "fixed_per_month", "monthly_from")
                 if getattr(self, r) is not None]
        if len(rules) != 1:
            raise ValueError("give exactly one of rate_per_hour, rate_per_unit, per_item, fixed_per_month, "
                             "monthly_from")
        needs_driver = rules[0] in ("rate_per_hour", "rate_per_unit")
        if needs_driver and self.driver is None:
            raise ValueError(f"{rules[0]} needs a driver column")
        if not needs_driver and self.driver is not None:
            raise ValueError(f"{rules[0]} takes no driver column")
        return self


class Process(Model):
    """One customer process: its work items, its KPIs and their targets, its costs."""

    etom: Annotated[str, StringConstraints(pattern=r"^\d+(\.\d+)*$")]
    """The eTOM process number, e.g. `1.3.1.3` (Support Customer Problem Management)."""
    name: str
    """The process's name as people say it, shown on dashboards, alerts and reports."""
    team: Team
    """The team that owns the process, e.g. `assurance-ops`: its alerts go to `alerting.teams.<team>`."""
    runbook: str | None = None
    """URL of the process's runbook, linked from each of its alerts; none: `alerting.runbook_url`."""
    records: Records
    """Where the process's work items are and how their fields map to columns."""
    kpis: dict[Name, Kpi]
    """The KPIs computed, by name (the `kpi` label; lower case, digits and `_`), each with its `kind`, e.g.
    `resolved_in_time: {kind: sla, objective: 0.9}`."""
    costs: dict[Name, CostComponent] = {}
    """Cost components, by name (the `component` label of `fab_cost_total`), e.g. `labour: {driver: handling_minutes,
    rate_per_hour: 42}`; none: no cost."""


class Inventory(Model):
    """The configuration of fabwatch."""

    service: ServiceConfig = ServiceConfig()
    """How fabwatch itself runs: where it listens, its time zone and currency, where it keeps its state."""
    sources: dict[Name, Source]
    """The systems fabwatch reads, by name (the `source` label; lower case, digits and `_`): SQL databases, TMF Open
    APIs polled or sending events, HTTP JSON documents and finance's cost files, each with its `kind`."""
    processes: dict[Name, Process]
    """The customer processes watched, by name (the `process` label; lower case, digits and `_`), e.g. `problem`:
    where their work items are, their KPIs and their costs."""
    alerting: AlertingConfig = AlertingConfig()
    """What `fabwatch alerts build` writes: SLO burn-rate windows, thresholds, teams and their receivers."""
    exporters: ExportersConfig = ExportersConfig()
    """Exporters beside `/metrics`: OpenTelemetry (OTLP) push."""
    reports: ReportsConfig | None = None
    """The monthly summary written by `serve` on a schedule, served at `/reports/` and mailed; none: `serve`
    writes none (`fabwatch report` still does)."""
