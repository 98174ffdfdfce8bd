"""`fabwatch simulate`: backfill history and/or run the simulated operator live."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import time
from zoneinfo import ZoneInfoNotFoundError

from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from app.cli import truthy
from simulator.incidents import Incident
from simulator.realistic import RealisticSimulator
from simulator.runner import Simulator, SimulatorError

log = logging.getLogger(__name__)
SCHEMAS = ("epoch", "realistic")


def _env(name: str, default: str | None = None) -> str | None:
    """Return FABWATCH_SIMULATE_<NAME> (read when the parser is built, never at import)."""
    return os.environ.get(f"FABWATCH_SIMULATE_{name}", default)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add the `simulate` sub-command (every flag also reads FABWATCH_SIMULATE_<FLAG>)."""
    parser = subparsers.add_parser(
        "simulate",
        help="write simulated work items of the eight eTOM 1.3.1 processes into a database",
        description="Backfill history (--days) and/or keep writing live (--live) into the records tables.",
    )
    dsn = _env("DSN")
    parser.add_argument(
        "--dsn", default=dsn, required=dsn is None,
        help="database to write into: sqlite+aiosqlite:///path or postgresql+asyncpg://... "
        "[env FABWATCH_SIMULATE_DSN]",
    )
    # String defaults: argparse converts them with `type` when `simulate` runs, so a bad variable is
    # "argument --days: invalid float value" and exit 2, and never stops another command.
    parser.add_argument("--days", type=float, default=_env("DAYS", "0"),
                        help="days of history to backfill (default: 0) [env FABWATCH_SIMULATE_DAYS]")
    parser.add_argument("--seed", type=int, default=_env("SEED", "1"),
                        help="random seed (default: 1) [env FABWATCH_SIMULATE_SEED]")
    parser.add_argument("--scale", type=float, default=_env("SCALE", "1"),
                        help="volume factor (default: 1) [env FABWATCH_SIMULATE_SCALE]")
    parser.add_argument("--live", action="store_true", default=None,
                        help="keep writing live (the variable: 1/true/yes/on or 0/false/no/off) "
                        "[env FABWATCH_SIMULATE_LIVE]")
    parser.add_argument("--speed", type=float, default=_env("SPEED", "1"),
                        help="time acceleration (default: 1) [env FABWATCH_SIMULATE_SPEED]")
    parser.add_argument("--tick", type=float, default=_env("TICK", "1"),
                        help="real seconds between live steps (default: 1) [env FABWATCH_SIMULATE_TICK]")
    parser.add_argument("--timezone", default=_env("TIMEZONE", "Europe/Berlin"),
                        help="time zone of the diurnal patterns (default: Europe/Berlin) "
                        "[env FABWATCH_SIMULATE_TIMEZONE]")
    parser.add_argument(
        "--incident",
        action="append",
        default=[s for s in (_env("INCIDENT") or "").split(",") if s],
        metavar="SPEC",
        help="process:kind:factor[:start_offset[:duration]] (kind: slow, fallout, surge); repeat for several, "
        "or list them in the variable separated by ',' [env FABWATCH_SIMULATE_INCIDENT]",
    )
    parser.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                        help="stop the live run after SECONDS (default: run until stopped)")
    parser.add_argument(
        "--schema",
        choices=SCHEMAS,
        default=_env("SCHEMA", "epoch"),
        help="epoch: the simulator's own tables only; realistic: also store tickets and orders as ITSM/OSS "
        "systems do (timestamps, codes, a status history; examples/realistic-*.yaml map them) (default: epoch) "
        "[env FABWATCH_SIMULATE_SCHEMA]",
    )
    parser.add_argument(
        "--epoch-dsn",
        default=_env("EPOCH_DSN"),
        help="with --schema realistic: where the simulator's own tables live (default: the --dsn database; "
        "required for MariaDB) [env FABWATCH_SIMULATE_EPOCH_DSN]",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the sub-command; return the exit code."""
    try:
        if args.live is None:
            args.live = _live_variable(_env("LIVE", "0") or "0")
        return asyncio.run(simulate(args))
    except (ValueError, SimulatorError, ArgumentError, ZoneInfoNotFoundError) as exc:  # bad arguments
        log.error("simulate failed error=%r", str(exc).strip("'\""))
        return 2
    except (OSError, SQLAlchemyError) as exc:  # the database cannot be reached or written
        log.error("simulate failed error=%r", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return 1


def _live_variable(text: str) -> bool:
    """FABWATCH_SIMULATE_LIVE, read as the other boolean variables are."""
    try:
        return truthy(text)
    except ValueError:
        raise ValueError(f"FABWATCH_SIMULATE_LIVE={text!r} is not 1/true/yes/on or 0/false/no/off") from None


async def simulate(args: argparse.Namespace) -> int:
    """Backfill, then run live or catch up once."""
    now = time.time()
    incidents = [Incident.parse(spec, now) for spec in args.incident]
    if args.schema not in SCHEMAS:  # argparse checks the flag's choices, not a default from the environment
        raise ValueError(f"FABWATCH_SIMULATE_SCHEMA={args.schema!r} is not one of {', '.join(SCHEMAS)}")
    sim: Simulator | RealisticSimulator
    if args.schema == "realistic":
        sim = RealisticSimulator(args.dsn, epoch_dsn=args.epoch_dsn, seed=args.seed, scale=args.scale,
                                 speed=args.speed, incidents=incidents, timezone=args.timezone)  # fmt: skip
    else:
        sim = Simulator(args.dsn, seed=args.seed, scale=args.scale, speed=args.speed, incidents=incidents,
                        timezone=args.timezone)  # fmt: skip
    try:
        cursor = await sim.cursor()
        if args.days > 0 and cursor is None:
            await sim.backfill(args.days, now)
        elif args.days > 0:
            log.info("simulate backfill skipped reason=history_present cursor=%.3f", cursor)
        if args.live or args.duration is not None:
            await _live(sim, args.tick, args.duration)
        else:
            rows = await sim.step(time.time())
            log.info("simulate step rows=%d", rows)
    finally:
        await sim.close()
    return 0


async def _live(sim: Simulator | RealisticSimulator, tick: float, duration: float | None) -> None:
    """Step every tick until SIGINT/SIGTERM or the duration is over."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if duration is not None:
        loop.call_later(duration, stop.set)
    try:
        await sim.run(stop, tick)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
