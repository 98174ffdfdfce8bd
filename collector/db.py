"""The database layer: read-only connections, timeouts enforced by the database, typed errors.

It knows nothing of KPIs, schedulers or exporters; the engine asks it for a connection.
"""

import asyncio
import contextlib
import logging
import os
import sqlite3
import struct
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, event, text
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import URL, CursorResult, Dialect, make_url
from sqlalchemy.exc import DBAPIError, InvalidRequestError, SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql.expression import Executable
from sqlalchemy.util import await_, greenlet_spawn

from collector.errors import (
    SourceError,
    SourceQueryFailed,
    SourceRefused,
    SourceTimeout,
    SourceUnreachable,
)
from collector.inventory.models import SqlSource
from collector.logs import log_event

_LOG = logging.getLogger("fabwatch.db")

BACKSTOP_SECONDS = 2.0
"""Extra time asyncio grants after the database's own timeout, for a stuck driver."""
INTERRUPT_REPEAT_SECONDS = 0.05
"""Seconds between two interrupts of an expired SQLite transaction (see `SqliteDeadline`)."""
_T = TypeVar("_T")

_MYSQL_DIALECTS = frozenset({"mysql", "mariadb"})
_COM_SET_OPTION, _MULTI_STATEMENTS_OFF = 0x1B, 1  # the MySQL protocol's command and option
_MARIADB = "fabwatch_mariadb"
"""Key of a pooled MariaDB/MySQL connection's `info`: True on MariaDB, False on MySQL."""
# MariaDB/MySQL error numbers by reason (their SQLSTATEs are too coarse: HY000 for most).
_MYSQL_TIMEOUT = frozenset({
    1969,  # MariaDB: max_statement_time exceeded
    3024,  # MySQL: max_execution_time exceeded
    1205,  # lock wait timeout
    1317,  # query execution was interrupted
})
_MYSQL_REFUSED = frozenset({
    1044,  # access denied to the database
    1045,  # access denied (user, password)
    1142,  # command denied on a table
    1143,  # command denied on a column
    1227,  # a privilege is missing
    1370,  # command denied on a routine
    1792,  # cannot execute the statement in a READ ONLY transaction
})
_MYSQL_UNREACHABLE = frozenset({
    2002,  # cannot connect through the socket
    2003,  # cannot connect to the server
    2006,  # server has gone away
    2013,  # lost connection during the query
    2055,  # lost connection (system error)
})
_MYSQL_QUERY = frozenset({
    1054,  # unknown column
    1064,  # syntax error
    1146,  # table does not exist
})


class AsyncConnection:
    """The part of `sqlalchemy.ext.asyncio.AsyncConnection` that fabwatch uses, done the same way.

    Each call runs the Core connection's method in a greenlet that awaits the asyncio driver
    (asyncpg, aiomysql, aiosqlite). SQLAlchemy's own asyncio extension cannot be imported without
    its ORM session classes, which are 5 to 6 MiB of resident memory that `fabwatch serve` never
    uses.
    """

    def __init__(self, sync_connection: Connection) -> None:
        self.sync_connection = sync_connection

    @property
    def dialect(self) -> Dialect:
        return self.sync_connection.dialect

    async def execute(self, statement: Executable, parameters: Mapping[str, Any] | None = None) -> CursorResult[Any]:
        """Run a statement; the rows are buffered, so the result is read without awaiting."""
        return await greenlet_spawn(self.sync_connection.execute, statement, parameters)

    async def run_sync(self, fn: Callable[[Connection], _T]) -> _T:
        """Call `fn` with the Core connection (e.g. to inspect the schema)."""
        return await greenlet_spawn(fn, self.sync_connection)

    async def driver_connection(self) -> Any:
        """The driver's own connection object (an `aiosqlite.Connection`, an `asyncpg.Connection`)."""
        pooled = await greenlet_spawn(getattr, self.sync_connection, "connection")
        return pooled.driver_connection

    async def info(self) -> dict[Any, Any]:
        """The pooled connection's `info` dict, kept as long as the database connection lives."""
        pooled = await greenlet_spawn(getattr, self.sync_connection, "connection")
        info: dict[Any, Any] = pooled.info
        return info

    async def rollback(self) -> None:
        await greenlet_spawn(self.sync_connection.rollback)

    async def invalidate(self) -> None:
        await greenlet_spawn(self.sync_connection.invalidate)

    async def close(self) -> None:
        await greenlet_spawn(self.sync_connection.close)


