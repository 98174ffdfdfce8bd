"""Window sums: what each KPI window (`created:86400`, `completed:604800`, ...) holds, moved at each
sample by the rows entering at its head and leaving at its tail, and summed again in full every
`reconcile` (which also heals rows changed after they were counted).

Saved in the process's state: `windows` by key and `reconciled_at`.
"""

from typing import Any, Protocol

from collector.engine.sums import Groups, Sums, add, total
from collector.inventory.models import Process
from collector.kpis import windows_of

DEFAULT_LOOKBACK = 86400.0
"""How far back the first sample reads a process that has no KPI window."""

Range = tuple[str, float, float]
"""(edge, lo, hi): the rows whose edge time is in (lo, hi]."""


class RangeReader(Protocol):
    """Reads the group sums of one edge over a range (`edges.EdgeReader`)."""

    async def read(self, edge: str, lo: float, hi: float) -> Groups: ...


def window_lengths(kpi: object) -> list[float]:
    """The window of a KPI, in seconds, if it has one."""
    window = getattr(kpi, "window", None)
    return [window] if isinstance(window, float) else []


def longest_window(process: Process) -> float:
    """The longest KPI window of a process (the lookback of its first sample)."""
    return max([w for k in process.kpis.values() for w in window_lengths(k)], default=DEFAULT_LOOKBACK)


def reconcile_due(state: dict[str, Any], prev: float | None, now: float, reconcile: float) -> bool:
    """Whether the windows are summed again in full in this sample (the first one, or every `reconcile`)."""
    return prev is None or now - state.get("reconciled_at", 0.0) >= reconcile


def _needed(process: Process) -> list[tuple[str, str, float]]:
    """(key, edge, length) of every window the KPIs of a process read, sorted by key."""
    keys = sorted({key for kpi in process.kpis.values() for key in windows_of(kpi)})
    return [(key, key.split(":")[0], float(key.split(":")[1])) for key in keys]


def ranges(edges: list[str], process: Process, state: dict[str, Any], lo: float, prev: float | None,
           hi: float, due: bool) -> list[Range]:
    """Every range this sample reads: the entering rows, then each window's edges (the whole window
    when `due` or new)."""
    out = [(edge, lo, hi) for edge in edges]
    windows = state.get("windows", {})
    for key, edge, length in _needed(process):
        if due or key not in windows or prev is None:
            out.append((edge, hi - length, hi))
        else:
            out += [(edge, prev, hi), (edge, prev - length, hi - length)]
    return out


async def move_windows(reader: RangeReader, process: Process, state: dict[str, Any], prev: float | None,
                       hi: float, now: float, due: bool) -> None:
    """Move every window to end at `hi` (or sum it again when `due`); drop the windows no KPI reads."""
    windows: dict[str, Sums] = state.setdefault("windows", {})
    needed = _needed(process)
    for key, edge, length in needed:
        if due or key not in windows or prev is None:
            windows[key] = total(await reader.read(edge, hi - length, hi))
            continue
        add(windows[key], total(await reader.read(edge, prev, hi)))
        add(windows[key], total(await reader.read(edge, prev - length, hi - length)), sign=-1.0)
    for stale in set(windows) - {key for key, _, _ in needed}:
        del windows[stale]
    if due:
        state["reconciled_at"] = now
