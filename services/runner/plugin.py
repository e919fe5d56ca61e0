"""The runner as a mesh service: its peers, its caches, its background work."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

from agentmesh.api import timestamp
from agentmesh.gen.providers.v1 import events_pb2 as provider_events
from agentmesh.gen.registry.v1 import events_pb2 as registry_events
from agentmesh.gen.runner.v1 import events_pb2 as runner_events
from agentmesh.gen.traces.v1 import events_pb2 as trace_events
from agentmesh.ids import new_id, utc_now
from agentmesh.mesh import MeshContext, MeshService
from agentmesh.outbound import OutboundPolicy
from agentmesh.outbox import OutboxRelay
from agentmesh.sealing import MCP_AUTHORIZATIONS, Sealer
from agentmesh.tasks import cancel, every
from services.runner.build import AgentBuilder
from services.runner.compact import Compactor
from services.runner.credits import Credits, Price
from services.runner.definitions import AgentDefinitions
from services.runner.dispatch import Dispatcher, Timing
from services.runner.execute import Executor
from services.runner.file_search import FileSearch
from services.runner.guarding import Guarding
from services.runner.models import Models
from services.runner.queue import RunQueue
from services.runner.servicer import RunnerServicer
from services.runner.store import OUTBOX, RunnerStore
from services.runner.tools import McpAuthorizations
from services.runner.tracing import ROUTER, Redactor, SpanSink, install_tracing
from services.runner.workflows import WorkflowEngine

MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger("agentmesh.runner")


class RunnerService(MeshService):
    def __init__(
        self,
        servicer: RunnerServicer,
        queue: RunQueue,
        dispatcher: Dispatcher,
        executor: Executor,
        models: Models,
        relay: OutboxRelay,
        background: list[asyncio.Task],
        spans: SpanSink,
        workflows: WorkflowEngine | None = None,
    ):
        super().__init__(servicer)
        self._workflows = workflows
        self._queue = queue
        self._dispatcher = dispatcher
        self._executor = executor
        self._models = models
        self._relay = relay
        self._background = background
        self._spans = spans

    async def stop(self) -> None:
        self._executor.stopping = True  # what breaks now is the stop's doing
        await self._queue.stop()  # no new runs first
        await cancel(self._background)
        if self._workflows is not None:  # handed on from their last saved step
            await self._workflows.stop()
        await self._dispatcher.stop()
        await self._executor.stop()
        await self._relay.stop()
        # After the runs: their last spans go out before the connection closes.
        ROUTER.unregister(self._executor.owner)
        await self._spans.close()
        await self._models.close()


def replica_id() -> str:
    """This process as the owner of the runs it executes: its host, and unique."""
    return f"{socket.gethostname()[:40]}-{new_id()[:12]}"


def queued_event(run_id: str, user_id: str) -> runner_events.RunQueued:
    return runner_events.RunQueued(
        run=f"runs/{run_id}", user=f"users/{user_id}", time=timestamp(utc_now())
    )


async def create(context: MeshContext) -> RunnerService:
    assert context.database is not None
    settings = context.settings
    # The SDK's default exporter would send every span, and the API key, to OpenAI:
    # spans go to NATS instead, through this replica's sink (services/runner/tracing.py).
    install_tracing()
    store = RunnerStore(context.database, queued_event)
    definitions = AgentDefinitions(context.peer("registry"))
    models = Models(context.peer("providers"), settings.outbound_allow, settings.default_model)
    mcp_authorizations = McpAuthorizations(
        Sealer(settings.resolved_service_token(), MCP_AUTHORIZATIONS)
    )
    prices = {model: Price(**price) for model, price in settings.credit_prices.items()}
    credits = Credits(context.peer("registry"), prices, settings.run_credit_chunk)
    # Before the relay first publishes to it: the queue's stream is a work queue.
    await context.events.ensure_stream(runner_events.RunQueued)
    # Spans wait for the traces service there, whichever of the two starts first.
    await context.events.ensure_stream(trace_events.SpanBatch)
    relay = OutboxRelay(
        "runner",
        context.database,
        OUTBOX,
        context.events,
        [
            runner_events.RunChanged,
            runner_events.WorkflowRunChanged,
            runner_events.UsageRecorded,
            runner_events.RunQueued,
        ],
    )
    relay.start()
    lease = timedelta(seconds=settings.run_lease_seconds)
    executor = Executor(
        store,
        definitions,
        AgentBuilder(
            models,
            OutboundPolicy(settings.outbound_allow),
            mcp_authorizations,
            Guarding(context.peer("guardrails")),
            FileSearch(context.peer("files")),
        ),
        credits,
        timedelta(seconds=settings.approval_ttl_seconds),
        owner=replica_id(),
        compactor=Compactor(store, settings.conversation_token_budget),
        on_saved=relay.notify,
        tracing=settings.trace_runs,
    )
    redactor = Redactor(lambda user: [*models.api_keys(user), *mcp_authorizations.known(user)])
    spans = SpanSink(context.events, redactor, settings.trace_flush_seconds)
    ROUTER.register(executor.owner, spans)
    executor.start()
    dispatcher = Dispatcher(
        store,
        executor,
        credits,
        context.events,
        Timing(lease, settings.run_watch_poll_seconds, settings.run_cancel_wait_seconds),
        on_saved=relay.notify,
    )
    workflows = WorkflowEngine(
        store,
        context.peer("registry"),
        definitions,
        dispatcher,
        executor,
        Timing(lease, settings.run_watch_poll_seconds, settings.run_cancel_wait_seconds),
        on_saved=relay.notify,
    )
    servicer = RunnerServicer(
        store, definitions, dispatcher, executor, context.pages, workflows=workflows
    )
    await context.events.subscribe(registry_events.AgentChanged, _forget(definitions.forget))
    await context.events.subscribe(provider_events.ProviderChanged, _forget(models.forget))
    await context.events.subscribe(runner_events.RunCancelRequested, dispatcher.on_cancel_requested)
    queue = RunQueue(
        context.events,
        executor,
        dispatcher.claim,
        settings.runner_max_runs,
        claim_workflow=workflows.claim,
    )
    await queue.start()
    background = [
        every(
            settings.run_lease_renew_seconds, "renewing leases", _renewal(dispatcher, lease), log
        ),
        every(settings.run_lease_sweep_seconds, "sweeping runs", dispatcher.sweep, log),
        every(
            settings.approval_sweep_seconds, "sweeping approvals", dispatcher.expire_approvals, log
        ),
        every(
            settings.retention_sweep_seconds,
            "applying retention",
            _retention(store, workflows, settings),
            log,
        ),
        every(settings.run_lease_renew_seconds, "workflow leases", workflows.renew_leases, log),
        every(settings.run_lease_sweep_seconds, "sweeping workflow runs", workflows.sweep, log),
    ]
    log.info("runner replica %s", executor.owner)
    return RunnerService(
        servicer, queue, dispatcher, executor, models, relay, background, spans, workflows
    )


def _renewal(dispatcher: Dispatcher, lease: timedelta) -> Callable[[], Awaitable[None]]:
    """Renews this replica's leases; one that cannot for a whole lease stops its runs,
    which other replicas take over by then."""
    renewed = utc_now()

    async def renew() -> None:
        nonlocal renewed
        try:
            await dispatcher.renew_leases()
        except Exception:
            if utc_now() - renewed > lease:
                dispatcher.lose_all()
            raise
        renewed = utc_now()

    return renew


def _retention(  # type: ignore[no-untyped-def]
    store: RunnerStore, workflows: WorkflowEngine, settings
) -> Callable[[], Awaitable[None]]:
    async def apply() -> None:
        now = utc_now()
        batch = settings.retention_batch
        if days := settings.conversation_retention_days:
            while await store.delete_idle_conversations(now - timedelta(days=days), batch) == batch:
                pass
        if days := settings.run_retention_days:
            while await store.forget_ended_runs(now - timedelta(days=days), batch) == batch:
                pass
            while await workflows.forget_ended_runs(now - timedelta(days=days), batch) == batch:
                pass

    return apply


def _forget(drop):  # type: ignore[no-untyped-def]
    async def handle(event) -> None:  # type: ignore[no-untyped-def]
        drop(event)

    return handle