class AsyncEngine:
    """A Core engine with an asyncio driver, connected to and disposed of from the event loop
    (see `AsyncConnection` for why not `sqlalchemy.ext.asyncio`)."""

    def __init__(self, sync_engine: Engine) -> None:
        if not sync_engine.dialect.is_async:
            raise InvalidRequestError("The asyncio extension requires an async driver to be used. "
                                      f"The loaded {sync_engine.dialect.driver!r} is not async.")
        self.sync_engine = sync_engine
        self.file_identity: tuple[int, int] | None = None
        """(device, inode) of the SQLite file the pooled connections have open."""
        self.aborted: set[asyncio.Task[Any]] = set()
        """The tasks `abort` applies to, until each has unwound: their SQLite transactions are
        interrupted at once (PostgreSQL's statements are cancelled by asyncpg when their task is).
        Not a lasting flag: an engine kept across a reload samples again afterwards."""
        self.deadlines: set[SqliteDeadline] = set()
        """The deadlines of this engine's SQLite transactions in progress."""
        self.plan_cache_mode = "force_custom_plan"
        """PostgreSQL's plan mode for this engine's reads (`auto` for a record store: see `create_engine`)."""

    @property
    def aborting(self) -> bool:
        """Whether a sample `abort` applies to has not yet unwound."""
        return bool(self.aborted)

    def abort(self) -> None:
        """Make the running SQLite statements of this engine stop now: a query runs on in
        aiosqlite's thread when its task is cancelled, and unwinding waits for it (up to the
        whole timeout, past a stop's grace). For the samples about to be cancelled (a stop, a
        reload): the tasks running these statements, until they are done, and no other."""
        for deadline in list(self.deadlines):
            self._abort_task(deadline.task)
            deadline.expire()

    def _abort_task(self, task: asyncio.Task[Any] | None) -> None:
        if task is None or task.done() or task in self.aborted:
            return
        self.aborted.add(task)
        task.add_done_callback(self.aborted.discard)

    @property
    def url(self) -> URL:
        return self.sync_engine.url

    async def connect(self) -> AsyncConnection:
        return AsyncConnection(await greenlet_spawn(self.sync_engine.connect))

    async def dispose(self) -> None:
        await greenlet_spawn(self.sync_engine.dispose)


@asynccontextmanager
async def guard(source: str, timeout: float) -> AsyncIterator[None]:
    """Bound a sample in time and turn driver exceptions into typed `SourceError`s."""
    try:
        # The database enforces the timeout first; this is the backstop for a stuck driver.
        async with asyncio.timeout(timeout + BACKSTOP_SECONDS):
            yield
    except SourceError:
        raise
    except TimeoutError as exc:
        raise SourceTimeout(source, f"no answer within {timeout:g}s") from exc
    except DBAPIError as exc:
        raise classify(source, exc) from exc
    except (SQLAlchemyError, ValueError, TypeError) as exc:
        raise SourceQueryFailed(source, str(exc).splitlines()[0]) from exc


@asynccontextmanager
async def read_only(source: str, engine: AsyncEngine, timeout: float) -> AsyncIterator[AsyncConnection]:
    """Yield a connection in a read-only transaction whose statements stop after `timeout`."""
    await _follow_sqlite_file(source, engine)
    try:
        conn = await engine.connect()
    except (OSError, DBAPIError) as exc:
        refused = isinstance(exc, DBAPIError) and (_sqlstate(exc).startswith("28")
                                                   or _mysql_code(exc) in _MYSQL_REFUSED)
        error = SourceRefused if refused else SourceUnreachable
        raise error(source, _first_line(exc)) from exc
    deadline: SqliteDeadline | None = None
    try:
        if conn.dialect.name in _MYSQL_DIALECTS:
            await _mysql_read_only(conn, timeout)
        elif conn.dialect.name == "postgresql":
            # One round trip: read only (`SET TRANSACTION READ ONLY`, which may follow a query: only
            # going back to read-write may not), the timeout, and custom plans for the range queries
            # (a generic plan cannot see that (:lo, :hi] is a few seconds wide and scans whole indexes).
            await conn.execute(text(
                "SELECT set_config('transaction_read_only', 'on', true), "
                f"set_config('statement_timeout', '{int(timeout * 1000)}', true), "
                f"set_config('plan_cache_mode', '{engine.plan_cache_mode}', true)"))
        elif conn.dialect.name == "sqlite":
            deadline = await _sqlite_deadline(conn, timeout, engine)
        yield conn
    finally:
        if deadline is not None:  # before the rollback, which must not be interrupted
            deadline.cancel()
            engine.deadlines.discard(deadline)
        await _release(conn)


