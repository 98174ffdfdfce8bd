"""The inventory loader: the bundled example, merging, substitution and every cross-check."""

import textwrap
import time
import tracemalloc
from pathlib import Path

import pytest

from collector.inventory.load import ConfigError, load_inventory, predicate_columns
from collector.inventory.models import SlaKpi

EXAMPLE = Path(__file__).parents[3] / "examples" / "operator.yaml"

GOOD = """
sources:
  crm: {kind: sql, dsn: "sqlite+aiosqlite:///x.db", interval: 30s}
processes:
  problem:
    etom: "1.3.1.3"
    name: Problem
    team: assurance-ops
    records:
      source: crm
      table: trouble_ticket
      columns: {due: due_at, dimensions: [priority], measures: [reopened, handling_minutes]}
      open_statuses: [open]
    kpis:
      in_time: {kind: sla, objective: 0.9, window: 30d}
      reopen: {kind: ratio, good: "reopened = 0"}
    costs:
      labour: {driver: handling_minutes, rate_per_hour: 40}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(paths: list[Path], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_inventory(paths, env or {})
    return str(caught.value).splitlines()


def test_example_covers_the_eight_level3_processes() -> None:
    inventory = load_inventory([EXAMPLE], {})
    assert sorted(p.etom for p in inventory.processes.values()) == [f"1.3.1.{i}" for i in range(1, 9)]
    kinds = {k.kind for p in inventory.processes.values() for k in p.kpis.values()}
    assert kinds >= {"volume", "backlog", "overdue", "duration", "sla", "ratio", "cost"}
    assert all(p.costs for p in inventory.processes.values())


def test_a_good_file_loads_into_typed_frozen_models(tmp_path: Path) -> None:
    inventory = load_inventory([write(tmp_path, "a.yaml", GOOD)], {})
    kpi = inventory.processes["problem"].kpis["in_time"]
    assert isinstance(kpi, SlaKpi)
    assert kpi.window == 30 * 86400
    assert inventory.sources["crm"].interval == 30
    with pytest.raises(Exception, match="frozen"):
        kpi.objective = 0.5  # type: ignore[misc]


def test_every_cross_check_is_reported_at_once_with_file_line_and_path(tmp_path: Path) -> None:
    broken = (GOOD.replace("source: crm", "source: crm2")
              .replace("objective: 0.9", "objective: 1.0")
              .replace("interval: 30s", "interval: 30 seconds")
              .replace("driver: handling_minutes", "driver: minutes")
              .replace('good: "reopened = 0"', 'good: "reopend = 0"'))
    path = write(tmp_path, "bad.yaml", broken)
    lines = problems([path])
    assert any(f"{path}:3: sources.crm.interval: bad duration" in line for line in lines), lines
    assert any(f"{path}:15: processes.problem.kpis.in_time.objective" in line and "between 0 and 1" in line
               for line in lines), lines
    # Pydantic stops before the cross-checks, so fix the schema errors and look again.
    path.write_text(textwrap.dedent(broken.replace("1.0", "0.9").replace("30 seconds", "30s")))
    lines = problems([path])
    assert lines == sorted(lines)
    assert f"{path}:10: processes.problem.records.source: unknown source 'crm2'; known: crm" in lines
    assert any(line.startswith(f"{path}:18: processes.problem.costs.labour.driver: unknown column 'minutes'")
               for line in lines), lines
    assert any(line.startswith(f"{path}:16: processes.problem.kpis.reopen.good: unknown column 'reopend'")
               for line in lines), lines


@pytest.mark.parametrize("objective", ["0", "1.0", "1.5", "-0.1"])
def test_objective_outside_zero_one_is_refused(tmp_path: Path, objective: str) -> None:
    path = write(tmp_path, "a.yaml", GOOD.replace("objective: 0.9", f"objective: {objective}"))
    (line,) = problems([path])
    assert "processes.problem.kpis.in_time.objective: objective must be between 0 and 1" in line


@pytest.mark.parametrize(("target", "refused"), [("{min: 0.95}", True), ("{min: 0.9}", False), ("{max: 0.99}", False)])
def test_an_sla_target_min_must_be_its_objective(tmp_path: Path, target: str, refused: bool) -> None:
    """The burn-rate alerts spend the objective's budget and the dashboards measure the budget
    against the exported minimum: a different target.min made them disagree (-40 % left on the
    dashboard, 30 % for the alerts)."""
    path = write(tmp_path, "a.yaml", GOOD.replace("objective: 0.9", f"objective: 0.9, target: {target}"))
    if not refused:
        load_inventory([path], {})
        return
    assert problems([path]) == [f"{path}:15: processes.problem.kpis.in_time: target.min (0.95) differs from the "
                                "objective (0.9): an SLA's objective is its minimum target; leave target.min out or "
                                "make them equal"]


def test_duplicate_kpi_in_one_file(tmp_path: Path) -> None:
    text = GOOD.replace("      reopen:", "      in_time: {kind: backlog}\n      reopen:")
    (line,) = problems([write(tmp_path, "a.yaml", text)])
    assert "duplicate key 'in_time' (first given on line 15)" in line


def test_duplicate_kpi_across_merged_files(tmp_path: Path) -> None:
    extra = "processes:\n  problem:\n    kpis:\n      in_time: {kind: sla, objective: 0.8}\n"
    first, second = write(tmp_path, "a.yaml", GOOD), write(tmp_path, "b.yaml", extra)
    (line,) = problems([first, second])
    assert line == f"{second}: processes.problem.kpis.in_time: duplicate KPI: already defined in {first}"


def test_files_merge_and_a_second_file_may_add_kpis_and_processes(tmp_path: Path) -> None:
    extra = "processes:\n  problem:\n    kpis:\n      backlog: {kind: backlog, target: {max: 10}}\n"
    inventory = load_inventory([write(tmp_path, "a.yaml", GOOD), write(tmp_path, "b.yaml", extra)], {})
    assert set(inventory.processes["problem"].kpis) == {"in_time", "reopen", "backlog"}


def test_environment_substitution_with_default_and_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "dsn"
    secret.write_text("sqlite+aiosqlite:///from-file.db\n")
    text = GOOD.replace('"sqlite+aiosqlite:///x.db"', f'"${{file:{secret}}}"').replace(
        "interval: 30s", 'interval: "${INTERVAL:-45s}"')
    inventory = load_inventory([write(tmp_path, "a.yaml", text)], {})
    assert inventory.sources["crm"].dsn == "sqlite+aiosqlite:///from-file.db"
    assert inventory.sources["crm"].interval == 45
    inventory = load_inventory([write(tmp_path, "a.yaml", text)], {"INTERVAL": "2m"})
    assert inventory.sources["crm"].interval == 120
    inventory = load_inventory([write(tmp_path, "a.yaml", text)], {"INTERVAL": ""})  # empty: as unset, as in a shell
    assert inventory.sources["crm"].interval == 45


def test_missing_environment_variable_names_the_path(tmp_path: Path) -> None:
    path = write(tmp_path, "a.yaml", GOOD.replace('"sqlite+aiosqlite:///x.db"', '"${CRM_DSN}"'))
    assert problems([path]) == [f"{path}:3: sources.crm.dsn: environment variable CRM_DSN is not set"]


def test_unknown_field_and_bad_target(tmp_path: Path) -> None:
    text = GOOD.replace("team: assurance-ops", "team: assurance-ops\n    owner: bob").replace(
        '{kind: ratio, good: "reopened = 0"}', '{kind: ratio, good: "reopened = 0", target: {}}')
    lines = problems([write(tmp_path, "a.yaml", text)])
    assert any("processes.problem.owner: unknown field" in line for line in lines), lines
    assert any("processes.problem.kpis.reopen.target: a target needs a bound" in line for line in lines), lines


def test_kpi_needing_a_missing_column(tmp_path: Path) -> None:
    text = GOOD.replace("columns: {due: due_at, ", "columns: {")
    (line,) = problems([write(tmp_path, "a.yaml", text)])
    assert "processes.problem.kpis.in_time: a sla KPI needs records.columns.due" in line


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert problems([missing]) == [f"{missing}: cannot read the file: No such file or directory"]
    bad = write(tmp_path, "bad.yaml", "sources: [\n")
    (line,) = problems([bad])
    assert line.startswith(f"{bad}:2: invalid YAML")
    control = write(tmp_path, "control.yaml", "sources:\n  a: {kind: sql}\nprocesses:\n  p: {name: \"x\x07\"}\n")
    assert problems([control]) == [f"{control}:4: invalid YAML: character #x0007 is not allowed (a control character)"]
    keyed = write(tmp_path, "keyed.yaml", "sources:\n  ? [a, b]\n  : 1\n")
    assert problems([keyed]) == [f"{keyed}:2: invalid YAML: found unhashable key"]


def test_predicate_columns_ignores_keywords_strings_and_functions() -> None:
    assert predicate_columns("channel IN ('chat', 'app') AND coalesce(x, 0) = 1 AND y IS NOT NULL") == {
        "channel", "x", "y"}


def test_a_dimension_given_twice_is_refused(tmp_path: Path) -> None:
    """Two labels of one name make Prometheus reject the whole scrape, not only the series."""
    text = GOOD.replace("dimensions: [priority]", "dimensions: [priority, channel, priority]")
    path = write(tmp_path, "a.yaml", text)
    (line,) = problems([path])
    assert line.startswith(f"{path}:12: processes.problem.records.columns.dimensions.2: 'priority' is already "
                           "dimension 0"), line


def test_a_records_table_may_not_take_a_record_store_table_name(tmp_path: Path) -> None:
    text = (GOOD.replace('crm: {kind: sql, dsn: "sqlite+aiosqlite:///x.db", interval: 30s}',
                         'crm: {kind: cost_csv, path: "costs-*.csv"}')
            .replace("table: trouble_ticket", "table: cost_entry"))
    (line,) = problems([write(tmp_path, "a.yaml", text)])
    assert "processes.problem.records.table: 'cost_entry' is a table of the record store itself" in line
    # A SQL source's own database may name its tables as it likes.
    load_inventory([write(tmp_path, "b.yaml", GOOD.replace("table: trouble_ticket", "table: cost_entry"))], {})


def test_the_record_store_keeps_the_tables_the_inventory_reserves(tmp_path: Path) -> None:
    import sqlite3

    from collector.inventory.sources import RECORD_STORE_TABLES
    from collector.sources.store import RecordStore

    RecordStore(tmp_path / "s.db", []).close()
    with sqlite3.connect(tmp_path / "s.db") as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == RECORD_STORE_TABLES


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    text = GOOD.replace("name: Problem", "name: Störung")
    path.write_bytes(text.encode("latin-1"))
    assert problems([path]) == [f"{path}: not UTF-8 text: byte 0xf6 at offset {text.index('ö')}; save the "
                                "file as UTF-8"]


@pytest.mark.parametrize(("value", "message"), [
    ('cron: "0 24 * * *"', "bad cron '0 24 * * *'"),
    ('cron: "99 * * * *"', "bad cron '99 * * * *'"),
    ("interval: .inf", "duration must be positive"),
    ("interval: .nan", "duration must be positive"),
    ("interval: 100000000w", "duration over 10 years"),
])
def test_schedules_the_scheduler_cannot_run_are_refused_at_load(tmp_path: Path, value: str, message: str) -> None:
    path = write(tmp_path, "a.yaml", GOOD.replace("interval: 30s", value))
    (line,) = problems([path])
    assert line.startswith(f"{path}:3: sources.crm."), line
    assert message in line, line


def test_an_empty_value_query_is_refused(tmp_path: Path) -> None:
    text = GOOD.replace("      reopen:", '      agents: {kind: value, sql: ""}\n      reopen:')
    (line,) = problems([write(tmp_path, "a.yaml", text)])
    assert "processes.problem.kpis.agents.sql" in line, line
    assert "must be a SELECT" in line, line


def test_each_file_may_hold_its_own_anchor_block(tmp_path: Path) -> None:
    """YAML anchors are per file: two files each need their own `x-` block, with the same name."""
    first = "x-columns: &columns {due: due_at}\n" + GOOD
    second = ("x-columns: &columns {due: due_at}\nprocesses:\n  problem:\n    kpis:\n"
              "      backlog: {kind: backlog}\n")
    inventory = load_inventory([write(tmp_path, "a.yaml", first), write(tmp_path, "b.yaml", second)], {})
    assert "backlog" in inventory.processes["problem"].kpis


@pytest.mark.parametrize(("dsn", "message"), [
    ("postgresql://fab:s3cret@127.0.0.1:5432/crm", "'postgresql' is not a supported asyncio driver; use "),
    ("sqlite:///x.db", "'sqlite' is not a supported asyncio driver"),
    ("mysql+pymysql://fab:s3cret@db/crm", "'mysql+pymysql' is not a supported asyncio driver; use sqlite+"
                                         "aiosqlite:///path/to/file.db, postgresql+asyncpg://user:password@host"
                                         ":5432/db or mariadb+aiomysql://user:password@host:3306/db "
                                         "(mysql+aiomysql:// for MySQL)"),
    ("postgresql+asyncpg://fab:s3cret@db:54x2/crm", "the port is not a number"),
    ("", "not a database URL"),
    ("postgresql+asyncpg://fab:s3cret@pw@127.0.0.1:5432/crm", "write an '@' of the user or password as %40"),
])
def test_a_dsn_fabwatch_cannot_connect_with_is_a_config_error(tmp_path: Path, dsn: str, message: str) -> None:
    path = write(tmp_path, "a.yaml", GOOD.replace('"sqlite+aiosqlite:///x.db"', f'"{dsn}"'))
    (line,) = problems([path])
    assert line.startswith(f"{path}:3: sources.crm.dsn: "), line
    assert message in line, line
    assert "s3cret" not in line  # the password never goes to the terminal or the logs
    assert "pw@" not in line


@pytest.mark.parametrize("dsn", ["mariadb+aiomysql://fab:s3cret@db:3306/crm", "mysql+aiomysql://fab@db/crm"])
def test_mariadb_and_mysql_dsns_are_accepted(tmp_path: Path, dsn: str) -> None:
    path = write(tmp_path, "a.yaml", GOOD.replace('"sqlite+aiosqlite:///x.db"', f'"{dsn}"'))
    assert load_inventory([path], {}).sources["crm"].dsn == dsn  # type: ignore[union-attr]


def test_an_empty_file_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "empty.yaml", "# nothing yet\n")
    assert problems([path]) == [f"{path}:1: processes: Field required", f"{path}:1: sources: Field required"]


def test_a_crontab_that_never_fires_is_refused(tmp_path) -> None:
    path = tmp_path / "never.yaml"
    path.write_text("sources:\n  db: {kind: sql, dsn: 'sqlite+aiosqlite:///x.db', cron: '0 0 31 2 *'}\nprocesses: {}\n")
    with pytest.raises(ConfigError, match="never fires"):
        load_inventory([path])


BOMB = "".join(f"{a}: &{a} [{', '.join([f'*{p}'] * 9 if p else ['lol'] * 9)}]\n"
               for p, a in zip(["", *"abcdefgh"], "abcdefghi", strict=True))
"""A "billion laughs": 9 levels of 9 aliases, about 400 bytes that stand for 9**9 values."""


def refused_fast(path: Path, seconds: float = 2.0, traced: bool = True) -> str:
    """Load `path`, expecting one problem, within `seconds` of CPU and 50 MB of Python allocations.

    CPU time, not wall time: other processes on a busy machine (parallel test workers, CI) do not
    count against the loader."""
    started = time.process_time()
    (line,) = problems([path])
    elapsed = time.process_time() - started
    assert elapsed < seconds, f"{elapsed:.2f}s"
    if not traced:
        return line
    tracemalloc.start()  # a second run: tracing slows the first one down several times
    try:
        assert problems([path]) == [line]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50_000_000, f"{peak:,} bytes"
    return line


@pytest.mark.parametrize("text", ["service: {x: " + "[" * 5000 + "]" * 5000 + "}\n",
                                  "".join("  " * i + f"k{i}:\n" for i in range(700)) + "  " * 700 + "v\n"])
def test_yaml_nested_too_deep_is_a_problem_not_a_traceback(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "deep.yaml", text)
    line = refused_fast(path, traced=False)  # tracing would take seconds: the time bounds the memory
    assert line.startswith(f"{path}:"), line
    assert line.endswith("invalid YAML: nested over 100 levels deep"), line


def test_an_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    assert len(BOMB) < 400
    path = write(tmp_path, "bomb.yaml", BOMB)
    line = refused_fast(path, 2.0)  # 59 s before the loader counted values
    assert line.startswith(f"{path}:5: invalid YAML: its aliases expand to over 50,000 values"), line


@pytest.mark.parametrize(("text", "message"), [
    ("service: &a\n  x: [*a]\n", "an alias refers to a node that holds it"),
    ("x-a: &a " + "[" * 60 + "]" * 60 + "\nservice: " + "[" * 60 + "*a" + "]" * 60 + "\n",
     "its aliases nest over 100 levels deep"),
])
def test_aliases_may_not_make_a_cycle_or_nest_too_deep(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, "alias.yaml", text)
    assert refused_fast(path).endswith(f"invalid YAML: {message}")


def test_a_file_over_1_mib_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text("# " + "x" * (1024 * 1024) + "\n")
    assert refused_fast(path) == f"{path}: over 1 MiB: not an inventory"


@pytest.mark.slow
@pytest.mark.parametrize("text", ["x-a: [" + "1, " * 300_000 + "]\n", "x-a:\n" + "- 1\n" * 200_000])
def test_a_file_of_too_many_values_is_refused_before_it_is_all_parsed(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "wide.yaml", text)
    assert refused_fast(path, 5.0, traced=False).endswith("invalid YAML: holds over 50,000 values")


def test_a_long_bad_value_is_quoted_by_its_start_only(tmp_path: Path) -> None:
    value = "x" * 500_000
    path = write(tmp_path, "long.yaml", GOOD.replace("interval: 30s", f"interval: {value}")
                 + f"service: {{listen: '{value}'}}\n")
    lines = problems([path])
    assert len(lines) == 2
    assert all(len(line) < 600 for line in lines), [line[:300] for line in lines]
    assert all(f"{'x' * 200}'… (500,000 characters)" in line for line in lines), [line[-99:] for line in lines]


@pytest.mark.parametrize("dsn", [
    "postgresql+asyncpg://fab:pA@sS/wO@127.0.0.1:5432/crm",  # the password "pA" and host "sS" otherwise
    "postgresql+asyncpg://fab/pA:sS@127.0.0.1:5432/crm",  # "wO" would be read as the database
    "postgresql+asyncpg://fab:pA/sS@wO@127.0.0.1:5432/crm",
    "postgresql+asyncpg://fab:pA/sS/127.0.0.1:5432/crm",  # no '@' at all: "pA" would be the port
])
def test_an_ambiguous_dsn_is_refused_without_quoting_the_password(tmp_path: Path, dsn: str) -> None:
    path = write(tmp_path, "a.yaml", GOOD.replace('"sqlite+aiosqlite:///x.db"', f'"{dsn}"'))
    (line,) = problems([path])
    assert line.startswith(f"{path}:3: sources.crm.dsn: "), line
    assert "%2F" in line, line
    for part in ("pA", "sS", "wO"):
        assert part not in line, line


def test_an_http_url_with_a_cut_password_is_refused_without_quoting_it(tmp_path: Path) -> None:
    path = write(tmp_path, "a.yaml", """
        sources:
          api: {kind: http_json, url: "https://fab:pA/sS@api.example/v1?api_key=kE", values: {n: n}}
        processes: {}
        """)
    (line,) = problems([path])
    assert line.endswith("sources.api.url: the port is not a number (a '/' in the password? write it as %2F)"), line


@pytest.mark.parametrize("url", [
    "https://fab:1234/5678@api.example/v1",  # host "fab", port 1234 otherwise: the password's start
    "https://fab:1234?5678@api.example/v1",
    "https://fab:1234#5678@api.example/v1",
])
def test_an_http_url_whose_cut_password_starts_with_digits_is_refused_without_quoting_it(
        tmp_path: Path, url: str) -> None:
    """The digits before the '/' parse as a port, so the port check let it through: the request
    went to host "fab" and the logs showed the password's start as the port."""
    path = write(tmp_path, "a.yaml", f"""
        sources:
          api: {{kind: http_json, url: "{url}", values: {{n: n}}}}
        processes: {{}}
        """)
    (line,) = problems([path])
    assert "sources.api.url: an '@' follows the host" in line, line
    assert "1234" not in line, line
    assert "5678" not in line, line


