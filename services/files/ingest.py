"""Ingestion: a JetStream work queue every files replica consumes.

A FileUploaded event (staged through the outbox with the row it announces) names
a file, and the vector store to index it into if any. A worker extracts the text,
cuts it into chunks, embeds them in batches and upserts them into Milvus under
deterministic ids, recording progress after each batch and telling JetStream it
is still working. The message is acknowledged only when the file is READY or
FAILED: a worker that dies leaves it unacknowledged, JetStream hands it to another
replica after the ack wait, and that one resumes after the last recorded batch,
rewriting the same ids; nothing is duplicated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.client import JetStreamContext

from agentmesh.events import EventBus, event_spec
from agentmesh.gen.files.v1 import events_pb2
from agentmesh.tasks import cancel
from services.files.blobs import BlobStore
from services.files.embed import LocalEmbedder
from services.files.embeddings import Embedder, EmbeddingFailed
from services.files.extract import ExtractionError, extract_text
from services.files.keywords import average_length, chunk_vector, words
from services.files.store import FileStore, Missing, VectorStore
from services.files.vectors import ChunkRow, VectorIndex

log = logging.getLogger("agentmesh.files")

CONSUMER = "files"
# A file that fails this many deliveries for reasons not its own (the database or
# Milvus away) is marked failed rather than tried forever.
MAX_DELIVERIES = 5
_RETRY_SECONDS = 2.0
_FETCH_SECONDS = 1.0
# Unflushed rows are searched by brute force; past this many, flush without waiting
# for the queue to fall idle.
FLUSH_ROWS = 10_000


@dataclass(frozen=True)
class Job:
    user_id: str
    file_id: str
    store_id: str

    @classmethod
    def of(cls, event: events_pb2.FileUploaded) -> Job:
        return cls(
            event.user.removeprefix("users/"),
            event.file.removeprefix("files/"),
            event.vector_store.removeprefix("vectorStores/"),
        )


Embedders = Callable[[VectorStore], Awaitable[Embedder]]


class Ingestor:
    """Does one job: extract, chunk, embed, index, and record each step."""

    def __init__(
        self,
        store: FileStore,
        blobs: BlobStore,
        index: VectorIndex,
        embedder_for: Embedders,
        chunker: Callable[[], Awaitable[LocalEmbedder]],
        batch: int,
    ):
        self._store = store
        self._blobs = blobs
        self._index = index
        self._embedder_for = embedder_for
        self._chunker = chunker
        self._batch = batch
        # Rows written since the last flush, by collection (dimension).
        self._unflushed: dict[int, int] = {}

    async def flush(self) -> None:
        """Seals what was written, so searches use the indexes: when the queue falls
        idle, or after FLUSH_ROWS rows. A flush per file would cost more than a small
        file's embedding and leave Milvus many small segments to search."""
        for dimensions in list(self._unflushed):
            await self._index.flush(dimensions)
            del self._unflushed[dimensions]

    async def run(self, job: Job, heartbeat: Callable[[], Awaitable[object]]) -> None:
        try:
            found = await self._store.ingestion(job.user_id, job.file_id, job.store_id)
        except Missing:
            return  # deleted since: nothing to do
        file = found.file
        data = await asyncio.to_thread(self._blobs.read, file.sha256)
        try:
            text = await asyncio.to_thread(extract_text, data, file.mime_type)
        except ExtractionError as error:
            await self._store.finish_extraction(file.id, str(error))
            if job.store_id:
                await self._store.finish_store_file(job.store_id, file.id, str(error))
            return
        await self._store.finish_extraction(file.id)
        if found.store is None or found.store_file is None:
            return
        store, done_before = found.store, found.store_file
        chunker = await self._chunker()
        chunks = await asyncio.to_thread(
            chunker.chunks, text, store.max_tokens, store.overlap_tokens
        )
        average = average_length(store.max_tokens)
        chunk_words = [words(chunk.text) for chunk in chunks]
        # BM25's document frequencies: in how many of this file's chunks each word is.
        terms = Counter(word for these in chunk_words for word in set(these))
        # A redelivered job resumes after the last batch the one before recorded.
        done = done_before.chunks_embedded if done_before.chunk_count == len(chunks) else 0
        if not await self._store.progress(store.id, file.id, len(chunks), done):
            return
        embedder = await self._embedder_for(store)
        while done < len(chunks):
            batch = chunks[done : done + self._batch]
            vectors = await embedder.embed([chunk.text for chunk in batch], self._batch)
            if any(len(vector) != store.dimensions for vector in vectors):
                await self._store.finish_store_file(
                    store.id,
                    file.id,
                    f"the embedding model returned vectors of {len(vectors[0])} dimensions; "
                    f"the store holds {store.dimensions}",
                )
                await self._index.delete_file(store.dimensions, store.id, file.id)
                return
            rows = [
                ChunkRow(
                    store.id,
                    job.user_id,
                    file.id,
                    chunk.index,
                    chunk.text,
                    vector,
                    chunk_vector(chunk_words[chunk.index], average),
                    file.metadata,
                )
                for chunk, vector in zip(batch, vectors, strict=True)
            ]
            await self._index.upsert(store.dimensions, rows)
            done += len(batch)
            if not await self._store.progress(store.id, file.id, len(chunks), done):
                break  # the file left the store meanwhile
            await heartbeat()
        # Chunks past the end (none, unless the text changed) and, for a file that
        # left the store meanwhile, every chunk written for it.
        still_there = await self._store.store_file(store.id, file.id) is not None
        await self._index.delete_file(
            store.dimensions, store.id, file.id, from_index=len(chunks) if still_there else 0
        )
        self._unflushed[store.dimensions] = (
            self._unflushed.get(store.dimensions, 0) + len(chunks) - done_before.chunks_embedded
        )
        if self._unflushed[store.dimensions] >= FLUSH_ROWS:
            await self.flush()
        if not await self._store.finish_store_file(store.id, file.id, terms=terms):
            await self._index.delete_file(store.dimensions, store.id, file.id)

    async def give_up(self, job: Job, reason: str) -> None:
        await self._store.finish_extraction(job.file_id, reason)
        if job.store_id:
            await self._store.finish_store_file(job.store_id, job.file_id, reason)


