"""The runner as a mesh service: its peers, its caches, its background work."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from pathlib import Path

from agents import set_trace_processors

from agentmesh.gen.providers.v1 import events_pb2 as provider_events
from agentmesh.gen.registry.v1 import events_pb2 as registry_events
from agentmesh.gen.runner.v1 import events_pb2 as runner_events
from agentmesh.mesh import MeshContext, MeshService
from agentmesh.outbound import OutboundPolicy
from agentmesh.outbox import OutboxRelay
from services.runner.build import AgentBuilder
from services.runner.credits import Credits, Price
from services.runner.definitions import AgentDefinitions
from services.runner.execute import Executor
from services.runner.models import Models
from services.runner.servicer import RunnerServicer, sweep_expired_approvals
from services.runner.store import OUTBOX, RunnerStore

MIGRATIONS = Path(__file__).parent / "migrations"


class RunnerService(MeshService):
    def __init__(
        self,
        servicer: RunnerServicer,
        executor: Executor,
        models: Models,
        relay: OutboxRelay,
        sweeper: asyncio.Task,
    ):
        super().__init__(servicer)
        self._executor = executor
        self._models = models
        self._relay = relay
        self._sweeper = sweeper

    async def stop(self) -> None:
        self._sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sweeper
        await self._executor.stop()
        await self._relay.stop()
        await self._models.close()


async def create(context: MeshContext) -> RunnerService:
    assert context.database is not None
    settings = context.settings
    # The SDK's default exporter would send every span, and the API key, to OpenAI.
    set_trace_processors([])
    store = RunnerStore(context.database)
    definitions = AgentDefinitions(context.peer("registry"))
    models = Models(context.peer("providers"), settings.outbound_allow, settings.default_model)
    prices = {model: Price(**price) for model, price in settings.credit_prices.items()}
    credits = Credits(context.peer("registry"), prices, settings.run_credit_chunk)
    relay = OutboxRelay(
        "runner",
        context.database,
        OUTBOX,
        context.events,
        [runner_events.RunChanged, runner_events.UsageRecorded],
    )
    relay.start()
    executor = Executor(
        store,
        definitions,
        AgentBuilder(models, OutboundPolicy(settings.outbound_allow)),
        credits,
        timedelta(seconds=settings.approval_ttl_seconds),
        on_saved=relay.notify,
    )
    servicer = RunnerServicer(store, definitions, executor, credits)
    await context.events.subscribe(registry_events.AgentChanged, _forget(definitions.forget))
    await context.events.subscribe(provider_events.ProviderChanged, _forget(models.forget))
    sweeper = asyncio.create_task(
        sweep_expired_approvals(servicer, store, timedelta(seconds=settings.approval_sweep_seconds))
    )
    return RunnerService(servicer, executor, models, relay, sweeper)


def _forget(drop):  # type: ignore[no-untyped-def]
    async def handle(event) -> None:  # type: ignore[no-untyped-def]
        drop(event)

    return handle
