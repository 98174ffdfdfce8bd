"""The inventory's shape: pydantic v2 models, frozen, with `extra="forbid"` everywhere.

Cross-checks that need the whole inventory (unknown source, unknown column...) live in
`collector.inventory.load`; this module only checks what one value can tell about itself.
"""

import re
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from collector.inventory.alerting import AlertingConfig
from collector.inventory.base import Model
from collector.inventory.durations import Duration
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

    min: float | None = None
    max: float | None = None

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
    key_file: str
    client_ca_file: str | None = None


class ServiceConfig(Model):
    listen: str = "127.0.0.1:9464"
    events_listen: str | None = None
    """HOST:PORT of the events port: the lean server for `tmf_events` listeners (none: main port)."""
    events_tls: EventsTls | None = None
    timezone: TimeZoneName = "UTC"
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] = "EUR"
    state_path: str = "fabwatch-state.db"
    max_series_per_process: Annotated[int, Field(gt=0)] = 2000
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

    kind: Literal["sql"]
    dsn: str
    timeout: Duration = 10.0
    interval: Duration = 60.0
    cron: CronExpression | None = None
    jitter: Duration | None = None
    pool_size: Annotated[int, Field(ge=1, le=20)] = 2
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

    id: Column = "id"
    created: Column = "created_at"
    completed: Column | None = "completed_at"
    due: Column | None = None
    status: Column = "status"
    paused: Column | None = None
    """Seconds spent in paused states, excluded from cycle times."""
    outcome: Column | None = None
    dimensions: tuple[Column, ...] = ()
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
    source: Name
    table: TableName | None = None
    """The records table (`schema.table` allowed); or give `query`."""
    query: str | None = None
    """A read-only SELECT yielding the mapped columns (joins, a completion time from a history table):
    every generated statement reads it as a derived table, so filtering and grouping stay in the database."""
    columns: Columns = Columns()
    open_statuses: tuple[Code, ...]
    paused_statuses: tuple[Code, ...] = ()
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
    target: Target | None = None


class VolumeKpi(_Kpi):
    kind: Literal["volume"]
    of: Literal["created", "completed"] = "created"
    window: Duration = 86400.0


class BacklogKpi(_Kpi):
    kind: Literal["backlog"]


class OverdueKpi(_Kpi):
    kind: Literal["overdue"]


class DurationKpi(_Kpi):
    kind: Literal["duration"]
    buckets: tuple[Duration, ...]
    stat: Literal["quantile", "mean"] = "quantile"
    quantile: Annotated[float, Field(gt=0, lt=1)] = 0.9
    window: Duration = 30 * 86400.0

    @field_validator("buckets")
    @classmethod
    def _increasing(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value:
            raise ValueError("give at least one bucket bound")
        if list(value) != sorted(set(value)):
            raise ValueError("bucket bounds must be strictly increasing")
        return value


class SlaKpi(_Kpi):
    kind: Literal["sla"]
    objective: float
    window: Duration = 30 * 86400.0
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
    kind: Literal["ratio"]
    good: str
    """SQL predicate over the records' columns that makes an item count as good."""
    of: Literal["created", "completed"] = "completed"
    window: Duration = 30 * 86400.0


class CostKpi(_Kpi):
    kind: Literal["cost"]
    per: Literal["created", "completed"] = "completed"
    window: Duration = 30 * 86400.0


class ValueKpi(_Kpi):
    kind: Literal["value"]
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

    driver: Column | None = None
    rate_per_hour: Annotated[float, Field(ge=0)] | None = None
    """Rate for a driver measured in minutes (handling minutes x rate / 60)."""
    rate_per_unit: Annotated[float, Field(ge=0)] | None = None
    per_item: Annotated[float, Field(ge=0)] | None = None
    fixed_per_month: Annotated[float, Field(ge=0)] | None = None
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
    etom: Annotated[str, StringConstraints(pattern=r"^\d+(\.\d+)*$")]
    name: str
    team: Team
    runbook: str | None = None
    records: Records
    kpis: dict[Name, Kpi]
    costs: dict[Name, CostComponent] = {}


class Inventory(Model):
    service: ServiceConfig = ServiceConfig()
    sources: dict[Name, Source]
    processes: dict[Name, Process]
    alerting: AlertingConfig = AlertingConfig()