class IngestionQueue:
    def __init__(self, events: EventBus, ingestor: Ingestor, ack_wait: float):
        self._events = events
        self._ingestor = ingestor
        self._ack_wait = ack_wait
        self._task: asyncio.Task | None = None
        self._subscription: JetStreamContext.PullSubscription | None = None

    async def start(self) -> None:
        spec = event_spec(events_pb2.FileUploaded)
        self._subscription = await self._events.jetstream.pull_subscribe(
            spec.subject,
            durable=CONSUMER,
            stream=spec.stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT, ack_wait=self._ack_wait, max_ack_pending=-1
            ),
        )
        self._task = asyncio.create_task(self._consume(self._subscription), name="files-ingest")

    async def stop(self) -> None:
        """Stops at once: a job cut short is not acknowledged, so another replica (or
        this one, restarted) takes it up after the ack wait."""
        if self._task is not None:
            await cancel([self._task])
        if self._subscription is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._subscription.unsubscribe()

    async def _consume(self, subscription: JetStreamContext.PullSubscription) -> None:
        while True:
            try:
                messages = await subscription.fetch(1, timeout=_FETCH_SECONDS)
            except TimeoutError:
                await self._flush_when_idle()
                continue
            except nats.errors.Error:
                log.warning("the ingestion queue cannot be read; retrying", exc_info=True)
                await asyncio.sleep(_RETRY_SECONDS)
                continue
            for message in messages:
                await self._handle(message)

    async def _flush_when_idle(self) -> None:
        try:
            await self._ingestor.flush()
        except Exception:  # noqa: BLE001 - Milvus away: the next idle moment tries again
            log.warning("flushing ingested chunks failed; retrying", exc_info=True)

    async def _handle(self, message: Msg) -> None:
        try:
            job = Job.of(events_pb2.FileUploaded.FromString(message.data))
        except Exception:  # noqa: BLE001 - a message no worker can read is dropped
            log.error("dropping an unreadable ingestion message")
            await message.term()
            return
        try:
            await self._ingestor.run(job, message.in_progress)
        except Exception as error:  # noqa: BLE001 - the database, Milvus, NATS or a provider
            deliveries = message.metadata.num_delivered if message.metadata else 1
            if deliveries >= MAX_DELIVERIES:
                log.exception("files/%s failed %d times; giving up", job.file_id, deliveries)
                # A provider's failure is the user's to fix; say which. Others are ours.
                why = str(error) if isinstance(error, EmbeddingFailed) else "an internal error"
                with contextlib.suppress(Exception):
                    await self._ingestor.give_up(
                        job, f"ingestion failed {deliveries} times ({why}); add it again"
                    )
                await message.term()
                return
            log.warning("ingesting files/%s failed; it is retried", job.file_id, exc_info=True)
            await message.nak(delay=_RETRY_SECONDS)
            return
        await message.ack()
