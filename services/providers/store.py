"""Provider configs: everything but the API key, which only the secret store holds.

The key and the row live in two stores no transaction spans, so every write of a
secret is announced first: an intent row is committed before the secret store is
touched, and the provider write that makes the secret live (or dead) removes it in
its own transaction. An intent that outlives its request means the request failed
half-way, or its process died: the sweep deletes the secret unless a provider row
uses it. Nothing a failure leaves behind lasts longer than a sweep.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
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


class SecretIntentRow(Base):
    __tablename__ = "secret_intents"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64))
    provider_id: Mapped[str] = mapped_column(String(64))
    # The secret is to be deleted: its provider is gone, or the sweep claimed it (a
    # late request then finds its intent doomed and writes nothing).
    doomed: Mapped[bool] = mapped_column(Boolean)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime, index=True)


@dataclass(frozen=True)
class SecretIntent:
    id: str
    user_id: str
    provider_id: str


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

    async def create(self, provider: Provider, intent: SecretIntent) -> Provider:
        async def write(conn: AsyncConnection) -> None:
            await _settle(conn, intent)
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

    async def update(
        self, provider: Provider, expected_etag: str, intent: SecretIntent | None = None
    ) -> Provider:
        """Writes the provider if its etag is still expected_etag; with the intent of
        the secret version it now names, settled in the same transaction."""
        provider.etag, provider.update_time = new_id(), utc_now()

        async def write(conn: AsyncConnection) -> None:
            if intent is not None:
                await _settle(conn, intent)
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

    async def delete(self, user_id: str, provider_id: str) -> SecretIntent:
        """Deletes the provider and dooms its secret in one transaction: the caller
        deletes the secret, or the sweep does."""
        intent = SecretIntent(new_id(), user_id, provider_id)
        async with self.engine.begin() as conn:
            deleted = await conn.execute(
                delete(ProviderRow).where(
                    ProviderRow.id == provider_id, ProviderRow.user_id == user_id
                )
            )
            if deleted.rowcount == 0:
                raise NotFound(f"providers/{provider_id}")
            await conn.execute(insert(SecretIntentRow).values(**_intent_values(intent, True)))
        return intent

    async def intend(self, user_id: str, provider_id: str) -> SecretIntent:
        """Records that the provider's secret is about to be written."""
        intent = SecretIntent(new_id(), user_id, provider_id)
        async with self.engine.begin() as conn:
            await conn.execute(insert(SecretIntentRow).values(**_intent_values(intent, False)))
        return intent

    async def unsettled(self, before: datetime, limit: int = 100) -> Sequence[SecretIntent]:
        """Intents the sweep is to finish: doomed ones, and those older than before."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(SecretIntentRow)
                .where(SecretIntentRow.doomed.is_(True) | (SecretIntentRow.create_time < before))
                .order_by(SecretIntentRow.create_time)
                .limit(limit)
            )
            return [SecretIntent(row.id, row.user_id, row.provider_id) for row in rows]

    async def doom(self, intent: SecretIntent) -> bool:
        """Whether the intent's secret is to be deleted: no provider row uses it. An
        intent a provider row uses (a rotation whose row write failed) is forgotten;
        one already settled or forgotten is nothing to do."""
        async with self.engine.begin() as conn:
            used = (
                await conn.execute(
                    select(ProviderRow.seq).where(
                        ProviderRow.id == intent.provider_id,
                        ProviderRow.user_id == intent.user_id,
                    )
                )
            ).first()
            if used is not None:
                await conn.execute(delete(SecretIntentRow).where(SecretIntentRow.id == intent.id))
                return False
            doomed = await conn.execute(
                update(SecretIntentRow).where(SecretIntentRow.id == intent.id).values(doomed=True)
            )
            return doomed.rowcount == 1

    async def forget(self, intent: SecretIntent) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(SecretIntentRow).where(SecretIntentRow.id == intent.id))

    async def _clear_default(self, conn, user_id: str) -> None:
        await conn.execute(
            update(ProviderRow)
            .where(ProviderRow.user_id == user_id, ProviderRow.is_default.is_(True))
            .values(is_default=False)
        )


def _intent_values(intent: SecretIntent, doomed: bool) -> dict[str, Any]:
    return {
        "id": intent.id,
        "user_id": intent.user_id,
        "provider_id": intent.provider_id,
        "doomed": doomed,
        "create_time": utc_now(),
    }


async def _settle(conn: AsyncConnection, intent: SecretIntent) -> None:
    """Removes the intent of the secret the row being written names; one the sweep
    already doomed (the request took longer than the sweep's grace) fails the write."""
    settled = await conn.execute(
        delete(SecretIntentRow).where(
            SecretIntentRow.id == intent.id, SecretIntentRow.doomed.is_(False)
        )
    )
    if settled.rowcount == 0:
        raise Aborted(
            "the request took too long and its API key was discarded; try again",
            reason="SECRET_DISCARDED",
        )
