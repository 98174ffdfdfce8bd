"""The test infrastructure itself: each real server starts, answers and is stopped."""

from __future__ import annotations

import socket
import subprocess

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from tests import servers
from tests.servers import free_port

pytestmark = pytest.mark.integration


def test_free_port_is_bindable():
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_prometheus_answers_vector_1(prometheus_factory):
    prom = prometheus_factory()
    result = prom.query("vector(1)")
    assert [r["value"][1] for r in result] == ["1"]


def test_prometheus_evaluates_rule_files_and_scrapes(prometheus_factory):
    rules = """\
groups:
  - name: t
    interval: 1s
    rules:
      - record: fab:test:one
        expr: vector(1)
"""
    config = """\
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [rules.yml]
scrape_configs:
  - job_name: self
    static_configs: [{targets: ["%s"]}]
"""
    prom = prometheus_factory(config.replace("%s", "127.0.0.1:1"), files={"rules.yml": rules})
    assert prom.wait_for("fab:test:one", timeout=15)[0]["value"][1] == "1"
    # The scrape target is unreachable: Prometheus records up=0 for it.
    up = prom.wait_for('up{job="self"}', timeout=15)
    assert up[0]["value"][1] == "0"


async def test_prometheus_wait_for_async(prometheus_factory):
    prom = prometheus_factory()
    result = await prom.wait_for_async("vector(2)", lambda r: r[0]["value"][1] == "2")
    assert result[0]["metric"] == {}


def test_prometheus_stops_after_test(prometheus_factory):
    prom = prometheus_factory()
    prom.stop()
    assert prom.proc.poll() is not None


def test_victoriametrics_receives_prometheus_remote_write(prometheus_factory, victoriametrics_factory):
    """A recording rule's samples reach VictoriaMetrics by remote write and read back over its query
    API, the same as in the Prometheus that evaluated them; its storage is in the test's directory."""
    vm = victoriametrics_factory()
    rules = "groups: [{name: t, interval: 1s, rules: [{record: 'fab:test:two', expr: vector(2)}]}]\n"
    prom = prometheus_factory(
        "global: {evaluation_interval: 1s}\nrule_files: [rules.yml]\n"
        f"remote_write: [{{url: '{vm.write_url}', queue_config: {{batch_send_deadline: 1s}}}}]\n",
        files={"rules.yml": rules})
    assert prom.wait_for("fab:test:two", timeout=15)[0]["value"][1] == "2"
    assert vm.wait_for("fab:test:two", timeout=20)[0]["value"][1] == "2"
    vm.flush()
    assert vm.own_metrics()['vm_rows{type="storage/small"}'] > 0
    assert (vm.workdir / "data").is_dir()
    assert vm.workdir.is_relative_to(prom.workdir.parent)


