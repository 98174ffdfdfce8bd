"""Time columns of every common type: how to bind a watermark to one, and read one back as epoch seconds.

The engine keeps every time as epoch seconds (a float). Operators' tables keep them as
`timestamptz`, naive `timestamp`/`DATETIME` (in UTC or in local time), `date`, epoch seconds or
milliseconds, or ISO-8601 text. A `TimeColumn` says which, and:

- binds a watermark as the column's own type (`bind_type`), so that `column > :lo` compares like
  with like and uses the column's index: the column is never wrapped in a function in a `WHERE`;
- gives the column as epoch seconds in a `SELECT` (`epoch_sql`), for cycle times;
- turns a value read back (the oldest open item, a due time) into epoch seconds (`to_epoch`).

Naive wall times are read in the source's zone. A wall time the autumn change repeats is read as its
first instant (summer time), one the spring change skips as if the change had not happened yet
(Python's `fold=0`). In SQL the zone's offset is a `CASE` over its transitions between 1970 and 2050,
computed from the tz database, so no database needs its own time zone tables.

Discrete types (dates, milliseconds, text to the second) bind rounded so that each comparison keeps
its meaning exactly: `>` and `<=` bind the largest representable value at or below the watermark,
`<` and `>=` the smallest at or above it.
"""

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import BigInteger, ColumnElement, Date, DateTime, Double, String, case, cast, func, literal_column
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

from collector.inventory.types import TimeKind

Expr = ColumnElement[Any]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_JULIAN_EPOCH_MS = 210866760000000
"""The Julian day of 1970-01-01 00:00 UTC in milliseconds (SQLite's internal clock)."""
_ISO = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:([T ])(\d{2}:\d{2}(?::\d{2})?)(\.\d+)?)?\s*(Z|[+-]\d{2}:?\d{2})?$")


@dataclass(frozen=True)
class IsoFormat:
    """How an ISO-8601 text column writes its times, learned from one of its values."""

    separator: str = " "
    seconds: bool = True
    fraction: int = 0
    """Digits after the second (0 to 6)."""
    suffix: str = ""
    """"" (a wall time in the source's zone), "Z", or a fixed offset such as "+00:00"."""
    date_only: bool = False

    @property
    def offset(self) -> timedelta | None:
        """The fixed offset the suffix states, or None for a naive wall time."""
        if not self.suffix:
            return None
        if self.suffix == "Z":
            return timedelta(0)
        sign = -1 if self.suffix[0] == "-" else 1
        digits = self.suffix[1:].replace(":", "")
        return sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))

    def write(self, moment: datetime) -> str:
        """Write a (wall or offset) datetime the way the column does."""
        if self.date_only:
            return moment.strftime("%Y-%m-%d")
        text = moment.strftime(f"%Y-%m-%d{self.separator}%H:%M" + (":%S" if self.seconds else ""))
        if self.fraction:
            text += f".{moment.microsecond:06d}"[: self.fraction + 1]
        return text + self.suffix

    @property
    def step(self) -> float:
        """The smallest difference the format can write, in seconds."""
        if self.date_only:
            return 86400.0
        return 10.0 ** -self.fraction if self.seconds else 60.0


def learn_iso(value: str) -> IsoFormat | None:
    """The format of an ISO-8601 value, or None when the text is not one."""
    match = _ISO.match(value.strip())
    if not match:
        return None
    _day, sep, clock, frac, suffix = match.groups()
    if sep is None:
        return IsoFormat(date_only=True)
    return IsoFormat(separator=sep, seconds=clock.count(":") == 2, fraction=len(frac) - 1 if frac else 0,
                     suffix=suffix or "")


