"""The `fabwatch` command: serve, check, demo, simulate, schema.

Every flag of check, serve and demo can also come from an environment variable `FABWATCH_<FLAG>`
(e.g. `--listen` from `FABWATCH_LISTEN`; `-c/--config` from `FABWATCH_CONFIG`, several files
separated by `os.pathsep`), and those of simulate from `FABWATCH_SIMULATE_<FLAG>`; a flag given
on the command line wins.
"""

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import signal
import ssl
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from pydantic import ValidationError

from app.exposure import warn_exposure
from app.reload import processes_of
from app.service import GUARD, HEALTH, build_app, reload_inventory, serve, shifted_clock
from app.workers import EventsWorkers, events_sources, worker_command, worker_env
from collector.errors import CannotListen, SourceError
from collector.health import fabwatch_version
from collector.inventory.durations import parse_duration
from collector.inventory.load import ConfigError, callback_problems, load_inventory, load_web_config
from collector.inventory.models import Inventory, ServiceConfig
from collector.inventory.webconfig import WebConfig
from collector.logs import safe_dsn, setup_logging
from collector.samples import KpiReading
from collector.sampling import build_sampler
from collector.state import StateStore
from exporters.otlp import OtlpSettingsError

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
DEMO_DIR = ".fabwatch-demo"
DEMO_DSN_VAR = "FABWATCH_DEMO_DSN"
Listen = tuple[str, int]
_LOG = logging.getLogger("fabwatch.cli")

if TYPE_CHECKING:
    from app.demo_report import DemoReport  # imported by the demo alone: it loads the report code


@dataclass(frozen=True)
class EnvFlag:
    """A flag that falls back to an environment variable, then to a default."""

    dest: str
    env: str
    convert: Callable[[str], Any]
    default: Any = None
    choices: Sequence[str] | None = None
    """What the flag accepts, checked for the variable too (argparse checks only the flag)."""


def parse_listen(value: str) -> Listen:
    """Parse HOST:PORT (IPv6 in brackets) into (host, port)."""
    try:
        config = ServiceConfig(listen=value)
    except ValidationError as exc:
        message = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise argparse.ArgumentTypeError(message) from None
    return config.host, config.port


