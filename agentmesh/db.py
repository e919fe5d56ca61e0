"""Database engines and Alembic migrations, for SQLite (embedded) and Postgres."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import weakref
from collections import namedtuple
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from alembic import command
from alembic.config import Config
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import DateTime, Select, event, text
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.types import TypeDecorator

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
    if len(rows) <= limit:
        return rows, 0
    return rows[:limit], getattr(rows[limit - 1], seq.key)


def create_engine(url: str) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(
            url, pool_size=10, max_overflow=10, pool_pre_ping=True, hide_parameters=True
        )
    if parsed.database:
        # Only the mesh's own user may read its data (SQLite keeps -wal and -shm
        # files at the database file's mode).
        path = Path(parsed.database)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
    engine = create_async_engine(url, hide_parameters=True)
    event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


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

    Through the service's engine a point read costs several times its query: on
    SQLite aiosqlite hops to its thread for every cursor operation; on Postgres the
    connection is pinged, a transaction begun and rolled back, and the async layer
    adds its own cost (about 430 us a read here, against 115 us for the same
    prepared statement on a bare psycopg connection). One statement sees one
    consistent snapshot without any of that. Each statement is compiled once by
    SQLAlchemy, run on the driver's own connection, and its rows come back through
    the columns' own result processors (types, JSON, UTC times), as the engine
    would return them.

    SQLite: the read runs inline on the event loop. It is a local B-tree lookup of
    tens of microseconds, less than a hop to a thread and back, and in WAL mode a
    reader never waits for a writer. Postgres: psycopg's async connections in
    autocommit, from a small pool, each statement prepared on the server.

    Statements must be built once (module constants, parameters as bindparams): each
    is compiled on first use and kept. Closed by dispose() with the engine.
    """

    def __init__(self, engine: AsyncEngine, connections: int = 4):
        url = engine.url
        self._dialect = engine.dialect
        self._compiled: dict[int, _Compiled] = {}
        self._sqlite: sqlite3.Connection | None = None
        self._pool: AsyncConnectionPool | None = None
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
            self._pool = AsyncConnectionPool(
                url.set(drivername="postgresql").render_as_string(hide_password=False),
                min_size=1,
                max_size=connections,
                kwargs={"autocommit": True, "prepare_threshold": 0},
                open=False,
            )
            self._opened = asyncio.Lock()
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
        pool = await self._open()
        try:
            return await self._read(pool, compiled, params)
        except psycopg.OperationalError:
            # A pooled connection the server closed (a restart, an idle timeout):
            # the pool drops it, and the read, which changes nothing, runs again.
            return await self._read(pool, compiled, params)

    @staticmethod
    async def _read(
        pool: AsyncConnectionPool, compiled: _Compiled, params: Mapping | None
    ) -> list[Any]:
        async with pool.connection() as conn:
            cursor = await conn.execute(compiled.sql, compiled.values(params))
            return [compiled.row(record) for record in await cursor.fetchall()]

    async def _open(self) -> AsyncConnectionPool:
        assert self._pool is not None
        if self._pool.closed:
            async with self._opened:
                if self._pool.closed:
                    await self._pool.open()
        return self._pool

    async def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._pool is not None:
            await self._pool.close()


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
