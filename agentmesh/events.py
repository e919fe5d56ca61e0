"""NATS events with protobuf payloads, published where the contract says.

Each event message names its subject and delivery in its own options
(`agentmesh.common.v1.event`): core NATS for facts a lost message only delays
(a cache expires anyway), JetStream for facts whose loss would lose data (run
state, usage, spans, file ingestion); those are written through the
transactional outbox (agentmesh.outbox) and acknowledged by the stream.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats
import nats.errors
import nats.js.errors
from google.protobuf.message import Message
from nats.aio.client import Client
from nats.js.api import RetentionPolicy, StreamConfig

from agentmesh.gen.common.v1 import options_pb2

log = logging.getLogger("agentmesh.events")

E = TypeVar("E", bound=Message)


_specs: dict[type[Message], options_pb2.Event] = {}


def event_spec(event_type: type[Message]) -> options_pb2.Event:
    """The subject and delivery an event message's options declare."""
    if event_type not in _specs:
        spec = event_type.DESCRIPTOR.GetOptions().Extensions[options_pb2.event]
        if not spec.subject:
            raise TypeError(f"{event_type.DESCRIPTOR.full_name} declares no event subject")
        _specs[event_type] = spec
    return _specs[event_type]


def is_jetstream(event_type: type[Message]) -> bool:
    return event_spec(event_type).delivery == options_pb2.DELIVERY_JETSTREAM


class EventBus:
    def __init__(self, client: Client):
        self._client = client
        self.jetstream = client.jetstream()

    @classmethod
    async def connect(cls, url: str, name: str) -> EventBus:
        # nats-py treats max_reconnect_attempts=0 as "forever" on the first connect,
        # so a bounded number is given: a missing NATS must fail the start, loudly.
        client = await nats.connect(
            url, name=name, connect_timeout=5, max_reconnect_attempts=60, reconnect_time_wait=1
        )
        return cls(client)

    async def publish(self, event: Message, message_id: str = "") -> None:
        """Publishes on the event's subject; JetStream events wait for the stream's
        ack, and a message_id makes a repeated publish (a retry) count once."""
        spec = event_spec(type(event))
        data = event.SerializeToString()
        if spec.delivery == options_pb2.DELIVERY_JETSTREAM:
            headers = {"Nats-Msg-Id": message_id} if message_id else None
            await self.jetstream.publish(spec.subject, data, stream=spec.stream, headers=headers)
        else:
            await self._client.publish(spec.subject, data)

    async def ensure_stream(self, event_type: type[Message]) -> None:
        """Creates the JetStream stream an event type is stored in, if missing, with the
        retention and age its options declare. Publishers and consumers both call it
        (whichever starts first). A stream of that name with another retention (which
        cannot change in place) is refused: a work queue's messages would outlive their
        acknowledgement, and a job run twice."""
        spec = event_spec(event_type)
        work_queue = spec.retention == options_pb2.RETENTION_WORK_QUEUE
        try:
            info = await self.jetstream.stream_info(spec.stream)
        except nats.js.errors.NotFoundError:
            config = StreamConfig(
                name=spec.stream,
                subjects=[spec.subject],
                retention=RetentionPolicy.WORK_QUEUE if work_queue else RetentionPolicy.LIMITS,
                max_age=spec.max_age.ToTimedelta().total_seconds() or None,
            )
            try:
                await self.jetstream.add_stream(config)
                return
            except nats.js.errors.BadRequestError:
                info = await self.jetstream.stream_info(spec.stream)  # created meanwhile
        if (info.config.retention == RetentionPolicy.WORK_QUEUE) != work_queue:
            raise RuntimeError(
                f"the JetStream stream {spec.stream} exists with {info.config.retention} "
                "retention, not the one its events declare; delete it so it is made anew"
            )

    async def subscribe(self, event_type: type[E], handle: Callable[[E], Awaitable[None]]) -> None:
        """Calls handle for every core-NATS event of this type (for caches)."""
        subject = event_spec(event_type).subject

        async def on_message(msg) -> None:
            try:
                await handle(event_type.FromString(msg.data))
            except Exception:
                log.exception("handling %s failed", subject)

        await self._client.subscribe(subject, cb=on_message)

    async def flush(self) -> None:
        await self._client.flush()

    async def close(self) -> None:
        try:
            await self._client.drain()
        except nats.errors.Error:
            # Already disconnected (NATS went away first): nothing left to flush.
            await self._client.close()
