"""Inventory models of the sources that are not SQL databases.

Each of them syncs work items into an embedded record store (SQLite, WAL) that the KPI engine
then samples like any SQL source; `interval`, `cron`, `jitter`, `timeout`, `settle` and
`reconcile` mean what they mean for `kind: sql`.
"""

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, StringConstraints, field_validator, model_validator

from collector.inventory.base import Model, examples
from collector.inventory.durations import Duration
from collector.inventory.types import CronExpression
from collector.logs import ambiguous_userinfo

TmfApi = Literal["tmf621", "tmf622", "tmf678", "tmf676", "tmf683"]
TMF_APIS: tuple[TmfApi, ...] = ("tmf621", "tmf622", "tmf678", "tmf676", "tmf683")


def unambiguous_url(url: str) -> str:
    """Refuse a URL whose port does not parse, or whose password cut the authority short (an
    all-digit start of it then parses as a port), without quoting it."""
    try:
        urlsplit(url).port  # noqa: B018
    except ValueError:
        raise ValueError("the port is not a number (a '/' in the password? write it as %2F)") from None
    if ambiguous_userinfo(url):
        raise ValueError("an '@' follows the host: a '/', '?' or '#' in the password cut the address short (its "
                         "start would be read as the port); write them as %2F, %3F, %23, an '@' in a path as %40")
    return url


Url = Annotated[str, StringConstraints(pattern=r"^https?://[^\s]+$"), AfterValidator(unambiguous_url)]


def _not_empty(value: str) -> str:
    """Refuse an empty credential: `hmac.compare_digest(b"", b"")` is true, so an empty shared
    secret or token would let any sender in (and the source would count as protected)."""
    if not value.strip():
        raise ValueError("must not be empty")
    return value


Credential = Annotated[str, AfterValidator(_not_empty)]
"""A secret, token, user name or password: not empty (nor only blanks)."""
Column = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=63)]
MIB = 1024 * 1024


RECORD_STORE_TABLES = frozenset({"sync_meta", "tmf_event", "tmf_deleted", "tmf_incomplete", "kpi_value", "cost_entry"})
"""Tables every record store keeps for itself; a records table cannot take their names."""

COLUMNS: tuple[tuple[str, str, str | None], ...] = (
    ("id", "TEXT PRIMARY KEY", None),
    ("created_at", "REAL NOT NULL", None),
    ("completed_at", "REAL", None),
    ("due_at", "REAL", None),
    ("updated_at", "REAL NOT NULL", None),
    ("status", "TEXT NOT NULL", None),
    ("outcome", "TEXT", None),
    ("priority", "TEXT", None),
    ("channel", "TEXT", None),
    ("segment", "TEXT", None),
    ("paused_seconds", "REAL NOT NULL", "0"),
    ("reopened", "INTEGER NOT NULL", "0"),
    ("fallout", "INTEGER NOT NULL", "0"),
    ("first_contact_resolved", "INTEGER NOT NULL", "0"),
    ("abandoned", "INTEGER NOT NULL", "0"),
    ("wait_seconds", "REAL NOT NULL", "0"),
    ("adjusted", "INTEGER NOT NULL", "0"),
    ("ebill", "INTEGER NOT NULL", "0"),
    ("saved", "INTEGER NOT NULL", "0"),
    ("written_off", "INTEGER NOT NULL", "0"),
    ("handling_minutes", "REAL NOT NULL", "0"),
    ("amount", "REAL NOT NULL", "0"),
)
"""The records table shape (the simulator's `record_table`), with the defaults of a missing value."""
NAMES = tuple(name for name, _, _ in COLUMNS)

