"""The traces service's intake: span batches from JetStream into the database.

One durable pull consumer ("traces") on the SPANS work queue, shared by every
traces replica. Messages are fetched in groups, decoded, written in one
transaction, and acknowledged only after it committed: a service that stops (or
a database that fails) before that leaves them to be delivered again, and the
store's keys make the second delivery change nothing. A message no one can read
is dropped (terminated), never retried forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import nats.errors
from google.protobuf import struct_pb2
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.client import JetStreamContext

from agentmesh.events import EventBus, event_spec
from agentmesh.gen.traces.v1 import events_pb2
from agentmesh.names import ResourceName
from services.traces.store import Delivery, Span, TraceInfo, TraceStore

log = logging.getLogger("agentmesh.traces")

CONSUMER = "traces"
ACK_WAIT_SECONDS = 30.0
_FETCH_MAX = 64
# How long a fetch waits for spans when none come; also the longest a stop waits
# for the fetch in flight.
_FETCH_SECONDS = 0.25
_RETRY_SECONDS = 2.0
_STOP_SECONDS = 10.0
_USER = ResourceName("users/{user}")


def _time(stamp: Any) -> datetime | None:
    if not stamp.seconds and not stamp.nanos:
        return None
    return stamp.ToDatetime(tzinfo=UTC)


def plain(value: struct_pb2.Value) -> Any:
    """A Struct value as plain JSON (twice as fast as json_format, which matters at
    tens of thousands of spans a second); whole numbers come back as ints."""
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return {key: plain(item) for key, item in value.struct_value.fields.items()}
    if kind == "list_value":
        return [plain(item) for item in value.list_value.values]
    if kind == "number_value":
        number = value.number_value
        return int(number) if number.is_integer() else number
    if kind == "null_value" or kind is None:
        return None
    return getattr(value, kind)


def plain_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    return {key: plain(item) for key, item in struct.fields.items()}


def _id(name: str, collection: str) -> str:
    return name.removeprefix(f"{collection}/") if name.startswith(f"{collection}/") else ""


def delivery(batch: events_pb2.SpanBatch) -> Delivery:
    """A batch as the store's records; ValueError for one that names no user."""
    ids = _USER.match(batch.user)
    if ids is None:
        raise ValueError("a span batch without a user")
    found = Delivery(user_id=ids[0])
    for trace in batch.traces:
        found.traces.append(
            TraceInfo(
                id=trace.name.removeprefix("traces/"),
                workflow_name=trace.workflow_name,
                agent_id=_id(trace.agent, "agents"),
                run_id=_id(trace.run, "runs"),
                workflow_run_id=_id(trace.workflow_run, "workflowRuns"),
                attributes=plain_struct(trace.metadata),
            )
        )
    for span in batch.spans:
        found.spans.append(
            Span(
                id=span.span_id,
                trace_id=span.trace_id,
                parent_id=span.parent_id,
                type=span.type,
                name=span.name,
                start_time=_time(span.start_time),
                end_time=_time(span.end_time),
                data=plain_struct(span.data),
                error=span.error,
            )
        )
    if any(not _valid_id(t.id) for t in found.traces) or any(
        not (_valid_id(s.id) and _valid_id(s.trace_id)) for s in found.spans
    ):
        raise ValueError("a span batch with a malformed id")
    return found


# The SDK's ids (trace_<32 hex>, span_<24 hex>), or any of that alphabet and length.
_valid_id = re.compile(r"[A-Za-z0-9_-]{1,64}").fullmatch


@dataclass
class _Group:
    """Messages fetched together, decoded: written in one transaction."""

    messages: list[Msg]
    batches: list[events_pb2.SpanBatch]
    deliveries: list[Delivery]


class SpanConsumer:
    """Two tasks in a pipeline: one fetches and decodes the next group of messages
    while the other writes the last one (the database's time is mostly waiting)."""

    def __init__(
        self,
        events: EventBus,
        store: TraceStore,
        on_stored: Callable[[list[events_pb2.SpanBatch]], Awaitable[None] | None] | None = None,
    ):
        self._events = events
        self._store = store
        self._on_stored = on_stored
        self._tasks: list[asyncio.Task] = []
        self._groups: asyncio.Queue[_Group | None] = asyncio.Queue(maxsize=1)
        self._subscription: JetStreamContext.PullSubscription | None = None
        self._stopping = False
        self.stored = 0  # spans written (for tests and benchmarks)

    async def start(self) -> None:
        await self._events.ensure_stream(events_pb2.SpanBatch)
        spec = event_spec(events_pb2.SpanBatch)
        self._subscription = await self._events.jetstream.pull_subscribe(
            spec.subject,
            durable=CONSUMER,
            stream=spec.stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT_SECONDS, max_ack_pending=-1
            ),
        )
        self._tasks = [
            asyncio.create_task(self._fetch(self._subscription), name="traces: fetching spans"),
            asyncio.create_task(self._write(), name="traces: writing spans"),
        ]

    async def stop(self) -> None:
        """Lets the groups fetched be written (their messages acknowledged), then stops;
        what is still unacknowledged is delivered again after ACK_WAIT."""
        self._stopping = True
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(asyncio.gather(*self._tasks)), _STOP_SECONDS)
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._subscription is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._subscription.unsubscribe()

    async def _fetch(self, subscription: JetStreamContext.PullSubscription) -> None:
        while not self._stopping:
            try:
                messages = await subscription.fetch(_FETCH_MAX, timeout=_FETCH_SECONDS)
            except TimeoutError:  # nats-py raises its own, or asyncio's
                continue
            except nats.errors.Error:
                log.warning("the span stream cannot be read; retrying", exc_info=True)
                await asyncio.sleep(_RETRY_SECONDS)
                continue
            group = await self._decode(messages)
            if group.messages:
                await self._groups.put(group)
        await self._groups.put(None)  # the writer stops after what came before

    async def _decode(self, messages: list[Msg]) -> _Group:
        group = _Group([], [], [])
        for message in messages:
            try:
                batch = events_pb2.SpanBatch.FromString(message.data)
                group.deliveries.append(delivery(batch))
            except Exception:  # noqa: BLE001 - no replica could read it: dropped
                log.error("dropping an unreadable span batch")
                with contextlib.suppress(nats.errors.Error):
                    await message.term()
                continue
            group.batches.append(batch)
            group.messages.append(message)
        return group

    async def _write(self) -> None:
        while (group := await self._groups.get()) is not None:
            await self._store_group(group)

    async def _store_group(self, group: _Group) -> None:
        try:
            await self._store.write(group.deliveries)
        except Exception:  # noqa: BLE001 - delivered again, to this replica or another
            log.warning(
                "storing %d span batches failed; retried", len(group.messages), exc_info=True
            )
            for message in group.messages:
                with contextlib.suppress(nats.errors.Error):
                    await message.nak(delay=_RETRY_SECONDS)
            return
        for message in group.messages:
            # One that fails is delivered again after ACK_WAIT; the store ignores it then.
            with contextlib.suppress(nats.errors.Error):
                await message.ack()
        self.stored += sum(len(d.spans) for d in group.deliveries)
        if self._on_stored is not None:
            try:
                done = self._on_stored(group.batches)
                if done is not None:
                    await done
            except Exception:  # noqa: BLE001 - the spans are stored; only the export failed
                log.warning("exporting stored spans failed", exc_info=True)
