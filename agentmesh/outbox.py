"""A transactional outbox: events that must not be lost are written with the change.

A service that owns such facts adds `outbox_table(Base.metadata)` to its tables
(and its migrations), calls `stage(conn, table, *events)` inside the transaction
that makes the change, and runs an `OutboxRelay`. The relay publishes staged
events to JetStream in order and deletes each once the stream acknowledged it.
A crash between commit and publish loses nothing: the row is still there, and
the row's id as the JetStream message id makes a repeated publish count once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

from google.protobuf.message import Message
from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    bindparam,
    delete,
    insert,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.dml import Insert

from agentmesh.db import UtcDateTime
from agentmesh.events import EventBus, is_jetstream
from agentmesh.ids import utc_now
from agentmesh.tasks import cancel

log = logging.getLogger("agentmesh.outbox")


def outbox_table(metadata: MetaData, name: str = "outbox") -> Table:
    """The outbox's table; services that may share one database name theirs apart."""
    return Table(
        name,
        metadata,
        Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
        # The event message's full name, to decode the payload.
        Column("type", String(200), nullable=False),
        Column("payload", LargeBinary, nullable=False),
        Column("create_time", UtcDateTime, nullable=False),
        # The seq is the message id JetStream deduplicates on: it must never be
        # reused, which SQLite does for a rowid unless told otherwise.
        sqlite_autoincrement=True,
    )


async def stage(conn: AsyncConnection, table: Table, *events: Message) -> None:
    """Writes the events in the caller's transaction, in one statement; the relay
    publishes them after commit."""
    for event in events:
        if not is_jetstream(type(event)):
            raise TypeError(f"{event.DESCRIPTOR.full_name} is not a JetStream event")
    if not events:
        return
    now = utc_now()
    await conn.execute(
        _insert_into(table),
        [
            {
                "type": event.DESCRIPTOR.full_name,
                "payload": event.SerializeToString(),
                "create_time": now,
            }
            for event in events
        ],
    )


@functools.cache
def _insert_into(table: Table) -> Insert:
    """Built once a table: building it costs more than running it on SQLite."""
    return insert(table)


class OutboxRelay:
    """Publishes staged events, oldest first, until stopped."""

    def __init__(
        self,
        name: str,
        engine: AsyncEngine,
        table: Table,
        events: EventBus,
        event_types: list[type[Message]],
        poll_seconds: float = 1.0,
        batch: int = 256,
    ):
        self._name = name  # the service: message ids must be unique across outboxes
        self._engine = engine
        self._events = events
        self._types = {t.DESCRIPTOR.full_name: t for t in event_types}
        self._poll_seconds = poll_seconds
        self._batch = batch
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        # Built once: building a statement costs more than running it on SQLite.
        self._oldest = select(table).order_by(table.c.seq).limit(batch)
        self._published = delete(table).where(table.c.seq <= bindparam("b_last"))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"outbox-{self._name}")

    def notify(self) -> None:
        """Something was staged: publish now rather than at the next poll."""
        self._wake.set()

    async def stop(self) -> None:
        if self._task:
            await cancel([self._task])

    async def _run(self) -> None:
        for event_type in self._types.values():
            await self._events.ensure_stream(event_type)
        while True:
            try:
                # A short batch was all there was: what is staged after it wakes the relay.
                while await self.relay_once() == self._batch:
                    pass
            except Exception:
                # NATS or the database is away: the rows wait, nothing is lost.
                log.warning("outbox of %s could not publish; retrying", self._name, exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_seconds)
            self._wake.clear()

    async def relay_once(self) -> int:
        """Publishes one batch; returns how many events it published."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(self._oldest)).all()
        published = 0
        try:
            for row in rows:
                event = self._types[row.type].FromString(row.payload)
                await self._events.publish(event, message_id=f"{self._name}-{row.seq}")
                published += 1
        finally:
            if published:
                async with self._engine.begin() as conn:
                    await conn.execute(self._published, {"b_last": rows[published - 1].seq})
        return published
