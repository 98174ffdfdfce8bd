"""promtool unit tests generated with the rules: for every alert, series that fire it and series that must not.

Scenarios are written in evaluation steps (`slo.evaluation_interval`, which the cheap
long-window counts assume), so they hold for any configured windows.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from alerts.health import (
    ABSENT_ALERT,
    COMMIT_QUANTILE,
    COMMIT_SLOW_ALERT,
    DOWN_ALERT,
    KPI_ABSENT_ALERT,
    REFUSED_ALERT,
    REPORT_ALERT,
    SILENT_ALERT,
    STALE_ALERT,
    stale_after,
)
from alerts.model import Rule, RuleFile
from alerts.promql import number, selector
from alerts.slo import AT_RISK_ALERT, BURN_ALERT, GOOD, VALID, burn_pairs, sla_kpis
from alerts.targets import BREACH_ALERT, OPEN_AGE_ALERT, TREND_ALERT, bounds, max_open_age
from alerts.text import humanize, humanize_duration, humanize_percentage
from collector.health import COMMIT_BUCKETS
from collector.inventory.alerting import AlertingConfig
from collector.inventory.durations import format_duration
from collector.inventory.models import Inventory, SlaKpi
from collector.inventory.sources import TmfEventsSource

Doc = dict[str, Any]
JOB = {"job": "fabwatch"}
_FUNCTIONS: dict[str, Callable[[float], str]] = {
    "humanize": humanize, "humanizePercentage": humanize_percentage, "humanizeDuration": humanize_duration}
_TEMPLATE = re.compile(r"\{\{ \$(labels\.(\w+)|value(?: \| (\w+))?) \}\}")


class Steps:
    """Test time in evaluation steps."""

    def __init__(self, interval: float) -> None:
        self.interval = interval

    def of(self, seconds: float) -> int:
        return math.ceil(seconds / self.interval - 1e-9)

    def at(self, steps: int) -> str:
        return format_duration(steps * self.interval)


def expand(rule: Rule, value: float, labels: dict[str, str]) -> dict[str, str]:
    """Render a rule's annotations as Prometheus would for one alert."""
    def replace(match: re.Match[str]) -> str:
        if match.group(2):
            return labels[match.group(2)]
        return _FUNCTIONS[match.group(3) or "humanize"](value)
    return {key: _TEMPLATE.sub(replace, text) for key, text in rule.annotations.items()}


def expected(rule: Rule, value: float, extra: dict[str, str] | None = None) -> Doc:
    """Return one `exp_alerts` entry for a rule firing with this value."""
    labels = {**(extra or {}), **rule.labels}
    return {"exp_labels": labels, "exp_annotations": expand(rule, value, labels)}


def series(metric: str, labels: dict[str, str], values: Sequence[float] | str) -> Doc:
    text = values if isinstance(values, str) else " ".join(number(v) for v in values)
    return {"series": selector(metric, **labels, **JOB), "values": text}


def check(steps: Steps, at: int, alertname: str, alerts: Sequence[Doc] = ()) -> Doc:
    return {"eval_time": steps.at(at), "alertname": alertname, "exp_alerts": list(alerts)}


def group(name: str, steps: Steps, inputs: list[Doc], checks: list[Doc]) -> Doc:
    return {"name": name, "interval": format_duration(steps.interval), "input_series": inputs,
            "alert_rule_test": checks}


def find(rule_file: RuleFile, alertname: str, **labels: str) -> Rule | None:
    """Return the alerting rule with this name whose static labels include these."""
    for rule in rule_file.alerts():
        if rule.alert == alertname and all(rule.labels.get(k) == v for k, v in labels.items()):
            return rule
    return None


def process_tests(inventory: Inventory, name: str, rule_file: RuleFile) -> Doc:
    """Return the promtool test document of one process's rule file."""
    alerting = inventory.alerting
    steps = Steps(alerting.slo.evaluation_interval)
    process = inventory.processes[name]
    tests: list[Doc] = []
    for kpi_name, kpi in sla_kpis(process).items():
        tests += sla_tests(steps, rule_file, name, kpi_name, kpi, alerting)
    for bound in ("max", "min"):
        limits = [(kpi, limit) for kpi, b, limit in bounds(process) if b == bound]
        if limits:
            tests += breach_tests(steps, rule_file, name, bound, limits, alerting)
            tests += trend_tests(steps, rule_file, name, bound, [(k, v) for k, v in limits if v > 0], alerting)
    age = max_open_age(name, process, alerting)
    rule = find(rule_file, OPEN_AGE_ALERT, process=name)
    if age is not None and rule is not None:
        tests += open_age_tests(steps, rule, name, age, alerting)
    return {"evaluation_interval": format_duration(steps.interval), "tests": tests}