@dataclass(frozen=True)
class TimeColumn:
    """One mapped time column: its kind, the zone of its wall times, and for text its format."""

    kind: TimeKind
    zone: str = "UTC"
    iso: IsoFormat = field(default_factory=IsoFormat)
    end_of_day: bool = False
    """A date read as the end of its day (a due date: due by the end of that day), else its start."""
    found: str = ""
    """What the database said the column is, for `fabwatch check`."""
    integral: bool = False
    """Epoch seconds kept in an integer column: watermarks are bound as integers (a float bound would make
    PostgreSQL cast the column, and its index go unused)."""
    year: int = 0
    """The year the SQL is built around: zone changes from three years before to the year after are
    written out (a short CASE compiles and runs fast); 0 writes out 1970 to 2050."""

    @property
    def tz(self) -> tzinfo:
        return ZoneInfo(self.zone)

    @property
    def naive(self) -> bool:
        """Whether values are wall times in `zone` (else absolute instants)."""
        if self.kind in ("timestamp", "date"):
            return True
        return self.kind == "iso_text" and self.iso.offset is None

    @property
    def fixed_offset(self) -> bool:
        """Whether the zone's offset never changes in the years the SQL is built for."""
        years = (self.year - 3, self.year + 1) if self.year else (1970, 2050)
        return len(zone_segments(self.zone, *years)) == 1

    @property
    def step(self) -> float:
        """The resolution of a bound value, in seconds (0: continuous enough to bind exactly)."""
        steps = {"epoch_s": 1.0 if self.integral else 0.0, "epoch_ms": 0.001, "date": 86400.0,
                 "iso_text": self.iso.step}
        return steps.get(self.kind, 1e-6)

    def describe(self) -> str:
        """How `check` names it."""
        parts: list[str] = [self.kind]
        if self.naive:
            parts.append(f"wall time in {self.zone}")
        if self.kind == "iso_text":
            parts.append(f"like {self.iso.write(datetime(2026, 1, 31, 23, 59, 58, 123456))!r}")
        if self.kind == "date":
            parts.append("end of day" if self.end_of_day else "start of day")
        return f"{', '.join(parts)} (database type {self.found})" if self.found else ", ".join(parts)

    # -- binding a watermark ------------------------------------------------------------------

    def bind_value(self, epoch: float, up: bool, dialect: str) -> Any:
        """The watermark as this column's type, rounded down (or `up`) to what the column can hold."""
        if self.kind == "epoch_s" and self.integral:
            return math.ceil(epoch - 1e-9) if up else math.floor(epoch + 1e-9)
        if self.kind == "epoch_s":
            return epoch
        if self.kind == "epoch_ms":
            return math.ceil(epoch * 1000 - 1e-6) if up else math.floor(epoch * 1000 + 1e-6)
        if self.kind == "date":
            return self._bound_day(epoch, up)
        moment = _at(epoch, self._step_us(), up)
        if self.kind == "iso_text":
            return self.iso.write(self._wall(moment) if self.iso.offset is None
                                  else moment.astimezone(timezone(self.iso.offset)))
        if self.kind == "timestamp":
            return self._wall(moment)
        if dialect in ("mysql", "mariadb"):  # a TIMESTAMP read in the session's zone, which fabwatch sets to UTC
            return moment.replace(tzinfo=None)
        return moment

    def _step_us(self) -> int:
        return max(1, round(self.step * 1_000_000)) if self.kind == "iso_text" else 1

    def _wall(self, moment: datetime) -> datetime:
        """The naive wall time of an instant; in the hour autumn repeats, never earlier than one already
        bound (the repeated wall times were read as their first instant, summer time)."""
        wall = moment.astimezone(self.tz).replace(tzinfo=None)
        first = wall.replace(tzinfo=self.tz, fold=0)
        if first.timestamp() < moment.timestamp() - 1e-6 and first.utcoffset() != wall.replace(
                tzinfo=self.tz, fold=1).utcoffset():
            # the second pass of a repeated hour: hold at the end of its first pass
            return _end_of_repeat(wall, self.tz)
        return wall

    def _bound_day(self, epoch: float, up: bool) -> date:
        shift = 1 if self.end_of_day else 0
        wall = datetime.fromtimestamp(epoch, self.tz)
        day = wall.date()
        start = datetime(day.year, day.month, day.day, tzinfo=self.tz).timestamp()
        if up and start < epoch:
            day += timedelta(days=1)
        return day - timedelta(days=shift)

    # -- reading values back ------------------------------------------------------------------

    def to_epoch(self, value: Any) -> float | None:
        """A value read from this column as epoch seconds (None stays None)."""
        if value is None:
            return None
        if isinstance(value, Decimal | int | float) and not isinstance(value, bool):
            return float(value) / 1000.0 if self.kind == "epoch_ms" else float(value)
        if isinstance(value, str):
            return self._text_epoch(value)
        if isinstance(value, datetime):
            if value.tzinfo is not None:
                return value.timestamp()
            if self.kind == "timestamptz":  # MariaDB's TIMESTAMP, read in the UTC session
                return value.replace(tzinfo=UTC).timestamp()
            return value.replace(tzinfo=self.tz, fold=0).timestamp()
        if isinstance(value, date):
            return self._day_epoch(value)
        raise TypeError(f"cannot read {type(value).__name__} {value!r} as a time")

    def _day_epoch(self, day: date) -> float:
        if self.end_of_day:
            day += timedelta(days=1)
        return datetime(day.year, day.month, day.day, tzinfo=self.tz).timestamp()

    def _text_epoch(self, text: str) -> float:
        cleaned = text.strip().replace("Z", "+00:00")
        parsed = datetime.fromisoformat(cleaned)
        if len(cleaned) == 10:
            return self._day_epoch(parsed.date())
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=self.tz, fold=0)
        return parsed.timestamp()

    # -- SQL -----------------------------------------------------------------------------------

    def bind_type(self, up: bool) -> TypeEngine[Any]:
        """The type of a watermark bound against this column (converts epoch seconds when bound)."""
        return _Watermark(self, up)

    def epoch_sql(self, column: Expr, dialect: str) -> Expr:
        """The column as epoch seconds (a number), for arithmetic in a SELECT (never in a WHERE)."""
        if self.kind == "epoch_s":
            return column
        if self.kind == "epoch_ms":
            return cast(column, Double) / literal_column("1000.0")
        nominal = _nominal_seconds(column, dialect)
        if self.kind == "date" and self.end_of_day:
            nominal = nominal + literal_column("86400")
        if not self.naive:
            return nominal
        years = (self.year - 3, self.year + 1) if self.year else (1970, 2050)
        return nominal - zone_offset_sql(column, self.zone, lambda wall: self.wall_literal(wall, dialect), years)

    def wall_literal(self, wall: datetime, dialect: str) -> Expr:
        """A wall time as a literal of this column's type, to compare the column itself with (cheaper
        than converting every row)."""
        if self.kind == "date":
            day = wall.date() + timedelta(days=1 if wall.time() != datetime.min.time() else 0)
            return literal_column(f"'{day.isoformat()}'" if dialect == "sqlite" else f"DATE '{day.isoformat()}'")
        if self.kind == "iso_text":
            return literal_column(f"'{self.iso.write(wall)}'")
        text_value = wall.strftime("%Y-%m-%d %H:%M:%S")
        return literal_column(f"'{text_value}'" if dialect == "sqlite" else f"TIMESTAMP '{text_value}'")


