"""Run events in, deliveries out: what happened to a user's runs and workflow runs,
matched to their subscriptions.

One durable pull consumer ("triggers") on each of the runner's streams, RUNS
(RunChanged: agent runs, a workflow's steps included) and WORKFLOW_RUNS
(WorkflowRunChanged), shared by every triggers replica. A group of events is
matched and its deliveries written in one transaction, and the events are
acknowledged only after it committed: a replica that stops first leaves them to
be delivered again, and the store makes no delivery twice. An event no replica
can read is dropped (terminated).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

import nats.errors
from google.protobuf.message import Message
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from agentmesh.events import EventBus, event_spec
from agentmesh.gen.runner.v1 import events_pb2, runner_pb2
from agentmesh.names import ResourceName
from agentmesh.tasks import cancel
from services.triggers.records import Event
from services.triggers.webhooks_store import WebhookStore

log = logging.getLogger("agentmesh.triggers")

CONSUMER = "triggers"
ACK_WAIT_SECONDS = 30.0
_FETCH_MAX = 64
_FETCH_SECONDS = 1.0
_RETRY_SECONDS = 2.0
_USER = ResourceName("users/{user}")
_AGENT = ResourceName("agents/{agent}")

State = runner_pb2.Run.State
# The event type (as payloads and subscriptions name it) of each state worth telling.
EVENT_TYPES = {
    State.STATE_SUCCEEDED: "run.succeeded",
    State.STATE_FAILED: "run.failed",
    State.STATE_BLOCKED: "run.failed",
    State.STATE_AWAITING_APPROVAL: "run.awaiting_approval",
}
WORKFLOW_EVENT_TYPES = {
    State.STATE_SUCCEEDED: "workflow.succeeded",
    State.STATE_FAILED: "workflow.failed",
    State.STATE_BLOCKED: "workflow.failed",
    State.STATE_AWAITING_APPROVAL: "workflow.awaiting_approval",
}


def _event(
    change: Any, event_id: str, event_type: str, agent_id: str, run: str, data: dict
) -> Event:
    """The event of a RunChanged or a WorkflowRunChanged (both have user, state and
    time); ValueError for one naming no user."""
    user = _USER.match(change.user)
    if user is None:
        raise ValueError("a change without a user")
    payload = {
        "type": event_type,
        "timestamp": change.time.ToDatetime().isoformat(timespec="milliseconds") + "Z",
        "data": {**data, "state": State.Name(change.state).removeprefix("STATE_")},
    }
    return Event(
        id=event_id,
        user_id=user[0],
        agent_id=agent_id,
        type=event_type,
        run=run,
        payload=json.dumps(payload, separators=(",", ":")),
    )


def event_of(change: events_pb2.RunChanged, event_id: str) -> Event | None:
    """The event a run change is, or None for a change no subscription hears of
    (QUEUED, RUNNING, CANCELLED). ValueError for one naming no user."""
    event_type = EVENT_TYPES.get(change.state)
    if event_type is None:
        return None
    agent = _AGENT.match(change.agent)
    data = {"run": change.run, "agent": change.agent}
    if change.workflow_run:
        data["workflow_run"] = change.workflow_run
    return _event(change, event_id, event_type, agent[0] if agent else "", change.run, data)


def workflow_event_of(change: events_pb2.WorkflowRunChanged, event_id: str) -> Event | None:
    """The event a workflow run change is, or None for a CANCELLED one. It names no
    agent: subscriptions filtered by one do not hear of it."""
    event_type = WORKFLOW_EVENT_TYPES.get(change.state)
    if event_type is None:
        return None
    data = {"workflow_run": change.workflow_run, "workflow": change.workflow}
    return _event(change, event_id, event_type, "", change.workflow_run, data)


# What each stream's messages are, and the event each makes.
_SOURCES: list[tuple[type[Message], Callable[[Any, str], Event | None]]] = [
    (events_pb2.RunChanged, event_of),
    (events_pb2.WorkflowRunChanged, workflow_event_of),
]


def _event_id(message: Msg) -> str:
    """What names the event whichever stream copy arrives: the publisher's message id
    (the runner's outbox row), else its place in its stream."""
    published = (message.headers or {}).get("Nats-Msg-Id", "")
    metadata = message.metadata
    return published[:128] or f"{metadata.stream}-{metadata.sequence.stream}"


class RunEvents:
    def __init__(self, events: EventBus, store: WebhookStore, on_recorded: Callable[[], None]):
        self._events = events
        self._store = store
        self._on_recorded = on_recorded
        self._subscriptions: list[JetStreamContext.PullSubscription] = []
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        for event_type, read in _SOURCES:
            await self._events.ensure_stream(event_type)
            spec = event_spec(event_type)
            subscription = await self._events.jetstream.pull_subscribe(
                spec.subject,
                durable=CONSUMER,
                stream=spec.stream,
                config=ConsumerConfig(
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=ACK_WAIT_SECONDS,
                    max_ack_pending=-1,
                    # Made once, on the service's first start: the runs before it
                    # cannot match a subscription, which did not exist either.
                    deliver_policy=DeliverPolicy.NEW,
                ),
            )
            self._subscriptions.append(subscription)
            self._tasks.append(
                asyncio.create_task(
                    self._consume(subscription, event_type, read),
                    name=f"triggers: {spec.subject}",
                )
            )

    async def stop(self) -> None:
        await cancel(self._tasks)
        for subscription in self._subscriptions:
            with contextlib.suppress(nats.errors.Error):
                await subscription.unsubscribe()

    async def _consume(
        self,
        subscription: JetStreamContext.PullSubscription,
        event_type: type[Message],
        read: Callable[[Any, str], Event | None],
    ) -> None:
        while True:
            try:
                messages = await subscription.fetch(_FETCH_MAX, timeout=_FETCH_SECONDS)
            except TimeoutError:  # nats-py raises its own, or asyncio's
                continue
            except nats.errors.Error:
                log.warning("the run events cannot be read; retrying", exc_info=True)
                await asyncio.sleep(_RETRY_SECONDS)
                continue
            await self._take_in(messages, event_type, read)

    async def _take_in(
        self,
        messages: list[Msg],
        event_type: type[Message],
        read: Callable[[Any, str], Event | None],
    ) -> None:
        events: list[Event] = []
        readable: list[Msg] = []
        for message in messages:
            try:
                event = read(event_type.FromString(message.data), _event_id(message))
            except Exception:  # noqa: BLE001 - no replica could read it: dropped
                log.error("dropping an unreadable %s", event_type.DESCRIPTOR.name)
                with contextlib.suppress(nats.errors.Error):
                    await message.term()
                continue
            readable.append(message)
            if event is not None:
                events.append(event)
        try:
            made = await self._store.record_deliveries(events) if events else 0
        except Exception:  # noqa: BLE001 - delivered again, to this replica or another
            log.warning("recording deliveries failed; the events come again", exc_info=True)
            for message in readable:
                with contextlib.suppress(nats.errors.Error):
                    await message.nak(delay=_RETRY_SECONDS)
            return
        for message in readable:
            with contextlib.suppress(nats.errors.Error):
                await message.ack()
        if made:
            self._on_recorded()
