"""NATS events with protobuf payloads.

Core NATS for facts a lost message only delays (a cache expires anyway), JetStream
for facts whose loss would lose data (spans, usage, file ingestion).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import nats
import nats.errors
from google.protobuf.message import Message
from nats.aio.client import Client

log = logging.getLogger("agentmesh.events")

AGENTS_CHANGED = "agents.changed"
PROVIDERS_CHANGED = "providers.changed"


class EventBus:
    def __init__(self, client: Client):
        self._client = client

    @classmethod
    async def connect(cls, url: str, name: str) -> EventBus:
        # nats-py treats max_reconnect_attempts=0 as "forever" on the first connect,
        # so a bounded number is given: a missing NATS must fail the start, loudly.
        client = await nats.connect(
            url, name=name, connect_timeout=5, max_reconnect_attempts=60, reconnect_time_wait=1
        )
        return cls(client)

    async def publish(self, subject: str, event: Message) -> None:
        await self._client.publish(subject, event.SerializeToString())

    async def subscribe(
        self, subject: str, event_type: type[Message], handle: Callable[[Message], Awaitable[None]]
    ) -> None:
        async def on_message(msg) -> None:
            try:
                await handle(event_type.FromString(msg.data))
            except Exception:
                log.exception("handling %s failed", subject)

        await self._client.subscribe(subject, cb=on_message)

    async def close(self) -> None:
        try:
            await self._client.drain()
        except nats.errors.Error:
            # Already disconnected (NATS went away first): nothing left to flush.
            await self._client.close()