class _Watermark(TypeDecorator[Any]):
    """Epoch seconds bound as a time column's own type."""

    impl = Double
    cache_ok = True

    def __init__(self, column: TimeColumn, up: bool) -> None:
        super().__init__()
        self.column = column
        self.up = up

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        kind = self.column.kind
        if kind == "epoch_ms" or (kind == "epoch_s" and self.column.integral):
            return dialect.type_descriptor(BigInteger())
        if kind == "date":
            return dialect.type_descriptor(Date())
        if kind == "iso_text":
            return dialect.type_descriptor(String())
        if kind == "timestamptz":
            return dialect.type_descriptor(DateTime(timezone=dialect.name not in ("mysql", "mariadb")))
        if kind == "timestamp":
            return dialect.type_descriptor(DateTime())
        return dialect.type_descriptor(Double())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else self.column.bind_value(float(value), self.up, dialect.name)


def _nominal_seconds(column: Expr, dialect: str) -> Expr:
    """Seconds from 1970-01-01 00:00 to a time column's value read as if it were UTC."""
    if dialect == "postgresql":
        return func.date_part("epoch", column, type_=Double)  # a double (EXTRACT gives a slow numeric)
    if dialect in ("mysql", "mariadb"):
        # exact to the microsecond: an integer count times a decimal step
        micros: Expr = func.timestampdiff(literal_column("MICROSECOND"), literal_column("'1970-01-01 00:00:00'"),
                                          column)
        return micros * literal_column("0.000001")
    # SQLite keeps times as milliseconds of the Julian day: round back to that integer, exactly
    millis: Expr = func.round(func.julianday(column) * literal_column("86400000.0"))
    return (millis - literal_column(str(_JULIAN_EPOCH_MS))) / literal_column("1000.0")


WallLiteral = Callable[[datetime], Expr]
"""A wall time as a literal comparable with the column."""


def zone_offset_sql(wall: Expr, zone: str, literal: WallLiteral, years: tuple[int, int] = (1970, 2050)) -> Expr:
    """The zone's UTC offset, in seconds, at a column's wall time (read as `fold=0`); before and after
    `years`, the offset of the first and the last change written out."""
    segments = zone_segments(zone, *years)
    return _offset_tree(wall, segments, literal)


def _offset_tree(wall: Expr, segments: list[tuple[float, int]], literal: WallLiteral) -> Expr:
    """A balanced CASE: a handful of comparisons per row, whatever the number of transitions."""
    if len(segments) == 1:
        return literal_column(str(segments[0][1]))
    middle = len(segments) // 2
    boundary = datetime(1970, 1, 1) + timedelta(seconds=segments[middle][0])
    return case((wall < literal(boundary), _offset_tree(wall, segments[:middle], literal)),
                else_=_offset_tree(wall, segments[middle:], literal))


