"""Database engines and Alembic migrations, for SQLite (embedded) and Postgres."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import weakref
from collections import namedtuple
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import psycopg
from alembic import command
from alembic.config import Config
from sqlalchemy import DateTime, Select, event, text
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.types import TypeDecorator

from agentmesh.errors import Unavailable

_T = TypeVar("_T")


@dataclass
class Page:
    """One page of records, and the row sequence the next page continues after."""

    items: list = field(default_factory=list)
    last_seq: int = 0  # 0 when there is no next page


class UtcDateTime(TypeDecorator):
    """A timestamp that always comes back timezone-aware, in UTC.

    Postgres keeps the zone; SQLite hands back naive datetimes. Every time in
    agentmesh is UTC, so naive ones are UTC by construction.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


async def fetch_page(
    conn, query, seq, after_seq: int, limit: int, *, newest_first: bool = False
) -> tuple[list, int]:
    """Up to `limit` rows of `query` past `after_seq` in `seq` order (keyset paging),
    and the seq a next page continues after: 0 when this page is the last.

    `newest_first` pages in descending `seq` order; "past" then means below,
    and an `after_seq` of 0 still means the first page.
    """
    if newest_first:
        query = query.where(seq < after_seq) if after_seq else query
        query = query.order_by(seq.desc())
    else:
        query = query.where(seq > after_seq).order_by(seq)
    rows = (await conn.execute(query.limit(limit + 1))).all()
    return page_of(rows, limit, seq.key)


def page_of(rows: Sequence[Any], limit: int, seq: str) -> tuple[list, int]:
    """`rows`, read with a limit of `limit + 1`, as a page: its rows, and the seq a next
    page continues after (0 when this page is the last)."""
    if len(rows) <= limit:
        return list(rows), 0
    return list(rows[:limit]), getattr(rows[limit - 1], seq)


def unreachable(error: BaseException) -> bool:
    """Whether `error` is the engine failing to reach Postgres (refused, restarting,
    shutting down): a caller may retry, unlike a bug. psycopg's OperationalError is
    SQLSTATE classes 08, 53, 57 and 58: connections, resources, shutdowns, cancels."""
    return isinstance(error, DBAPIError) and (
        error.connection_invalidated or isinstance(error.orig, psycopg.OperationalError)
    )


def create_engine(url: str) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(
            url, pool_size=10, max_overflow=10, pool_pre_ping=True, hide_parameters=True
        )
    database = parsed.database or ":memory:"
    pool: dict[str, Any] = {}
    if parsed.database:
        # Only the mesh's own user may read its data (SQLite keeps -wal and -shm
        # files at the database file's mode).
        path = Path(parsed.database)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        # One connection: its statements run inline (see _InlineSqlite), so two
        # transactions of this process must never wait on each other's lock.
        pool = {"pool_size": 1, "max_overflow": 0}

    async def connect() -> _InlineSqlite:
        return _InlineSqlite(sqlite3.connect(database, check_same_thread=False))

    engine = create_async_engine(url, hide_parameters=True, async_creator=connect, **pool)
    event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


class _InlineSqlite:
    """An SQLite connection in the shape SQLAlchemy's aiosqlite dialect drives, whose
    statements run on the event loop's thread instead of aiosqlite's.

    aiosqlite hops to its thread and back for every cursor step (open, execute,
    fetch, close, commit): through SQLAlchemy a three-statement transaction cost
    about 3.3 ms of CPU here, against 1.1 ms inline. An SQLite statement is a local
    B-tree operation of tens of microseconds; in WAL mode with synchronous=NORMAL a
    commit does not wait for the disk. The engine keeps one such connection, so
    this process's transactions take turns at its pool (without blocking the loop)
    rather than at SQLite's lock, where a writer that found the lock taken would
    sleep on the loop's thread. Another process holding the lock (replicas on one
    file) holds this loop for the rest of its transaction.
    """

    def __init__(self, connection: sqlite3.Connection):
        self._conn = connection
        self._connection: sqlite3.Connection | None = connection  # the dialect's "open" test
        self._tx = _Immediately()  # how the dialect sets isolation_level

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    def cursor(self) -> _InlineCursor:
        return _InlineCursor(self._conn.cursor())

    async def commit(self) -> None:
        self._conn.commit()

    async def rollback(self) -> None:
        self._conn.rollback()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)

    async def close(self) -> None:
        self.stop()

    def stop(self) -> None:
        self._connection = None
        self._conn.close()


class _Immediately:
    """aiosqlite's work queue, for the one job the dialect puts on it: run at once."""

    @staticmethod
    def put_nowait(job: tuple[asyncio.Future, Any]) -> None:
        future, function = job
        try:
            future.set_result(function())
        except Exception as error:  # noqa: BLE001 - handed to the awaiting caller
            future.set_exception(error)


