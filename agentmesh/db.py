"""Database engines and Alembic migrations, for SQLite (embedded) and Postgres."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import DateTime, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.types import TypeDecorator


@dataclass
class Page:
    """One page of records, and the row sequence the next page continues after."""

    items: list = field(default_factory=list)
    last_seq: int = 0  # 0 when there is no next page


def new_id() -> str:
    """A resource id: 32 hex characters, unguessable, safe in a resource name."""
    return uuid.uuid4().hex


def utc_now() -> datetime:
    return datetime.now(UTC)


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


async def fetch_page(conn, query, seq, after_seq: int, limit: int) -> tuple[list, int]:
    """Up to `limit` rows of `query` past `after_seq` in `seq` order (keyset paging),
    and the seq a next page continues after: 0 when this page is the last."""
    rows = (await conn.execute(query.where(seq > after_seq).order_by(seq).limit(limit + 1))).all()
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
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
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
        context.configure(connection=connection, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


def _alembic_config(migrations: Path, url: str) -> Config:
    config = Config()
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