def test_an_all_digit_password_and_an_at_sign_in_a_later_path_segment_are_fine(tmp_path: Path) -> None:
    for url in ("http://u:1234@api.example/v1", "http://api.example:8080/v1/users/a@b.example"):
        path = write(tmp_path, "a.yaml", f"""
            sources:
              api: {{kind: http_json, url: "{url}", values: {{n: n}}}}
            processes: {{}}
            """)
        assert load_inventory([path]).sources["api"].url == url  # type: ignore[union-attr]


@pytest.mark.parametrize(("events", "field"), [
    ('secret: ""', "sources.tt.secret"),
    ('secret: "${EMPTY}"', "sources.tt.secret"),
    ('sender_auth: {kind: bearer, token: "  "}', "sources.tt.sender_auth.bearer.token"),
    ('sender_auth: {kind: bearer, token_file: ""}', "sources.tt.sender_auth.bearer.token_file"),
    ('sender_auth: {kind: basic, username: "", password: p}', "sources.tt.sender_auth.basic.username"),
    ('sender_auth: {kind: basic, username: u, password: ""}', "sources.tt.sender_auth.basic.password"),
])
def test_an_empty_sender_credential_is_refused(tmp_path: Path, events: str, field: str) -> None:
    """`compare_digest(b"", b"")` is true: an empty secret or token let any sender write events."""
    text = GOOD.replace("  crm: {", f"  tt: {{kind: tmf_events, api: tmf621, {events}}}\n  crm: {{")
    (line,) = problems([write(tmp_path, "a.yaml", text)], {"EMPTY": ""})
    assert f"{field}: " in line, line
    assert "must not be empty" in line, line