def test_victoriametrics_moves_to_another_port_when_its_port_was_taken(tmp_path, monkeypatch):
    """Another process may bind the port `free_port` gave before the server does: it starts on another."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports = iter([busy, free_port()])
        monkeypatch.setattr(servers, "free_port", lambda: next(ports))
        vm = servers.start_victoriametrics(tmp_path / "vm", ())
        try:
            assert vm.port != busy
            assert vm.query("vector(3)")[0]["value"][1] == "3"
        finally:
            vm.stop()


def test_victoriametrics_stops_after_test(victoriametrics_factory):
    vm = victoriametrics_factory()
    vm.stop()
    assert vm.proc.poll() is not None


async def test_postgres_accepts_query_as_owner(postgres):
    engine = create_async_engine(postgres.dsn())
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1 + 1"))).scalar_one() == 2
            user = (await conn.execute(text("SELECT current_user"))).scalar_one()
            assert user == "fabwatch"
    finally:
        await engine.dispose()


async def test_postgres_readonly_role_can_select_not_insert(postgres):
    owner = create_async_engine(postgres.dsn())
    reader = create_async_engine(postgres.dsn("fabwatch_ro"))
    try:
        async with owner.begin() as conn:
            await conn.execute(text("CREATE TABLE infra_probe (id INTEGER PRIMARY KEY)"))
            await conn.execute(text("INSERT INTO infra_probe VALUES (1)"))
        async with reader.connect() as conn:
            rows = (await conn.execute(text("SELECT id FROM infra_probe"))).scalars().all()
            assert rows == [1]
        with pytest.raises(DBAPIError, match="permission denied"):
            async with reader.begin() as conn:
                await conn.execute(text("INSERT INTO infra_probe VALUES (2)"))
        with pytest.raises(DBAPIError, match="permission denied"):
            async with reader.begin() as conn:
                await conn.execute(text("CREATE TABLE nope (id INTEGER)"))
    finally:
        async with owner.begin() as conn:
            await conn.execute(text("DROP TABLE IF EXISTS infra_probe"))
        await owner.dispose()
        await reader.dispose()


async def test_postgres_rejects_a_wrong_password(postgres):
    engine = create_async_engine(postgres.dsn(password="wrong"))
    try:
        with pytest.raises(DBAPIError, match="password authentication failed"):
            async with engine.connect():
                pass
    finally:
        await engine.dispose()


def test_postgres_create_database_is_isolated(postgres):
    name = postgres.create_database()
    postgres.psql(
        "CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (7)", user="fabwatch", database=name
    )
    assert postgres.psql("SELECT x FROM t", user="fabwatch_ro", database=name).strip() == "7"
    assert name in postgres.dsn(database=name)


async def test_mariadb_reader_can_select_not_write_and_passwords_are_checked(mariadb):
    owner = create_async_engine(mariadb.dsn())
    reader = create_async_engine(mariadb.dsn("fabwatch_ro"))
    wrong = create_async_engine(mariadb.dsn(password="wrong"))
    try:
        async with owner.begin() as conn:
            await conn.execute(text("CREATE TABLE infra_probe (id INTEGER PRIMARY KEY)"))
            await conn.execute(text("INSERT INTO infra_probe VALUES (1)"))
        async with reader.connect() as conn:
            assert (await conn.execute(text("SELECT id FROM infra_probe"))).scalars().all() == [1]
        with pytest.raises(DBAPIError, match="command denied"):
            async with reader.begin() as conn:
                await conn.execute(text("INSERT INTO infra_probe VALUES (2)"))
        with pytest.raises(DBAPIError, match="Access denied"):
            async with wrong.connect():
                pass
    finally:
        async with owner.begin() as conn:
            await conn.execute(text("DROP TABLE IF EXISTS infra_probe"))
        for engine in (owner, reader, wrong):
            await engine.dispose()


def test_mariadb_has_the_time_zones_and_databases_are_isolated(mariadb):
    name = mariadb.create_database()
    mariadb.sql("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (7)", database=name)
    assert mariadb.sql("SELECT x FROM t", database=name).strip() == "7"
    assert mariadb.sql("SHOW TABLES LIKE 't'").strip() == ""  # not in the `fabwatch` database
    berlin = "SELECT CONVERT_TZ('2026-03-29 01:30:00', 'UTC', 'Europe/Berlin')"
    assert mariadb.sql(berlin).strip() == "2026-03-29 03:30:00"  # the zone tables are loaded


def test_alertmanager_starts_and_receives_alerts(alertmanager_factory):
    am = alertmanager_factory()
    assert am.get_json("/api/v2/status")["cluster"]["status"] == "disabled"
    am.post_alerts([{"labels": {"alertname": "InfraProbe", "severity": "warning"}}])
    alerts = am.wait_for_alerts(timeout=10)
    assert alerts[0]["labels"]["alertname"] == "InfraProbe"


def test_amtool_accepts_minimal_config(amtool, tmp_path):
    config = tmp_path / "alertmanager.yml"
    config.write_text("route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n")
    proc = subprocess.run([amtool, "check-config", str(config)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_amtool_rejects_unknown_receiver(amtool, tmp_path):
    config = tmp_path / "alertmanager.yml"
    config.write_text("route:\n  receiver: missing\nreceivers:\n  - name: blackhole\n")
    proc = subprocess.run([amtool, "check-config", str(config)], capture_output=True, text=True)
    assert proc.returncode != 0


def test_promtool_checks_rules(promtool, tmp_path):
    rules = tmp_path / "rules.yml"
    rules.write_text(
        "groups:\n  - name: g\n    rules:\n      - record: a:b\n        expr: vector(1)\n"
    )
    proc = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
