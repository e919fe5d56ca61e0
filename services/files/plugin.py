"""The files service as a mesh service: its database, blobs, Milvus, and the workers
that ingest uploaded files."""

from __future__ import annotations

from pathlib import Path

from agentmesh.gen.files.v1 import events_pb2
from agentmesh.mesh import MeshContext, MeshService
from agentmesh.outbound import OutboundPolicy
from agentmesh.outbox import OutboxRelay
from services.files.blobs import blob_store
from services.files.embed import local_embedder_async
from services.files.embeddings import Embeddings
from services.files.ingest import IngestionQueue, Ingestor
from services.files.servicer import FileServicer
from services.files.store import OUTBOX, FileStore
from services.files.vectors import VectorIndex

MIGRATIONS = Path(__file__).parent / "migrations"


class FilesService(MeshService):
    def __init__(
        self,
        servicer: FileServicer,
        queue: IngestionQueue,
        relay: OutboxRelay,
        index: VectorIndex,
        store: FileStore,
        embeddings: Embeddings,
    ):
        super().__init__(servicer)
        self.queue = queue
        self.index = index
        self.store = store
        self._relay = relay
        self._embeddings = embeddings

    async def stop(self) -> None:
        await self.queue.stop()
        await self._relay.stop()
        await self._embeddings.aclose()


async def create(context: MeshContext) -> FilesService:
    assert context.database is not None
    settings = context.settings
    store = FileStore(context.database)
    blobs = blob_store(settings)
    index = VectorIndex(
        settings.milvus_uri or str(settings.data_dir / "milvus.db"), settings.milvus_token
    )
    # Before the relay first publishes to it: the stream is a work queue.
    await context.events.ensure_stream(events_pb2.FileUploaded)
    relay = OutboxRelay(
        "files", context.database, OUTBOX, context.events, [events_pb2.FileUploaded]
    )
    relay.start()
    embeddings = Embeddings(context.peer("providers"), OutboundPolicy(settings.outbound_allow))
    ingestor = Ingestor(
        store, blobs, index, embeddings.for_store, local_embedder_async, settings.files_embed_batch
    )
    queue = IngestionQueue(context.events, ingestor, settings.files_ingest_ack_seconds)
    await queue.start()
    servicer = FileServicer(
        store,
        blobs,
        index,
        settings.files_max_bytes,
        embeddings,
        relay.notify,
        context.pages,
    )
    return FilesService(servicer, queue, relay, index, store, embeddings)
