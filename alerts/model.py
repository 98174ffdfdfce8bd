"""What the generators return: rules, rule groups and rule files as plain dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from collector.inventory.durations import format_duration


@dataclass(frozen=True)
class Rule:
    """A recording rule (`record`) or an alerting rule (`alert`)."""

    expr: str
    record: str | None = None
    alert: str | None = None
    for_: float | None = None
    keep_firing_for: float | None = None
    """Keep an alert firing this long after its expression stops returning it (Prometheus >= 2.42)."""
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the rule as Prometheus reads it."""
        out: dict[str, Any] = {"record": self.record} if self.record else {"alert": self.alert}
        out["expr"] = self.expr
        if self.for_:
            out["for"] = format_duration(self.for_)
        if self.keep_firing_for:
            out["keep_firing_for"] = format_duration(self.keep_firing_for)
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True)
class RuleGroup:
    name: str
    rules: tuple[Rule, ...]
    interval: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the group as Prometheus reads it."""
        out: dict[str, Any] = {"name": self.name}
        if self.interval:
            out["interval"] = format_duration(self.interval)
        out["rules"] = [rule.to_dict() for rule in self.rules]
        return out


@dataclass(frozen=True)
class RuleFile:
    groups: tuple[RuleGroup, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return the file's document."""
        return {"groups": [group.to_dict() for group in self.groups if group.rules]}

    def alerts(self) -> tuple[Rule, ...]:
        """Return the alerting rules of every group."""
        return tuple(rule for group in self.groups for rule in group.rules if rule.alert)
