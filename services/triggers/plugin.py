"""The triggers service as a mesh service: its servicers, its HTTP route, its loops."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from pathlib import Path

from agentmesh.mesh import MeshContext, MeshService
from agentmesh.outbound import OutboundPolicy
from agentmesh.tasks import cancel, every
from services.triggers.deliver import Deliverer
from services.triggers.hooks import InboundHooks
from services.triggers.intake import RunEvents
from services.triggers.scheduler import Scheduler
from services.triggers.servicer import ScheduleServicer, TriggerServicer, WebhookServicer
from services.triggers.signatures import webhook_sealer
from services.triggers.store import TriggersStore
from services.triggers.targets import Targets

MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger("agentmesh.triggers")


class TriggersService(MeshService):
    def __init__(
        self,
        servicers: list[object],
        hooks: InboundHooks,
        store: TriggersStore,
        intake: RunEvents,
        deliverer: Deliverer,
        scheduler: Scheduler,
        loops: list[asyncio.Task],
    ):
        super().__init__(*servicers, http=hooks.routes)
        self.store = store
        self.scheduler = scheduler
        self._intake = intake
        self._deliverer = deliverer
        self._loops = loops

    async def stop(self) -> None:
        await cancel(self._loops)
        await self._intake.stop()
        await self._deliverer.stop()


async def create(context: MeshContext) -> TriggersService:
    assert context.database is not None
    settings = context.settings
    store = TriggersStore(context.database)
    sealer = webhook_sealer(settings.resolved_service_token())
    targets = Targets(context.peer("runner"), context.peer("registry"))
    deliverer = Deliverer(
        store.webhooks,
        sealer,
        OutboundPolicy(settings.outbound_allow),
        timeout=settings.webhook_timeout_seconds,
        attempts=settings.webhook_attempts,
        backoff=settings.webhook_backoff_seconds,
        backoff_max=settings.webhook_backoff_max_seconds,
        poll_seconds=settings.webhook_poll_seconds,
    )
    intake = RunEvents(context.events, store.webhooks, deliverer.notify)
    await intake.start()
    deliverer.start()
    hooks = InboundHooks(
        store.triggers,
        targets,
        sealer,
        tolerance_seconds=settings.hook_tolerance_seconds,
        max_bytes=settings.hook_max_bytes,
    )
    scheduler = Scheduler(
        store.schedules, targets, timedelta(seconds=settings.schedule_grace_seconds)
    )
    loops = [
        every(settings.schedule_poll_seconds, "firing schedules", scheduler.fire_due, log),
        every(
            settings.hook_tolerance_seconds,
            "forgetting old receipts",
            hooks.forget_old_receipts,
            log,
        ),
    ]
    servicers: list[object] = [
        ScheduleServicer(store, targets, context.pages),
        WebhookServicer(store, targets, sealer, context.pages, settings.outbound_allow),
        TriggerServicer(store, targets, sealer, context.pages),
    ]
    return TriggersService(servicers, hooks, store, intake, deliverer, scheduler, loops)
