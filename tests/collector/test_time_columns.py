"""The same records kept with time columns of every common kind give the same KPIs as epoch seconds.

Real SQLite and PostgreSQL (MariaDB in test_engine_mariadb.py), started by the tests; the rows are
the simulator's, spanning a daylight saving change, and the sampler is restarted between samples.
"""

import math
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from collector.engine import SourceSampler
from collector.inventory.load import load_inventory
from collector.inventory.models import Inventory
from collector.samples import SourceSample
from collector.state import StateStore
from tests.collector.time_tables import TIME_COLUMNS, Rows, flatten, read_rows, simulate, write
from tests.servers import MariaDBServer, PostgresServer

EXAMPLE = Path(__file__).parents[2] / "examples" / "operator.yaml"
BERLIN = ZoneInfo("Europe/Berlin")
SPRING = datetime(2026, 3, 31, 9, 0, tzinfo=BERLIN).timestamp()
"""Two days after the change to summer time: six days of history hold rows on both sides."""
AUTUMN = datetime(2026, 10, 27, 9, 0, tzinfo=BERLIN).timestamp()


def inventory(dsn: str, zone: str = "UTC", declared: str | None = None) -> Inventory:
    found = load_inventory([EXAMPLE], {"FABWATCH_DEMO_DSN": dsn})
    source = found.sources["operator"].model_copy(update={"timezone": zone})
    processes = found.processes
    if declared is not None:
        processes = {name: p.model_copy(update={"records": p.records.model_copy(update={
            "time_types": dict.fromkeys(TIME_COLUMNS, declared)})}) for name, p in processes.items()}
    return found.model_copy(update={"sources": {"operator": source}, "processes": processes})


async def sample_twice(found: Inventory, state: Path, now: float) -> tuple[SourceSample, SourceSample]:
    """Sample at `now`, restart the sampler on its saved state, sample an hour later."""
    samples = []
    for at in (now, now + 3600):
        engine = SourceSampler("operator", found.sources["operator"], found.processes,  # type: ignore[arg-type]
                               StateStore(state))
        try:
            samples.append(await engine.sample(at))
        finally:
            await engine.close()
    return samples[0], samples[1]


def assert_same(typed: SourceSample, epoch: SourceSample, minimum: int = 50) -> None:
    mine, theirs = flatten(typed.families), flatten(epoch.families)
    assert mine.keys() == theirs.keys()
    differ = {k: (mine[k], theirs[k]) for k in mine if not math.isclose(mine[k], theirs[k], rel_tol=1e-9, abs_tol=1e-9)}
    assert not differ
    values = {(k.process, k.kpi): k.value for k in epoch.kpis}
    assert sum(v is not None for v in values.values()) > minimum
    for reading in typed.kpis:
        expected = values[(reading.process, reading.kpi)]
        assert (reading.value is None) == (expected is None), reading
        if expected is not None:
            assert math.isclose(reading.value, expected, rel_tol=1e-9, abs_tol=1e-9), reading  # type: ignore[arg-type]


async def compare(rows: Rows, typed_dsn: str, epoch_dsn: str, tmp: Path, kind: str, zone: str, now: float,
                  declared: str | None = None) -> None:
    await write(epoch_dsn, rows, "epoch_s", "UTC")
    await write(typed_dsn, rows, kind, zone)
    epoch = await sample_twice(inventory(epoch_dsn), tmp / "epoch.state", now)
    typed = await sample_twice(inventory(typed_dsn, zone, declared), tmp / "typed.state", now)
    for mine, theirs in zip(typed, epoch, strict=True):
        assert_same(mine, theirs)


@pytest.fixture(scope="module")
def spring_rows(tmp_path_factory: pytest.TempPathFactory) -> Rows:
    path = tmp_path_factory.mktemp("sim") / "spring.db"
    import asyncio

    asyncio.run(simulate(path, SPRING))
    return read_rows(path)


def repeated_hour(values: dict[str, Any]) -> bool:
    """Whether a row has a time in the second pass of the autumn hour (read as the first, by design)."""
    for name in TIME_COLUMNS:
        value = values[name]
        if value is not None:
            wall = datetime.fromtimestamp(value, BERLIN).replace(tzinfo=None)
            if wall.replace(tzinfo=BERLIN, fold=0).timestamp() != value:
                return True
    return False


@pytest.mark.parametrize(("kind", "zone", "declared"), [
    ("iso_text", "UTC", None),               # '2026-03-30T10:00:00.000Z'
    ("iso_text", "Europe/Berlin", None),     # '2026-03-30 12:00:00.000', wall time
    ("epoch_ms", "UTC", "epoch_ms"),         # an INTEGER of milliseconds, declared
])
@pytest.mark.slow
async def test_sqlite_time_kinds_give_the_kpis_of_epoch_seconds(spring_rows: Rows, tmp_path: Path, kind: str,
                                                                zone: str, declared: str | None) -> None:
    await compare(spring_rows, f"sqlite+aiosqlite:///{tmp_path / 'typed.db'}",
                  f"sqlite+aiosqlite:///{tmp_path / 'epoch.db'}", tmp_path, kind, zone, SPRING, declared)


@pytest.mark.integration
@pytest.mark.parametrize(("server", "kind", "zone", "declared"), [
    ("postgres", "timestamptz", "UTC", None),
    ("postgres", "timestamp", "Europe/Berlin", None),    # naive local time across the change to summer time
    ("postgres", "timestamp", "UTC", None),
    ("postgres", "epoch_ms", "UTC", "epoch_ms"),
    ("mariadb", "timestamptz", "UTC", None),             # TIMESTAMP(6), stored in UTC
    ("mariadb", "timestamp", "Europe/Berlin", None),     # DATETIME(6) in local time, across the change
    ("mariadb", "epoch_ms", "UTC", "epoch_ms"),
])
async def test_server_time_kinds_give_the_kpis_of_epoch_seconds(request: pytest.FixtureRequest, spring_rows: Rows,
                                                                tmp_path: Path, server: str, kind: str, zone: str,
                                                                declared: str | None) -> None:
    db: PostgresServer | MariaDBServer = request.getfixturevalue(server)
    typed, epoch = db.create_database(), db.create_database()
    await compare(spring_rows, db.dsn("fabwatch", database=typed), db.dsn("fabwatch", database=epoch),
                  tmp_path, kind, zone, SPRING, declared)


@pytest.mark.integration
async def test_naive_local_times_across_the_autumn_change(postgres: PostgresServer, tmp_path: Path) -> None:
    path = tmp_path / "autumn.db"
    await simulate(path, AUTUMN)
    rows = read_rows(path, keep=lambda r: not repeated_hour(r))
    assert sum(len(r) for r in rows.values()) > 1000
    typed, epoch = postgres.create_database(), postgres.create_database()
    await compare(rows, postgres.dsn("fabwatch", database=typed), postgres.dsn("fabwatch", database=epoch),
                  tmp_path, "timestamp", "Europe/Berlin", AUTUMN)
