"""Crontabs on the wall clock of a time zone, daylight saving time included (apscheduler 3's own
cron trigger skips or repeats runs at the changes). Imports nothing of fabwatch: the inventory's
models validate crontabs with it, below the scheduler that runs them."""

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger

_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def crontab_weekdays(field: str) -> str:
    """Translate a crontab weekday field (0 or 7 = Sunday) to names apscheduler 3 reads right.

    apscheduler 3.x numbers weekdays from Monday = 0, unlike cron; names are unambiguous.
    """
    if field == "*" or any(c.isalpha() for c in field):
        return field
    days: set[int] = set()
    for part in field.split(","):
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if span == "*":
            first, last = 0, 6
        elif "-" in span:
            first, last = (int(x) for x in span.split("-", 1))
        else:
            first = last = int(span)
            if step_text:
                last = 6
        if not (0 <= first <= 7 and 0 <= last <= 7 and first <= last and step > 0):
            raise ValueError(f"invalid weekday field {field!r}")
        days.update(day % 7 for day in range(first, last + 1, step))
    return ",".join(_WEEKDAYS[day] for day in sorted(days))


def cron_trigger(cron: str, timezone: ZoneInfo | None = None, jitter: float | None = None) -> "WallClockCron":
    """The trigger of a five-field crontab on the wall clock of `timezone` (UTC by default);
    ValueError for a field apscheduler cannot run."""
    return WallClockCron(cron, timezone or _UTC, jitter)


_UTC = ZoneInfo("UTC")
_STEP = timedelta(microseconds=1)


class WallClockCron(BaseTrigger):  # type: ignore[misc]  # apscheduler has no type hints
    """A crontab matched on the wall clock of a time zone, daylight saving time included.

    apscheduler 3's CronTrigger adds 24 hours to move a day, so across a change to summer time it
    skips the first run after it (the Monday, the 1st of April after the night of the change), and
    in the hour autumn repeats it answers the same time again and again, before `now`, which hangs
    its scheduler in a loop. Here the crontab runs in UTC, where every day has 24 hours, on the
    zone's wall clock read as if it were UTC, and each wall time found is placed in the zone: a
    time autumn repeats runs at both of its instants (a sample twice, rather than none for an
    hour), a time spring skips runs at the change (02:30 at 03:30 summer time).
    """

    __slots__ = ("_wall", "cron", "jitter", "timezone")

    def __init__(self, cron: str, timezone: ZoneInfo, jitter: float | None = None) -> None:
        minute, hour, day, month, weekday = cron.split()
        self._wall = CronTrigger(minute=minute, hour=hour, day=day, month=month,
                                 day_of_week=crontab_weekdays(weekday), timezone=_UTC)
        self.cron, self.timezone, self.jitter = cron, timezone, jitter

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        """The first fire time after `previous_fire_time` (or from `now`, with none), as CronTrigger
        does: a time before `now` is a run missed, which the scheduler judges by its grace time."""
        # in UTC: adding to a time of the repeated hour on its own wall clock drops its fold, an hour back
        start = now if previous_fire_time is None else min(now, previous_fire_time.astimezone(_UTC) + _STEP)
        at = start.timestamp()
        wall = self._wall_clock(start)
        near = self._offset_changes_near(start)
        if near:  # a wall time before start's may come after it: look back
            wall -= _AROUND
        found = self._wall.get_next_fire_time(None, wall)
        best: datetime | None = None
        for _ in range(_AROUND_FIRES):
            if found is None or (best is not None and found - wall > 2 * _AROUND):
                break
            for local in self._instants(found):
                if local.timestamp() >= at and (best is None or local.timestamp() < best.timestamp()):
                    best = local
            if best is not None and not near:
                break
            found = self._wall.get_next_fire_time(found, found + _STEP)
        return None if best is None else self._apply_jitter(best, self.jitter, now)  # type: ignore[no-any-return]

    def _instants(self, wall: datetime) -> list[datetime]:
        """The instants a wall time (in the UTC frame) stands for: two in the hour autumn repeats,
        one otherwise; in the hour spring skips, the instant after the change (fold 0's offset)."""
        naive = wall.replace(tzinfo=None)
        real = [local for fold in (0, 1) if (local := naive.replace(tzinfo=self.timezone, fold=fold))
                .astimezone(_UTC).astimezone(self.timezone).replace(tzinfo=None) == naive]
        return real or [naive.replace(tzinfo=self.timezone)]

    def _wall_clock(self, moment: datetime) -> datetime:
        """The zone's wall clock at `moment`, as a UTC time (the UTC trigger's frame)."""
        return moment.astimezone(self.timezone).replace(tzinfo=_UTC, fold=0)

    def _offset_changes_near(self, moment: datetime) -> bool:
        offsets = {(moment + delta).astimezone(self.timezone).utcoffset() for delta in (-_AROUND, _AROUND)}
        return len(offsets | {moment.astimezone(self.timezone).utcoffset()}) > 1

    def __str__(self) -> str:
        return f"cron[{self.cron}, {self.timezone}]"

    def __repr__(self) -> str:
        return f"WallClockCron({self.cron!r}, {self.timezone!r}, jitter={self.jitter!r})"


_AROUND = timedelta(hours=3)
"""How near a change of UTC offset (daylight saving time moves clocks by an hour, at most two) the
trigger looks at the wall times on both sides of it."""
_AROUND_FIRES = 1000
"""Wall times a trigger reads near such a change, at most (a crontab of every minute: 720)."""
