"""The monthly summary written out: self-contained HTML with inline SVG charts, its PDF, Markdown,
JSON, CSV.

Rendering is pure (a `Report` in, text out); `write` puts the files in a directory. HTML and
Markdown come from the Jinja2 templates in `reports/templates/`; the HTML links nothing outside
itself (styles and charts inline), so it can be mailed, printed or opened offline. The PDF is that
HTML laid out on A4 pages by its print CSS (reports/pdf.py).
"""

import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from reports.summary import KpiSummary, ProcessSummary, Report, format_change, format_target, format_value

FORMATS = ("html", "pdf", "md", "json", "csv")
DEFAULT_FORMATS = ("html", "md", "json", "csv")
"""Without the PDF: laying it out takes ten times as long as the four others together (docs/reports.md)."""
CHART_WIDTH, CHART_HEIGHT, CHART_PAD = 360, 130, 28


@dataclass(frozen=True)
class Chart:
    """Where a KPI's 12-month trend, its target and its forecast sit in an SVG of fixed size."""

    kpi: str
    title: str
    width: int
    height: int
    points: list[tuple[float, float, str, str]]
    """(x, y, month, value as text) of each month with a value."""
    line: str
    """The SVG polyline's points."""
    targets: list[tuple[float, str]]
    """(y, text) of each target bound."""
    forecast: tuple[float, float, float, float, str] | None
    """(x, y, y of the interval's low end, y of its high end, text)."""
    months: list[tuple[float, str]]
    """(x, label) of the month ticks."""
    low: str
    high: str


