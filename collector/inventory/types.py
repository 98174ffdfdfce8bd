"""Reusable annotated types for the inventory models."""

from datetime import UTC, datetime
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator

from collector.inventory.base import published_as


def _known_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {value!r}") from exc
    return value


TimeZoneName = Annotated[str, AfterValidator(_known_zone), published_as("TimeZone")]
"""An IANA time zone name such as Europe/Berlin."""


def _five_fields(value: str) -> str:
    if len(value.split()) != 5:
        raise ValueError(f"cron needs five fields (minute hour day month weekday), got {value!r}")
    from collector.inventory.cron import cron_trigger  # what the scheduler will build from it

    try:
        trigger = cron_trigger(value)
    except ValueError as exc:
        raise ValueError(f"bad cron {value!r}: {exc}") from None
    if trigger.get_next_fire_time(None, datetime(2026, 1, 1, tzinfo=UTC)) is None:
        # `0 0 31 2 *`: the source would be sampled at start and never again
        raise ValueError(f"cron {value!r} never fires (no such date)")
    return value


CronExpression = Annotated[str, AfterValidator(_five_fields), published_as("CronExpression")]
"""A five-field cron expression such as `*/5 * * * *`."""


TimeKind = Literal["epoch_s", "epoch_ms", "timestamptz", "timestamp", "date", "iso_text"]
"""How a time column holds its times (see `collector.timetypes`)."""
