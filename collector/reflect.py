"""What a source's records really are: the kind of each time column, the columns present, the plans.

Run once per sampler on its first connection (and by `fabwatch check`), never per sample.
"""

import json
from dataclasses import replace
from typing import Any

from sqlalchemy import literal_column, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement, Executable

from collector.db import AsyncConnection
from collector.inventory.models import Records, SqlSource
from collector.inventory.types import TimeKind
from collector.sql import RECORDS_ALIAS, Statement, Times, records_relation
from collector.timetypes import IsoFormat, TimeColumn, kind_of_type_code, kind_of_value, learn_iso

ROLES = ("created", "completed", "due")


async def detect_times(conn: AsyncConnection, records: Records, source: SqlSource, year: int = 0) -> Times:
    """The kind of each mapped time column, as declared in `time_types` or found in the database."""
    dialect = conn.dialect.name
    columns = {role: getattr(records.columns, role) for role in ROLES if getattr(records.columns, role)}
    relation = records_relation(records, set(columns.values()))
    codes: dict[str, Any] = {}
    if dialect != "sqlite":
        result = await conn.execute(select(*[relation.c[c] for c in columns.values()]).limit(0))
        description = result.context.cursor.description or []
        codes = {str(entry[0]): entry[1] for entry in description}
    found: dict[str, TimeColumn] = {}
    for role, name in columns.items():
        found[role] = replace(await _detect_one(conn, relation, name, codes.get(name), records, source,
                                                role == "due"), year=year)
    return Times(dialect=dialect, **found)


async def _detect_one(conn: AsyncConnection, relation: Any, name: str, code: Any, records: Records,
                      source: SqlSource, due: bool) -> TimeColumn:
    dialect = conn.dialect.name
    by_type = kind_of_type_code(dialect, code)
    sample = await _sample_value(conn, relation, name) if by_type is None or by_type[0] == "iso_text" else None
    by_value = kind_of_value(sample)
    kind: TimeKind
    if by_type is not None:
        kind, described = by_type
    elif by_value is not None:
        name_of = type(sample).__name__
        sqlite_type = {"float": "REAL", "int": "INTEGER", "str": "TEXT"}.get(name_of, name_of)
        kind, described = by_value[0], f"{sqlite_type} values" if dialect == "sqlite" else str(code)
    else:
        kind, described = "epoch_s", "unknown (no value yet: read as epoch seconds)"
    if kind == "iso_text" and by_value is not None and by_value[0] == "date":
        kind = "date"
    declared = records.time_types.get(name)
    if declared is not None:
        kind, described = declared, f"{described}; declared {declared}"
    iso = (by_value[1] if by_value is not None else None) or IsoFormat()
    if kind == "iso_text" and isinstance(sample, str):
        iso = learn_iso(sample) or iso
    integral = by_type is not None and by_type[1].lower() in _INTEGERS
    return TimeColumn(kind, zone=source.timezone, iso=iso, end_of_day=due and kind == "date", found=described,
                      integral=integral)


_INTEGERS = frozenset({"bigint", "integer", "smallint", "int", "tinyint", "mediumint"})


async def _sample_value(conn: AsyncConnection, relation: Any, name: str) -> Any:
    """One non-NULL value of a column (the newest by the index would cost more than any)."""
    row = (await conn.execute(select(relation.c[name]).where(relation.c[name].is_not(None)).limit(1))).first()
    return None if row is None else row[0]


def describe(times: Times, records: Records) -> list[str]:
    """One line per mapped time column: its column name and what it was found to be."""
    lines = []
    for role in ROLES:
        name = getattr(records.columns, role)
        if name:
            found: TimeColumn = getattr(times, role)
            lines.append(f"{role} {name}: {found.describe()}")
    return lines


async def present_columns(conn: AsyncConnection, records: Records) -> set[str] | None:
    """The columns the records table or query has (None: no such table)."""
    if records.query is not None:
        sub = text(records.query.strip().rstrip(";")).columns().subquery(RECORDS_ALIAS)
        result = await conn.execute(select(literal_column("*")).select_from(sub).limit(0))
        return set(result.keys())

    def reflect(sync: Connection) -> set[str] | None:
        from sqlalchemy import inspect

        inspector = inspect(sync)
        assert records.table is not None
        schema, _, bare = records.table.rpartition(".")
        if not inspector.has_table(bare, schema=schema or None):
            return None
        return {c["name"] for c in inspector.get_columns(bare, schema=schema or None)}

    return await conn.run_sync(reflect)


class Explain(Executable, ClauseElement):
    """`EXPLAIN` of a statement, in the dialect's own form, with the statement's parameters bound."""

    inherit_cache = False

    def __init__(self, statement: Statement) -> None:
        self.statement = statement


@compiles(Explain)
def _compile_explain(element: Explain, compiler: SQLCompiler, **kw: Any) -> str:
    prefix = {"postgresql": "EXPLAIN (FORMAT JSON) ", "sqlite": "EXPLAIN QUERY PLAN "}.get(compiler.dialect.name,
                                                                                         "EXPLAIN ")
    return prefix + compiler.process(element.statement, **kw)


async def full_scans(conn: AsyncConnection, statement: Statement, params: dict[str, Any]) -> tuple[list[str], str]:
    """(the tables the plan reads in full, the plan in one line) for a statement and its parameters."""
    rows = list(await conn.execute(Explain(statement), params))
    dialect = conn.dialect.name
    if dialect == "postgresql":
        plan = rows[0][0] if not isinstance(rows[0][0], str) else json.loads(rows[0][0])
        nodes = list(_pg_nodes(plan[0]["Plan"]))
        scans = [str(n.get("Relation Name")) for n in nodes if n.get("Node Type") == "Seq Scan"]
        summary = "; ".join(f"{n.get('Node Type')}{' on ' + str(n['Relation Name']) if 'Relation Name' in n else ''}"
                            f"{' using ' + str(n['Index Name']) if 'Index Name' in n else ''}" for n in nodes)
        return scans, summary
    if dialect == "sqlite":
        details = [str(r[-1]) for r in rows]
        # `SCAN t` reads a whole table (or a whole index); derived tables and subqueries are not tables
        scans = [d.split()[1] for d in details if d.startswith("SCAN ")
                 and not d.split()[1].startswith(("anon_", RECORDS_ALIAS, "("))]
        return scans, "; ".join(details)
    mapped = [dict(r._mapping) for r in rows]
    scans = [str(m.get("table")) for m in mapped if str(m.get("type")).upper() == "ALL"
             and not str(m.get("table", "")).startswith("<")]
    summary = "; ".join(f"{m.get('table')} {m.get('type')}{' key ' + str(m['key']) if m.get('key') else ''}"
                        for m in mapped)
    return scans, summary


def _pg_nodes(node: dict[str, Any]) -> Any:
    yield node
    for child in node.get("Plans", []):
        yield from _pg_nodes(child)
