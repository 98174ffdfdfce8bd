"""Small PromQL builders shared by the rule generators."""

from __future__ import annotations

import json

from collector.inventory.durations import format_duration

SECONDS_TO_MONTH_END = ("scalar((days_in_month() - day_of_month()) * 86400 + 86400"
                        " - hour() * 3600 - minute() * 60)")
"""Seconds left in the calendar month (UTC: PromQL time functions know no other zone)."""


def selector(metric: str, **labels: str) -> str:
    """Return `metric{a="x", b="y"}` with the labels in the given order."""
    matchers = ", ".join(f"{name}={json.dumps(value)}" for name, value in labels.items())
    return f"{metric}{{{matchers}}}" if matchers else metric


def number(value: float) -> str:
    """Return a number as PromQL should read it: short, without float noise (0.1 not 0.09999...)."""
    text = format(value, ".10g")
    return text if "e" not in text else format(value, "f").rstrip("0").rstrip(".")


def window(seconds: float) -> str:
    """Return a range duration (`5m`, `1d`) as written in selectors and rule names."""
    return format_duration(seconds)


def indent(text: str, spaces: int = 2) -> str:
    """Indent every line of a multi-line expression."""
    pad = " " * spaces
    return "\n".join(pad + line if line else line for line in text.splitlines())