class BearerAuth(Model):
    """A static bearer token, inline (from `${ENV}`) or read from a file at each request."""

    model_config = examples({"kind": "bearer", "token_file": "/run/secrets/tt-token"})

    kind: Literal["bearer"]
    """`bearer`: an `Authorization: Bearer` header."""
    token: Credential | None = None
    """The token; give it as `${ENV}` or `${file:/run/secrets/...}`, not inline."""
    token_file: Credential | None = None
    """A file holding the token. Sent by fabwatch (a source's `auth`): read at each request, so a rotated
    token is used at once. Asked of event senders (`sender_auth`): read when the listener starts and
    again at each reload."""

    @model_validator(mode="after")
    def _one(self) -> "BearerAuth":
        if (self.token is None) == (self.token_file is None):
            raise ValueError("give exactly one of token, token_file")
        return self


class BasicAuth(Model):
    """HTTP basic authentication."""

    model_config = examples({"kind": "basic", "username": "fabwatch", "password": "${TT_PASSWORD}"})

    kind: Literal["basic"]
    """`basic`: HTTP basic authentication."""
    username: Credential
    """The user name."""
    password: Credential
    """The password; give it as `${ENV}` or `${file:/run/secrets/...}`, not inline."""


class OAuth2Auth(Model):
    """OAuth2 client credentials: the token is fetched, cached, and re-fetched once on a 401."""

    model_config = examples(
        {"kind": "oauth2", "token_url": "https://auth.example/oauth2/token", "client_id": "fabwatch",
         "client_secret": "${TT_CLIENT_SECRET}"},
    )

    kind: Literal["oauth2"]
    """`oauth2`: the OAuth2 client credentials grant."""
    token_url: Url
    """The token endpoint, e.g. https://auth.example/oauth2/token."""
    client_id: str
    """The client id."""
    client_secret: str
    """The client secret; give it as `${ENV}` or `${file:/run/secrets/...}`, not inline."""
    scope: str | None = None
    """Scopes asked for, separated by spaces; none: the server's default."""


Auth = Annotated[BearerAuth | BasicAuth | OAuth2Auth, Field(discriminator="kind")]
SenderAuth = Annotated[BearerAuth | BasicAuth, Field(discriminator="kind")]
"""Credentials a sender of events presents in its `Authorization` header."""


class _Synced(Model):
    """What every syncing source shares: schedule, limits and where its record store lives."""

    interval: Duration = 60.0
    """Time between two samples of the record store (and, for a polled source, syncs); ignored when `cron` is given."""
    cron: CronExpression | None = None
    """Sample on this five-field crontab, on the wall clock of `service.timezone`, instead of every `interval`, e.g.
    `*/5 * * * *`."""
    jitter: Duration | None = None
    """Random delay, up to this long, added to each scheduled sample; none: no delay."""
    timeout: Duration = 10.0
    """Per HTTP request (and per query of the record store)."""
    settle: Annotated[float, Field(ge=0)] = 0.0
    """Seconds a record may reach the record store late: counters only read records older than `now - settle`."""
    reconcile: Duration = 3600.0
    """How often window sums are recomputed in full instead of from their edges."""
    store: str | None = None
    """Record store: a SQLite file, or a PostgreSQL URL (`postgresql://user:${PASSWORD}@host:5432/db`; the source's
    tables in schema `records_<source>`, shared by replicas). Default: `<state file stem>-records-<source>.db`
    next to the state file, or the state's database when `service.state_path` is a PostgreSQL URL."""


class _Http(_Synced):
    auth: Auth | None = None
    """Credentials sent with each request (`kind: bearer`, `basic` or `oauth2`); none: no authentication."""
    ca_file: str | None = None
    """PEM bundle of the CA that signs the server certificate (https only)."""
    retries: Annotated[int, Field(ge=0, le=10)] = 2
    """Retries of a request that failed in a way worth retrying (5xx, 429, timeout, connection error), 0 to 10."""
    backoff: Duration = 0.5
    """First retry delay; doubled each retry, with full jitter; `Retry-After` wins when longer."""
    max_bytes: Annotated[int, Field(gt=0)] = 16 * MIB
    """Largest response body accepted."""


