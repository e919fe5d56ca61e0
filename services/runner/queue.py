"""The run queue: a JetStream work queue every runner replica consumes.

Queued runs (SubmitRun, and runs that waited for their conversation) are
announced by a RunQueued event, staged through the outbox in the transaction
that queued them. Every replica pulls from one durable consumer on the
work-queue stream (competing consumers: each message goes to one replica), and
only while it has room for another run.

A message is acknowledged once its run is claimed (the conditional UPDATE
QUEUED -> RUNNING committed), or found not to need running. From then on the
run's lease, not the message, covers a crash: a run takes as long as it takes
with no message to keep alive, and a redelivery can never start a run twice.
A replica that dies before the claim leaves the message unacknowledged;
JetStream gives it to another replica after ACK_WAIT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.client import JetStreamContext

from agentmesh.events import EventBus, event_spec
from agentmesh.gen.runner.v1 import events_pb2
from agentmesh.tasks import cancel
from services.runner.execute import RUN, Executor

log = logging.getLogger("agentmesh.runner")

CONSUMER = "runner"
ACK_WAIT_SECONDS = 30.0
# A message that cannot be handled (the database is away) comes back after this.
_RETRY_SECONDS = 2.0
_FETCH_SECONDS = 1.0
_FETCH_MAX = 16
_WORKFLOW_RUNS = "workflowRuns/"


class RunQueue:
    def __init__(
        self,
        events: EventBus,
        executor: Executor,
        claim: Callable[[str], Awaitable[bool]],
        capacity: int,
        claim_workflow: Callable[[str], Awaitable[bool]] | None = None,
    ):
        self._events = events
        self._executor = executor
        self._claim = claim
        # Workflow runs (SubmitWorkflow) share the queue: their messages name
        # workflowRuns/{id} (services/runner/workflows.py).
        self._claim_workflow = claim_workflow
        self._capacity = capacity
        self._task: asyncio.Task | None = None
        self._subscription: JetStreamContext.PullSubscription | None = None

    async def start(self) -> None:
        spec = event_spec(events_pb2.RunQueued)
        subscription = await self._events.jetstream.pull_subscribe(
            spec.subject,
            durable=CONSUMER,
            stream=spec.stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=ACK_WAIT_SECONDS,
                max_ack_pending=-1,
            ),
        )
        self._subscription = subscription
        self._task = asyncio.create_task(self._consume(subscription), name="runner-queue")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel([self._task])
        if self._subscription is not None:
            # Leaves the durable consumer to the other replicas; a pull left
            # pending would hold the connection's drain.
            with contextlib.suppress(nats.errors.Error):
                await self._subscription.unsubscribe()

    async def _consume(self, subscription: JetStreamContext.PullSubscription) -> None:
        while True:
            self._executor.room.clear()
            room = self._capacity - len(self._executor.active)
            if room <= 0:
                await self._executor.room.wait()
                continue
            try:
                messages = await subscription.fetch(min(room, _FETCH_MAX), timeout=_FETCH_SECONDS)
            except TimeoutError:  # nats-py raises its own, or asyncio's
                continue
            except nats.errors.Error:
                log.warning("the run queue cannot be read; retrying", exc_info=True)
                await asyncio.sleep(_RETRY_SECONDS)
                continue
            for message in messages:
                await self._handle(message)

    async def _handle(self, message: Msg) -> None:
        try:
            name = events_pb2.RunQueued.FromString(message.data).run
            claim = self._claim
            if name.startswith(_WORKFLOW_RUNS) and self._claim_workflow is not None:
                claim, run_id = self._claim_workflow, name.removeprefix(_WORKFLOW_RUNS)
            else:
                run_id = RUN.id(name)
        except Exception:  # noqa: BLE001 - a message no runner can read is dropped
            log.error("dropping an unreadable run queue message")
            await message.term()
            return
        try:
            await claim(run_id)
        except Exception:  # noqa: BLE001 - another replica, or this one, tries again
            log.warning("claiming %s failed; it is retried", name, exc_info=True)
            await message.nak(delay=_RETRY_SECONDS)
            return
        await message.ack()