def create_engine(source: SqlSource) -> AsyncEngine:
    """Create the connection pool of a source; connecting happens on first use."""
    url = make_url(source.dsn)
    options: dict[str, Any] = {"pool_pre_ping": True, "pool_timeout": source.timeout}
    if url.get_backend_name() == "sqlite":
        options["connect_args"] = {"timeout": source.timeout}
    else:
        options.update(pool_size=source.pool_size, max_overflow=0)
    store = False
    if url.get_backend_name() == "postgresql" and "search_path" in url.query:
        # A record store in PostgreSQL (`collector.sources.pgstore`): its tables are in the source's
        # schema, set as the session's search path (asyncpg's server settings: no round trip), and
        # PostgreSQL picks its plans (`auto`): forced custom plans re-plan every statement of every
        # cycle, which cost a 5,000-record store more than its reads (bench/store_backends.py).
        options["connect_args"] = {"server_settings": {"search_path": str(url.query["search_path"])}}
        store = True
        url = url.difference_update_query(["search_path"])
    # `_is_async` picks the asyncio variant of a dialect that has both (postgresql+psycopg), as
    # `create_async_engine` does.
    engine = AsyncEngine(create_sync_engine(url, _is_async=True, **options))
    if store:
        engine.plan_cache_mode = "auto"
    if url.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_read_only)
    elif url.get_backend_name() in _MYSQL_DIALECTS:
        event.listen(engine.sync_engine, "connect", _mysql_session)
    return engine


async def _release(conn: AsyncConnection) -> None:
    """Roll back and return the connection; a connection broken by a cancelled query is discarded."""
    try:
        await conn.rollback()
    except SQLAlchemyError:
        await conn.invalidate()
    await conn.close()


async def _follow_sqlite_file(source: str, engine: AsyncEngine) -> None:
    """Refuse to connect to a missing SQLite file (connecting would create an empty database), and
    drop the pooled connections when the file was replaced (a restore, `mv`, rsync): they keep
    the old, deleted file open and would read it for ever, with the source reported up."""
    database = engine.url.database
    if engine.url.get_backend_name() != "sqlite" or not database or database == ":memory:" \
            or database.startswith("file:"):
        return
    try:
        status = os.stat(database)
    except FileNotFoundError:
        raise SourceUnreachable(source, f"SQLite database file {database} does not exist") from None
    except OSError as exc:
        raise SourceUnreachable(source, f"SQLite database file {database}: {exc.strerror}") from None
    identity = (status.st_dev, status.st_ino)
    if engine.file_identity is not None and engine.file_identity != identity:
        log_event(_LOG, "sqlite_file_replaced", logging.WARNING, source=source, file=database,
                  action="reconnecting")
        await engine.dispose()
    engine.file_identity = identity


class SqliteDeadline:
    """Interrupt one SQLite connection's statements once `timeout` has passed, or at once on
    `expire`, whatever they are doing. SQLite has no statement timeout, and a progress handler
    is not called while a slow function runs (`randomblob(20000000)` on each row: 18 s past a
    2 s timeout); `sqlite3_interrupt` stops the statement at its next row."""

    def __init__(self, dbapi_connection: sqlite3.Connection, timeout: float) -> None:
        self._dbapi_connection = dbapi_connection
        self._loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        """The task whose transaction this is (the sample an `abort` applies to)."""
        self._timer = self._loop.call_later(timeout, self.expire)

    def expire(self) -> None:
        """Interrupt the statement running now, and again every `INTERRUPT_REPEAT_SECONDS` until
        `cancel`: an interrupt only reaches the statements running when it is made, and the
        connection's thread may be about to start the next one."""
        self._timer.cancel()
        with contextlib.suppress(sqlite3.ProgrammingError):  # already closed: nothing runs
            self._dbapi_connection.interrupt()  # sqlite3 allows it from any thread
        self._timer = self._loop.call_later(INTERRUPT_REPEAT_SECONDS, self.expire)

    def cancel(self) -> None:
        """Stop interrupting (the transaction is over)."""
        self._timer.cancel()


