"""Annotations: links and texts, plus Python twins of Prometheus' `humanize*` template functions.

The twins let the generated promtool tests state the exact annotation an alert must carry, and
let static targets read the same way as the templated values next to them.
"""

from __future__ import annotations

import math

from collector.inventory.models import Process
from collector.naming import OVERVIEW_UID, process_uid

_BIG = ("", "k", "M", "G", "T", "P", "E", "Z", "Y")
_SMALL = ("", "m", "u", "n", "p", "f", "a", "z", "y")
FORMATS = {"ratio": "humanizePercentage", "sla": "humanizePercentage", "duration": "humanizeDuration"}
"""How each KPI kind's value reads in a description (anything else: humanize)."""


def runbook_url(process: Process, alertname: str, fallback: str | None) -> str:
    """Return the runbook link: the process's runbook (or the fallback) anchored at the alert."""
    base = process.runbook or fallback or ""
    return f"{base}#{alertname.lower()}"


def dashboard_url(grafana_url: str, process: str | None) -> str:
    """Return the Grafana link: the process dashboard, or the NOC overview."""
    uid = process_uid(process) if process else OVERVIEW_UID
    link = f"{grafana_url.rstrip('/')}/d/{uid}"
    return link if process is None else f"{link}?var-process={process}"


def humanize(value: float) -> str:
    """Mirror Prometheus' `humanize` (SI prefixes, four significant digits)."""
    if value == 0 or math.isnan(value) or math.isinf(value):
        return _g(value)
    prefixes, scaled = (_BIG, value) if abs(value) >= 1 else (_SMALL, value)
    index = 0
    if abs(value) >= 1:
        while abs(scaled) >= 1000 and index < len(prefixes) - 1:
            scaled, index = scaled / 1000, index + 1
    else:
        while abs(scaled) < 1 and index < len(prefixes) - 1:
            scaled, index = scaled * 1000, index + 1
    return f"{_g(scaled)}{prefixes[index]}"


def humanize_percentage(value: float) -> str:
    """Mirror Prometheus' `humanizePercentage`."""
    return f"{_g(value * 100)}%"


def humanize_duration(value: float) -> str:
    """Mirror Prometheus' `humanizeDuration` for durations of a second or more."""
    if abs(value) < 1:
        return f"{_g(value * 1000)}ms" if value else "0s"
    sign = "-" if value < 0 else ""
    seconds = int(abs(value))
    days, hours, minutes = seconds // 86400, seconds // 3600 % 24, seconds // 60 % 60
    secs = seconds % 60
    if days:
        return f"{sign}{days}d {hours}h {minutes}m {secs}s"
    if hours:
        return f"{sign}{hours}h {minutes}m {secs}s"
    if minutes:
        return f"{sign}{minutes}m {secs}s"
    return f"{sign}{_g(abs(value))}s"


def _g(value: float) -> str:
    text = f"{value:.4g}"
    return {"nan": "NaN", "inf": "+Inf", "-inf": "-Inf"}.get(text, text)


def render(kind: str, value: float, currency: str = "") -> str:
    """Format a KPI value of this kind as its description does."""
    function = FORMATS.get(kind, "humanize")
    if function == "humanizePercentage":
        return humanize_percentage(value)
    if function == "humanizeDuration":
        return humanize_duration(value)
    return humanize(value) + (f" {currency}" if kind == "cost" and currency else "")


def template(kind: str, currency: str = "") -> str:
    """Return the Go template printing `$value` the way `render` does."""
    suffix = f" {currency}" if kind == "cost" and currency else ""
    return f"{{{{ $value | {FORMATS.get(kind, 'humanize')} }}}}{suffix}"
