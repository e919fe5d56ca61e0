"""Database engines and Alembic migrations, for SQLite (embedded) and Postgres."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import DateTime, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.types import TypeDecorator


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

    @event.listens_for(engine.sync_engine, "connect")
    def _sqlite_pragmas(connection, _record) -> None:
        # WAL lets readers run beside the writer; busy_timeout makes concurrent
        # writers wait for the lock instead of failing.
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine


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