def _positive(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return number


REPORT_FORMATS = ("html", "pdf", "md", "json", "csv")
REPORT_DEFAULT_FORMATS = ("html", "md", "json", "csv")  # the PDF takes ten times as long as these four


def _duration(value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_report_prometheus(report_cmd: argparse.ArgumentParser, flags: list[EnvFlag]) -> None:
    """The flags of the report's second backend: a Prometheus-compatible query API."""
    _flag(report_cmd, flags, "--prometheus", env="REPORT_PROMETHEUS", metavar="URL",
          help="read the daily figures from this Prometheus-compatible query API (Prometheus, Thanos, Mimir, "
               "VictoriaMetrics) instead of the rollups (default: the rollups in the state file)")
    _flag(report_cmd, flags, "--prometheus-token-file", env="REPORT_PROMETHEUS_TOKEN_FILE", metavar="FILE",
          help="file holding a bearer token sent to --prometheus (default: none)")
    _flag(report_cmd, flags, "--prometheus-user", env="REPORT_PROMETHEUS_USER", metavar="USER",
          help="basic authentication user for --prometheus (default: none)")
    _flag(report_cmd, flags, "--prometheus-password-file", env="REPORT_PROMETHEUS_PASSWORD_FILE", metavar="FILE",
          help="file holding the basic authentication password of --prometheus-user (default: none)")
    _flag(report_cmd, flags, "--prometheus-ca", env="REPORT_PROMETHEUS_CA", metavar="FILE",
          help="PEM file of the CA that signed the --prometheus server's certificate (default: the system's)")
    _flag(report_cmd, flags, "--prometheus-timeout", env="REPORT_PROMETHEUS_TIMEOUT", convert=_duration,
          default=30.0, metavar="DURATION",
          help="time one query may take; 5xx answers and timeouts are retried 3 times (default: 30s)")
    _flag(report_cmd, flags, "--prometheus-lookback", env="REPORT_PROMETHEUS_LOOKBACK", convert=_duration,
          default=300.0, metavar="DURATION",
          help="how long before each day's end a reading may be: at least the scrape interval (default: 5m)")


def _workers(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return number



def _formats(value: str) -> list[str]:
    chosen = [part.strip() for part in value.split(",") if part.strip()]
    unknown = [part for part in chosen if part not in REPORT_FORMATS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown format {', '.join(unknown) or '(none)'}; "
                                         f"choose from {', '.join(REPORT_FORMATS)}")
    return chosen


def _paths(value: str) -> list[str]:
    return [part for part in value.split(os.pathsep) if part]


def _flag(parser: argparse.ArgumentParser, flags: list[EnvFlag], *names: str, env: str,
          help: str, convert: Callable[[str], Any] = str, default: Any = None,
          **kwargs: Any) -> None:
    """Add an option whose value falls back to `FABWATCH_<env>`, then to `default`."""
    action = parser.add_argument(*names, default=None, help=f"{help} [env FABWATCH_{env}]",
                                 **kwargs)
    if "type" not in kwargs and kwargs.get("action") != "append":
        action.type = convert
    flags.append(EnvFlag(action.dest, f"FABWATCH_{env}", convert, default, kwargs.get("choices")))


def build_parser(wanted: str | None = None) -> argparse.ArgumentParser:
    """Build the argument parser with its subcommands; `wanted` names the command that will run
    (its module is imported when it is a lazy one)."""
    parser = argparse.ArgumentParser(
        prog="fabwatch", description="Monitor the customer processes (eTOM 1.3.1) of an operator.")
    parser.add_argument("--version", action="version", version=f"fabwatch {fabwatch_version()}")
    common: list[EnvFlag] = []
    _flag(parser, common, "--log-level", env="LOG_LEVEL", default="info", help="log level (default: info)",
          choices=["debug", "info", "warning", "error"], convert=str.lower)
    parser.set_defaults(env_flags=common, command=None)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    flags: list[EnvFlag] = []
    serve_cmd = commands.add_parser("serve", help="sample the sources and serve /metrics")
    _config_flag(serve_cmd, flags)
    _flag(serve_cmd, flags, "--listen", env="LISTEN", convert=parse_listen,
          help="HOST:PORT to listen on (default: service.listen of the inventory)")
    _flag(serve_cmd, flags, "--state", env="STATE",
          help="state file, or a PostgreSQL URL (postgresql://user@host:port/db) shared by replicas that "
               "split the sources between them (default: service.state_path of the inventory)")
    _flag(serve_cmd, flags, "--replica-id", env="REPLICA_ID", metavar="ID",
          help="this replica's id in the leases of a PostgreSQL state, unique among the replicas "
               "(default: host name, process id and a random part)")
    _flag(serve_cmd, flags, "--web.config.file", env="WEB_CONFIG", metavar="FILE", dest="web_config",
          help="TLS and basic authentication of the service port, in the Prometheus exporter-toolkit's "
               "web config format (default: service.web_config of the inventory)")
    _flag(serve_cmd, flags, "--workers", env="WORKERS", convert=_workers, default=1, metavar="N",
          help="processes serving the events port (service.events_listen), each on a core, each writing "
               "durably to the record stores; this process keeps sampling and the service port (default: 1, "
               "this process serves the events port too)")
    _flag(serve_cmd, flags, "--clock-start", env="CLOCK_START", convert=float, metavar="UNIX_TIME",
          help="sample as if the clock read UNIX_TIME at start and ran on from there, to replay a dataset "
               "whose timestamps end at a fixed instant (default: the real clock)")
    _flag(serve_cmd, flags, "--clock-rate", env="CLOCK_RATE", convert=_positive, default=1.0, metavar="RATE",
          help="with --clock-start, seconds the clock advances per real second, for a soak: weeks in "
               "minutes (default: 1)")
    serve_cmd.set_defaults(command=cmd_serve, env_flags=common + flags)

    flags = []
    check_cmd = commands.add_parser(
        "check", help="validate the inventory, connect to every source and sample it once")
    _config_flag(check_cmd, flags)
    check_cmd.set_defaults(command=cmd_check, env_flags=common + flags)

    flags = []
    demo_cmd = commands.add_parser("demo", help="run a simulated operator and fabwatch on it")
    _flag(demo_cmd, flags, "--data-dir", env="DATA_DIR", default=DEMO_DIR,
          help=f"where the demo database and state live (default: {DEMO_DIR})")
    _flag(demo_cmd, flags, "--listen", env="LISTEN", convert=parse_listen,
          help="HOST:PORT to listen on (default: service.listen of examples/operator.yaml)")
    _flag(demo_cmd, flags, "--speed", env="SPEED", convert=_positive, default=1.0,
          help="simulated seconds per real second (default: 1)")
    _flag(demo_cmd, flags, "--days", env="DAYS", convert=_positive,
          help="days of history to backfill on the first run (default: 35, or back to the first day of last "
               "month if that is further, so that the demo's report is of a whole month)")
    _flag(demo_cmd, flags, "--seed", env="SEED", convert=int, default=1, help="random seed (default: 1)")
    _flag(demo_cmd, flags, "--scale", env="SCALE", convert=_positive, default=1.0,
          help="volume multiplier of the simulated operator (default: 1)")
    _flag(demo_cmd, flags, "--tmf", env="TMF", convert=truthy, default=False, action="store_const", const=True,
          help="serve the simulator as TMF Open APIs and let fabwatch poll them instead of reading SQL")
    _flag(demo_cmd, flags, "--db", env="DEMO_DB", metavar="URL",
          help="write tickets and orders the way ITSM/OSS systems store them into this database "
               "(postgresql+asyncpg://, mariadb+aiomysql://, sqlite+aiosqlite://) and watch them there")
    demo_cmd.set_defaults(command=cmd_demo, env_flags=common + flags)

    schema_cmd = commands.add_parser(
        "schema", help="print the inventory's JSON Schema (for editors), or its reference in Markdown")
    schema_cmd.add_argument("--markdown", action="store_true",
                            help="print the inventory reference (every key, its type, default and description)")
    schema_cmd.set_defaults(command=cmd_schema, env_flags=common)

    flags = []
    report_cmd = commands.add_parser(
        "report", help="write the monthly summary for managers, or backfill the daily rollups it reads")
    _config_flag(report_cmd, flags)
    _flag(report_cmd, flags, "--month", env="REPORT_MONTH", metavar="YYYY-MM",
          help="calendar month to report, in service.timezone (default: the last full month)")
    _flag(report_cmd, flags, "--format", env="REPORT_FORMAT", convert=_formats,
          default=list(REPORT_DEFAULT_FORMATS),
          help=f"formats to write, comma-separated: {', '.join(REPORT_FORMATS)} "
               f"(default: {','.join(REPORT_DEFAULT_FORMATS)})")
    _flag(report_cmd, flags, "--out", env="REPORT_OUT", default=".", metavar="DIR",
          help="directory the report files are written to (default: the working directory)")
    _flag(report_cmd, flags, "--state", env="STATE", metavar="FILE",
          help="state file holding the rollups (default: service.state_path)")
    _flag(report_cmd, flags, "--backfill", env="REPORT_BACKFILL", convert=truthy, default=False,
          action="store_const", const=True,
          help="compute the daily rollups of the past days from the records first (then, with --month, report)")
    _flag(report_cmd, flags, "--since", env="REPORT_SINCE", metavar="YYYY-MM",
          help="with --backfill, the first month to compute (default: the same month a year ago, "
               "so that the report has its year-on-year change and 12-month trend)")
    _add_report_prometheus(report_cmd, flags)
    _flag(report_cmd, flags, "--mail", env="REPORT_MAIL", convert=truthy, default=False,
          action="store_const", const=True,
          help="also mail the report now through the inventory's reports.email, to test those settings "
               "(default: only write it)")
    report_cmd.set_defaults(command=cmd_report, env_flags=common + flags)

    _add_simulate(commands, common, wanted)
    _add_lazy(commands, common, wanted)
    return parser


SIMULATE_HELP = "write simulated work items of the eight eTOM 1.3.1 processes into a database"
LAZY_COMMANDS = {
    "dashboards": ("dashboards.cli", "generate Grafana dashboards and provisioning files, or push them to Grafana"),
    "alerts": ("alerts.cli", "generate Prometheus rules and the Alertmanager config"),
}
"""Commands whose modules (Grafana SDK, rule builders) load only when the command runs, so that
`serve` stays small in memory and quick to start."""


def _add_lazy(commands: Any, common: list[EnvFlag], wanted: str | None) -> None:
    """Add the lazy commands: the real parser for `wanted`, a help-only entry for the others."""
    for name, (module, help_text) in LAZY_COMMANDS.items():
        if name == wanted:
            cli = importlib.import_module(module)
            cli.add_parser(commands).set_defaults(command=cli.run, env_flags=common)
        else:
            commands.add_parser(name, help=help_text, add_help=False)


def command_word(argv: Sequence[str]) -> str | None:
    """The subcommand named in `argv` (the first word that is neither an option nor its value)."""
    skip = False
    for token in argv:
        if skip:
            skip = False
        elif token == "--log-level":
            skip = True
        elif not token.startswith("-"):
            return token
    return None


def truthy(text: str) -> bool:
    """Read a boolean environment variable (1/true/yes/on or 0/false/no/off)."""
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false")


CONFIG_HELP = f"inventory file; repeat to merge several, or list them in the variable separated by {os.pathsep!r}"
"""The help of every command's `-c/--config` (followed by `[env FABWATCH_CONFIG]`)."""


def _config_flag(parser: argparse.ArgumentParser, flags: list[EnvFlag]) -> None:
    _flag(parser, flags, "-c", "--config", env="CONFIG", convert=_paths, action="append",
          metavar="FILE", help=CONFIG_HELP)


def _add_simulate(commands: Any, common: list[EnvFlag], wanted: str | None) -> None:
    """Add `simulate`, delegated to the simulator's own CLI when the simulator is installed."""
    if wanted != "simulate":  # like the lazy commands: `serve` never loads the simulator
        commands.add_parser("simulate", help=SIMULATE_HELP, add_help=False)
        return
    try:  # optional: fabwatch serves without the simulator
        simulator_cli = importlib.import_module("app.simulate")
    except ModuleNotFoundError as exc:
        if exc.name != "app.simulate" and exc.name != "simulator":
            raise
        return
    before = set(commands.choices)
    simulator_cli.add_parser(commands)
    for name in set(commands.choices) - before:
        commands.choices[name].set_defaults(command=_delegate(simulator_cli.run), env_flags=common)


def _delegate(run: Callable[[argparse.Namespace], Any]) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        result = run(args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        return int(result or 0)
    return command


def resolve_env(args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    """Fill every flag left unset from its environment variable, then from its default."""
    for flag in args.env_flags:
        if getattr(args, flag.dest) is not None:
            continue
        raw = environ.get(flag.env)
        if raw is None or raw == "":
            setattr(args, flag.dest, flag.default)
            continue
        try:
            value = flag.convert(raw)
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise SystemExit(f"fabwatch: error: {flag.env}={raw!r}: {exc}") from None
        if flag.choices is not None and value not in flag.choices:
            raise SystemExit(f"fabwatch: error: {flag.env}={raw!r}: choose from {', '.join(flag.choices)}")
        setattr(args, flag.dest, value)


HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""The signals fabwatch acts on: stop (SIGINT, SIGTERM) and reload (SIGHUP)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fabwatch command line; return the exit status."""
    # A blocked signal mask is inherited across exec: a supervisor or CI runner that starts fabwatch
    # with these blocked would leave a stop or a reload pending forever, the handlers never called
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(command_word(words))
    args = parser.parse_args(words)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    try:
        resolve_env(args, os.environ)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    if getattr(args, "config", "") is None:  # a command whose own parser has no env fallback (alerts)
        args.config = _paths(os.environ.get("FABWATCH_CONFIG", "")) or None
    if getattr(args, "config", "") is None:
        print("fabwatch: error: give an inventory with -c FILE (or FABWATCH_CONFIG)",
              file=sys.stderr)
        return EXIT_CONFIG
    if isinstance(getattr(args, "config", None), list):
        args.config = [path for item in args.config for path in _as_list(item)]
    setup_logging(args.log_level)
    return int(args.command(args))


def _as_list(item: str | list[str]) -> list[str]:
    return item if isinstance(item, list) else [item]


def load_or_report(paths: Sequence[str], environ: Mapping[str, str] | None = None,
                   err: TextIO | None = None) -> Inventory | None:
    """Load the inventory; on `ConfigError` print one line per problem and return None."""
    try:
        return load_inventory(paths, environ)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=err or sys.stderr)
        return None


# --- schema ------------------------------------------------------------------------------

def cmd_schema(args: argparse.Namespace) -> int:
    """Print the inventory's JSON Schema, or with --markdown its reference page."""
    # here, not at the top: `serve` has no use for them
    from collector.inventory.jsonschema import inventory_schema, schema_text
    from collector.inventory.reference import inventory_reference

    sys.stdout.write(inventory_reference() if args.markdown else schema_text(inventory_schema()))
    return EXIT_OK


# --- report ------------------------------------------------------------------------------

def cmd_report(args: argparse.Namespace) -> int:
    """Backfill the daily rollups and/or write a month's summary."""
    from app.report import run_report  # here: jinja2 and the report code are no use to `serve`

    inventory = load_or_report(args.config)
    if inventory is None:
        return EXIT_CONFIG
    return run_report(inventory, args, sys.stdout, sys.stderr)


# --- serve -------------------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace) -> int:
    """Serve /metrics for the inventory until SIGINT or SIGTERM."""
    inventory = load_or_report(args.config)
    if inventory is None:
        return EXIT_CONFIG
    host, port = args.listen or (inventory.service.host, inventory.service.port)
    inventory = listening_on(inventory, host, port)
    if not callbacks_reachable(inventory, f"--listen {host}:{port}" if args.listen else None):
        return EXIT_CONFIG
    web_path = args.web_config or inventory.service.web_config
    web_config = None if web_path is None else load_web_or_report(web_path)
    if web_path is not None and web_config is None:
        return EXIT_CONFIG
    context = None if web_config is None else _tls_or_report(web_config)
    if web_config is not None and web_config.tls_server_config is not None and context is None:
        return EXIT_CONFIG
    warn_exposure(inventory, host, port, web_config)
    if args.clock_start is None and args.clock_rate != 1.0:
        print("fabwatch: --clock-rate needs --clock-start (the instant the faster clock starts from)", file=sys.stderr)
        return EXIT_CONFIG
    clock = time.time if args.clock_start is None else shifted_clock(args.clock_start, args.clock_rate)
    paths = list(args.config)

    def reload() -> Inventory:  # as at start: `--listen` replaces service.listen
        return listening_on(load_inventory(paths), host, port)

    def reload_web() -> WebConfig:  # the file read at start, read again at each reload
        assert web_path is not None
        return load_web_config(web_path)

    workers = None
    if args.workers > 1:
        if inventory.service.events_listen is None or not events_sources(inventory):
            print("fabwatch: --workers needs service.events_listen and a tmf_events source: the workers serve "
                  "the events port", file=sys.stderr)
            return EXIT_CONFIG
        workers = EventsWorkers(args.workers, worker_command(paths, args.log_level), events_sources(inventory),
                                env=worker_env(args.state))
    served = Served(web_config, context, reload, None if web_path is None else reload_web, workers)
    return _run(_serve(inventory, host, port, args.state, clock, served, args.replica_id),
                fast=receives_events(inventory))


@dataclass(frozen=True)
class Served:
    """How `serve` serves: the web config and its TLS context, and what reads the files again."""

    web_config: WebConfig | None = None
    context: ssl.SSLContext | None = None
    loader: Callable[[], Inventory] | None = None
    web_loader: Callable[[], WebConfig] | None = None
    workers: EventsWorkers | None = None


def load_web_or_report(path: str) -> WebConfig | None:
    """Load the web config file; on `ConfigError` print one line per problem and return None."""
    try:
        return load_web_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"fabwatch: web config: {problem}", file=sys.stderr)
        return None


def web_config_usable(path: str | None) -> bool:
    """Check the web config file `serve` would use (none: nothing to check): its format, and that
    its certificate and key load; print the problems."""
    web_config = None if path is None else load_web_or_report(path)
    if path is not None and web_config is None:
        return False
    return web_config is None or web_config.tls_server_config is None or _tls_or_report(web_config) is not None


def _tls_or_report(web_config: WebConfig) -> ssl.SSLContext | None:
    if web_config.tls_server_config is None:
        return None
    from app.websecurity import WebConfigUnusable, tls_context

    try:
        return tls_context(web_config.tls_server_config)
    except WebConfigUnusable as exc:
        print(f"fabwatch: web config: {exc}", file=sys.stderr)
        return None


def listening_on(inventory: Inventory, host: str, port: int) -> Inventory:
    """The inventory as served: `--listen` replaces `service.listen`, which the default callback
    registered with a TMF hub is built from."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return inventory.model_copy(update={"service": inventory.service.model_copy(update={"listen": address})})


def callbacks_reachable(inventory: Inventory, override: str | None) -> bool:
    """Report the hub callbacks that `--listen` made unreachable (the inventory's own are checked
    when it is loaded)."""
    problems = callback_problems(inventory) if override else []
    for path, message in problems:
        print(f"fabwatch: {override}: {path}: {message}", file=sys.stderr)
    return not problems


def receives_events(inventory: Inventory) -> bool:
    """Whether the service receives TMF events (then the event loop is uvloop's)."""
    return any(source.kind == "tmf_events" for source in inventory.sources.values())


def _run(main: Coroutine[Any, Any, int], *, fast: bool) -> int:
    """Run the service; on uvloop when `fast`: it halves the CPU each event request costs, and a
    service that only samples and answers scrapes does not need the extra megabyte."""
    if fast:
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


async def _serve(inventory: Inventory, host: str, port: int, state: str | None,
                 clock: Callable[[], float] = time.time, served: Served | None = None,
                 replica: str | None = None) -> int:
    if not state_file_usable(state or inventory.service.state_path):
        return EXIT_FAILED
    served = served or Served()
    try:
        app = build_app(inventory, state_path=state, clock=clock, web_config=served.web_config, loader=served.loader,
                        web_loader=served.web_loader, replica=replica, workers=served.workers)
    except OtlpSettingsError as exc:
        print(f"fabwatch: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    guard = app[GUARD]
    if guard is not None:
        guard.context = served.context  # a reload loads a new certificate into it
    try:
        async with _stop_on_signals(lambda: reload_inventory(app)) as stop:
            await serve(app, host, port, stop, served.context)
    except CannotListen as exc:
        print(f"fabwatch: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        _cannot_listen(host, port, exc)
        return EXIT_FAILED
    return EXIT_OK


def state_file_usable(path: str | Path) -> bool:
    """Check the state file before serving; name it and the cause when it cannot be used (else
    every sample would fail as if the sources were down, or the start fail as a listen error)."""
    from collector.state import state_file_problem

    problem = state_file_problem(path)
    if problem is not None:
        print(f"fabwatch: cannot use the state file {safe_dsn(str(path))}: {problem}", file=sys.stderr)
    return problem is None


def _cannot_listen(host: str, port: int, exc: OSError) -> None:
    print(f"fabwatch: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)


@contextlib.asynccontextmanager
async def _stop_on_signals(on_hup: Callable[[], Coroutine[Any, Any, Any]] | None = None) -> Any:
    """Yield an event set by SIGINT or SIGTERM, and run `on_hup` on SIGHUP (a reload, one at a
    time: the reload serialises itself); restore the default handlers afterwards."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[Any]] = set()

    def hup() -> None:
        if on_hup is not None and not stop.is_set():
            task = loop.create_task(on_hup())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, hup)
    try:
        yield stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        for task in list(tasks):  # a reload still loading when the service stops
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# --- check -------------------------------------------------------------------------------

@dataclass(frozen=True)
class CheckRow:
    source: str
    process: str
    kpi: str
    value: str
    target: str
    seconds: str
    status: str


def cmd_check(args: argparse.Namespace) -> int:
    """Validate the inventory, then check and sample every source once; print a table."""
    inventory = load_or_report(args.config)
    if inventory is None or not web_config_usable(inventory.service.web_config):
        return EXIT_CONFIG
    rows = asyncio.run(check_sources(inventory))
    print_table(rows, sys.stdout)
    notes = asyncio.run(inspect_sources(inventory))
    if notes:
        print("\nrecords (time columns found, edge query plans):")
        for line in notes:
            print(f"  {line}")
    failed = sum(1 for row in rows if row.status != "ok")
    missed = sum(1 for row in rows if row.target.startswith("missed"))
    print(f"\n{len(inventory.sources)} source(s), {len(rows) - failed} ok, {failed} failed; "
          f"{missed} KPI(s) missing their target")
    return EXIT_FAILED if failed else EXIT_OK


async def check_sources(inventory: Inventory) -> list[CheckRow]:
    """Check the columns of every source and sample it once, on a throw-away state file."""
    rows: list[CheckRow] = []
    with tempfile.TemporaryDirectory(prefix="fabwatch-check-") as tmp:
        state = StateStore(Path(tmp) / "state.db")  # never advances the real watermarks
        try:
            for name in inventory.sources:
                rows += await _check_source(inventory, name, state)
        finally:
            state.close()
    return rows


async def inspect_sources(inventory: Inventory) -> list[str]:
    """What each SQL source's time columns are and how its database plans the edge queries."""
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fabwatch-check-") as tmp:
        state = StateStore(Path(tmp) / "state.db")
        try:
            for name, source in inventory.sources.items():
                if source.kind != "sql":
                    continue
                sampler = build_sampler(name, source, processes_of(inventory, name), state, inventory.service,
                                        state.path)
                try:
                    await sampler.open()
                    notes += [f"{name}: {line}" for line in await sampler.inspect()]
                except SourceError as exc:
                    notes.append(f"{name}: cannot inspect ({exc.reason}): {exc}")
                finally:
                    await sampler.close()
        finally:
            state.close()
    return notes


async def _check_source(inventory: Inventory, name: str, state: StateStore) -> list[CheckRow]:
    source = inventory.sources[name]
    sampler = build_sampler(name, source, processes_of(inventory, name), state, inventory.service, state.path)
    started = time.perf_counter()
    try:
        await sampler.open()
        problems = await sampler.check_columns()
        if problems:
            return [CheckRow(name, "-", "-", "-", "-", _secs(time.perf_counter() - started),
                             f"error (columns): {problem}") for problem in problems]
        sample = await sampler.sample()
    except SourceError as exc:
        return [CheckRow(name, "-", "-", "-", "-", _secs(time.perf_counter() - started),
                         f"error ({exc.reason}): {exc} [{safe_dsn(source.dsn)}]")]
    finally:
        await sampler.close()
    seconds = {(process, kpi): secs for process, kpi, secs in sample.kpi_seconds}
    return [CheckRow(name, r.process, r.kpi, "-" if r.value is None else f"{r.value:.6g}", target_cell(r),
                     _secs(seconds.get((r.process, r.kpi))), "ok") for r in sample.kpis]


def target_cell(reading: KpiReading) -> str:
    """Say whether a KPI meets its target (an SLA's: its objective), with the bounds: `missed (<= 40)`."""
    bounds = [f"{sign} {limit:.6g}" for sign, limit in ((">=", reading.target_min), ("<=", reading.target_max))
              if limit is not None]
    if not bounds:
        return "no target"
    verdict = {True: "met", False: "missed", None: "no value"}[reading.met]
    return f"{verdict} ({', '.join(bounds)})"


def _secs(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.3f}"


def print_table(rows: Sequence[CheckRow], out: TextIO) -> None:
    """Print the rows as an aligned text table."""
    header = CheckRow("SOURCE", "PROCESS", "KPI", "VALUE", "TARGET", "SECONDS", "STATUS")
    table = [header, *rows]
    columns = list(zip(*(_cells(row) for row in table), strict=True))
    widths = [max(len(cell) for cell in column) for column in columns[:-1]]
    for row in table:
        cells = _cells(row)
        print("  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=False))
              + "  " + cells[-1], file=out)


def _cells(row: CheckRow) -> tuple[str, ...]:
    return (row.source, row.process, row.kpi, row.value, row.target, row.seconds, row.status)


# --- demo --------------------------------------------------------------------------------

def example_inventory(name: str = "operator.yaml") -> Path:
    """Find examples/<name> in the checkout, or where a package install put it."""
    here = Path(__file__).resolve()
    candidates = [here.parents[1] / "examples" / name,
                  Path(sys.prefix) / "share" / "fabwatch" / "examples" / name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"examples/{name} not found (looked in "
                            + ", ".join(str(c) for c in candidates) + ")")


def cmd_demo(args: argparse.Namespace) -> int:
    """Backfill a simulated operator, then run it live and serve fabwatch on it."""
    data_dir = Path(args.data_dir).resolve()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"fabwatch: cannot use {data_dir} as the demo's data directory: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    database = data_dir / "operator.db"
    dsn = args.db or f"sqlite+aiosqlite:///{database}"
    try:
        example = example_inventory(_realistic_example(args) if args.db else "operator.yaml")
    except (FileNotFoundError, ValueError) as exc:
        print(f"fabwatch: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    inventory = load_or_report([str(example)], {**os.environ, DEMO_DSN_VAR: dsn})
    if inventory is None:
        return EXIT_CONFIG
    host, port = args.listen or (inventory.service.host, inventory.service.port)
    inventory = listening_on(inventory, host, port)
    # SIGINT stops the backfill even when the demo was started with it ignored (a shell's background
    # job, `nohup ... &`), as it stops `serve`, whose loop sets its own handler
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return asyncio.run(_demo(inventory, args, dsn, data_dir, host, port, example))
    except KeyboardInterrupt:  # Ctrl+C while backfilling: the next start backfills again
        print("fabwatch: interrupted", file=sys.stderr)
        return 130


def _realistic_example(args: argparse.Namespace) -> str:
    """Return the example mapping the realistic schema in --db (the TMF demo reads the simulator's own)."""
    from simulator.realistic import example_name

    if args.tmf:
        raise ValueError("--db and --tmf exclude each other: the TMF APIs serve the simulator's own tables")
    return example_name(args.db)


def demo_url(host: str, port: int) -> str:
    """The demo's base URL (IPv6 hosts in brackets)."""
    return f"http://{host if ':' not in host else f'[{host}]'}:{port}"


async def _demo(inventory: Inventory, args: argparse.Namespace, dsn: str, data_dir: Path,
                host: str, port: int, example: Path) -> int:
    from sqlalchemy.engine import make_url

    from app.demo_report import DemoReport, history_days, remember_start
    from simulator import Simulator  # only the demo needs it
    from simulator.realistic import RealisticSimulator

    print(f"fabwatch status page: {demo_url(host, port)}/", flush=True)  # first: what a user opens
    options = {"seed": args.seed, "scale": args.scale, "speed": args.speed}
    simulator = (RealisticSimulator(dsn, epoch_dsn=f"sqlite+aiosqlite:///{data_dir / 'operator.db'}", **options)
                 if args.db else Simulator(dsn, **options))
    try:
        await simulator.create_schema()
        if await simulator.cursor() is None:
            now = time.time()
            days = history_days(args.days, inventory.service.timezone, now)
            print(f"Backfilling {days:g} days of a simulated operator into "
                  f"{make_url(dsn).render_as_string() if args.db else data_dir / 'operator.db'} ...", flush=True)
            rows = await simulator.backfill(days, now)
            remember_start(data_dir, now - days * 86400)
            print(f"Backfilled {rows} rows.", flush=True)
        if args.tmf:
            print("report: none (records polled from TMF APIs are not rolled up yet)", flush=True)
            return await _demo_tmf(simulator, inventory, dsn, data_dir, host, port)
        report = DemoReport(example, {DEMO_DSN_VAR: dsn}, data_dir / "state.db", data_dir,
                            inventory.service.timezone, Path.cwd())
        return await _demo_live(simulator, inventory, data_dir, host, port, report)
    finally:
        await simulator.close()


async def _demo_tmf(simulator: Any, inventory: Inventory, dsn: str, data_dir: Path, host: str,
                    port: int) -> int:
    """Serve the simulator as TMF APIs on a free loopback port and run fabwatch polling them."""
    from aiohttp import web

    from simulator.tmf import TmfServer

    runner = web.AppRunner(TmfServer(dsn).app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    tmf_host, tmf_port = runner.addresses[0][:2]
    url = f"http://{tmf_host}:{tmf_port}"
    print(f"  TMF APIs of the simulated operator: {url}", flush=True)
    try:
        return await _demo_live(simulator, tmf_inventory(inventory, url, data_dir), data_dir, host, port)
    finally:
        await runner.cleanup()


def tmf_inventory(inventory: Inventory, url: str, data_dir: Path) -> Inventory:
    """Return the inventory with each process polled through the API the simulator serves it by."""
    from collector.inventory.sources import TmfSource
    from collector.sources.tmf import APIS
    from simulator.tmf import PROCESS_APIS

    sources: dict[str, Any] = {}
    processes = {}
    for name, process in inventory.processes.items():
        api, ticket_type = PROCESS_APIS[name]
        version = 4 if api == "tmf676" else 5  # TMF676 has no official v5
        sources[f"tmf_{name}"] = TmfSource(
            kind=api, base_url=url + APIS[api].base_paths[version], version=version,  # type: ignore[arg-type]
            query=f"ticketType={ticket_type}" if ticket_type else "", interval=15.0,
            incremental=True,  # the simulator filters lastUpdate where the specification has none too
            store=str(data_dir / f"records-{name}.db"))
        records = process.records.model_copy(update={"source": f"tmf_{name}"})
        processes[name] = process.model_copy(update={"records": records})
    return inventory.model_copy(update={"sources": sources, "processes": processes})


async def _demo_live(simulator: Any, inventory: Inventory, data_dir: Path, host: str,
                     port: int, report: "DemoReport | None" = None) -> int:
    """Run the live simulator and the service in this loop until a signal; with `report` (not for TMF
    sources, whose records are not rolled up), write the last full month's report beside them."""
    if not state_file_usable(data_dir / "state.db"):
        return EXIT_FAILED
    app = build_app(inventory, state_path=data_dir / "state.db")
    url = demo_url(host, port)
    async with _stop_on_signals() as stop:
        live = asyncio.create_task(simulator.run(stop, 1.0), name="simulator")
        print(f"fabwatch demo running on {data_dir}: status page {url}/\n"
              f"  metrics: {url}/metrics\n  ready:   {url}/readyz\n  API:     {url}/api/v1/openapi.json\n"
              "Press Ctrl+C (or send SIGTERM) to stop.", flush=True)
        health = app[HEALTH]
        written = None if report is None else asyncio.create_task(
            _demo_report(report, lambda: not health.not_sampled()), name="demo-report")
        try:
            await serve(app, host, port, stop)
        except OSError as exc:
            _cannot_listen(host, port, exc)
            return EXIT_FAILED
        finally:
            stop.set()
            if written is not None:
                written.cancel()
                await asyncio.gather(written, return_exceptions=True)
            await live
    return EXIT_OK


async def _demo_report(report: "DemoReport", ready: Callable[[], bool], patience: float = 60.0) -> None:
    """Write the demo's report once the service is ready (every source sampled once, or after `patience`
    seconds): the first samples, which fill the status page and /metrics, do not share the CPU with it."""
    from app.demo_report import write_report

    deadline = time.monotonic() + patience
    while not ready() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    await write_report(report, time.time(), sys.stdout, sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