@cache  # compiling the templates costs more than rendering them: once a process
def _environment() -> Environment:
    env = Environment(loader=PackageLoader("reports", "templates"), autoescape=select_autoescape(["html", "html.j2"]),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["value"] = format_value
    env.filters["change"] = format_change
    env.globals["target"] = format_target
    return env


def chart(kpi: KpiSummary, currency: str = "") -> Chart | None:
    """The trend chart of a KPI with at least two monthly values, else None."""
    known = [(i, month, v) for i, (month, v) in enumerate(kpi.trend) if v is not None]
    if len(known) < 2:
        return None
    values = [v for _, _, v in known] + [b for b in (kpi.target_min, kpi.target_max) if b is not None]
    if kpi.forecast is not None:
        values += [kpi.forecast.low, kpi.forecast.high]
    low, high = min(values), max(values)
    if high == low:
        high, low = high + 1, low - 1
    slots = len(kpi.trend) + 1  # the months, then the forecast

    def x(i: float) -> float:
        return round(CHART_PAD + i * (CHART_WIDTH - 2 * CHART_PAD) / (slots - 1), 1)

    def y(v: float) -> float:
        return round(CHART_HEIGHT - CHART_PAD + (v - low) / (high - low) * (2 * CHART_PAD - CHART_HEIGHT), 1)

    points = [(x(i), y(v), month, format_value(v, kpi.unit, currency)) for i, month, v in known]
    targets = [(y(b), f"target {format_value(b, kpi.unit, currency)}")
               for b in (kpi.target_min, kpi.target_max) if b is not None]
    fc = kpi.forecast
    forecast = None if fc is None else (
        x(len(kpi.trend)), y(fc.value), y(fc.low), y(fc.high),
        f"forecast {fc.month}: {format_value(fc.value, kpi.unit, currency)} "
        f"({format_value(fc.low, kpi.unit, currency)} to {format_value(fc.high, kpi.unit, currency)})")
    months = [(x(i), month[2:]) for i, (month, _) in enumerate(kpi.trend) if i % 3 == 2]
    return Chart(kpi.kpi, kpi.title, CHART_WIDTH, CHART_HEIGHT, points,
                 " ".join(f"{px},{py}" for px, py, _, _ in points), targets, forecast, months,
                 format_value(low, kpi.unit, currency), format_value(high, kpi.unit, currency))


def charts(process: ProcessSummary, currency: str = "") -> list[Chart]:
    """The charts of a process: one per KPI with a target and a trend."""
    found = [chart(k, currency) for k in process.kpis if k.target_min is not None or k.target_max is not None]
    return [c for c in found if c is not None]


def render_html(report: Report, generated: datetime | None = None) -> str:
    """The report as one self-contained HTML page; `generated` (when it was written) shows under the
    title and in the printed pages' footer."""
    template = _environment().get_template("report.html.j2")
    return template.render(report=report, charts={p.name: charts(p, report.currency) for p in report.processes},
                           generated=None if generated is None else generated.strftime("%Y-%m-%d %H:%M %Z"))


def render_markdown(report: Report) -> str:
    """The report as Markdown (chat, wikis)."""
    return _environment().get_template("report.md.j2").render(report=report)


def as_dict(report: Report) -> dict[str, Any]:
    """Every figure of the report, with the derived ones (status, changes) spelled out."""
    out = asdict(report)
    out["findings"] = [asdict(f) for f in report.findings]
    for process, data in zip(report.processes, out["processes"], strict=True):
        data["status"] = process.status
        data["complete"] = process.complete
        data["final"] = process.final
        data["needs_backfill"] = process.needs_backfill
        for kpi, kpi_data in zip(process.kpis, data["kpis"], strict=True):
            kpi_data["change_previous"] = kpi.change_previous
            kpi_data["change_year"] = kpi.change_year
    return out


def render_json(report: Report) -> str:
    return json.dumps(as_dict(report), indent=2, sort_keys=True) + "\n"


def figures(report: Report) -> Iterator[tuple[str, str, str, Any]]:
    """Every figure as (process, kpi, figure, value); process-wide figures have kpi ``""``."""
    for p in report.processes:
        yield from ((p.name, "", name, value) for name, value in _process_figures(p))
        for k in p.kpis:
            yield from ((p.name, k.kpi, name, value) for name, value in _kpi_figures(k))


def _process_figures(p: ProcessSummary) -> Iterator[tuple[str, Any]]:
    yield from (("status", p.status), ("days_rolled", p.days_rolled), ("days_in_month", p.days_in_month),
                ("created", p.created), ("completed", p.completed))
    yield from ((f"outcome:{name}", v) for name, v in p.by_outcome.items())
    yield from (("final", p.final), ("provisional_days", len(p.provisional_days)))
    yield from (("cost_total", p.cost_total), ("cost_partial", p.cost_partial))
    yield from ((f"cost:{name}", v) for name, v in p.cost_by_component.items())
    yield ("cost_per_item", p.cost_per_item)


def _kpi_figures(k: KpiSummary) -> Iterator[tuple[str, Any]]:
    yield from (("value", k.value), ("target_min", k.target_min), ("target_max", k.target_max), ("met", k.met),
                ("previous", k.previous), ("change_previous", k.change_previous), ("last_year", k.last_year),
                ("change_year", k.change_year), ("needs_backfill", k.needs_backfill), ("partial", k.partial))
    if k.kind == "sla":
        yield from (("good", k.good), ("valid", k.valid), ("attainment", k.attainment),
                    ("budget_used", k.budget_used))
    if k.forecast is not None:
        yield from (("forecast", k.forecast.value), ("forecast_low", k.forecast.low),
                    ("forecast_high", k.forecast.high), ("forecast_will_meet", k.forecast.will_meet))
    yield from ((f"trend:{month}", v) for month, v in k.trend)
    yield from ((f"worst_day:{day}", v) for day, v in k.worst_days)


def render_csv(report: Report) -> str:
    """Every figure, one per line: month, process, kpi, figure, value (empty: none)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["month", "process", "kpi", "figure", "value"])
    for process, kpi, name, value in figures(report):
        writer.writerow([report.month, process, kpi, name, "" if value is None else _csv_value(value)])
    return out.getvalue()


def _csv_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


RENDERERS = {"html": render_html, "md": render_markdown, "json": render_json, "csv": render_csv}
"""The text formats (the PDF is bytes, made from the HTML: `write`)."""


def write(report: Report, directory: str | Path, formats: Sequence[str] = DEFAULT_FORMATS,
          generated: datetime | None = None) -> list[Path]:
    """Write the report in each format as `fabwatch-report-<month>.<ext>`; return the paths. The HTML
    and the PDF say when they were `generated` (default: now, in the report's time zone)."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    html = render_html(report, generated or datetime.now(ZoneInfo(report.timezone)))
    paths = []
    for name in formats:
        path = folder / f"fabwatch-report-{report.month}.{name}"
        if name == "pdf":
            from reports.pdf import render_pdf  # here: WeasyPrint is loaded only when a PDF is asked for

            path.write_bytes(render_pdf(html))
        elif name == "html":
            path.write_text(html, encoding="utf-8")
        else:
            path.write_text(RENDERERS[name](report), encoding="utf-8")
        paths.append(path)
    return paths
