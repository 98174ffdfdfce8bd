"""`fabwatch report`: backfill from the records with a progress line, then the month's files."""

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from app.cli import main
from collector.rollups import RollupStore, days_between
from simulator import Simulator
from tests.servers import closed_port

EXAMPLE = Path(__file__).parents[2] / "examples" / "operator.yaml"
END = 1772668800.0  # 2026-03-05T00:00:00Z


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """main() installs its log handler on the root logger; take it off after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="module")
def operator_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("op") / "operator.db"

    async def fill() -> None:
        sim = Simulator(f"sqlite+aiosqlite:///{path}", seed=9, scale=0.05)
        await sim.create_schema()
        await sim.backfill(40, END)
        await sim.close()

    asyncio.run(fill())
    return path


@pytest.mark.slow
def test_backfill_then_report_writes_the_formats_asked(operator_db: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FABWATCH_DEMO_DSN", f"sqlite+aiosqlite:///{operator_db}")
    monkeypatch.setenv("FABWATCH_REPORT_FORMAT", "json,md")  # the flags' environment fallback
    out = tmp_path / "out"
    status = main(["report", "-c", str(EXAMPLE), "--state", str(tmp_path / "state.db"), "--backfill",
                   "--since", "2026-01", "--month", "2026-02", "--out", str(out)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "backfill [" in captured.err
    assert "process-days" in captured.err
    written = sorted(p.name for p in out.iterdir())
    assert written == ["fabwatch-report-2026-02.json", "fabwatch-report-2026-02.md"]
    assert captured.out.split() == [str(out / name) for name in ["fabwatch-report-2026-02.json",
                                                                   "fabwatch-report-2026-02.md"]]
    data = json.loads((out / "fabwatch-report-2026-02.json").read_text())
    assert len(data["processes"]) == 8
    assert all(p["complete"] and p["created"] > 0 for p in data["processes"])
    # a second report reads the rollups only: the records may be gone
    operator_db.rename(operator_db.with_suffix(".moved"))
    try:
        again = main(["report", "-c", str(EXAMPLE), "--state", str(tmp_path / "state.db"), "--month", "2026-02",
                      "--format", "csv", "--out", str(out)])
    finally:
        operator_db.with_suffix(".moved").rename(operator_db)
    assert again == 0
    assert (out / "fabwatch-report-2026-02.csv").stat().st_size > 1000


def test_a_month_without_rollups_says_how_to_backfill(operator_db: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FABWATCH_DEMO_DSN", f"sqlite+aiosqlite:///{operator_db}")
    status = main(["report", "-c", str(EXAMPLE), "--state", str(tmp_path / "state.db"), "--month", "2026-02",
                   "--format", "md", "--out", str(tmp_path)])
    assert status == 0
    assert "fabwatch report --backfill --since 2025-02" in capsys.readouterr().err


def test_days_rolled_under_other_definitions_or_too_early_are_reported(operator_db: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FABWATCH_DEMO_DSN", f"sqlite+aiosqlite:///{operator_db}")
    store = RollupStore(tmp_path / "state.db")
    history = days_between(date(2025, 2, 1), date(2026, 2, 28), "Europe/Berlin")
    # rolled under other definitions of every KPI, the last day an hour before its end: not final
    store.save("problem", {d.day: {} for d in history[:-1]}, "Europe/Berlin", {"backlog": "old"})
    store.save("problem", {history[-1].day: {}}, "Europe/Berlin", {"backlog": "old"}, history[-1].end - 3600)
    store.close()
    status = main(["report", "-c", str(EXAMPLE), "--state", str(tmp_path / "state.db"), "--month", "2026-02",
                   "--format", "json", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 0, err
    assert "days rolled up before a KPI was added or changed have no figure for it: problem (" in err
    assert "2026-02 is provisional for problem" in err
    data = json.loads((tmp_path / "fabwatch-report-2026-02.json").read_text())
    problem = next(p for p in data["processes"] if p["name"] == "problem")
    assert problem["final"] is False
    assert problem["provisional_days"] == ["2026-02-28"]
    assert "backlog" in problem["needs_backfill"]
    assert all(k["value"] is None for k in problem["kpis"] if k["kind"] in ("sla", "ratio", "cost"))


@pytest.mark.parametrize(("args", "message"), [
    (["--month", "2026-13"], "a month is written YYYY-MM"),
    (["--format", "docx"], "unknown format docx"),
])
def test_bad_flags_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                               message: str) -> None:
    # argparse refuses a bad --format itself (exit 2); the month is checked by the command
    with pytest.raises(SystemExit) if args[0] == "--format" else contextlib.nullcontext():
        status = main(["report", "-c", str(EXAMPLE), "--state", str(tmp_path / "s.db"), *args])
        assert status == 2
    assert message in capsys.readouterr().err




def test_a_prometheus_that_does_not_answer_fails_with_its_url_masked(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with closed_port() as port:  # bound, not listening: refused, and no other server can take it meanwhile
        monkeypatch.setenv("FABWATCH_REPORT_PROMETHEUS", f"http://reporter:pa55word@127.0.0.1:{port}")  # env fallback
        status = main(["report", "-c", str(EXAMPLE), "--month", "2026-02", "--prometheus-timeout", "2s",
                       "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 1, err
    assert "cannot read the history from Prometheus: http://***@127.0.0.1:" in err
    assert "/api/v1/query" in err
    assert "pa55word" not in err
    assert not (tmp_path / "out").exists()


def test_prometheus_and_backfill_together_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["report", "-c", str(EXAMPLE), "--state", str(tmp_path / "s.db"), "--backfill",
                   "--prometheus", "http://127.0.0.1:9"])
    assert status == 2
    assert "--prometheus reads no rollups" in capsys.readouterr().err
def mail_settings(tmp_path: Path, port: int, password: str) -> Path:
    """The example inventory with a mail server in its `reports:` section."""
    path = tmp_path / f"operator-{password}.yaml"
    text = EXAMPLE.read_text()
    assert "\nreports:\n" in text
    path.write_text(text.replace("\nreports:\n", f"""
