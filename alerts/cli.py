"""`fabwatch alerts build -c FILE --out DIR`: write the rules, their promtool tests and alertmanager.yml."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from alerts.build import build
from alerts.writer import write
from collector.inventory.checks import check_runbooks
from collector.inventory.load import ConfigError, load_inventory

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `alerts` command (with its `build` subcommand) to a subparsers object."""
    alerts: argparse.ArgumentParser = subparsers.add_parser(
        "alerts", help="generate Prometheus rules and the Alertmanager config")
    commands = alerts.add_subparsers(title="alerts commands", metavar="COMMAND", dest="alerts_command")
    build_cmd = commands.add_parser("build", help="write rules, promtool tests and alertmanager.yml")
    build_cmd.add_argument("-c", "--config", action="append", metavar="FILE",
                           help="inventory file; repeat to merge several, or list them in the variable "
                                f"separated by {os.pathsep!r} [env FABWATCH_CONFIG]")
    build_cmd.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    return alerts


def run(args: argparse.Namespace) -> int:
    """Run `fabwatch alerts build`; return the exit status."""
    if getattr(args, "alerts_command", None) != "build":
        print("fabwatch alerts: give a command: build", file=sys.stderr)
        return EXIT_CONFIG
    paths = [p for item in args.config or [] for p in (item if isinstance(item, list) else [item])]
    if not paths:
        print("fabwatch: error: give an inventory with -c FILE (or FABWATCH_CONFIG)", file=sys.stderr)
        return EXIT_CONFIG
    try:
        inventory = load_inventory(paths)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    problems = sorted(set(check_runbooks(inventory)))
    if problems:
        for path, message in problems:
            print(f"{path}: {message}", file=sys.stderr)
        return EXIT_CONFIG
    bundle = build(inventory)
    for note in bundle.notes:
        print(f"note: {note}", file=sys.stderr)
    try:
        written = write(bundle.documents, args.out)
    except OSError as exc:
        print(f"fabwatch: cannot write to {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"wrote {len(written)} files to {args.out}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Run the alerts command on its own (`python -m alerts.cli build ...`)."""
    parser = argparse.ArgumentParser(prog="fabwatch")
    add_parser(parser.add_subparsers())
    return run(parser.parse_args(["alerts", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    sys.exit(main())
