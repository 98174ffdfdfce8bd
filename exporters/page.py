"""The status page at `/`: one tile per process, server-rendered from the status view.

Jinja2 renders `templates/status.html` with autoescaping on (process names, teams and links are
the inventory's text), and links only http and https URLs (`status.safe_link`). The page needs no
JavaScript: it reloads itself (`<meta http-equiv=refresh>`) at the pace of the fastest source,
and its trend lines are inline SVG computed here. The HTML is rendered once per change of the
view, whatever the number of screens showing it.
"""

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import jinja2
from aiohttp import web

from collector.inventory.models import Inventory
from exporters.api import BOARD
from exporters.schema import STATES, KpiStatus, ProcessStatus, SloStatus, SourceStatus, Target, TrendPoint

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
KEY_KINDS = ("sla", "backlog", "overdue", "cost")
"""The KPIs a tile always shows; the others fold under "more KPIs" unless at risk or breached."""
ICONS = {"ok": "✓", "at_risk": "▲", "breached": "✕", "no_data": "?"}
WORDS = {"ok": "OK", "at_risk": "At risk", "breached": "Breached", "no_data": "No data"}
SPARK_W, SPARK_H = 100, 24
REFRESH_MIN, REFRESH_MAX = 5, 60
_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                          undefined=jinja2.StrictUndefined)


@dataclass(frozen=True)
class KpiRow:
    name: str
    state: str
    value: str
    target: str
    trend: str
    budget: str


@dataclass(frozen=True)
class Tile:
    name: str
    title: str
    etom: str
    team: str
    state: str
    runbook: str | None
    dashboard: str | None
    key_kpis: list[KpiRow]
    other_kpis: list[KpiRow]
    source_up: bool
    source_text: str


def format_value(kind: str, value: float | None, currency: str) -> str:
    """A KPI value as a person reads it: shares in %, durations in s/min/h/d, costs in currency."""
    if value is None:
        return "-"
    if kind == "sla":  # objectives sit close to 100 %: 89.98 % is not 90.0 %
        return f"{math.floor(value * 10000) / 100:.2f} %"
    if kind == "ratio":
        return f"{value * 100:.1f} %"
    if kind == "duration":
        return format_seconds(value)
    if kind == "cost":
        return f"{value:,.2f} {currency}"
    if kind in ("volume", "backlog", "overdue"):
        return f"{value:,.0f}"
    return f"{value:,.4g}"


def format_seconds(seconds: float) -> str:
    """Seconds in the largest unit that keeps them readable."""
    for unit, size, limit in (("s", 1, 120), ("min", 60, 7200), ("h", 3600, 172800)):
        if seconds < limit:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds / 86400:.3g} d"


def format_target(kind: str, target: Target | None, currency: str) -> str:
    """The target as `≤ max`, `≥ min` or `min - max`."""
    if target is None:
        return ""
    low = format_value(kind, target.min, currency) if target.min is not None else None
    high = format_value(kind, target.max, currency) if target.max is not None else None
    if low and high:
        return f"{low} - {high}"
    return f"≥ {low}" if low else f"≤ {high}"


def sparkline(points: Sequence[TrendPoint], width: int = SPARK_W, height: int = SPARK_H) -> str:
    """The `points` of an SVG polyline drawing the values (empty under two points)."""
    if len(points) < 2:
        return ""
    values = [p.value for p in points]
    low, high = min(values), max(values)
    span = high - low
    step = width / (len(values) - 1)
    pad = 1.5
    coords = []
    for i, value in enumerate(values):
        y = height / 2 if span == 0 else pad + (height - 2 * pad) * (1 - (value - low) / span)
        coords.append(f"{i * step:.1f},{y:.1f}")
    return " ".join(coords)


def budget_text(slo: SloStatus) -> str:
    """One line on an SLA's error budget and its fastest burn."""
    budget = slo.budget
    if budget.remaining_ratio is None:
        return f"error budget over {slo.objective.window}: no valid event yet"
    burns = [rate.long_rate for rate in slo.burn_rates if rate.long_rate is not None]
    text = (f"budget left {budget.remaining_ratio * 100:.1f} % ({budget.remaining:,.0f} of {budget.total:,.0f} bad "
            f"items over {slo.objective.window})")
    return text + (f", burn {max(burns):.1f}x (fastest alert window)" if burns else "")


def source_text(source: SourceStatus) -> str:
    """`name: up`, `name: down (reason)` or `name: not sampled yet`."""
    if not source.sampled:
        return f"{source.name}: not sampled yet"
    return f"{source.name}: up" if source.up else f"{source.name}: down ({source.last_error})"


def kpi_row(kpi: KpiStatus, slos: dict[str, SloStatus], currency: str) -> KpiRow:
    slo = slos.get(kpi.kpi)
    return KpiRow(name=kpi.kpi, state=kpi.state, value=format_value(kpi.kind, kpi.value, currency),
                  target=format_target(kpi.kind, kpi.target, currency), trend=sparkline(kpi.trend),
                  budget=budget_text(slo) if slo else "")


def tile(status: ProcessStatus, currency: str) -> Tile:
    """A process's tile: the key KPIs first, and any other KPI that is at risk or breached."""
    slos = {slo.labels["kpi"]: slo for slo in status.slos}
    key: list[KpiRow] = []
    other: list[KpiRow] = []
    for kpi in status.kpis:
        shown = kpi.kind in KEY_KINDS or kpi.state in ("at_risk", "breached")
        (key if shown else other).append(kpi_row(kpi, slos, currency))
    return Tile(name=status.name, title=status.title, etom=status.etom, team=status.team, state=status.state,
                runbook=status.runbook, dashboard=status.dashboard, key_kpis=key, other_kpis=other,
                source_up=status.source.up, source_text=source_text(status.source))


def refresh_seconds(inventory: Inventory) -> int:
    """Reload at the pace of the fastest source's sampling, within 5..60 s."""
    intervals = [source.interval for source in inventory.sources.values() if source.cron is None]
    return int(min(REFRESH_MAX, max(REFRESH_MIN, min(intervals, default=REFRESH_MAX))))


def render(inventory: Inventory, statuses: Sequence[ProcessStatus], sources: Sequence[SourceStatus]) -> str:
    """Render the page."""
    currency = inventory.service.currency
    newest = max((s.last_success for s in sources if s.last_success is not None), default=None)
    zone = ZoneInfo(inventory.service.timezone)
    as_of = dt.datetime.fromtimestamp(newest, zone) if newest is not None else None
    return _ENV.get_template("status.html").render(
        processes=[tile(status, currency) for status in statuses],
        sources=[{"name": s.name, "up": s.up, "text": source_text(s)} for s in sources],
        counts={state: sum(1 for s in statuses if s.state == state) for state in STATES},
        states=STATES[::-1], icons=ICONS, words=WORDS, refresh=refresh_seconds(inventory),
        now_iso=as_of.isoformat() if as_of else "",
        now_text=as_of.strftime("%Y-%m-%d %H:%M:%S %Z") if as_of else "never",
        spark_w=SPARK_W, spark_h=SPARK_H)


async def status_page(request: web.Request) -> web.Response:
    """Serve the status page, rendered once per change of the view."""
    board = request.app[BOARD]
    body = board.memo("page", lambda: render(board.inventory, list(board.processes().values()),
                                             board.sources()).encode())
    return web.Response(body=body, content_type="text/html", charset="utf-8", headers={"Cache-Control": "no-cache"})


def add_routes(app: web.Application) -> None:
    """Serve the page at / and its stylesheet under /static/."""
    app.router.add_get("/", status_page)
    app.router.add_static("/static/", STATIC_DIR)