reports:
  email: {{host: 127.0.0.1, port: {port}, security: none, username: fabwatch, password: "{password}",
           from: fabwatch@example.com, to: [managers@example.com]}}
""", 1))
    return path


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # a loopback test server
def test_mail_sends_the_report_now_and_says_why_it_could_not(operator_db: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.smtp import smtp_server

    monkeypatch.setenv("FABWATCH_DEMO_DSN", f"sqlite+aiosqlite:///{operator_db}")
    with smtp_server(user="fabwatch", password="right-one") as server:
        args = ["--state", str(tmp_path / "state.db"), "--month", "2026-02", "--format", "html,md",
                "--out", str(tmp_path / "out"), "--mail"]
        refused = main(["report", "-c", str(mail_settings(tmp_path, server.port, "wrong")), *args])
        err = capsys.readouterr().err
        assert refused == 1
        assert f"the report was not mailed (auth): mail server 127.0.0.1:{server.port}: login as fabwatch" in err
        assert main(["report", "-c", str(mail_settings(tmp_path, server.port, "right-one")), *args]) == 0
        [message] = server.inbox.wait(1)
    out, err = capsys.readouterr()
    assert out.split() == [str(tmp_path / "out" / "fabwatch-report-2026-02.html"),
                           str(tmp_path / "out" / "fabwatch-report-2026-02.md")]
    assert "mailed the report of 2026-02 to managers@example.com" in err
    assert message["Subject"].startswith("fabwatch monthly report 2026-02: ")
    assert [p.get_filename() for p in message.iter_attachments()] == ["fabwatch-report-2026-02.html"]
    without = main(["report", "-c", str(EXAMPLE), "--state", str(tmp_path / "state.db"), "--month", "2026-02",
                    "--out", str(tmp_path / "out"), "--mail"])
    assert without == 2
    assert "--mail needs a mail server: the inventory's reports.email" in capsys.readouterr().err
