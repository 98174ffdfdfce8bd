"""Records that are not one table: a query over joins, integer codes with lookups, a history table.

The simulator's trouble tickets are written the way an ITSM system keeps them (state and outcome as
integer codes, priority as a key into a lookup table, the completion time in a history table) and
mapped with `records.query` and `lookups`; every KPI, counter and gauge must equal those read from
the plain epoch table, with readable labels (`priority="high"`, not `2`).
"""

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Double, Integer, MetaData, String, Table, Text
from sqlalchemy.ext.asyncio import create_async_engine

from collector.inventory.models import Inventory
from tests.collector.test_time_columns import SPRING, assert_same, inventory, sample_twice, spring_rows  # noqa: F401
from tests.collector.time_tables import Rows, column_type, convert, write
from tests.servers import MariaDBServer, PostgresServer

STATES = ["acknowledged", "inProgress", "pending", "held", "resolved", "closed", "cancelled", "rejected"]
MEASURES = ["reopened", "fallout", "first_contact_resolved", "abandoned", "wait_seconds", "adjusted", "ebill",
            "saved", "written_off", "handling_minutes", "amount"]
QUERY = """
SELECT t.ref AS id, t.opened AS created_at, h.changed_at AS completed_at, t.due AS due_at,
       t.state_id AS status, p.name AS priority, t.channel, t.segment, t.outcome_code AS outcome,
       t.paused_seconds, {measures}
FROM ticket t
LEFT JOIN tt_priority p ON p.id = t.priority_id
LEFT JOIN ticket_history h ON h.ticket_id = t.ref AND h.final = 1
"""


def itsm_tables(kind: str, dialect: str) -> MetaData:
    metadata = MetaData()
    time = column_type(kind, dialect)
    Table("tt_priority", metadata, Column("id", Integer, primary_key=True), Column("name", Text))
    Table("ticket", metadata, Column("ref", String(64), primary_key=True), Column("opened", time), Column("due", time),
          Column("state_id", Integer), Column("priority_id", Integer), Column("channel", Text), Column("segment", Text),
          Column("outcome_code", Integer), Column("paused_seconds", Double),
          *[Column(m, Double) for m in MEASURES])
    Table("ticket_history", metadata, Column("ticket_id", String(64)), Column("final", Integer),
          Column("changed_at", time, index=True))
    return metadata


async def write_itsm(url: str, rows: list[dict[str, Any]], kind: str) -> dict[int, str]:
    """Write the tickets the ITSM way; return the outcome lookup (code -> label)."""
    dialect = url.split("+", 1)[0].split(":", 1)[0]
    priorities = sorted({r["priority"] for r in rows if r["priority"] is not None})
    outcomes = sorted({r["outcome"] for r in rows if r["outcome"] is not None})
    metadata = itsm_tables(kind, dialect)
    engine = create_async_engine(url)

    def at(value: float | None) -> Any:
        return convert(value, kind, dialect, "UTC")

    try:
        async with engine.begin() as conn:
            if dialect == "mariadb":
                await conn.exec_driver_sql("SET time_zone = '+00:00'")
            await conn.run_sync(metadata.create_all)
            await conn.execute(metadata.tables["tt_priority"].insert(),
                               [{"id": i + 1, "name": n} for i, n in enumerate(priorities)])
            tickets = [{"ref": r["id"], "opened": at(r["created_at"]), "due": at(r["due_at"]),
                        "state_id": STATES.index(r["status"]) + 1,
                        "priority_id": priorities.index(r["priority"]) + 1 if r["priority"] else None,
                        "channel": r["channel"], "segment": r["segment"],
                        "outcome_code": outcomes.index(r["outcome"]) + 1 if r["outcome"] else None,
                        "paused_seconds": r["paused_seconds"], **{m: r[m] for m in MEASURES}} for r in rows]
            history = [{"ticket_id": r["id"], "final": 1, "changed_at": at(r["completed_at"])}
                       for r in rows if r["completed_at"] is not None]
            history += [{"ticket_id": r["id"], "final": 0, "changed_at": at(r["created_at"])} for r in rows]
            for name, data in (("ticket", tickets), ("ticket_history", history)):
                for start in range(0, len(data), 500):
                    await conn.execute(metadata.tables[name].insert(), data[start:start + 500])
    finally:
        await engine.dispose()
    return {i + 1: o for i, o in enumerate(outcomes)}


def itsm_inventory(dsn: str, outcomes: dict[int, str]) -> Inventory:
    found = inventory(dsn)
    problem = found.processes["problem"]
    kpis = {k: v for k, v in problem.kpis.items() if v.kind != "value"}
    records = problem.records.model_copy(update={
        "table": None, "query": QUERY.format(measures=", ".join(f"t.{m}" for m in MEASURES)),
        "lookups": {"status": dict(enumerate(STATES, start=1)), "outcome": outcomes}})
    return found.model_copy(update={"processes": {"problem": problem.model_copy(update={"records": records,
                                                                                       "kpis": kpis})}})


def plain_inventory(dsn: str) -> Inventory:
    found = inventory(dsn)
    problem = found.processes["problem"]
    kpis = {k: v for k, v in problem.kpis.items() if v.kind != "value"}
    return found.model_copy(update={"processes": {"problem": problem.model_copy(update={"kpis": kpis})}})


async def compare(rows: Rows, itsm: str, plain: str, tmp: Path, kind: str) -> None:
    await write(plain, rows, "epoch_s", "UTC")
    outcomes = await write_itsm(itsm, rows["trouble_ticket"], kind)
    expected = await sample_twice(plain_inventory(plain), tmp / "plain.state", SPRING)
    found = await sample_twice(itsm_inventory(itsm, outcomes), tmp / "itsm.state", SPRING)
    for mine, theirs in zip(found, expected, strict=True):
        assert_same(mine, theirs, minimum=6)
    labels = {dict(labels).get("priority") for f in found[1].families if f.name == "fab_items_created"
              for labels, _ in f.samples}
    assert labels >= {"critical", "high"}


@pytest.mark.slow
async def test_sqlite_query_with_codes_lookups_and_history(spring_rows: Rows, tmp_path: Path) -> None:  # noqa: F811
    await compare(spring_rows, f"sqlite+aiosqlite:///{tmp_path / 'itsm.db'}",
                  f"sqlite+aiosqlite:///{tmp_path / 'plain.db'}", tmp_path, "iso_text")


@pytest.mark.integration
async def test_postgresql_query_with_codes_lookups_and_history(postgres: PostgresServer, spring_rows: Rows,  # noqa: F811
                                                               tmp_path: Path) -> None:
    itsm, plain = postgres.create_database(), postgres.create_database()
    await compare(spring_rows, postgres.dsn("fabwatch", database=itsm), postgres.dsn("fabwatch", database=plain),
                  tmp_path, "timestamptz")


@pytest.mark.integration
async def test_mariadb_query_with_codes_lookups_and_history(mariadb: MariaDBServer, spring_rows: Rows,  # noqa: F811
                                                            tmp_path: Path) -> None:
    itsm, plain = mariadb.create_database(), mariadb.create_database()
    await compare(spring_rows, mariadb.dsn("fabwatch", database=itsm), mariadb.dsn("fabwatch", database=plain),
                  tmp_path, "timestamptz")
