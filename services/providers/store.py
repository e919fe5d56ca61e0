"""Provider configs: everything but the API key, which only the secret store holds."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Index, Integer, String, delete, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from agentmesh.db import Page, UtcDateTime, fetch_page
from agentmesh.errors import Aborted, NotFound
from agentmesh.ids import new_id, utc_now

# Two racing writes that each make a provider the default: the database keeps one
# (a partial unique index), the loser retries and clears the winner's flag.
_DEFAULT_RETRIES = 5


class Base(DeclarativeBase):
    pass


class ProviderRow(Base):
    __tablename__ = "providers"
    __table_args__ = (
        # At most one default per user, whatever races: the database holds it.
        Index(
            "one_default_provider_per_user",
            "user_id",
            unique=True,
            sqlite_where=text("is_default"),
            postgresql_where=text("is_default"),
        ),
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[str] = mapped_column(String(64), index=True)
    # type, display_name, base_url, models, default_model, organization, extra_headers,
    # settings (the typed per-type settings, as {"azure_openai": {...}})
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    is_default: Mapped[bool] = mapped_column(Boolean)
    api_key_hint: Mapped[str] = mapped_column(String(8))
    secret_version: Mapped[str] = mapped_column(String(64))
    etag: Mapped[str] = mapped_column(String(64))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime)


@dataclass
class Provider:
    id: str
    user_id: str
    config: dict[str, Any]
    is_default: bool
    api_key_hint: str
    secret_version: str
    etag: str
    create_time: datetime
    update_time: datetime


def _provider(row) -> Provider:
    return Provider(
        row.id,
        row.user_id,
        row.config,
        row.is_default,
        row.api_key_hint,
        row.secret_version,
        row.etag,
        row.create_time,
        row.update_time,
    )


class ProviderStore:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    async def create(self, provider: Provider) -> Provider:
        async def write(conn: AsyncConnection) -> None:
            if provider.is_default:
                await self._clear_default(conn, provider.user_id)
            await conn.execute(
                insert(ProviderRow).values(
                    id=provider.id,
                    user_id=provider.user_id,
                    config=provider.config,
                    is_default=provider.is_default,
                    api_key_hint=provider.api_key_hint,
                    secret_version=provider.secret_version,
                    etag=provider.etag,
                    create_time=provider.create_time,
                    update_time=provider.update_time,
                )
            )

        await self._write(write, provider.is_default)
        return provider

    async def get(self, user_id: str, provider_id: str) -> Provider:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(ProviderRow).where(
                        ProviderRow.id == provider_id, ProviderRow.user_id == user_id
                    )
                )
            ).first()
        if row is None:
            raise NotFound(f"providers/{provider_id}")
        return _provider(row)

    async def get_default(self, user_id: str) -> Provider | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(ProviderRow).where(
                        ProviderRow.user_id == user_id, ProviderRow.is_default.is_(True)
                    )
                )
            ).first()
        return None if row is None else _provider(row)

    async def list(self, user_id: str, after_seq: int, limit: int) -> Page:
        async with self.engine.connect() as conn:
            rows, last_seq = await fetch_page(
                conn,
                select(ProviderRow).where(ProviderRow.user_id == user_id),
                ProviderRow.seq,
                after_seq,
                limit,
            )
        return Page([_provider(row) for row in rows], last_seq)

    async def update(self, provider: Provider, expected_etag: str) -> Provider:
        provider.etag, provider.update_time = new_id(), utc_now()

        async def write(conn: AsyncConnection) -> None:
            if provider.is_default:
                await self._clear_default(conn, provider.user_id)
            result = await conn.execute(
                update(ProviderRow)
                .where(
                    ProviderRow.id == provider.id,
                    ProviderRow.user_id == provider.user_id,
                    ProviderRow.etag == expected_etag,
                )
                .values(
                    config=provider.config,
                    is_default=provider.is_default,
                    api_key_hint=provider.api_key_hint,
                    secret_version=provider.secret_version,
                    etag=provider.etag,
                    update_time=provider.update_time,
                )
            )
            if result.rowcount == 0:
                raise Aborted.stale(f"providers/{provider.id}")

        await self._write(write, provider.is_default)
        return provider

    async def _write(
        self, write: Callable[[AsyncConnection], Awaitable[None]], sets_default: bool
    ) -> None:
        for attempt in range(_DEFAULT_RETRIES):
            try:
                async with self.engine.begin() as conn:
                    await write(conn)
                return
            except IntegrityError:
                if not sets_default or attempt == _DEFAULT_RETRIES - 1:
                    raise

    async def delete(self, user_id: str, provider_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                delete(ProviderRow).where(
                    ProviderRow.id == provider_id, ProviderRow.user_id == user_id
                )
            )

    async def _clear_default(self, conn, user_id: str) -> None:
        await conn.execute(
            update(ProviderRow)
            .where(ProviderRow.user_id == user_id, ProviderRow.is_default.is_(True))
            .values(is_default=False)
        )