class TmfSource(_Http):
    """Poll a TM Forum Open API list endpoint: paging, `fields=`, incremental by `lastUpdate`."""

    model_config = examples(
        {"kind": "tmf621", "base_url": "https://tt.example/tmf-api/troubleTicket/v4", "interval": "1m",
         "auth": {"kind": "bearer", "token_file": "/run/secrets/tt-token"}},
    )

    kind: TmfApi
    """The TM Forum Open API polled: `tmf621` Trouble Ticket, `tmf622` Product Order, `tmf678` Customer Bill,
    `tmf676` Payment, `tmf683` Party Interaction."""
    base_url: Url
    """The API root, e.g. https://tt.example/tmf-api/troubleTicket/v4 (the resource is appended)."""
    version: Literal[4, 5] = 4
    """The API's major version, 4 or 5 (names of states and attributes differ)."""
    page_size: Annotated[int, Field(ge=1, le=5000)] = 500
    """Items asked for per page (`limit=`), 1 to 5000."""
    query: str = ""
    """Extra list filter, e.g. `ticketType=billInquiry` (also sent as the hub query)."""
    fields: bool = True
    """Ask only for the attributes the record store needs (`fields=`)."""
    full_sync: Duration = 6 * 3600.0
    """Re-read the whole collection this often (heals missed updates and deletions)."""
    incremental: bool | None = None
    """Sync by `lastUpdate.gt=` between full syncs. Default: where the API's specification defines
    `lastUpdate` (not TMF622, TMF676, TMF683 v4, which are read in full at each sync); true for a
    server that filters on it anyway (the simulator does), false to read in full each time."""
    overlap: Duration = 120.0
    """An incremental sync asks for `lastUpdate.gt=<watermark - overlap>`: it reads again what
    changed in the watermark's own second, what a late transaction committed with an older
    `lastUpdate`, and what a page shift skipped. What it reads twice is written once."""

    @property
    def dsn(self) -> str:
        """Where the source reads (for logs; passwords are masked by the caller)."""
        return self.base_url


class TmfEventsSource(_Synced):
    """Receive TMF event notifications on `/tmf/<source>/listener/<eventName>`."""

    model_config = examples(
        {"kind": "tmf_events", "api": "tmf622", "hub_url": "https://om.example/tmf-api/productOrdering/v4",
         "secret": "${OM_EVENTS_SECRET}", "silent_after": "1h"},
    )

    kind: Literal["tmf_events"]
    """`tmf_events`: receive TM Forum event notifications (hub and listener) instead of polling."""
    api: TmfApi
    """The TMF API whose events arrive: `tmf621`, `tmf622`, `tmf678`, `tmf676` or `tmf683`."""
    version: Literal[4, 5] = 4
    """The API's major version, 4 or 5 (names of events and attributes differ)."""
    hub_url: Url | None = None
    """API root to register with (`POST {hub_url}/hub`) on start; none: the hub is set up elsewhere."""
    callback: Url | None = None
    """URL the hub calls; default `http://<service.listen>/tmf/<source>`."""
    query: str = ""
    """Filter sent with the hub registration (the `query` of `POST /hub`), e.g.
    `eventType=TroubleTicketStatusChangeEvent`."""
    secret: Credential | None = None
    """Shared secret the sender must put in the `X-Fabwatch-Secret` header."""
    sender_auth: SenderAuth | None = None
    """Credentials every event must carry in its `Authorization` header, as the hub is set up to send
    them: `{kind: bearer, token: ...}` (or `token_file`, read when the listener starts and at each reload) or `{kind:
    basic, username: ..., password: ...}`. Checked besides the shared secret and mutual TLS; a
    missing or wrong one gets 401."""
    max_body: Annotated[int, Field(gt=0)] = MIB
    """Largest event body accepted, in bytes; a larger one is refused (413) before it is read."""
    batch_max: Annotated[int, Field(ge=1, le=10000)] = 1000
    """Events committed together at most (group commit); each is acknowledged after its commit."""
    durability: Literal["full", "normal"] = "full"
    """SQLite `synchronous`: full survives power loss, normal survives a process crash."""
    dedup_window: Duration = 7 * 86_400.0
    """How long an `eventId` is remembered: a redelivery within it is acknowledged as a duplicate.
    Older ids are forgotten, a batch at a time, so the store does not grow without end; one
    redelivered later is stored again, and the newer-version rule keeps the row right."""
    silent_after: Duration | None = None
    """Alert (`FabEventsSilent`) when no event came for this long: a hub that lost the subscription
    or stopped sending. Off by default: how long a quiet spell is normal depends on the API."""
    base_url: Url | None = None
    """The API root (as a `tmf` source's); when set, a resource an event spoke of only partially,
    and fabwatch has not stored, is read at the next sample (`GET {base_url}/{resource}/{id}`)."""
    complete_max: Annotated[int, Field(ge=1, le=10_000)] = 100
    """Incomplete resources read from the API per sample, at most."""
    auth: Auth | None = None
    """Credentials for the hub registration and the API (`base_url`)."""
    ca_file: str | None = None
    """PEM bundle of the CA that signs the hub's and the API's certificates (https only)."""

    @property
    def dsn(self) -> str:
        """Where the source reads (for logs)."""
        return self.hub_url or "listener://"