class _InlineCursor:
    __slots__ = ("_cursor",)

    def __init__(self, cursor: sqlite3.Cursor):
        self._cursor = cursor

    async def __aenter__(self) -> _InlineCursor:
        return self

    async def __aexit__(self, *_: Any) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value

    async def execute(self, sql: str, parameters: Any = ()) -> _InlineCursor:
        self._cursor.execute(sql, parameters)
        return self

    async def executemany(self, sql: str, parameters: Any) -> _InlineCursor:
        self._cursor.executemany(sql, parameters)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list:
        return self._cursor.fetchmany(size or self._cursor.arraysize)

    async def fetchall(self) -> list:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()


def _sqlite_pragmas(connection, _record) -> None:  # type: ignore[no-untyped-def]
    # WAL lets readers run beside the writer; busy_timeout makes concurrent
    # writers wait for the lock instead of failing.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class Reads:
    """Point reads: one statement, outside a transaction, straight on the driver.

    Through the service's engine a point read costs several times its query: on SQLite
    the engine's statement machinery and its one connection's turns; on Postgres the
    connection is pinged, a transaction begun and rolled back, and the async layer adds
    its own cost (about 430 us a read here, against about 100 us for the same prepared
    statement on a bare asyncpg connection). One statement sees one consistent snapshot
    without any of that. Each statement is compiled once by SQLAlchemy, run on the
    driver's own connection, and its rows come back through the columns' own result
    processors (types, JSON, UTC times), as the engine would return them.

    SQLite: the read runs inline on the event loop. It is a local B-tree lookup of
    tens of microseconds, less than a hop to a thread and back, and in WAL mode a
    reader never waits for a writer.

    Postgres: asyncpg connections in a few slots, each connected when a read first
    needs it. A read takes a slot, and a connection the server ended (a restart, an
    idle timeout) is replaced there and the read, which changes nothing, runs again:
    a restart costs each slot one retry, an outage answers UNAVAILABLE at once, and
    the first read after it succeeds. (psycopg's pool reconnects in the background
    with a growing backoff: after a minute's outage its reads failed for 20 s
    more.) asyncpg costs about a third less CPU a read than psycopg's async
    connections and prepares each statement once per connection; its own pool's
    acquire and release cost a read another 100 us or so (a task to shield each
    release, a proxy, a timeout scope) for what a queue of slots does here.

    Statements must be built once (module constants, parameters as bindparams): each
    is compiled on first use and kept. Closed by dispose() with the engine.
    """

    def __init__(self, engine: AsyncEngine, connections: int = 4):
        url = engine.url
        self._dialect: Any = engine.dialect
        self._compiled: dict[int, _Compiled] = {}
        self._sqlite: sqlite3.Connection | None = None
        if url.get_backend_name() == "sqlite":
            # One connection: reads run one at a time on the loop's thread.
            self._sqlite = sqlite3.connect(
                url.database or ":memory:", check_same_thread=False, isolation_level=None
            )
            _sqlite_pragmas(self._sqlite, None)
            # A WAL reader waits for no writer; should it ever find the database
            # busy (recovery after a crash), it holds the loop a moment, not 30 s.
            self._sqlite.execute("PRAGMA busy_timeout=250")
        else:
            self._dialect = asyncpg_dialect()  # $1 parameters, asyncpg's result types
            self._dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._connections = connections
            # A slot is None until a read connects there, and again once its
            # connection was lost; LIFO, so idle slots stay idle.
            self._slots: asyncio.LifoQueue[asyncpg.Connection | None] = asyncio.LifoQueue()
            for _ in range(connections):
                self._slots.put_nowait(None)
            self._closed = False
        _READS.setdefault(engine, []).append(self)

    async def first(self, statement: Select, params: Mapping | None = None) -> Any:
        rows = await self.all(statement, params)
        return rows[0] if rows else None

    async def all(self, statement: Select, params: Mapping | None = None) -> list[Any]:
        compiled = self._compiled.get(id(statement))
        if compiled is None:
            compiled = self._compiled[id(statement)] = _Compiled(statement, self._dialect)
        if self._sqlite is not None:
            records = self._sqlite.execute(compiled.sql, compiled.values(params)).fetchall()
            return [compiled.row(record) for record in records]
        connection = await self._slots.get()
        try:
            try:
                connection = await self._connected(connection)
                records = await connection.fetch(compiled.sql, *compiled.values(params))
            except _CONNECTION_LOST:
                _discard(connection)
                connection = None
                connection = await self._connected(None)
                records = await connection.fetch(compiled.sql, *compiled.values(params))
        except BaseException as error:
            # Lost, cancelled or failed mid-read: the connection's state is unknown.
            _discard(connection)
            connection = None
            if isinstance(error, _CONNECTION_LOST):
                raise Unavailable("the service's database is unreachable; try again") from None
            raise
        finally:
            if self._closed:
                _discard(connection)
                connection = None
            self._slots.put_nowait(connection)
        # No timeout of its own (asyncio's timeouts cost a read several percent): a
        # slot is free once a read in flight ends, and a connection is made within
        # the connect timeout or refused.
        return [compiled.row(record) for record in records]

    async def _connected(self, connection: asyncpg.Connection | None) -> asyncpg.Connection:
        if connection is not None and not connection.is_closed():
            return connection
        connection = await asyncpg.connect(self._dsn, timeout=_CONNECT_SECONDS)
        try:
            await _json_codecs(connection)
        except BaseException:
            connection.terminate()
            raise
        return connection

    async def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
            return
        self._closed = True  # a read in flight ends its connection when it is done
        try:  # waits for reads in flight, but not for a server that stopped answering
            async with asyncio.timeout(_CONNECT_SECONDS):
                for _ in range(self._connections):
                    if (connection := await self._slots.get()) is not None:
                        await connection.close()
        except TimeoutError:
            while not self._slots.empty():
                _discard(self._slots.get_nowait())


