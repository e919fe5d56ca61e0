"""Users and their API keys."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from agentmesh.db import Page, fetch_page
from agentmesh.errors import NotFound
from agentmesh.ids import new_id, utc_now
from services.registry.api_keys import mint_key
from services.registry.records import ApiKey, User
from services.registry.tables import ApiKeyRow, CreditAccountRow, UserRow


class AccountStore:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    async def create_user(self, display_name: str, email: str, admin: bool) -> User:
        user = User(new_id(), display_name, email, admin, utc_now())
        async with self.engine.begin() as conn:
            await conn.execute(insert(UserRow).values(**user.__dict__))
            # Every user has a credit account from the start, so credits never
            # need to ask whether one exists.
            await conn.execute(insert(CreditAccountRow).values(user_id=user.id, balance=0))
        return user

    async def count_users(self) -> int:
        async with self.engine.connect() as conn:
            return (await conn.execute(select(func.count()).select_from(UserRow))).scalar_one()

    async def get_user(self, user_id: str) -> User:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(UserRow).where(UserRow.id == user_id))).first()
        if row is None:
            raise NotFound(f"users/{user_id}")
        return User(row.id, row.display_name, row.email, row.admin, row.create_time)

    async def create_api_key(
        self, user_id: str, display_name: str, expire_time: datetime | None
    ) -> ApiKey:
        minted = mint_key()
        key = ApiKey(
            new_id(), user_id, display_name, minted.prefix, utc_now(), expire_time, minted.secret
        )
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(ApiKeyRow).values(
                    id=key.id,
                    user_id=user_id,
                    display_name=display_name,
                    prefix=key.prefix,
                    key_hash=minted.key_hash,
                    create_time=key.create_time,
                    expire_time=expire_time,
                )
            )
        return key

    async def list_api_keys(self, user_id: str, after_seq: int, limit: int) -> Page:
        async with self.engine.connect() as conn:
            rows, last_seq = await fetch_page(
                conn,
                select(ApiKeyRow).where(ApiKeyRow.user_id == user_id),
                ApiKeyRow.seq,
                after_seq,
                limit,
            )
        keys = [
            ApiKey(r.id, r.user_id, r.display_name, r.prefix, r.create_time, r.expire_time)
            for r in rows
        ]
        return Page(keys, last_seq)

    async def delete_api_key(self, user_id: str, key_id: str) -> None:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                delete(ApiKeyRow).where(ApiKeyRow.id == key_id, ApiKeyRow.user_id == user_id)
            )
        if result.rowcount == 0:
            raise NotFound(f"users/{user_id}/apiKeys/{key_id}")

    async def key_owner(self, key_hash: str) -> tuple[User, datetime | None] | None:
        """The key's owner and when the key expires; None for an unknown or expired key."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(UserRow, ApiKeyRow.expire_time.label("key_expire_time"))
                    .join(ApiKeyRow, ApiKeyRow.user_id == UserRow.id)
                    .where(ApiKeyRow.key_hash == key_hash)
                )
            ).first()
        if row is None:
            return None
        expire_time = row.key_expire_time
        if expire_time is not None and expire_time <= utc_now():
            return None
        user = User(row.id, row.display_name, row.email, row.admin, row.create_time)
        return user, expire_time
