"""The report's formats, and the processes flagged for modification, over rollups made to show a
trend: a backlog growing towards its maximum and a cost per ticket missing its target for months."""

import csv
import io
import json
import math
from datetime import date
from html.parser import HTMLParser
from pathlib import Path

import pytest
from markupsafe import escape

from collector.inventory.load import load_inventory
from collector.inventory.models import Inventory
from collector.rollups import DayRollup
from reports.render import charts, render_csv, render_html, render_json, render_markdown, write
from reports.summary import Month, Report, summarize

EXAMPLE = Path(__file__).parents[2] / "examples" / "operator.yaml"
MONTH = Month(2026, 11)


def problem_rollups(months: int = 13) -> dict[date, DayRollup]:
    """Days of the `problem` process: the backlog grows by 15 a month from 300 (max 500: met in the
    report's month, missed within two months), 110 tickets a day are completed, 90 % of them in time,
    at 30 EUR each in labour plus the fixed platform cost accrued over the day."""
    out: dict[date, DayRollup] = {}
    for i in range(months):
        month = MONTH.shift(i - months + 1)
        for day in month.days():
            out[day] = {'["high","web","consumer"]': {
                "created": 100.0, "completed": 110.0, "outcome.resolved": 100.0, "outcome.cancelled": 10.0,
                "completed.sla_good_resolved_in_time": 99.0 + (day.day == 13),
                "completed.sla_valid_resolved_in_time": 110.0, "completed.ratio_reopen_rate": 2.0,
                "completed.dur_sum": 110 * 7200.0, **{f"completed.le_{b}": 110.0 for b in range(9)},
                "cost.labour": 110 * 30.0, "open": 300.0 + 15 * i + day.day / 10, "open.overdue": 10.0},
                "[]": {"cost.platform": 12000 * 86400 / (365.2425 / 12 * 86400)}}
    return out


@pytest.fixture(scope="module")
def inventory() -> Inventory:
    return load_inventory([EXAMPLE], {"FABWATCH_DEMO_DSN": "sqlite+aiosqlite:///unused.db"})


@pytest.fixture(scope="module")
def report(inventory: Inventory) -> Report:
    return summarize(inventory, {"problem": problem_rollups()}, MONTH)


def test_persistent_misses_and_deterioration_are_flagged_with_a_reason(report: Report) -> None:
    problem = next(p for p in report.processes if p.name == "problem")
    cost = next(k for k in problem.kpis if k.kpi == "cost_per_ticket")
    # 30 EUR a ticket in labour plus 12,000 EUR a month of platform over 110 tickets a day
    days = 30
    platform = 12000 * days * 86400 / (365.2425 / 12 * 86400)
    assert math.isclose(cost.value, (110 * 30.0 * days + platform) / (110 * days), rel_tol=1e-12)  # type: ignore[arg-type]
    reasons = {(f.kpi, f.reason): f.sentence for f in report.findings}
    assert set(reasons) == {("cost_per_ticket", "persistent"), ("backlog", "deteriorating")}, reasons
    assert "each of the last 3 months" in reasons[("cost_per_ticket", "persistent")]
    backlog = next(k for k in problem.kpis if k.kpi == "backlog")
    assert backlog.value == 300 + 15 * 12 + 3.0  # the open items at the end of November 30
    assert backlog.met
    assert backlog.forecast is not None
    assert abs(backlog.forecast.slope - 15.0) < 0.01  # months end on day 28 to 31: +2.8 to +3.1
    assert "will miss it within 2 months" in reasons[("backlog", "deteriorating")]
    sla = next(k for k in problem.kpis if k.kind == "sla")
    assert (sla.good, sla.valid) == (99 * 30 + 1, 110 * 30)
    assert math.isclose(sla.budget_used, (110 * 30 - 99 * 30 - 1) / (110 * 30 * 0.1), rel_tol=1e-9)  # type: ignore[arg-type]
    assert sla.worst_days[0][0] != "2026-11-13"  # the one better day is never among the worst


def test_html_is_self_contained_with_a_chart_per_targeted_kpi(report: Report) -> None:
    page = render_html(report)
    found = _Tags()
    found.feed(page)
    assert not found.external, found.external
    assert not {"script", "link", "img", "iframe", "object"} & set(found.tags)
    assert not [marker for marker in ("url(", "@import") if marker in page]  # nothing the CSS would fetch
    expected = sum(len(charts(p, report.currency)) for p in report.processes)
    assert expected >= 4
    assert found.tags.count("svg") == expected
    assert found.tags.count("polyline") == expected
    for process in report.processes:
        assert f'id="{process.name}"' in page
    for finding in report.findings:
        assert str(escape(finding.sentence)) in page  # autoescaped: "<= 500" is "&lt;= 500"


def test_json_and_csv_carry_every_figure(report: Report) -> None:
    data = json.loads(render_json(report))
    problem = next(p for p in data["processes"] if p["name"] == "problem")
    assert problem["status"] == "needs modification"
    rows = list(csv.DictReader(io.StringIO(render_csv(report))))
    by_key = {(r["process"], r["kpi"], r["figure"]): r["value"] for r in rows}
    for process in report.processes:
        assert by_key[(process.name, "", "created")] == repr(process.created)
        for kpi in process.kpis:
            assert by_key[(process.name, kpi.kpi, "value")] == ("" if kpi.value is None else repr(kpi.value))
            json_kpi = next(k for p in data["processes"] if p["name"] == process.name
                            for k in p["kpis"] if k["kpi"] == kpi.kpi)
            assert json_kpi["value"] == kpi.value
            for month, value in kpi.trend:
                assert by_key[(process.name, kpi.kpi, f"trend:{month}")] == ("" if value is None else repr(value))
    assert all(float(v) == float(v) for v in by_key.values() if v not in ("", "true", "false") and
               v[0].isdigit())


def test_markdown_has_the_overview_and_the_findings(report: Report, inventory: Inventory) -> None:
    text = render_markdown(report)
    for process in inventory.processes.values():
        assert f"| {process.name} |" in text
    for finding in report.findings:
        assert finding.sentence in text


def test_write_puts_each_format_in_the_directory(report: Report, tmp_path: Path) -> None:
    paths = write(report, tmp_path / "out", ["html", "csv"])
    assert [p.name for p in paths] == ["fabwatch-report-2026-11.html", "fabwatch-report-2026-11.csv"]
    assert all(p.stat().st_size > 1000 for p in paths)


class _Tags(HTMLParser):
    """Every tag of a page, and every attribute that would load something from outside it."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.external: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "action") and value and not value.startswith("#"):
                self.external.append((tag, value))


def test_html_escapes_names_teams_and_descriptions(inventory: Inventory) -> None:
    """Text from the inventory is data: a name, team or description holding markup shows as text."""
    problem = inventory.processes["problem"]
    kpis = {name: kpi.model_copy(update={"description": 'late & "<i>odd</i>'}) for name, kpi in problem.kpis.items()}
    hostile = problem.model_copy(update={"name": "Problem <script>alert(1)</script>", "team": 'ops & "<b>night</b>',
                                         "kpis": kpis})
    changed = inventory.model_copy(update={"processes": {**inventory.processes, "problem": hostile}})
    page = render_html(summarize(changed, {"problem": problem_rollups()}, MONTH))
    parser = _Tags()
    parser.feed(page)
    assert not {"script", "b", "i"} & set(parser.tags)
    assert "Problem &lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "ops &amp; &#34;&lt;b&gt;night&lt;/b&gt;" in page
    assert "late &amp; &#34;&lt;i&gt;odd&lt;/i&gt;" in page
