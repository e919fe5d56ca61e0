"""Subscriptions, and the deliveries made of the events they match.

A delivery is written when its event is taken in, in one transaction with the
other subscriptions' deliveries of that event; the event is acknowledged only
after it committed, and (subscription, event) is unique, so an event taken in
twice makes its deliveries once. Each attempt is claimed like a schedule's
tick: a conditional UPDATE moves next_attempt_time on by a lease, and only the
claim's holder records the outcome.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from agentmesh.db import Page, fetch_page
from agentmesh.errors import Aborted, NotFound
from agentmesh.ids import new_id, utc_now
from services.triggers.records import (
    DEAD,
    DELIVERED,
    PENDING,
    Attempt,
    Delivery,
    Event,
    Subscription,
)
from services.triggers.tables import DeliveryRow, SubscriptionRow

# Built once: a run's every change comes through here.
_SUBSCRIPTIONS_OF = select(
    SubscriptionRow.id,
    SubscriptionRow.user_id,
    SubscriptionRow.event_types,
    SubscriptionRow.agent_id,
).where(SubscriptionRow.user_id.in_(bindparam("b_users", expanding=True)))

_DEFINITION = ("display_name", "url", "event_types", "agent_id")


def _name(subscription_id: str) -> str:
    return f"subscriptions/{subscription_id}"


def _subscription(row) -> Subscription:
    return Subscription(
        id=row.id,
        user_id=row.user_id,
        display_name=row.display_name,
        url=row.url,
        event_types=list(row.event_types),
        agent_id=row.agent_id,
        sealed_secret=row.sealed_secret,
        etag=row.etag,
        create_time=row.create_time,
        update_time=row.update_time,
    )


def _delivery(row) -> Delivery:
    return Delivery(
        id=row.id,
        subscription_id=row.subscription_id,
        event_type=row.event_type,
        run=row.run,
        payload=row.payload,
        state=row.state,
        attempts=row.attempts,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        last_attempt_time=row.last_attempt_time,
        next_attempt_time=row.next_attempt_time,
        create_time=row.create_time,
    )


def _mine(user_id: str, subscription_id: str) -> tuple:
    return SubscriptionRow.user_id == user_id, SubscriptionRow.id == subscription_id


class WebhookStore:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    # ---- subscriptions ------------------------------------------------------------

    async def create_subscription(self, subscription: Subscription) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(SubscriptionRow).values(
                    user_id=subscription.user_id,
                    id=subscription.id,
                    **{field: getattr(subscription, field) for field in _DEFINITION},
                    sealed_secret=subscription.sealed_secret,
                    etag=subscription.etag,
                    create_time=subscription.create_time,
                    update_time=subscription.update_time,
                )
            )

    async def get_subscription(self, user_id: str, subscription_id: str) -> Subscription:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(SubscriptionRow).where(*_mine(user_id, subscription_id)))
            ).first()
        if row is None:
            raise NotFound(_name(subscription_id))
        return _subscription(row)

    async def list_subscriptions(self, user_id: str, after_seq: int, limit: int) -> Page:
        async with self.engine.connect() as conn:
            rows, last_seq = await fetch_page(
                conn,
                select(SubscriptionRow).where(SubscriptionRow.user_id == user_id),
                SubscriptionRow.seq,
                after_seq,
                limit,
            )
        return Page([_subscription(row) for row in rows], last_seq)

    async def replace_subscription(self, read: Subscription, changed: Subscription) -> bool:
        """Writes `changed` over the subscription as it was `read`; False if it
        changed meanwhile, and nothing is written."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(SubscriptionRow)
                .where(*_mine(read.user_id, read.id), SubscriptionRow.etag == read.etag)
                .values(
                    **{field: getattr(changed, field) for field in _DEFINITION},
                    etag=changed.etag,
                    update_time=changed.update_time,
                )
            )
        return result.rowcount == 1

    async def delete_subscription(self, user_id: str, subscription_id: str, etag: str) -> None:
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(SubscriptionRow.etag).where(*_mine(user_id, subscription_id))
                )
            ).first()
            if row is None:
                raise NotFound(_name(subscription_id))
            if etag and etag != row.etag:
                raise Aborted.stale(_name(subscription_id))
            # Its deliveries go with it (ON DELETE CASCADE).
            await conn.execute(delete(SubscriptionRow).where(*_mine(user_id, subscription_id)))

    # ---- deliveries ---------------------------------------------------------------

    async def get_delivery(self, user_id: str, subscription_id: str, delivery_id: str) -> Delivery:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(DeliveryRow).where(
                        DeliveryRow.user_id == user_id,
                        DeliveryRow.subscription_id == subscription_id,
                        DeliveryRow.id == delivery_id,
                    )
                )
            ).first()
        if row is None:
            raise NotFound(f"{_name(subscription_id)}/deliveries/{delivery_id}")
        return _delivery(row)

    async def list_deliveries(
        self, user_id: str, subscription_id: str, after_seq: int, limit: int
    ) -> Page:
        """Newest first."""
        async with self.engine.connect() as conn:
            await self._require(conn, user_id, subscription_id)
            rows, last_seq = await fetch_page(
                conn,
                select(DeliveryRow).where(
                    DeliveryRow.user_id == user_id, DeliveryRow.subscription_id == subscription_id
                ),
                DeliveryRow.seq,
                after_seq,
                limit,
                newest_first=True,
            )
        return Page([_delivery(row) for row in rows], last_seq)

    async def _require(self, conn, user_id: str, subscription_id: str) -> None:
        found = await conn.execute(
            select(SubscriptionRow.seq).where(*_mine(user_id, subscription_id))
        )
        if found.first() is None:
            raise NotFound(_name(subscription_id))

    async def record_deliveries(self, events: Sequence[Event]) -> int:
        """A delivery to every subscription each event matches, in one transaction;
        none twice for one event. Returns how many were made.

        The events' users' subscriptions are read in one statement first: most events
        match none (most users subscribe to nothing), and then nothing is written."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                _SUBSCRIPTIONS_OF, {"b_users": sorted({event.user_id for event in events})}
            )
        subscriptions: dict[str, list] = {}
        for row in rows:
            subscriptions.setdefault(row.user_id, []).append(row)
        wanted = [
            (event, matching)
            for event in events
            if (
                matching := [
                    row.id
                    for row in subscriptions.get(event.user_id, ())
                    if event.type in row.event_types and row.agent_id in ("", event.agent_id)
                ]
            )
        ]
        if not wanted:
            return 0
        made = 0
        now = utc_now()
        async with self.engine.begin() as conn:
            for event, matching in wanted:
                done = await conn.execute(
                    select(DeliveryRow.subscription_id).where(
                        DeliveryRow.subscription_id.in_(matching),
                        DeliveryRow.event_id == event.id,
                    )
                )
                already = {row.subscription_id for row in done}
                new = [subscription for subscription in matching if subscription not in already]
                if new:
                    await conn.execute(
                        insert(DeliveryRow),
                        [self._pending(event, subscription, now) for subscription in new],
                    )
                made += len(new)
        return made

    @staticmethod
    def _pending(event: Event, subscription_id: str, now: datetime) -> dict:
        return {
            "id": new_id(),
            "user_id": event.user_id,
            "subscription_id": subscription_id,
            "event_id": event.id,
            "event_type": event.type,
            "run": event.run,
            "payload": event.payload,
            "state": PENDING,
            "attempts": 0,
            "last_status_code": 0,
            "last_error": "",
            "next_attempt_time": now,
            "create_time": now,
        }

    async def claim_attempts(self, now: datetime, lease: timedelta, limit: int) -> list[Attempt]:
        """Claims up to `limit` due deliveries for this replica, for `lease`."""
        async with self.engine.connect() as conn:
            due = (
                await conn.execute(
                    select(DeliveryRow, SubscriptionRow.url, SubscriptionRow.sealed_secret)
                    .join(
                        SubscriptionRow,
                        (SubscriptionRow.user_id == DeliveryRow.user_id)
                        & (SubscriptionRow.id == DeliveryRow.subscription_id),
                    )
                    .where(DeliveryRow.next_attempt_time <= now)
                    .order_by(DeliveryRow.next_attempt_time)
                    .limit(limit)
                )
            ).all()
        claimed = []
        until = now + lease
        for row in due:
            async with self.engine.begin() as conn:
                result = await conn.execute(
                    update(DeliveryRow)
                    .where(
                        DeliveryRow.id == row.id,
                        DeliveryRow.state == PENDING,
                        DeliveryRow.next_attempt_time == row.next_attempt_time,
                    )
                    .values(next_attempt_time=until)
                )
            if result.rowcount == 1:
                claimed.append(
                    Attempt(
                        id=row.id,
                        user_id=row.user_id,
                        subscription_id=row.subscription_id,
                        url=row.url,
                        payload=row.payload,
                        sealed_secret=row.sealed_secret,
                        attempts=row.attempts,
                        claim=until,
                    )
                )
        return claimed

    async def attempted(
        self,
        attempt: Attempt,
        delivered: bool,
        status_code: int,
        error: str,
        now: datetime,
        retry_at: datetime | None,
    ) -> None:
        """Records an attempt's outcome: DELIVERED, PENDING again until `retry_at`, or
        DEAD (no `retry_at`). Nothing if the claim ran out and another replica took it."""
        state = DELIVERED if delivered else (PENDING if retry_at else DEAD)
        async with self.engine.begin() as conn:
            await conn.execute(
                update(DeliveryRow)
                .where(DeliveryRow.id == attempt.id, DeliveryRow.next_attempt_time == attempt.claim)
                .values(
                    state=state,
                    attempts=attempt.attempts + 1,
                    last_status_code=status_code,
                    last_error=error,
                    last_attempt_time=now,
                    next_attempt_time=retry_at if state == PENDING else None,
                )
            )
