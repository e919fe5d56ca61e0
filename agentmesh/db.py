"""Database engines and Alembic migrations, for SQLite (embedded) and Postgres."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import DateTime, Engine, Executable, Row, event, text
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError
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
    """Reads that are one statement, each in one thread hop and outside a transaction.

    Through the async engine a point read costs far more than its query: aiosqlite
    hops to its thread for every cursor operation, and on Postgres the connection is
    pinged, and a transaction begun and rolled back, each a round trip. One statement
    sees one consistent snapshot without any of that: a sync engine on the same
    database runs it in autocommit on a small thread pool. It is disposed with the
    async engine it was made from.
    """

    def __init__(self, engine: AsyncEngine, threads: int = 4):
        url = engine.url
        if url.get_backend_name() == "sqlite":
            url = url.set(drivername="sqlite+pysqlite")
        # Not pre-pinged: a connection found dead is dropped by the pool and the
        # read, which changes nothing, tried once more on a fresh one.
        self._engine: Engine = create_sync_engine(
            url, isolation_level="AUTOCOMMIT", pool_size=threads, hide_parameters=True
        )
        if url.get_backend_name() == "sqlite":
            event.listen(self._engine, "connect", _sqlite_pragmas)
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="db-reads")
        event.listen(engine.sync_engine, "engine_disposed", lambda _: self.close())

    async def first(self, statement: Executable, params: Mapping | None = None) -> Row | None:
        return await self._run(lambda conn: conn.execute(statement, params).first())

    async def all(self, statement: Executable, params: Mapping | None = None) -> list[Row]:
        return await self._run(lambda conn: list(conn.execute(statement, params).all()))

    async def _run(self, read: Callable[[Connection], _T]) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, self._read, read)

    def _read(self, read: Callable[[Connection], _T]) -> _T:
        try:
            with self._engine.connect() as conn:
                return read(conn)
        except DBAPIError as error:
            if not error.connection_invalidated:
                raise
        with self._engine.connect() as conn:
            return read(conn)

    def close(self) -> None:
        self._threads.shutdown(wait=False)
        self._engine.dispose()


def run_migrations_from_env() -> None:
    """What every service's migrations/env.py does: migrate the URL migrate() was given."""
    from alembic import context
    from sqlalchemy import create_engine as create_sync_engine
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