# --- SLA -----------------------------------------------------------------------------------

def sla_inputs(labels: dict[str, str], valid: Sequence[float], good: Sequence[float]) -> list[Doc]:
    return [series(VALID, labels, valid), series(GOOD, labels, good)]


def sla_tests(steps: Steps, rule_file: RuleFile, name: str, kpi_name: str, kpi: SlaKpi,
              alerting: AlertingConfig) -> list[Doc]:
    """Return the burn-rate and in-flight scenarios of one SLA KPI."""
    labels = {"process": name, "kpi": kpi_name}
    burns = [r for r in (find(rule_file, BURN_ALERT, severity=s, **labels) for s in ("critical", "warning")) if r]
    slo = alerting.slo
    settle = steps.of(2 * slo.base_window) + 10
    rate = 20.0
    ramp = [rate * i for i in range(2 * settle + 1)]
    tests = [
        group(f"{name}/{kpi_name}: every event bad pages and tickets", steps,
              sla_inputs(labels, ramp, [0.0] * len(ramp)),
              [check(steps, settle, BURN_ALERT, [expected(r, 1.0) for r in burns])]),
        group(f"{name}/{kpi_name}: every event good raises nothing", steps,
              sla_inputs(labels, ramp, ramp),
              [check(steps, at, BURN_ALERT) for at in (settle, 2 * settle)]),
        group(f"{name}/{kpi_name}: a steady error ratio within the budget (it meets the objective) raises nothing",
              steps, sla_inputs(labels, ramp, [valid * (1 - 0.9 * (1 - kpi.objective)) for valid in ramp]),
              [check(steps, at, BURN_ALERT) for at in (settle, 2 * settle)]),
    ]
    pairs = burn_pairs(kpi.window, kpi.objective, slo)
    least = min(p.min_events for p in pairs)
    least_bad = min(p.min_bad_events for p in pairs)
    if least >= 2:
        tests.append(_low_volume_test(steps, name, kpi_name, labels, max(3, least // 2)))
    if least_bad >= 2:
        tests.append(_low_volume_test(steps, name, kpi_name, labels, 2 * max(least, 3)))
    tests.append(_bursty_test(steps, name, kpi_name, labels, burns, max(least, least_bad, 1), settle))
    risk = find(rule_file, AT_RISK_ALERT, **labels)
    if risk is not None:
        tests += _at_risk_tests(steps, risk, name, kpi_name, labels, kpi.objective, alerting)
    return tests


def _stairs(events: Sequence[float], every: int) -> list[float]:
    """Return a counter that adds `events[i]` at step `(i + 1) * every` and holds in between."""
    values, total = [], 0.0
    for step in range((len(events) + 1) * every):
        if step and step % every == 0:
            total += events[step // every - 1]
        values.append(total)
    return values


def _low_volume_test(steps: Steps, name: str, kpi_name: str, labels: dict[str, str], count: int) -> Doc:
    """One late item among a handful (fewer than min_events, or fewer than min_bad_events bad ones)
    must neither page nor ticket: it is the third of `count` items, or the third from last."""
    late = 2 if count < 10 else count - 3
    valid = _stairs([1.0] * count, 10)
    good = _stairs([0.0 if i == late else 1.0 for i in range(count)], 10)
    first = (late + 1) * 10
    return group(f"{name}/{kpi_name}: one late item among {count} raises nothing (low volume)", steps,
                 sla_inputs(labels, valid, good),
                 [check(steps, at, BURN_ALERT) for at in (first + 2, first + 5, len(valid) - 1)])


def _bursty_test(steps: Steps, name: str, kpi_name: str, labels: dict[str, str], burns: list[Rule],
                 burst: int, settle: int) -> Doc:
    """Bad items arriving in bursts keep the alerts firing at every step: empty short windows don't reset them."""
    count = settle // 10 + 4
    valid = _stairs([float(burst)] * count, 10)
    first = len(valid) - 12
    return group(f"{name}/{kpi_name}: bursts of bad items, empty short windows in between: no flapping", steps,
                 sla_inputs(labels, valid, [0.0] * len(valid)),
                 [check(steps, at, BURN_ALERT, [expected(r, 1.0) for r in burns]) for at in range(first, first + 11)])


def _at_risk_tests(steps: Steps, rule: Rule, name: str, kpi_name: str, labels: dict[str, str],
                   objective: float, alerting: AlertingConfig) -> list[Doc]:
    """Overdue items beyond the budget fabwatch reports for the whole window page; a few, or many
    within an ample budget (a young Prometheus holding no history), do not."""
    guard = max(alerting.slo.min_events, 1)
    at = steps.of(alerting.slo.at_risk_for) + 5
    length = at + 6
    overdue = {"process": name, "priority": "high"}
    ample = math.ceil(100 * guard / (1 - objective))

    def scenario(late: float, valid: float, compliance: float) -> list[Doc]:
        return [series("fab_sla_window_valid", labels, [valid] * length),
                series("fab_kpi_value", labels, [compliance] * length),
                series("fab_overdue_items", overdue, [late] * length)]

    return [
        group(f"{name}/{kpi_name}: overdue items beyond the budget left page", steps,
              scenario(2.0 * guard, ample, objective),
              [check(steps, at, AT_RISK_ALERT, [expected(rule, 2.0 * guard)])]),
        group(f"{name}/{kpi_name}: a few overdue items raise nothing", steps, scenario(guard - 1.0, ample, objective),
              [check(steps, at, AT_RISK_ALERT)]),
        group(f"{name}/{kpi_name}: overdue items within the budget left over the window raise nothing", steps,
              scenario(2.0 * guard, ample, 1.0), [check(steps, at, AT_RISK_ALERT)]),
    ]


# --- targets ---------------------------------------------------------------------------------

def _kpi_inputs(name: str, bound: str, values: Mapping[str, tuple[float, Sequence[float]]]) -> list[Doc]:
    """Return value and target series for several KPIs: kpi -> (limit, values)."""
    docs = []
    for kpi, (limit, series_values) in values.items():
        labels = {"process": name, "kpi": kpi}
        docs += [series("fab_kpi_value", labels, series_values),
                 series("fab_kpi_target", {**labels, "bound": bound}, [limit] * len(series_values))]
    return docs


def _breach_rule(rule_file: RuleFile, name: str, kpi: str, bound: str) -> Rule | None:
    return next((r for r in rule_file.alerts() if r.alert == BREACH_ALERT and r.labels["kpi"] == kpi
                 and r.labels["process"] == name and f'bound="{bound}"' in r.expr), None)


def _beyond(limit: float, bound: str) -> float:
    if bound == "max":
        return limit * 2 if limit > 0 else limit + 1
    return limit / 2 if limit > 0 else limit - 1


def breach_tests(steps: Steps, rule_file: RuleFile, name: str, bound: str, limits: list[tuple[str, float]],
                 alerting: AlertingConfig) -> list[Doc]:
    """KPIs beyond their target for `for` fire; KPIs right on it do not."""
    at = steps.of(alerting.targets.for_) + 5
    length = at + 3
    bad = {kpi: (limit, [_beyond(limit, bound)] * length) for kpi, limit in limits}
    fired = [expected(rule, _beyond(limit, bound)) for kpi, limit in limits
             if (rule := _breach_rule(rule_file, name, kpi, bound)) is not None]
    on_target = {kpi: (limit, [limit] * length) for kpi, limit in limits}
    return [
        group(f"{name}: KPIs beyond their {bound} target fire", steps, _kpi_inputs(name, bound, bad),
              [check(steps, at, BREACH_ALERT, fired)]),
        group(f"{name}: KPIs on their {bound} target raise nothing", steps, _kpi_inputs(name, bound, on_target),
              [check(steps, at, BREACH_ALERT)]),
    ]


def seconds_to_month_end(at: float) -> float:
    """Mirror the rules' month-end horizon for a time in January 1970 (promtool tests start at 0)."""
    return 31 * 86400 - (at // 3600) * 3600 - (at % 3600 // 60) * 60


def predict_linear(values: Sequence[float], interval: float, at_step: int, horizon: float) -> float:
    """Mirror PromQL's predict_linear over the samples up to `at_step` (the lookback covers them all)."""
    n = sum_x = sum_y = sum_xy = sum_x2 = 0.0
    for step, value in enumerate(values[: at_step + 1]):
        x = (step - at_step) * interval
        n += 1.0
        sum_y += value
        sum_x += x
        sum_xy += x * value
        sum_x2 += x * x
    slope = (sum_xy - sum_x * sum_y / n) / (sum_x2 - sum_x * sum_x / n)
    intercept = sum_y / n - slope * sum_x / n
    return slope * horizon + intercept


def trend_tests(steps: Steps, rule_file: RuleFile, name: str, bound: str, limits: list[tuple[str, float]],
                alerting: AlertingConfig) -> list[Doc]:
    """KPIs near their target drifting towards it fire; flat ones or ones far from it do not."""
    rules = {kpi: rule for kpi, _ in limits
             if (rule := find(rule_file, TREND_ALERT, process=name, kpi=kpi)) is not None
             and f'bound="{bound}"' in rule.expr}
    if not rules:
        return []
    at = steps.of(alerting.trends.for_) + 5
    length = at + 3
    margin = alerting.trends.margin
    sign = 1.0 if bound == "max" else -1.0
    drifting, flat, far, fired = {}, {}, {}, []
    for kpi, limit in limits:
        if kpi not in rules:
            continue
        start = limit * (1 - sign * margin / 2)
        distant = limit * (1 - margin) / 2 if bound == "max" else limit * (1 + margin) * 2
        slope = sign * limit * margin / 4 / length
        drifting[kpi] = (limit, [start + slope * i for i in range(length)])
        flat[kpi] = (limit, [start] * length)
        far[kpi] = (limit, [distant + slope * i for i in range(length)])
        horizon = seconds_to_month_end(at * steps.interval)
        fired.append(expected(rules[kpi], predict_linear(drifting[kpi][1], steps.interval, at, horizon)))
    return [
        group(f"{name}: KPIs drifting towards their {bound} target fire", steps, _kpi_inputs(name, bound, drifting),
              [check(steps, at, TREND_ALERT, fired)]),
        group(f"{name}: KPIs flat near their {bound} target raise nothing", steps, _kpi_inputs(name, bound, flat),
              [check(steps, at, TREND_ALERT)]),
        group(f"{name}: KPIs drifting far from their {bound} target raise nothing (level guard)", steps,
              _kpi_inputs(name, bound, far), [check(steps, at, TREND_ALERT)]),
    ]


def open_age_tests(steps: Steps, rule: Rule, name: str, age: float, alerting: AlertingConfig) -> list[Doc]:
    at = steps.of(alerting.targets.for_) + 5
    labels = {"process": name}

    def scenario(value: float) -> list[Doc]:
        return [series("fab_oldest_open_item_age_seconds", labels, [value] * (at + 3))]

    return [
        group(f"{name}: an open item older than {format_duration(age)} fires", steps, scenario(age + 3600),
              [check(steps, at, OPEN_AGE_ALERT, [expected(rule, age + 3600)])]),
        group(f"{name}: young open items raise nothing", steps, scenario(age / 2), [check(steps, at, OPEN_AGE_ALERT)]),
    ]


# --- health ----------------------------------------------------------------------------------

def health_tests(inventory: Inventory, rule_file: RuleFile) -> Doc:
    """Return the promtool test document of the health rules."""
    health = inventory.alerting.health
    steps = Steps(inventory.alerting.slo.evaluation_interval)
    sources = sorted({p.records.source for p in inventory.processes.values()})
    at = steps.of(max(health.source_down_for, max(stale_after(inventory, s) for s in sources))) + 5
    length = at + 3
    every_kpi = [(name, kpi) for name, process in inventory.processes.items() for kpi in process.kpis]
    first_kpis = {(name, next(iter(p.kpis))) for name, p in inventory.processes.items() if p.kpis}
    absent_at = steps.of(health.absent_for) + 5

    def per_process(alert: str, value: float) -> list[Doc]:
        out = []
        for name, process in inventory.processes.items():
            rule = find(rule_file, alert, process=name)
            if rule is not None:
                out.append(expected(rule, value, {"source": process.records.source}))
        return out

    def sources_at(up: float, last: Callable[[int], float]) -> list[Doc]:
        return [doc for s in sources for doc in (
            series("fab_source_up", {"source": s}, [up] * length),
            series("fab_source_last_success_timestamp_seconds", {"source": s},
                   [last(i) for i in range(length)]))]

    def kpis(skip: set[tuple[str, str]]) -> list[Doc]:
        return [series("fab_kpi_value", {"process": p, "kpi": k}, f"1x{absent_at + 3}")
                for p, k in every_kpi if (p, k) not in skip]

    fresh = sources_at(1.0, lambda i: i * steps.interval)
    absent_kpis = [expected(r, 1.0) for p, k in sorted(first_kpis)
                   if (r := find(rule_file, KPI_ABSENT_ALERT, process=p, kpi=k)) is not None]
    tests = [
        group("sources sampled on time raise nothing", steps, fresh,
              [check(steps, at, alert) for alert in (DOWN_ALERT, ABSENT_ALERT, STALE_ALERT)]),
        group("a source failing every sample is down and stale", steps, sources_at(0.0, lambda i: 0.0),
              [check(steps, at, DOWN_ALERT, per_process(DOWN_ALERT, 0.0)),
               check(steps, at, STALE_ALERT, per_process(STALE_ALERT, at * steps.interval))]),
        group("no fabwatch exports the sources", steps, [],
              [check(steps, at, ABSENT_ALERT, [expected(find(rule_file, ABSENT_ALERT, process=p) or Rule(""), 1.0,
                                                        {"source": s.records.source})
                                               for p, s in inventory.processes.items()])]),
        group("every KPI exported raises nothing", steps, kpis(set()), [check(steps, absent_at, KPI_ABSENT_ALERT)]),
        group("a KPI with no value fires", steps, kpis(first_kpis),
              [check(steps, absent_at, KPI_ABSENT_ALERT, absent_kpis)]),
        *_refused_tests(inventory, rule_file, steps),
        *_silent_tests(inventory, rule_file, steps),
        *_commit_tests(inventory, rule_file, steps),
        *report_tests(inventory, rule_file, steps),
    ]
    return {"evaluation_interval": format_duration(steps.interval), "tests": tests}


def _silent_tests(inventory: Inventory, rule_file: RuleFile, steps: Steps) -> list[Doc]:
    """A listener getting events raises nothing; one whose last event is older than its source's
    `silent_after` fires, and not a step before."""
    tests: list[Doc] = []
    for name, process in inventory.processes.items():
        rule = find(rule_file, SILENT_ALERT, process=name)
        source = inventory.sources[process.records.source]
        if rule is None or not isinstance(source, TmfEventsSource) or source.silent_after is None:
            continue
        labels = {"source": process.records.source}
        before, at = steps.of(source.silent_after) - 1, steps.of(source.silent_after) + 1
        metric = "fab_events_last_received_timestamp_seconds"
        tests += [
            group(f"{name}: a listener receiving events raises nothing", steps,
                  [series(metric, labels, f"0+{number(steps.interval)}x{at + 3}")], [check(steps, at, SILENT_ALERT)]),
            group(f"{name}: a listener silent for longer than silent_after fires", steps,
                  [series(metric, labels, f"0x{at + 3}")],
                  [check(steps, before, SILENT_ALERT),
                   check(steps, at, SILENT_ALERT, [expected(rule, at * steps.interval, labels)])]),
        ]
    return tests


def _fed(inventory: Inventory, rule_file: RuleFile, alertname: str) -> dict[str, str]:
    """The processes that have this listener alert, with the source feeding each."""
    return {name: p.records.source for name, p in inventory.processes.items()
            if find(rule_file, alertname, process=name) is not None}


def _settled(inventory: Inventory, steps: Steps) -> int:
    """A step by which a listener alert on `events_window`, held for `source_down_for`, has fired."""
    health = inventory.alerting.health
    return steps.of(health.events_window + health.source_down_for) + 5


def _refused_tests(inventory: Inventory, rule_file: RuleFile, steps: Steps) -> list[Doc]:
    """A listener refusing a share under the threshold raises nothing; twice the threshold fires."""
    health = inventory.alerting.health
    fed = _fed(inventory, rule_file, REFUSED_ALERT)
    if not fed:
        return []
    at = _settled(inventory, steps)

    def received(share: float) -> list[Doc]:
        """1,000 events a step, of which `share` refused as invalidResource."""
        refused = round(1000 * share, 6)
        return [doc for source in sorted(set(fed.values())) for doc in (
            series("fab_events_received_total", {"source": source, "result": "accepted"},
                   f"0+{number(1000 - refused)}x{at + 3}"),
            series("fab_events_received_total", {"source": source, "result": "invalidResource"},
                   f"0+{number(refused)}x{at + 3}"))]

    ratio = health.events_refused_ratio
    firing = [expected(rule, 2 * ratio, {"source": source}) for name, source in fed.items()
              if (rule := find(rule_file, REFUSED_ALERT, process=name)) is not None]
    return [
        group("a listener refusing less than the threshold raises nothing", steps, received(ratio / 2),
              [check(steps, at, REFUSED_ALERT)]),
        group("a listener refusing twice the threshold fires", steps, received(2 * ratio),
              [check(steps, at, REFUSED_ALERT, firing)]),
    ]


def report_tests(inventory: Inventory, rule_file: RuleFile, steps: Steps,
                 failing: Sequence[float] | None = None) -> list[Doc]:
    """Reports delivered raise nothing; a report whose delivery keeps failing fires for every team once
    `report_failing_for` has passed, and not a step before. `failing`: the values of
    `fab_report_delivery_failed_attempts` to fire with (default: 1, 2, 3 ...), e.g. read from a real service."""
    rules = [rule for rule in rule_file.alerts() if rule.alert == REPORT_ALERT]
    if not rules:
        return []
    held = steps.of(inventory.alerting.health.report_failing_for)
    length = held + 3
    values = list(failing) if failing is not None else [float(i + 1) for i in range(length)]
    ones = (values + [values[-1]] * length)[:length]
    metric = "fab_report_delivery_failed_attempts"
    return [
        group("reports delivered raise nothing", steps, [series(metric, {}, [0.0] * length)],
              [check(steps, held + 1, REPORT_ALERT)]),
        group("a report whose delivery keeps failing fires for every team", steps, [series(metric, {}, ones)],
              [check(steps, held - 1, REPORT_ALERT),
               check(steps, held + 1, REPORT_ALERT, [expected(rule, ones[held + 1]) for rule in rules])]),
    ]


def _commit_tests(inventory: Inventory, rule_file: RuleFile, steps: Steps) -> list[Doc]:
    """A listener whose group commits all take under a millisecond raises nothing; one whose commits
    all fall in the first bucket above `events_commit_slow` fires with the quantile Prometheus
    interpolates in that bucket."""
    health = inventory.alerting.health
    fed = _fed(inventory, rule_file, COMMIT_SLOW_ALERT)
    if not fed:
        return []
    at = _settled(inventory, steps)
    bounds = (*COMMIT_BUCKETS, math.inf)
    slow = bisect.bisect_left(COMMIT_BUCKETS, health.events_commit_slow) + 1  # its lower bound >= the threshold

    def commits(bucket: int) -> list[Doc]:
        """Ten commits a step, all in `bucket` (cumulative: counted in every bucket from it on)."""
        return [series("fab_events_commit_duration_seconds_bucket",
                       {"source": source, "le": "+Inf" if bound == math.inf else number(bound)},
                       f"0+{10 if index >= bucket else 0}x{at + 3}")
                for source in sorted(set(fed.values())) for index, bound in enumerate(bounds)]

    upper = bounds[slow]
    quantile = COMMIT_BUCKETS[-1] if upper == math.inf else (
        bounds[slow - 1] + (upper - bounds[slow - 1]) * COMMIT_QUANTILE)
    firing = [expected(rule, quantile, {"source": source}) for name, source in fed.items()
              if (rule := find(rule_file, COMMIT_SLOW_ALERT, process=name)) is not None]
    return [
        group("a listener committing in under a millisecond raises nothing", steps, commits(0),
              [check(steps, at, COMMIT_SLOW_ALERT)]),
        group("a listener committing slower than events_commit_slow fires", steps, commits(slow),
              [check(steps, at, COMMIT_SLOW_ALERT, firing)]),
    ]
