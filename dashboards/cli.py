"""`fabwatch dashboards build|push`: write the dashboards and provisioning files, or upload them."""

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from collector.inventory.load import ConfigError, load_inventory
from collector.inventory.models import Inventory
from collector.logs import mask_secrets, safe_dsn
from dashboards.build import DEFAULT_PROMETHEUS_URL, PROVISIONED_PATH, build, build_dashboards, write
from dashboards.push import PushError, connect, credential_from, push

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
PUSH_CREDENTIALS = ("credentials: a service account token [env FABWATCH_GRAFANA_TOKEN], or a user "
                    "[env FABWATCH_GRAFANA_USER] and password [env FABWATCH_GRAFANA_PASSWORD]; each variable "
                    "may instead end in _FILE and name a file holding the value")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `dashboards` with its `build` and `push` subcommands to a subparsers action."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "dashboards", help="generate Grafana dashboards and provisioning files, or push them to Grafana")
    commands = parser.add_subparsers(title="dashboards commands", metavar="COMMAND", dest="dashboards_command",
                                     required=True)
    build_cmd = commands.add_parser("build", help="write the dashboards and provisioning files to a directory")
    _inventory_flag(build_cmd)
    build_cmd.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory")
    build_cmd.add_argument("--prometheus-url", default=_env("PROMETHEUS_URL", DEFAULT_PROMETHEUS_URL),
                           help=f"address of the provisioned Prometheus datasource (default: {DEFAULT_PROMETHEUS_URL}) "
                                "[env FABWATCH_PROMETHEUS_URL]")
    build_cmd.add_argument("--dashboards-path", default=_env("DASHBOARDS_PATH", PROVISIONED_PATH),
                           help=f"where Grafana reads the JSON files (default: {PROVISIONED_PATH}) "
                                "[env FABWATCH_DASHBOARDS_PATH]")
    push_cmd = commands.add_parser("push", help="upload the dashboards to Grafana", epilog=PUSH_CREDENTIALS)
    _inventory_flag(push_cmd)
    push_cmd.add_argument("--url", default=_env("GRAFANA_URL"), help="base URL of Grafana [env FABWATCH_GRAFANA_URL]")
    push_cmd.add_argument("--no-overwrite", action="store_true",
                          help="refuse (412) to replace dashboards changed in Grafana since they were pushed")
    parser.set_defaults(dashboards_run=run)
    return parser


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"FABWATCH_{name}") or default


def _inventory_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", action="append", metavar="FILE", default=argparse.SUPPRESS,
                        help="inventory file; repeat to merge several, or list them in the variable separated "
                             f"by {os.pathsep!r} [env FABWATCH_CONFIG]")


def run(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    """Run `dashboards build` or `dashboards push`; return the exit status."""
    env = os.environ if environ is None else environ
    inventory = _load(_config_paths(args, env), env)
    if inventory is None:
        return EXIT_CONFIG
    if args.dashboards_command == "build":
        return cmd_build(inventory, args)
    return cmd_push(inventory, args, env)


def _config_paths(args: argparse.Namespace, env: Mapping[str, str]) -> list[str]:
    given: list[Any] = getattr(args, "config", None) or env.get("FABWATCH_CONFIG", "").split(os.pathsep)
    return [path for item in given for path in (item if isinstance(item, list) else [item]) if path]


def _load(paths: Sequence[str], env: Mapping[str, str]) -> Inventory | None:
    if not paths:
        print("fabwatch: error: give an inventory with -c FILE (or FABWATCH_CONFIG)", file=sys.stderr)
        return None
    try:
        return load_inventory(paths, env)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def cmd_build(inventory: Inventory, args: argparse.Namespace) -> int:
    """Write every dashboard, the provisioning files and CONTENTS.md under --out."""
    output = build(inventory, prometheus_url=args.prometheus_url, dashboards_path=args.dashboards_path)
    try:
        paths = write(output, args.out)
    except OSError as exc:
        print(f"fabwatch: cannot write to {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"Wrote {len(output.dashboards)} dashboards and {len(paths) - len(output.dashboards)} other files "
          f"to {args.out}")
    return EXIT_OK


def cmd_push(inventory: Inventory, args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Upload every dashboard into the fabwatch folder of the Grafana at --url."""
    if not args.url:
        print("fabwatch: error: give the Grafana URL with --url (or FABWATCH_GRAFANA_URL)", file=sys.stderr)
        return EXIT_CONFIG
    try:
        api = connect(args.url, credential_from(env))
        saved = push(api, build_dashboards(inventory).values(), overwrite=not args.no_overwrite)
    except PushError as exc:
        print(f"fabwatch: {mask_secrets(str(exc))}", file=sys.stderr)  # "cannot reach" quotes the URL
        return EXIT_FAILED
    for item in saved:
        print(f"{item.uid}: version {item.version} {item.url}")
    print(f"Pushed {len(saved)} dashboards to {safe_dsn(args.url)}")
    return EXIT_OK