@cache
def zone_segments(zone: str, first: int = 1970, last: int = 2050) -> list[tuple[float, int]]:
    """(wall time from which the offset holds, as nominal seconds; offset in seconds), in order.

    A change's wall time is where `fold=0` starts reading the new offset: the later of the change's
    wall times before and after it (the end of a gap, the end of a repeated hour)."""
    tz = ZoneInfo(zone)
    start = datetime(first, 1, 1, tzinfo=UTC)
    offset = _offset(tz, start)
    segments: list[tuple[float, int]] = [(-math.inf, offset)]
    day = start
    end = datetime(last, 12, 31, tzinfo=UTC)
    while day < end:
        following = day + timedelta(days=1)
        new = _offset(tz, following)
        if new != offset:
            instant = _change_instant(tz, day, following, offset)
            segments.append((instant.timestamp() + max(offset, new), new))
            offset = new
        day = following
    return segments


def _offset(tz: tzinfo, moment: datetime) -> int:
    delta = moment.astimezone(tz).utcoffset()
    return int(delta.total_seconds()) if delta is not None else 0


def _change_instant(tz: tzinfo, lo: datetime, hi: datetime, before: int) -> datetime:
    """The first instant in (lo, hi] with an offset other than `before` (to the second)."""
    while (hi - lo).total_seconds() > 1:
        middle = lo + (hi - lo) / 2
        if _offset(tz, middle) == before:
            lo = middle
        else:
            hi = middle
    return hi.replace(microsecond=0)


def _end_of_repeat(wall: datetime, tz: tzinfo) -> datetime:
    """The last wall time (to the microsecond) of the first pass of the repeated hour holding `wall`."""
    probe = wall
    while probe.replace(tzinfo=tz, fold=0).utcoffset() != probe.replace(tzinfo=tz, fold=1).utcoffset():
        probe += timedelta(minutes=1)
    return probe.replace(second=0, microsecond=0) - timedelta(microseconds=1)


def _at(epoch: float, step_us: int, up: bool) -> datetime:
    """The instant `epoch`, rounded down (or up) to a multiple of `step_us` microseconds."""
    micros = epoch * 1_000_000
    units = math.ceil(micros / step_us - 1e-6) if up else math.floor(micros / step_us + 1e-6)
    return EPOCH + timedelta(microseconds=units * step_us)


# -- detection ----------------------------------------------------------------------------------

_PG_TYPES: dict[int, tuple[TimeKind, str]] = {
    1184: ("timestamptz", "timestamp with time zone"), 1114: ("timestamp", "timestamp without time zone"),
    1082: ("date", "date"), 701: ("epoch_s", "double precision"), 700: ("epoch_s", "real"),
    20: ("epoch_s", "bigint"), 23: ("epoch_s", "integer"), 21: ("epoch_s", "smallint"),
    1700: ("epoch_s", "numeric"), 25: ("iso_text", "text"), 1043: ("iso_text", "character varying"),
}
_MYSQL_TYPES: dict[int, tuple[TimeKind, str]] = {
    7: ("timestamptz", "TIMESTAMP"), 12: ("timestamp", "DATETIME"), 10: ("date", "DATE"), 14: ("date", "DATE"),
    0: ("epoch_s", "DECIMAL"), 246: ("epoch_s", "DECIMAL"), 1: ("epoch_s", "TINYINT"), 2: ("epoch_s", "SMALLINT"),
    3: ("epoch_s", "INT"), 8: ("epoch_s", "BIGINT"), 9: ("epoch_s", "MEDIUMINT"), 4: ("epoch_s", "FLOAT"),
    5: ("epoch_s", "DOUBLE"), 15: ("iso_text", "VARCHAR"), 253: ("iso_text", "VARCHAR"), 254: ("iso_text", "CHAR"),
    252: ("iso_text", "TEXT"),
}


def kind_of_type_code(dialect: str, code: Any) -> tuple[TimeKind, str] | None:
    """The kind a driver's column type code stands for (PostgreSQL OIDs, MySQL field types)."""
    table = _PG_TYPES if dialect == "postgresql" else _MYSQL_TYPES if dialect in ("mysql", "mariadb") else {}
    return table.get(code) if isinstance(code, int) else None


def kind_of_value(value: Any) -> tuple[TimeKind, IsoFormat | None] | None:
    """The kind a value read from a column shows (SQLite, whose declared types do not bind)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float | Decimal):
        return "epoch_s", None
    if isinstance(value, str):
        iso = learn_iso(value)
        if iso is None:
            return None
        return ("date" if iso.date_only else "iso_text"), iso
    if isinstance(value, datetime):
        return ("timestamptz" if value.tzinfo is not None else "timestamp"), None
    if isinstance(value, date):
        return "date", None
    return None

