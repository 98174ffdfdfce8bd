"""The inventory's `alerting:` section: SLO alert windows, thresholds, teams and their receivers.

Pydantic models (frozen, `extra="forbid"`) checked on their own, plus `check_alerting`, the
cross-checks that need the whole inventory (called from `collector.inventory.cross_check`).
Secrets (PagerDuty routing keys, Opsgenie API keys, SMTP passwords, webhook tokens) are only
ever given as files, which Alertmanager reads itself: they never enter the generated config.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from collector.inventory.base import examples
from collector.inventory.durations import Duration, format_duration
from collector.inventory.sources import unambiguous_url
from collector.inventory.types import TimeZoneName

Severity = Literal["critical", "warning", "info"]
IntervalName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]*$", max_length=64)]
_WEEKDAY = r"(monday|tuesday|wednesday|thursday|friday|saturday|sunday)"
_WEEKDAYS = re.compile(rf"^{_WEEKDAY}(:{_WEEKDAY})?$")
_HOURS = re.compile(r"^([01]\d|2[0-3]):[0-5]\d-(([01]\d|2[0-3]):[0-5]\d|24:00)$")
"""HH:MM-HH:MM as Alertmanager parses it: 00:00 to 23:59, and 24:00 as an end only."""


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, use_attribute_docstrings=True)


class BurnWindow(Model):
    """One multi-window alert condition: both error ratios above `factor x budget`.

    The factor is derived, never typed in: consuming `budget_share` of the error budget within
    `long` means burning at `budget_share x slo_window / long` (2% in 1h of 30d = 14.4).
    """

    model_config = examples({"severity": "critical", "long": "1h", "short": "5m", "budget_share": 0.02})

    severity: Literal["critical", "warning"]
    """`critical` pages (the team's `page` receiver), `warning` opens a ticket."""
    long: Duration
    """The long window of the pair: the budget must have burned at the rate over it (e.g. `1h`)."""
    short: Duration
    """The short window: the burn must still be going on over it (e.g. `5m`), so a recovered burn stops the alert;
    shorter than `long`."""
    budget_share: Annotated[float, Field(gt=0, le=1)]
    """The share of the whole SLO window's error budget that, spent within `long`, fires the alert, in (0, 1] (0.02 =
    2%)."""
    min_events: Annotated[int, Field(ge=0)] | None = None
    """Valid events the long window needs before its ratio counts (default: slo.min_events)."""
    min_bad_events: Annotated[int, Field(ge=0)] | None = None
    """Bad events the long window needs before the pair fires (default: slo.min_bad_events)."""

    @model_validator(mode="after")
    def _short_is_shorter(self) -> BurnWindow:
        if self.short >= self.long:
            raise ValueError(f"short ({format_duration(self.short)}) must be shorter than long "
                             f"({format_duration(self.long)})")
        return self


WORKBOOK_WINDOWS = (
    BurnWindow(severity="critical", long=3600, short=300, budget_share=0.02),
    BurnWindow(severity="critical", long=6 * 3600, short=1800, budget_share=0.05),
    BurnWindow(severity="warning", long=86400, short=2 * 3600, budget_share=0.10),
    BurnWindow(severity="warning", long=3 * 86400, short=6 * 3600, budget_share=0.10),
)
"""The SRE Workbook's recommendation (chapter 5, table 5-8): page 2%/1h and 5%/6h, ticket 10%/1d and 10%/3d."""


class SloAlerting(Model):
    """The burn-rate alerts of the `sla` KPIs (SRE Workbook, chapter 5)."""

    windows: tuple[BurnWindow, ...] = WORKBOOK_WINDOWS
    """The burn-rate window pairs; default: the SRE Workbook's four (2% of the budget in 1h and 5% in 6h page; 10% in
    1d and 10% in 3d open a ticket)."""
    min_events: Annotated[int, Field(ge=0)] = 10
    """Below this many valid events in a long window the error ratio is noise: no alert."""
    min_bad_events: Annotated[int, Field(ge=0)] = 3
    """Below this many bad events in a long window no pair fires: at a few events an hour one late
    item is a large error ratio, but not yet a burn worth a page or a ticket."""
    evaluation_interval: Duration = 60.0
    """Interval of the SLO rule groups; the cheap long-window counts depend on it."""
    raw_window_max: Duration = 6 * 3600.0
    """Windows up to this read the counters; longer ones sum the recorded short-window increases."""
    at_risk_for: Duration = 900.0
    """How long open items already past due must outnumber the error budget left before `FabSlaAtRisk` fires."""

    @field_validator("windows")
    @classmethod
    def _some_windows(cls, value: tuple[BurnWindow, ...]) -> tuple[BurnWindow, ...]:
        if not value:
            raise ValueError("give at least one burn-rate window")
        return value

    @model_validator(mode="after")
    def _interval_fits(self) -> SloAlerting:
        if self.evaluation_interval > self.base_window:
            raise ValueError(f"evaluation_interval ({format_duration(self.evaluation_interval)}) is longer "
                             f"than the shortest window ({format_duration(self.base_window)})")
        return self

    @property
    def base_window(self) -> float:
        """Return the shortest window: its increases are recorded and summed for long windows."""
        return min(w.short for w in self.windows)

    @property
    def longest_window(self) -> float:
        return max(w.long for w in self.windows)

    def ratio_windows(self) -> tuple[float, ...]:
        """Return every window an error ratio is recorded for, shortest first."""
        return tuple(sorted({w for pair in self.windows for w in (pair.long, pair.short)}))


class TargetAlerting(Model):
    """When a KPI outside its target alerts."""

    for_: Annotated[Duration, Field(alias="for")] = 1800.0
    """How long a KPI must stay outside its target before `FabKpiTargetMissed` fires (also `FabOpenItemTooOld`); the
    YAML key is `for`."""
    severity: Severity = "warning"
    """Severity of `FabKpiTargetMissed` and `FabOpenItemTooOld`."""


class TrendAlerting(Model):
    """The month-end forecast: a KPI whose linear trend misses its target before the month ends."""

    enabled: bool = True
    """Write the month-end forecast alert (`FabKpiTargetMissedByMonthEnd`) at all."""
    lookback: Duration = 86400.0
    """Range the slope is fitted over (predict_linear); long enough to smooth daily cycles."""
    margin: Annotated[float, Field(gt=0, lt=1)] = 0.2
    """Only warn when the KPI is already within this share of its target (the current-level guard)."""
    for_: Annotated[Duration, Field(alias="for")] = 3600.0
    """How long the forecast must say the target will be missed before the alert fires; the YAML key is `for`."""
    severity: Severity = "warning"
    """Severity of `FabKpiTargetMissedByMonthEnd`."""


class HealthAlerting(Model):
    """Alerts on fabwatch's own sources and TMF event listeners."""

    source_down_for: Duration = 300.0
    """How long a source must fail every sample (or be missing from the metrics) before `FabSourceDown`
    (`FabSourceAbsent`) fires; also how long the events listener alerts must hold."""
    stale_intervals: Annotated[float, Field(ge=1)] = 3.0
    """`FabSourceStale` fires after this many sampling intervals without a successful sample (for a `cron` source,
    times the longest gap of its schedule), at least 1."""
    stale_min: Duration = 300.0
    """Never call data stale sooner than this, however short the sampling interval."""
    absent_for: Duration = 3600.0
    """How long a KPI may have no value before `FabKpiAbsent` fires."""
    severity: Severity = "warning"
    """Severity of the source and events listener alerts."""
    absent_severity: Severity = "info"
    """Severity of `FabKpiAbsent`."""
    report_failing_for: Duration = 900.0
    """How long the scheduled report may stay undelivered after a failed attempt (retries included) before
    `FabReportDeliveryFailing` fires."""
    events_refused_ratio: Annotated[float, Field(gt=0, lt=1)] = 0.05
    """Warn when a TMF events listener refuses more than this share of what it receives..."""
    events_window: Duration = 900.0
    """...over this window (and for `source_down_for`)."""
    events_commit_slow: Annotated[Duration, Field(gt=0, lt=10)] = 1.0
    """Warn when the p99 of a TMF events listener's group commits over `events_window` is longer
    (for `source_down_for`): each event of a batch waits that long for its 201. Under 10 s, the
    last finite bucket of `fab_events_commit_duration_seconds`."""


class ProcessAlerting(Model):
    """Alert settings of one process."""

    max_open_age: Duration | None = None
    """Warn when the oldest open item is older (default: the last cycle-time bucket)."""


class WebhookReceiver(Model):
    """An HTTP endpoint that receives Alertmanager's webhook payload."""

    url: Annotated[str, StringConstraints(pattern=r"^https?://"), AfterValidator(unambiguous_url)] = Field(repr=False)
    """Where Alertmanager posts the alerts. It goes into the generated alertmanager.yml as it is
    (Alertmanager 0.25 reads no URL file), and nowhere else: never in a log, a problem or a repr,
    where its userinfo and credential-like query values are masked. A token is better in
    `credentials_file`."""
    credentials_file: str | None = None
    """Bearer token file (Alertmanager http_config.authorization.credentials_file)."""
    send_resolved: bool = True
    """Also notify when an alert resolves."""
    max_alerts: Annotated[int, Field(ge=0)] = 0
    """Most alerts sent in one notification; 0: all of them."""


class EmailReceiver(Model):
    """An email address (the mail server is `alerting.smtp`)."""

    to: str
    """Address to notify, e.g. `assurance-ops@example.com` (needs `alerting.smtp`)."""
    send_resolved: bool = False
    """Also notify when an alert resolves."""


class PagerDutyReceiver(Model):
    """A PagerDuty service, through the Events API v2."""

    routing_key_file: str | None = None
    """File holding the PagerDuty Events API v2 routing key, read by Alertmanager (required; an inline `routing_key`
    is refused)."""
    send_resolved: bool = True
    """Also notify when an alert resolves."""

    @model_validator(mode="before")
    @classmethod
    def _no_inline(cls, data: Any) -> Any:
        return _refuse_inline(data, "routing_key", "routing_key_file")

    @model_validator(mode="after")
    def _has_secret(self) -> PagerDutyReceiver:
        if not self.routing_key_file:
            raise ValueError("a pagerduty receiver needs routing_key_file: the file holding the "
                             "Events API v2 routing key")
        return self


class OpsgenieReceiver(Model):
    """An Opsgenie team."""

    api_key_file: str | None = None
    """File holding the Opsgenie API key, read by Alertmanager (required; an inline `api_key` is refused)."""
    api_url: Annotated[str, StringConstraints(pattern=r"^https?://")] | None = None
    """Opsgenie API URL, e.g. https://api.eu.opsgenie.com/ for the EU instance; none: Alertmanager's default."""
    responders: tuple[str, ...] = ()
    """Opsgenie team names to notify."""
    send_resolved: bool = True
    """Also notify when an alert resolves."""

    @model_validator(mode="before")
    @classmethod
    def _no_inline(cls, data: Any) -> Any:
        return _refuse_inline(data, "api_key", "api_key_file")

    @model_validator(mode="after")
    def _has_secret(self) -> OpsgenieReceiver:
        if not self.api_key_file:
            raise ValueError("an opsgenie receiver needs api_key_file: the file holding the API key")
        return self


def _refuse_inline(data: Any, inline: str, file_field: str) -> Any:
    if isinstance(data, dict) and inline in data:
        raise ValueError(f"{inline} must not be written inline: put it in a file and give {file_field}")
    return data


class Receiver(Model):
    """Where one kind of notification goes; any mix of the integrations below."""

    model_config = examples({"pagerduty": {"routing_key_file": "/run/secrets/pagerduty-assurance"}})

    webhook: WebhookReceiver | None = None
    """Post to an HTTP endpoint."""
    email: EmailReceiver | None = None
    """Send an email."""
    pagerduty: PagerDutyReceiver | None = None
    """Trigger a PagerDuty incident."""
    opsgenie: OpsgenieReceiver | None = None
    """Create an Opsgenie alert."""

    @model_validator(mode="after")
    def _not_empty(self) -> Receiver:
        if not any((self.webhook, self.email, self.pagerduty, self.opsgenie)):
            raise ValueError("a receiver needs at least one of webhook, email, pagerduty, opsgenie")
        return self


class TeamAlerting(Model):
    """Where a team's alerts go, by severity."""

    model_config = examples(
        {"page": {"pagerduty": {"routing_key_file": "/run/secrets/pagerduty-assurance"}},
         "ticket": {"email": {"to": "assurance-ops@example.com"}}, "tickets_during": "office_hours"},
    )

    page: Receiver
    """Critical alerts: wake someone up."""
    ticket: Receiver
    """Warnings: handle during working hours."""
    info: Receiver | None = None
    """Info alerts (default: the ticket receiver)."""
    tickets_during: IntervalName | None = None
    """Notify warnings and info only within this time interval (and not on its holidays)."""


class TimeInterval(Model):
    """Business hours, as Alertmanager's time intervals: days, hours and holidays in a time zone."""

    model_config = examples(
        {"timezone": "Europe/Berlin", "weekdays": ["monday:friday"], "hours": ["08:00-18:00"],
         "holidays": ["2026-12-25"]},
    )

    timezone: TimeZoneName = "UTC"
    """IANA time zone the hours are read in, e.g. Europe/Berlin."""
    weekdays: tuple[str, ...] = ("monday:friday",)
    """Days of the interval: lower-case names or ranges, e.g. `monday:friday`."""
    hours: tuple[str, ...] = ("08:00-18:00",)
    """Time ranges HH:MM-HH:MM within those days (an end may be 24:00), e.g. `08:00-18:00`."""
    holidays: tuple[dt.date, ...] = ()
    """Dates (YYYY-MM-DD) left out of the interval, e.g. `2026-12-25`."""

    @field_validator("weekdays")
    @classmethod
    def _weekdays(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [day for day in value if not _WEEKDAYS.match(day)]
        if bad:
            raise ValueError(f"weekdays are lower-case names or ranges like monday:friday, got {', '.join(bad)}")
        return value

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [span for span in value if not _HOURS.match(span) or span[:5] >= span[6:]]
        if bad:
            raise ValueError(f"hours are HH:MM-HH:MM with start before end, got {', '.join(bad)}")
        return value


class SmtpConfig(Model):
    """The mail server Alertmanager sends email through."""

    model_config = examples(
        {"smarthost": "smtp.example.com:587", "from": "fabwatch@example.com", "auth_username": "fabwatch",
         "auth_password_file": "/run/secrets/smtp"},
    )

    smarthost: Annotated[str, StringConstraints(pattern=r"^[^:\s]+:\d+$")]
    """HOST:PORT of the mail server, e.g. `smtp.example.com:587`."""
    from_: Annotated[str, Field(alias="from")]
    """Sender address of the emails; the YAML key is `from`."""
    auth_username: str | None = None
    """SMTP user name (needs `auth_password_file`); none: no authentication."""
    auth_password_file: str | None = None
    """File holding the SMTP password, read by Alertmanager (an inline `auth_password` is refused)."""
    require_tls: bool = True
    """Require STARTTLS."""

    @model_validator(mode="before")
    @classmethod
    def _no_inline(cls, data: Any) -> Any:
        return _refuse_inline(data, "auth_password", "auth_password_file")

    @model_validator(mode="after")
    def _password_with_user(self) -> SmtpConfig:
        if self.auth_username and not self.auth_password_file:
            raise ValueError("auth_username needs auth_password_file: the file holding the SMTP password")
        return self


class Routing(Model):
    """How Alertmanager groups and repeats notifications."""

    group_wait: Duration = 30.0
    """How long Alertmanager waits to gather the first alerts of a group into one notification."""
    group_interval: Duration = 300.0
    """How long it waits before notifying alerts added to a group already notified."""
    repeat_interval: Duration = 4 * 3600.0
    """How often a ticket or info alert still firing is notified again."""
    page_repeat_interval: Duration = 3600.0
    """How often a page still firing is notified again."""


class AlertingConfig(Model):
    """What `fabwatch alerts build` writes: Prometheus rules and the Alertmanager configuration."""

    grafana_url: Annotated[str, StringConstraints(pattern=r"^https?://")] = "http://127.0.0.1:3000"
    """Grafana's base URL: alerts link to their dashboard there (`dashboard_url`)."""
    runbook_url: Annotated[str, StringConstraints(pattern=r"^https?://")] | None = None
    """Runbook for processes that name none (`processes.<name>.runbook` wins)."""
    slo: SloAlerting = SloAlerting()
    """Burn-rate alerts of the `sla` KPIs (the SRE Workbook's multi-window, multi-burn-rate alerts)."""
    targets: TargetAlerting = TargetAlerting()
    """Alerts on KPIs outside their target."""
    trends: TrendAlerting = TrendAlerting()
    """Alerts on KPIs heading for a target miss by the end of the month."""
    health: HealthAlerting = HealthAlerting()
    """Alerts on fabwatch's own sources and event listeners."""
    processes: dict[str, ProcessAlerting] = {}
    """Alert settings per process, by process name."""
    teams: dict[str, TeamAlerting] = {}
    """The receivers of each team, by the team names of `processes.<name>.team`; once any team is given, every
    process's team needs its entry."""
    default: Receiver | None = None
    """Alerts no team route takes (none by default: they are dropped)."""
    smtp: SmtpConfig | None = None
    """The mail server of email receivers (required when any receiver sends email)."""
    time_intervals: dict[IntervalName, TimeInterval] = {}
    """Named business hours, with holidays, that `teams.<team>.tickets_during` refers to."""
    routing: Routing = Routing()
    """Alertmanager's grouping and repeat timings."""