def _discard(connection: asyncpg.Connection | None) -> None:
    """Ends a connection at once, without a word to the server (it may be gone)."""
    if connection is not None:
        connection.terminate()


# A connection closed under a read, one refused or not made in time, or the server
# shutting down: another connection may work, and if none does, the database is down.
_CONNECTION_LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.InternalClientError,  # what a read on a connection the server just ended may see
    asyncpg.exceptions.OperatorInterventionError,
    OSError,
    TimeoutError,
)
_CONNECT_SECONDS = 5.0


async def _json_codecs(connection: asyncpg.Connection) -> None:
    """JSON as the engine returns it (parsed), where asyncpg's default is the text."""
    for name in ("json", "jsonb"):
        await connection.set_type_codec(
            name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


class _Compiled:
    """A statement as the driver runs it: its SQL, its parameters (named for
    psycopg, in order for sqlite3), and how to turn a record into a row with the
    statement's column names and types."""

    def __init__(self, statement: Select, dialect: Any):
        self.statement = statement  # kept alive: the cache is keyed by its id
        compiled = statement.compile(dialect=dialect)
        self.sql = str(compiled)
        self._defaults = compiled.params
        self._order = compiled.positiontup if compiled.positional else None
        columns = statement.selected_columns
        self._processors = [
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns
        ]
        self._row: Any = namedtuple("Row", [column.key for column in columns])  # type: ignore[misc]

    def values(self, params: Mapping | None) -> Any:
        values = {**self._defaults, **(params or {})}
        return values if self._order is None else [values[name] for name in self._order]

    def row(self, record: Sequence) -> Any:
        return self._row(
            *(
                value if process is None else process(value)
                for process, value in zip(self._processors, record, strict=True)
            )
        )


_READS: weakref.WeakKeyDictionary[AsyncEngine, list[Reads]] = weakref.WeakKeyDictionary()


async def dispose(engine: AsyncEngine) -> None:
    """Closes the engine's pooled connections, and its Reads'."""
    for reads in _READS.pop(engine, []):
        await reads.close()
    await engine.dispose()


def run_migrations_from_env() -> None:
    """What every service's migrations/env.py does: migrate the URL migrate() was given."""
    from alembic import context
    from sqlalchemy import pool

    engine = create_sync_engine(context.config.attributes["url"], poolclass=pool.NullPool)
    with engine.connect() as connection:
        # render_as_batch lets ALTERs run on SQLite, which rebuilds the table instead.
        # Each service keeps its own version table: services may share one database.
        context.configure(
            connection=connection,
            render_as_batch=True,
            version_table=context.config.attributes["version_table"],
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # Replicas starting together migrate one at a time: the rest wait here,
                # then find the version table at head and do nothing.
                version_table = context.config.attributes["version_table"]
                key = int.from_bytes(hashlib.sha256(version_table.encode()).digest()[:8], "big")
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": key - (1 << 63)}
                )
            context.run_migrations()
    engine.dispose()


def _alembic_config(migrations: Path, url: str) -> Config:
    config = Config()
    config.attributes["version_table"] = f"alembic_version_{migrations.parent.name}"
    config.set_main_option("script_location", str(migrations))
    # Migrations run on a plain (sync) driver: the same URL minus the async one.
    sync_url = make_url(url)
    if sync_url.drivername == "sqlite+aiosqlite":
        sync_url = sync_url.set(drivername="sqlite")
    config.attributes["url"] = sync_url
    return config


def migrate(migrations: Path, url: str, revision: str = "head") -> None:
    command.upgrade(_alembic_config(migrations, url), revision)


def downgrade(migrations: Path, url: str, revision: str = "base") -> None:
    command.downgrade(_alembic_config(migrations, url), revision)


async def open_database(url: str, migrations: Path) -> AsyncEngine:
    """A service's database, migrated to the newest revision of its migrations."""
    await asyncio.to_thread(migrate, migrations, url)
    return create_engine(url)
