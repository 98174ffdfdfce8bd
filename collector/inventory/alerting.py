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

    severity: Literal["critical", "warning"]
    long: Duration
    short: Duration
    budget_share: Annotated[float, Field(gt=0, le=1)]
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
    windows: tuple[BurnWindow, ...] = WORKBOOK_WINDOWS
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
    for_: Annotated[Duration, Field(alias="for")] = 1800.0
    severity: Severity = "warning"


class TrendAlerting(Model):
    enabled: bool = True
    lookback: Duration = 86400.0
    """Range the slope is fitted over (predict_linear); long enough to smooth daily cycles."""
    margin: Annotated[float, Field(gt=0, lt=1)] = 0.2
    """Only warn when the KPI is already within this share of its target (the current-level guard)."""
    for_: Annotated[Duration, Field(alias="for")] = 3600.0
    severity: Severity = "warning"


class HealthAlerting(Model):
    source_down_for: Duration = 300.0
    stale_intervals: Annotated[float, Field(ge=1)] = 3.0
    stale_min: Duration = 300.0
    """Never call data stale sooner than this, however short the sampling interval."""
    absent_for: Duration = 3600.0
    severity: Severity = "warning"
    absent_severity: Severity = "info"
    events_refused_ratio: Annotated[float, Field(gt=0, lt=1)] = 0.05
    """Warn when a TMF events listener refuses more than this share of what it receives..."""
    events_window: Duration = 900.0
    """...over this window (and for `source_down_for`)."""
    events_commit_slow: Annotated[Duration, Field(gt=0, lt=10)] = 1.0
    """Warn when the p99 of a TMF events listener's group commits over `events_window` is longer
    (for `source_down_for`): each event of a batch waits that long for its 201. Under 10 s, the
    last finite bucket of `fab_events_commit_duration_seconds`."""


class ProcessAlerting(Model):
    max_open_age: Duration | None = None
    """Warn when the oldest open item is older (default: the last cycle-time bucket)."""


class WebhookReceiver(Model):
    url: Annotated[str, StringConstraints(pattern=r"^https?://"), AfterValidator(unambiguous_url)] = Field(repr=False)
    """Where Alertmanager posts the alerts. It goes into the generated alertmanager.yml as it is
    (Alertmanager 0.25 reads no URL file), and nowhere else: never in a log, a problem or a repr,
    where its userinfo and credential-like query values are masked. A token is better in
    `credentials_file`."""
    credentials_file: str | None = None
    """Bearer token file (Alertmanager http_config.authorization.credentials_file)."""
    send_resolved: bool = True
    max_alerts: Annotated[int, Field(ge=0)] = 0


class EmailReceiver(Model):
    to: str
    send_resolved: bool = False


class PagerDutyReceiver(Model):
    routing_key_file: str | None = None
    send_resolved: bool = True

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
    api_key_file: str | None = None
    api_url: Annotated[str, StringConstraints(pattern=r"^https?://")] | None = None
    responders: tuple[str, ...] = ()
    """Opsgenie team names to notify."""
    send_resolved: bool = True

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

    webhook: WebhookReceiver | None = None
    email: EmailReceiver | None = None
    pagerduty: PagerDutyReceiver | None = None
    opsgenie: OpsgenieReceiver | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> Receiver:
        if not any((self.webhook, self.email, self.pagerduty, self.opsgenie)):
            raise ValueError("a receiver needs at least one of webhook, email, pagerduty, opsgenie")
        return self


class TeamAlerting(Model):
    page: Receiver
    """Critical alerts: wake someone up."""
    ticket: Receiver
    """Warnings: handle during working hours."""
    info: Receiver | None = None
    """Info alerts (default: the ticket receiver)."""
    tickets_during: IntervalName | None = None
    """Notify warnings and info only within this time interval (and not on its holidays)."""


class TimeInterval(Model):
    timezone: TimeZoneName = "UTC"
    weekdays: tuple[str, ...] = ("monday:friday",)
    hours: tuple[str, ...] = ("08:00-18:00",)
    holidays: tuple[dt.date, ...] = ()

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
    smarthost: Annotated[str, StringConstraints(pattern=r"^[^:\s]+:\d+$")]
    from_: Annotated[str, Field(alias="from")]
    auth_username: str | None = None
    auth_password_file: str | None = None
    require_tls: bool = True

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
    group_wait: Duration = 30.0
    group_interval: Duration = 300.0
    repeat_interval: Duration = 4 * 3600.0
    page_repeat_interval: Duration = 3600.0


class AlertingConfig(Model):
    grafana_url: Annotated[str, StringConstraints(pattern=r"^https?://")] = "http://127.0.0.1:3000"
    runbook_url: Annotated[str, StringConstraints(pattern=r"^https?://")] | None = None
    """Runbook for processes that name none (`processes.<name>.runbook` wins)."""
    slo: SloAlerting = SloAlerting()
    targets: TargetAlerting = TargetAlerting()
    trends: TrendAlerting = TrendAlerting()
    health: HealthAlerting = HealthAlerting()
    processes: dict[str, ProcessAlerting] = {}
    teams: dict[str, TeamAlerting] = {}
    default: Receiver | None = None
    """Alerts no team route takes (none by default: they are dropped)."""
    smtp: SmtpConfig | None = None
    time_intervals: dict[IntervalName, TimeInterval] = {}
    routing: Routing = Routing()