async def _sqlite_deadline(conn: AsyncConnection, timeout: float, engine: AsyncEngine) -> SqliteDeadline:
    """Make SQLite stop this connection's statements after `timeout` (or at once if this task's
    sample has been aborted and is unwinding), and on the engine's `abort`."""
    driver = await conn.driver_connection()
    # aiosqlite's own `interrupt()` is a coroutine; a timer needs the sqlite3 connection itself.
    deadline = SqliteDeadline(driver._conn, timeout)
    engine.deadlines.add(deadline)
    if deadline.task in engine.aborted:
        deadline.expire()
    return deadline


def _sqlite_read_only(dbapi_connection: Any, _record: Any) -> None:
    """Make every SQLite connection refuse writes (SQLite enforces PRAGMA query_only)."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA query_only = ON")
    cursor.close()


def _mysql_session(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    """Make every MariaDB/MySQL connection run one statement per call and read and bind
    TIMESTAMP columns in UTC; note which of the two servers it is (their timeouts differ)."""
    driver: Any = record.driver_connection
    # aiomysql always asks for multi-statements: `SELECT 1; COMMIT; DELETE ...; COMMIT` would end
    # the read-only transaction and write. COM_SET_OPTION turns them off for the session (a
    # private method of aiomysql: tests/collector/test_engine_mariadb.py checks it still works).
    await_(driver._execute_command(_COM_SET_OPTION, struct.pack("<H", _MULTI_STATEMENTS_OFF)))
    await_(driver._read_packet())  # an EOF packet, or the error raised
    cursor = dbapi_connection.cursor()
    cursor.execute("SET time_zone = '+00:00'")
    cursor.close()
    # The handshake's version string ("5.5.5-10.11.6-MariaDB..."): no round trip.
    record.info[_MARIADB] = "MariaDB" in driver.get_server_info()


async def _mysql_read_only(conn: AsyncConnection, timeout: float) -> None:
    """Start a read-only transaction whose statements the server stops after `timeout`."""
    if (await conn.info()).get(_MARIADB):
        limit = f"max_statement_time = {timeout:.6f}"  # seconds, to the microsecond
    else:
        limit = f"max_execution_time = {max(1, round(timeout * 1000))}"  # milliseconds; 0 = none
    await conn.execute(text(f"SET SESSION {limit}"))
    await conn.execute(text("START TRANSACTION READ ONLY"))


def _mysql_code(exc: DBAPIError) -> int | None:
    """The MariaDB/MySQL error number of a driver error (PyMySQL's first argument)."""
    args = getattr(exc.orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _sqlstate(exc: DBAPIError) -> str:
    orig = exc.orig
    return str(getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or "")


def classify(source: str, exc: DBAPIError, where: str = "") -> SourceError:
    """The typed error of a driver error; `where` prefixes its message (e.g. `process problem: `)."""
    state, code, message = _sqlstate(exc), _mysql_code(exc), where + _first_line(exc)
    lowered = message.lower()
    if code in _MYSQL_QUERY:
        return SourceQueryFailed(source, message)  # before the words: a column may be named "readonly"
    if state == "57014" or code in _MYSQL_TIMEOUT or "interrupted" in lowered or "database is locked" in lowered:
        # SQLite's "locked": a writer held the lock for the whole busy timeout (the source's timeout)
        return SourceTimeout(source, message)
    if state in {"25006", "42501"} or state.startswith("28") or code in _MYSQL_REFUSED \
            or "readonly" in lowered or "read-only" in lowered:
        return SourceRefused(source, message)
    if state.startswith("08") or code in _MYSQL_UNREACHABLE or exc.connection_invalidated \
            or "unable to open" in lowered:
        return SourceUnreachable(source, message)
    return SourceQueryFailed(source, message)


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    code, *rest = getattr(orig, "args", None) or (None,)
    if not isinstance(orig, OSError) and isinstance(code, int) and len(rest) == 1 and isinstance(rest[0], str):
        orig = f"{rest[0]} (error {code})"  # PyMySQL's (number, message): not a tuple's repr
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]
