"""`fabwatch report`: backfill the daily rollups from the records, write a month's summary."""

import argparse
import asyncio
import time
from datetime import date, datetime
from pathlib import Path
from typing import TextIO
from zoneinfo import ZoneInfo

from collector.errors import SourceError
from collector.inventory.models import Inventory
from collector.rollups import Progress, RollupStore, backfill_since, days_between, roll_sources, sql_sources
from reports.prometheus import Connection, PrometheusError, prometheus_notes, read_prometheus, summarize_history
from reports.render import write
from reports.summary import Month, Report, read_rollups, read_states, summarize

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def today(zone: str, now: float | None = None) -> date:
    return datetime.fromtimestamp(time.time() if now is None else now, ZoneInfo(zone)).date()


def last_full_month(zone: str, now: float | None = None) -> Month:
    day = today(zone, now)
    return Month(day.year, day.month).shift(-1)


def progress_line(err: TextIO) -> Progress:
    """A one-line progress bar on `err`, redrawn in place on a terminal, else written once at the end."""
    started = time.monotonic()
    live = err.isatty()

    def show(done: int, todo: int) -> None:
        if not live and done < todo:
            return
        width = 30
        filled = width * done // max(todo, 1)
        line = (f"backfill [{'#' * filled}{'.' * (width - filled)}] {done}/{todo} process-days "
                f"{time.monotonic() - started:.0f}s")
        err.write(("\r" + line) if live else line + "\n")
        if live and done >= todo:
            err.write("\n")
        err.flush()

    return show


def month_report(inventory: Inventory, state_path: str | Path, month: Month) -> Report:
    """The summary of `month` from the daily rollups in the state file at `state_path`."""
    store = RollupStore(state_path)
    try:
        return summarize(inventory, read_rollups(store, inventory, month), month, read_states(store, inventory, month))
    finally:
        store.close()


def run_report(inventory: Inventory, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run `fabwatch report` with parsed arguments; return the exit status."""
    zone = inventory.service.timezone
    try:
        month = Month.parse(args.month) if args.month else last_full_month(zone)
        since = Month.parse(args.since) if args.since else None
    except ValueError as exc:
        print(f"fabwatch: {exc}", file=err)
        return EXIT_CONFIG
    if getattr(args, "prometheus", None):
        if args.backfill:
            print("fabwatch: --backfill computes the rollups from the records; --prometheus reads no rollups: "
                  "use one of them", file=err)
            return EXIT_CONFIG
        return report_from_prometheus(inventory, args, month, out, err)
    store = RollupStore(args.state or inventory.service.state_path)
    try:
        if args.backfill:
            first = since.first if since else backfill_since(today(zone))
            status = backfill(inventory, store, first, today(zone), err)
            if status != EXIT_OK or not args.month:
                return status
        report = summarize(inventory, read_rollups(store, inventory, month), month,
                           read_states(store, inventory, month))
    finally:
        store.close()
    status = write_or_mail(inventory, report, args, out, err)
    if status != EXIT_OK:
        return status
    sql = sql_sources(inventory.sources)
    missing = [p.name for p in report.processes if not p.complete
               and inventory.processes[p.name].records.source in sql]
    elsewhere = [name for name, p in inventory.processes.items() if p.records.source not in sql]
    if elsewhere:
        print(f"fabwatch: no daily figures for {', '.join(elsewhere)}: their records are not in a SQL source",
              file=err)
    stale = [f"{p.name} ({', '.join(p.needs_backfill)})" for p in report.processes if p.needs_backfill]
    if stale:
        print(f"fabwatch: {month}: days rolled up before a KPI was added or changed have no figure for it: "
              f"{'; '.join(stale)}: run `fabwatch report --backfill --since {month.shift(-12)}`", file=err)
    provisional = [p.name for p in report.processes if not p.final]
    if provisional:
        print(f"fabwatch: {month} is provisional for {', '.join(provisional)}: days rolled up before their "
              "late window had passed (the serve re-rolls them)", file=err)
    if missing:
        print(f"fabwatch: {month} lacks daily figures for {', '.join(missing)}: run "
              f"`fabwatch report --backfill --since {month.shift(-12)}` first", file=err)
    return EXIT_OK


def write_or_mail(inventory: Inventory, report: Report, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Write the report's files (printing their paths), and with `--mail` mail them too."""
    if args.mail:
        return mail_now(inventory, report, Path(args.out), args.format, out, err)
    for path in write(report, Path(args.out), args.format):
        print(path, file=out)
    return EXIT_OK


def connection_of(args: argparse.Namespace) -> Connection:
    return Connection(args.prometheus, token_file=args.prometheus_token_file, username=args.prometheus_user,
                      password_file=args.prometheus_password_file, ca_file=args.prometheus_ca,
                      timeout=args.prometheus_timeout, lookback=args.prometheus_lookback)


def report_from_prometheus(inventory: Inventory, args: argparse.Namespace, month: Month, out: TextIO,
                           err: TextIO) -> int:
    """Write the month's report from the daily figures a Prometheus-compatible query API holds."""
    try:
        history = asyncio.run(read_prometheus(connection_of(args), inventory, month, time.time()))
    except PrometheusError as exc:
        print(f"fabwatch: cannot read the history from Prometheus: {exc}", file=err)
        return EXIT_FAILED
    report = summarize_history(inventory, history, month)
    status = write_or_mail(inventory, report, args, out, err)
    if status != EXIT_OK:
        return status
    for line in prometheus_notes(inventory, report, history, month):
        print(f"fabwatch: {line}", file=err)
    return EXIT_OK


def mail_now(inventory: Inventory, report: Report, directory: Path, formats: list[str], out: TextIO,
             err: TextIO) -> int:
    """`--mail`: write the report and mail it through `reports.email` now, as the schedule would."""
    from reports.delivery import deliver
    from reports.mail import DeliveryFailed

    email = inventory.reports.email if inventory.reports is not None else None
    if email is None:
        print("fabwatch: --mail needs a mail server: the inventory's reports.email", file=err)
        return EXIT_CONFIG
    try:
        delivered = asyncio.run(deliver(report, directory, formats, email))
    except DeliveryFailed as exc:
        print(f"fabwatch: the report was not mailed ({exc.reason}): {exc}", file=err)
        return EXIT_FAILED
    for path in delivered.paths:
        print(path, file=out)
    for note in delivered.notes:
        print(f"fabwatch: {note}", file=err)
    print(f"fabwatch: mailed the report of {report.month} to {', '.join(delivered.mailed_to)}", file=err)
    return EXIT_OK


def backfill(inventory: Inventory, store: RollupStore, first: date, last: date, err: TextIO) -> int:
    """Compute the rollups of every day from `first` to `last` from the records."""
    days = days_between(first, last, inventory.service.timezone)
    try:
        skipped = asyncio.run(roll_sources(inventory.sources, inventory.processes, store,
                                           inventory.service.timezone, days, progress_line(err)))
    except SourceError as exc:
        print(f"fabwatch: backfill failed: {exc}", file=err)
        return EXIT_FAILED
    if skipped:
        print(f"fabwatch: not rolled up (records not in a SQL source): {', '.join(skipped)}", file=err)
    return EXIT_OK
