"""The SPANS stream: where runners put span batches and the traces service takes them.

A work queue: a batch is gone from the stream once the traces service has committed
and acknowledged it, so the stream holds only what is not stored yet (all of it
while the traces service is down). A week bounds what waits for a service that
never comes back.
"""

from __future__ import annotations

from datetime import timedelta

import nats.js.errors
from nats.js.api import RetentionPolicy, StreamConfig

from agentmesh.events import EventBus, event_spec
from agentmesh.gen.traces.v1 import events_pb2

MAX_AGE = timedelta(days=7)


async def ensure_span_stream(events: EventBus) -> None:
    """Creates the stream if missing (runners and the traces service both call it:
    whichever starts first). One of that name with another retention is refused."""
    spec = event_spec(events_pb2.SpanBatch)
    try:
        info = await events.jetstream.stream_info(spec.stream)
    except nats.js.errors.NotFoundError:
        try:
            await events.jetstream.add_stream(
                StreamConfig(
                    name=spec.stream,
                    subjects=[spec.subject],
                    retention=RetentionPolicy.WORK_QUEUE,
                    max_age=MAX_AGE.total_seconds(),
                )
            )
        except nats.js.errors.BadRequestError:
            pass  # created meanwhile by another service: checked below
        else:
            return
        info = await events.jetstream.stream_info(spec.stream)
    if info.config.retention != RetentionPolicy.WORK_QUEUE:
        raise RuntimeError(
            f"the JetStream stream {spec.stream} exists without work-queue retention; "
            "delete it so the traces service can create it"
        )
