"""The traces service as a mesh service: its intake, its retention, its OTLP export."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from datetime import timedelta
from pathlib import Path

from agentmesh.config import Settings
from agentmesh.ids import utc_now
from agentmesh.mesh import MeshContext, MeshService
from agentmesh.tasks import cancel, every
from services.traces.consume import SpanConsumer
from services.traces.otlp import OtlpExport
from services.traces.servicer import TraceServicer
from services.traces.store import TraceStore

MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger("agentmesh.traces")


class TracesService(MeshService):
    def __init__(
        self,
        servicer: TraceServicer,
        store: TraceStore,
        consumer: SpanConsumer,
        retention: asyncio.Task | None,
        otlp: OtlpExport | None,
    ):
        super().__init__(servicer)
        self.store = store
        self.consumer = consumer
        self._retention = retention
        self._otlp = otlp

    async def stop(self) -> None:
        await self.consumer.stop()
        if self._retention is not None:
            await cancel([self._retention])
        if self._otlp is not None:
            await asyncio.to_thread(self._otlp.close)


async def apply_retention(store: TraceStore, settings: Settings) -> int:
    """Deletes the traces older than the retention, a batch per transaction; how many."""
    cutoff = utc_now() - timedelta(days=settings.trace_retention_days)
    deleted = 0
    while True:
        count = await store.delete_started_before(cutoff, settings.retention_batch)
        deleted += count
        if count < settings.retention_batch:
            return deleted


async def _retain(store: TraceStore, settings: Settings) -> None:
    if deleted := await apply_retention(store, settings):
        log.info("retention deleted %d traces", deleted)


async def create(context: MeshContext) -> TracesService:
    assert context.database is not None
    settings = context.settings
    store = TraceStore(context.database)
    otlp = OtlpExport(settings.otlp_endpoint) if settings.otlp_endpoint else None
    export = None
    if otlp is not None:
        # Converting spans for OTLP is CPU work: a thread, not the intake's event loop.
        def export(batches: list) -> Awaitable[None]:
            return asyncio.to_thread(otlp.send, batches)

    consumer = SpanConsumer(context.events, store, export)
    await consumer.start()
    retention = None
    if settings.trace_retention_days > 0:
        retention = every(
            settings.retention_sweep_seconds,
            "applying trace retention",
            lambda: _retain(store, settings),
            log,
        )
    return TracesService(TraceServicer(store, context.pages), store, consumer, retention, otlp)
