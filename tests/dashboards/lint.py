"""The rules of Grafana's dashboard-linter, re-implemented (the linter cannot be built here)."""

import re
from collections.abc import Iterator
from typing import Any

from grafana_foundation_sdk.models import units

DATASOURCE = "${datasource}"
RATE_FUNCTIONS = ("rate", "irate", "increase")
COUNTER_SUFFIXES = ("_total", "_bucket", "_sum", "_count")
KNOWN_UNITS = {v for v in vars(units).values() if isinstance(v, str)}
CUSTOM_UNIT = re.compile(r"^(suffix|prefix|si|count):.+")
_RANGE = re.compile(r"\[([^\]]*)\]")
_METRIC = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{")
_CALL = re.compile(r"([a-zA-Z_]+)\s*$")


def panels(model: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Yield every panel that is not a row."""
    for panel in model["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def exprs(model: dict[str, Any]) -> Iterator[str]:
    """Yield every PromQL expression of the panels and annotations."""
    for panel in panels(model):
        for target in panel.get("targets", []):
            yield target["expr"]
    for annotation in model["annotations"]["list"]:
        yield annotation["expr"]


def enclosing_call(expr: str, index: int) -> str:
    """Return the function whose parentheses enclose `index` most closely ('' at top level)."""
    depth = 0
    for position in range(index - 1, -1, -1):
        char = expr[position]
        if char == ")":
            depth += 1
        elif char == "(":
            if depth == 0:
                match = _CALL.search(expr[:position])
                return match.group(1) if match else ""
            depth -= 1
    return ""


def check_datasource_variable(model: dict[str, Any]) -> list[str]:
    """template-datasource-rule: a `datasource` variable of type datasource for Prometheus."""
    found = [v for v in model["templating"]["list"] if v["name"] == "datasource"]
    if not found or found[0]["type"] != "datasource" or found[0]["query"] != "prometheus":
        return ["no `datasource` variable of type datasource querying prometheus"]
    return []


def check_job_instance(model: dict[str, Any]) -> list[str]:
    """template-job-rule, template-instance-rule: query variables on $datasource, multi, with All."""
    problems = []
    variables = {v["name"]: v for v in model["templating"]["list"]}
    for name in ("job", "instance"):
        variable = variables.get(name)
        if variable is None:
            problems.append(f"no `{name}` variable")
        elif variable["datasource"]["uid"] != DATASOURCE or not variable["multi"] or not variable["includeAll"]:
            problems.append(f"`{name}` must query $datasource, be multi-value and include All")
    return problems


def check_panel_datasources(model: dict[str, Any]) -> list[str]:
    """panel-datasource-rule and target datasource: everything queries `$datasource`."""
    problems = []
    for panel in panels(model):
        if panel.get("datasource", {}).get("uid") != DATASOURCE:
            problems.append(f"panel {panel['title']!r} does not use $datasource")
        problems += [f"a target of {panel['title']!r} does not use $datasource"
                     for t in panel.get("targets", []) if t.get("datasource", {}).get("uid") != DATASOURCE]
        if not panel.get("targets"):
            problems.append(f"panel {panel['title']!r} has no target")
    problems += [f"annotation {a['name']!r} does not use $datasource"
                 for a in model["annotations"]["list"] if a["datasource"]["uid"] != DATASOURCE]
    return problems


def check_titles(model: dict[str, Any]) -> list[str]:
    """panel-title-description-rule."""
    return [f"panel {panel.get('id')} lacks a title or description"
            for panel in panels(model) if not panel.get("title") or not panel.get("description")]


def check_units(model: dict[str, Any]) -> list[str]:
    """panel-units-rule: a known unit (or a custom suffix/prefix unit) on every panel."""
    problems = []
    for panel in panels(model):
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        if not unit or (unit not in KNOWN_UNITS and not CUSTOM_UNIT.match(unit)):
            problems.append(f"panel {panel['title']!r} has no valid unit ({unit!r})")
    return problems


FIXED_WINDOW = re.compile(r"fab_sla_(good|valid)_total\{[^}]*\}$")
"""The SLA counters of a burn rate, which is compared with the burn rates the alerts page at and so
is read over the same fixed window as they are (as the rule's exclusions allow)."""


def check_rate_intervals(expr: str) -> list[str]:
    """target-rate-interval-rule: every rate/irate/increase range is `$__rate_interval`, but for a
    burn rate's SLA counters (`FIXED_WINDOW`)."""
    problems = []
    for match in _RANGE.finditer(expr):
        if enclosing_call(expr, match.start()) not in RATE_FUNCTIONS or match.group(1) == "$__rate_interval":
            continue
        if not FIXED_WINDOW.search(expr[:match.start()]):
            problems.append(f"range [{match.group(1)}] instead of [$__rate_interval] in {expr}")
    return problems


def check_counters(expr: str) -> list[str]:
    """target-counter-agg-rule: counters (and histogram series) only under rate/irate/increase."""
    return [f"counter {m.group(1)} outside rate/increase in {expr}" for m in _METRIC.finditer(expr)
            if m.group(1).endswith(COUNTER_SUFFIXES) and enclosing_call(expr, m.start()) not in RATE_FUNCTIONS]


def check_ids(model: dict[str, Any]) -> list[str]:
    """Panel ids are unique and non-zero."""
    ids = [p.get("id") for p in model["panels"]]
    problems = [f"panel {p.get('title')!r} has id {p.get('id')!r}" for p in model["panels"] if not p.get("id")]
    if len(ids) != len(set(ids)):
        problems.append(f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}")
    return problems


def check_grid(model: dict[str, Any]) -> list[str]:
    """No two panels overlap and none leaves the 24-column grid."""
    boxes = [(p["title"], p["gridPos"]) for p in model["panels"]]
    problems = [f"panel {t!r} exceeds 24 columns" for t, g in boxes if g["x"] + g["w"] > 24]
    for index, (title, a) in enumerate(boxes):
        problems += [f"panels {title!r} and {other!r} overlap" for other, b in boxes[index + 1:] if _overlap(a, b)]
    return problems


def _overlap(a: dict[str, int], b: dict[str, int]) -> bool:
    apart_x = a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"]
    apart_y = a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"]
    return not (apart_x or apart_y)


def check_thresholds(model: dict[str, Any]) -> list[str]:
    """Thresholds start with a base step (value null) and then increase."""
    problems = []
    for panel in panels(model):
        steps = panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", [])
        values = [s["value"] for s in steps]
        if not steps or values[0] is not None or values[1:] != sorted(values[1:]):
            problems.append(f"panel {panel['title']!r} thresholds {values} lack a base step or are unordered")
    return problems


def link_targets(model: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (where, link) for dashboard links and panel data links."""
    for link in model.get("links", []):
        yield "dashboard", link
    for panel in panels(model):
        for link in panel.get("links", []) + panel["fieldConfig"]["defaults"].get("links", []):
            yield f"panel {panel['title']!r}", link


def check_links(model: dict[str, Any], uids: set[str], tags: set[str]) -> list[str]:
    """Every link points at a generated dashboard (by uid or tag) and keeps time and variables."""
    problems = []
    for where, link in link_targets(model):
        if link.get("type") == "dashboards":
            missing = set(link["tags"]) - tags
            problems += [f"{where}: no dashboard has tag {t!r}" for t in missing]
            continue
        match = re.match(r"^/d/([^/?]+)", link["url"])
        if match is None or match.group(1) not in uids:
            problems.append(f"{where}: link {link['url']!r} targets no generated dashboard")
        keeps = (link.get("keepTime") and link.get("includeVars")) or (
            "${__url_time_range}" in link["url"] and "${__all_variables}" in link["url"])
        if not keeps:
            problems.append(f"{where}: link {link['url']!r} drops the time range or the variables")
    return problems


def check_dashboard(model: dict[str, Any]) -> list[str]:
    """Conventions of the dashboard itself: not editable, tagged, uid within Grafana's 40 characters."""
    problems = []
    if model.get("editable") is not False:
        problems.append("dashboard is editable")
    if "fabwatch" not in model.get("tags", []):
        problems.append("dashboard lacks the fabwatch tag")
    if len(model["uid"]) > 40:
        problems.append(f"uid {model['uid']!r} is longer than 40 characters")
    return problems


def lint(model: dict[str, Any], uids: set[str], tags: set[str]) -> list[str]:
    """Return every problem of one dashboard."""
    problems = (check_datasource_variable(model) + check_job_instance(model) + check_panel_datasources(model)
                + check_titles(model) + check_units(model) + check_ids(model) + check_grid(model)
                + check_thresholds(model) + check_links(model, uids, tags) + check_dashboard(model))
    for expr in exprs(model):
        problems += check_rate_intervals(expr) + check_counters(expr)
    return problems
