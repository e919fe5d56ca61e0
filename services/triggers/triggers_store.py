"""Inbound triggers, and the webhook-ids each has accepted (against replays)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from agentmesh.db import Page, fetch_page
from agentmesh.errors import Aborted, NotFound
from services.triggers.records import Trigger
from services.triggers.tables import HookReceiptRow, TriggerRow


def _name(trigger_id: str) -> str:
    return f"triggers/{trigger_id}"


def _trigger(row) -> Trigger:
    return Trigger(
        id=row.id,
        user_id=row.user_id,
        display_name=row.display_name,
        target=row.target,
        sealed_secret=row.sealed_secret,
        etag=row.etag,
        create_time=row.create_time,
        update_time=row.update_time,
    )


def _mine(user_id: str, trigger_id: str) -> tuple:
    return TriggerRow.user_id == user_id, TriggerRow.id == trigger_id


class TriggerStore:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    async def create_trigger(self, trigger: Trigger) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(TriggerRow).values(
                    user_id=trigger.user_id,
                    id=trigger.id,
                    display_name=trigger.display_name,
                    target=trigger.target,
                    sealed_secret=trigger.sealed_secret,
                    etag=trigger.etag,
                    create_time=trigger.create_time,
                    update_time=trigger.update_time,
                )
            )

    async def get_trigger(self, user_id: str, trigger_id: str) -> Trigger:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(TriggerRow).where(*_mine(user_id, trigger_id)))
            ).first()
        if row is None:
            raise NotFound(_name(trigger_id))
        return _trigger(row)

    async def find_trigger(self, trigger_id: str) -> Trigger | None:
        """The trigger of that id, whoever owns it: its URL names no user, and its
        signature is what proves the caller may use it."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(TriggerRow).where(TriggerRow.id == trigger_id))
            ).first()
        return None if row is None else _trigger(row)

    async def list_triggers(self, user_id: str, after_seq: int, limit: int) -> Page:
        async with self.engine.connect() as conn:
            rows, last_seq = await fetch_page(
                conn,
                select(TriggerRow).where(TriggerRow.user_id == user_id),
                TriggerRow.seq,
                after_seq,
                limit,
            )
        return Page([_trigger(row) for row in rows], last_seq)

    async def replace_trigger(self, read: Trigger, changed: Trigger) -> bool:
        """Writes `changed` over the trigger as it was `read`; False if it changed
        meanwhile, and nothing is written."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(TriggerRow)
                .where(*_mine(read.user_id, read.id), TriggerRow.etag == read.etag)
                .values(
                    display_name=changed.display_name,
                    target=changed.target,
                    etag=changed.etag,
                    update_time=changed.update_time,
                )
            )
        return result.rowcount == 1

    async def delete_trigger(self, user_id: str, trigger_id: str, etag: str) -> None:
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(select(TriggerRow.etag).where(*_mine(user_id, trigger_id)))
            ).first()
            if row is None:
                raise NotFound(_name(trigger_id))
            if etag and etag != row.etag:
                raise Aborted.stale(_name(trigger_id))
            # Its receipts go with it (ON DELETE CASCADE).
            await conn.execute(delete(TriggerRow).where(*_mine(user_id, trigger_id)))

    # ---- replays --------------------------------------------------------------------

    async def remember(self, trigger_id: str, webhook_id: str, now: datetime) -> bool:
        """Notes a webhook-id as received; False if it was already."""
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    insert(HookReceiptRow).values(
                        trigger_id=trigger_id, webhook_id=webhook_id, receive_time=now
                    )
                )
        except IntegrityError:
            return False
        return True

    async def forget(self, trigger_id: str, webhook_id: str) -> None:
        """Lets a webhook-id be sent again: its request started no run."""
        async with self.engine.begin() as conn:
            await conn.execute(
                delete(HookReceiptRow).where(
                    HookReceiptRow.trigger_id == trigger_id, HookReceiptRow.webhook_id == webhook_id
                )
            )

    async def forget_before(self, cutoff: datetime) -> int:
        """Drops receipts no replay could match any more (its timestamp would be stale)."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                delete(HookReceiptRow).where(HookReceiptRow.receive_time < cutoff)
            )
        return result.rowcount
