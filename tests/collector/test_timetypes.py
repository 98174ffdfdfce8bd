"""Time columns of every kind: watermarks bound exactly, values read back, zone offsets in SQL."""

import sqlite3
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import column, create_engine, literal_column, select, table

from collector.timetypes import TimeColumn, kind_of_value, learn_iso, zone_offset_sql, zone_segments

BERLIN = ZoneInfo("Europe/Berlin")


def epoch(*args: int, tz: ZoneInfo | None = None, fold: int = 0) -> float:
    return datetime(*args, tzinfo=tz or UTC, fold=fold).timestamp()  # type: ignore[misc]


@pytest.mark.parametrize(("kind", "value", "up", "expected"), [
    ("epoch_ms", 1000.0004, False, 1000000),
    ("epoch_ms", 1000.0004, True, 1000001),
    ("epoch_ms", 1000.001, True, 1000001),  # already a whole millisecond: not rounded up past it
    ("date", epoch(2026, 3, 5, 12), False, date(2026, 3, 5)),
    ("date", epoch(2026, 3, 5, 12), True, date(2026, 3, 6)),
    ("date", epoch(2026, 3, 5), True, date(2026, 3, 5)),  # exactly midnight UTC (zone UTC)
])
def test_discrete_kinds_round_so_that_each_comparison_keeps_its_meaning(kind, value, up, expected) -> None:
    assert TimeColumn(kind).bind_value(value, up, "sqlite") == expected


def test_a_due_date_means_the_end_of_its_day() -> None:
    due = TimeColumn("date", zone="Europe/Berlin", end_of_day=True)
    assert due.to_epoch(date(2026, 3, 5)) == epoch(2026, 3, 6, tz=BERLIN)
    # `due < now`: a date due today is not overdue before the day ends; bind it one day back
    assert due.bind_value(epoch(2026, 3, 5, 18, tz=BERLIN), True, "sqlite") == date(2026, 3, 5)
    assert due.bind_value(epoch(2026, 3, 6, tz=BERLIN), True, "sqlite") == date(2026, 3, 5)


def test_naive_wall_times_bind_and_read_in_the_source_zone() -> None:
    wall = TimeColumn("timestamp", zone="Europe/Berlin")
    instant = epoch(2026, 7, 1, 10, 0, 0)
    assert wall.bind_value(instant, False, "postgresql") == datetime(2026, 7, 1, 12, 0, 0)
    assert wall.to_epoch(datetime(2026, 7, 1, 12, 0, 0)) == instant


def test_the_repeated_autumn_hour_reads_as_its_first_pass_and_binds_without_going_back() -> None:
    wall = TimeColumn("timestamp", zone="Europe/Berlin")
    first = epoch(2026, 10, 25, 2, 30, tz=BERLIN, fold=0)
    second = epoch(2026, 10, 25, 2, 30, tz=BERLIN, fold=1)
    assert second - first == 3600
    assert wall.to_epoch(datetime(2026, 10, 25, 2, 30)) == first
    bound_first = wall.bind_value(first, False, "postgresql")
    bound_second = wall.bind_value(second, False, "postgresql")
    assert bound_first == datetime(2026, 10, 25, 2, 30)
    assert bound_second > bound_first  # watermarks never step back: no row is counted twice
    assert bound_second < datetime(2026, 10, 25, 3, 0)


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-03-05T10:11:12Z", epoch(2026, 3, 5, 10, 11, 12)),
    ("2026-03-05 10:11:12.250", epoch(2026, 3, 5, 9, 11, 12) + 0.25),  # naive: Berlin, winter
    ("2026-03-05T10:11:12+02:00", epoch(2026, 3, 5, 8, 11, 12)),
])
def test_iso_text_is_read_with_its_offset_or_in_the_source_zone(text: str, expected: float) -> None:
    iso = learn_iso(text)
    assert iso is not None
    assert TimeColumn("iso_text", zone="Europe/Berlin", iso=iso).to_epoch(text) == pytest.approx(expected, abs=1e-6)


def test_iso_text_binds_in_the_columns_own_format() -> None:
    iso = learn_iso("2026-03-05T10:11:12.250Z")
    assert iso is not None
    found = TimeColumn("iso_text", iso=iso)
    assert found.bind_value(epoch(2026, 3, 5, 10, 11, 12) + 0.2509, False, "sqlite") == "2026-03-05T10:11:12.250Z"
    assert found.bind_value(epoch(2026, 3, 5, 10, 11, 12) + 0.2501, True, "sqlite") == "2026-03-05T10:11:12.251Z"


def test_kinds_of_values() -> None:
    assert kind_of_value(1.5) == ("epoch_s", None)
    assert kind_of_value("2026-03-05")[0] == "date"  # type: ignore[index]
    assert kind_of_value("2026-03-05 10:00:00")[0] == "iso_text"  # type: ignore[index]
    assert kind_of_value("high") is None
    assert kind_of_value(datetime(2026, 1, 1, tzinfo=UTC)) == ("timestamptz", None)


def test_zone_segments_match_the_tz_database_at_every_change() -> None:
    segments = zone_segments("Europe/Berlin")
    assert len(segments) == 1 + 2 * (2050 - 1980 + 1)  # two changes a year since 1980
    for start, offset in segments[1:]:
        wall = datetime(1970, 1, 1) + timedelta(seconds=start)
        assert datetime.fromisoformat(wall.isoformat()).replace(tzinfo=BERLIN, fold=0).utcoffset() == \
            timedelta(seconds=offset)
        before = wall - timedelta(seconds=1)
        assert before.replace(tzinfo=BERLIN, fold=0).utcoffset() != timedelta(seconds=offset)


def test_the_sql_offset_agrees_with_python_on_every_hour_around_the_changes() -> None:
    engine = create_engine("sqlite://")
    wall_column = literal_column("wall")
    statement = select(zone_offset_sql(wall_column, "Europe/Berlin",
                                       lambda wall: literal_column(f"'{wall:%Y-%m-%d %H:%M:%S}'"))).select_from(
        table("t", column("wall")))
    walls = [datetime(2026, month, day, hour, minute) for month, day in ((3, 29), (10, 25), (1, 1), (7, 1))
             for hour in range(24) for minute in (0, 30, 59)]
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE TABLE t (wall TEXT)")
        for wall in walls:
            conn.exec_driver_sql("DELETE FROM t")
            conn.exec_driver_sql("INSERT INTO t VALUES (?)", (wall.strftime("%Y-%m-%d %H:%M:%S"),))
            got = conn.execute(statement).scalar_one()
            expected = wall.replace(tzinfo=BERLIN, fold=0).utcoffset()
            assert expected is not None
            assert got == expected.total_seconds(), wall


def test_sqlite_reads_iso_text_as_epoch_to_the_millisecond() -> None:
    iso = learn_iso("2026-03-05T10:11:12.123Z")
    assert iso is not None
    expression = TimeColumn("iso_text", iso=iso).epoch_sql(literal_column("t"), "sqlite")
    sql = str(expression.compile(compile_kwargs={"literal_binds": True}))
    value = sqlite3.connect(":memory:").execute(f"SELECT {sql} FROM (SELECT '2026-03-05T10:11:12.123Z' AS t)")
    assert value.fetchone()[0] == pytest.approx(epoch(2026, 3, 5, 10, 11, 12) + 0.123, abs=1e-9)