def _jmespath(expression: str, name: str | None = None) -> str:
    """A JMESPath expression, compiled once here so a typo is a config error, not a sample error."""
    import jmespath
    from jmespath.exceptions import JMESPathError

    try:
        jmespath.compile(expression)
    except JMESPathError as exc:
        where = f"{name}: " if name else ""
        raise ValueError(f"{where}bad JMESPath {expression!r}: {str(exc).splitlines()[0]}") from None
    return expression


class HttpJsonSource(_Http):
    """A JSON document mapped by JMESPath to work items (`items` + `columns`) or to `values`."""

    model_config = examples(
        {"kind": "http_json", "url": "https://crm.example/api/churn", "values": {"churn_rate": "data.monthlyChurn"}},
    )

    kind: Literal["http_json"]
    """`http_json`: a JSON document fetched over HTTP at each sample."""
    url: Url
    """URL of the JSON document."""
    items: str | None = None
    """JMESPath to the list of work items in the payload."""
    columns: dict[Column, str] = {}
    """Record column -> JMESPath evaluated on each item (id, created_at and status are needed)."""
    values: dict[Column, str] = {}
    """Name -> JMESPath to a number; stored in table `kpi_value` for `kind: value` KPIs."""

    @field_validator("items")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        return None if value is None else _jmespath(value)

    @field_validator("columns", "values")
    @classmethod
    def _paths(cls, value: dict[str, str]) -> dict[str, str]:
        for name, expression in value.items():
            _jmespath(expression, name)
        return value

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(NAMES))
        if unknown:
            raise ValueError(f"unknown record column {', '.join(map(repr, unknown))}; known: {', '.join(NAMES)}")
        return value

    @model_validator(mode="after")
    def _mapped(self) -> "HttpJsonSource":
        if self.items is None and not self.values:
            raise ValueError("give items (with columns) or values")
        missing = {"id", "created_at", "status"} - set(self.columns)
        if self.items is not None and missing:
            raise ValueError("columns must map " + ", ".join(sorted(missing)))
        return self

    @property
    def dsn(self) -> str:
        """Where the source reads (for logs)."""
        return self.url


class CostCsvSource(_Synced):
    """Monthly costs from finance: CSV files with process, component, amount, currency, month."""

    model_config = examples({"kind": "cost_csv", "path": "/data/finance/costs-*.csv", "interval": "1h"})

    kind: Literal["cost_csv"]
    """`cost_csv`: the monthly costs finance booked, from CSV files."""
    path: str
    """A file or a glob (`/data/finance/costs-*.csv`)."""

    @property
    def dsn(self) -> str:
        """Where the source reads (for logs)."""
        return self.path


SyncedSource = TmfSource | TmfEventsSource | HttpJsonSource | CostCsvSource
SOURCE_KINDS = frozenset({"sql", *TMF_APIS, "tmf_events", "http_json", "cost_csv"})
"""Every `kind` of source (the tags of the `Source` union)."""
