"""Costs of a process: fixed amounts accrued over time, monthly amounts booked by finance, and the
activity (per-item) costs booked at each completion at the rates of the day.

All of it lives in the process's saved state: `fixed` and `fixed_at` (kept when the mapping
changes), `booked` by component.
"""

from collections.abc import Callable, Mapping
from typing import Any

from collector.engine.sums import Sums
from collector.inventory.models import Process
from collector.kpis import fixed_cost, variable_cost

MonthlyLookup = Callable[[str, str, str, float], float | None]
"""(cost_csv source, process, component, now) -> the monthly amount booked, or None."""


def costed(processes: Mapping[str, Process], monthly: MonthlyLookup | None, now: float) -> dict[str, Process]:
    """The processes, with each `monthly_from` cost turned into this month's fixed amount (0 while
    finance has booked none), so accrual and cost per item treat it as `fixed_per_month`."""
    out: dict[str, Process] = {}
    for name, process in processes.items():
        out[name] = _with_monthly(name, process, monthly, now)
    return out


def _with_monthly(name: str, process: Process, monthly: MonthlyLookup | None, now: float) -> Process:
    wanted = {c: cost for c, cost in process.costs.items() if cost.monthly_from is not None}
    if not wanted:
        return process
    costs = dict(process.costs)
    for component, cost in wanted.items():
        amount = None if monthly is None else monthly(str(cost.monthly_from), name, component, now)
        costs[component] = cost.model_copy(update={"fixed_per_month": amount or 0.0})
    return process.model_copy(update={"costs": costs})


def accrue_fixed(process: Process, state: dict[str, Any], now: float) -> None:
    """Add the fixed costs accrued since the last sample."""
    since = state.get("fixed_at")
    accrued = state.setdefault("fixed", {})
    for name, cost in process.costs.items():
        if cost.fixed_per_month is not None:
            # a clock stepped back (NTP, a resumed VM) accrues nothing: a counter never goes down
            accrued[name] = accrued.get(name, 0.0) + (fixed_cost(cost, max(0.0, now - since)) if since else 0.0)
    state["fixed_at"] = now if since is None else max(since, now)


def booked(process: Process, state: dict[str, Any]) -> Sums:
    """The activity costs booked so far, by component. A state saved before they were booked one
    completion at a time starts from its all-time drivers at today's rates (the value it showed)."""
    if "booked" not in state:
        sums = state.get("completed_sums", {})
        state["booked"] = {name: variable_cost(cost, sums, name)
                           for name, cost in process.costs.items() if cost.fixed_per_month is None}
    found: Sums = state["booked"]
    return found


def book_completed(process: Process, into: Sums, completed: Sums) -> None:
    """Book the activity costs of items just completed, at the rates of now: a rate changed later
    leaves them be."""
    for name, cost in process.costs.items():
        if cost.fixed_per_month is None:
            into[name] = into.get(name, 0.0) + variable_cost(cost, completed, name)
