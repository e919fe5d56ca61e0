"""gRPC servicer of the files service: protos in, store, blob and index calls, protos out."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Callable

import grpc
from google.protobuf import empty_pb2, json_format

from agentmesh.api import timestamp
from agentmesh.auth import current_user
from agentmesh.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from agentmesh.gen.files.v1 import files_pb2 as f
from agentmesh.gen.files.v1 import files_pb2_grpc
from agentmesh.ids import new_id, utc_now
from agentmesh.names import ResourceName
from agentmesh.paging import Pages
from services.files.blobs import BlobStore, BlobTooLarge, BlobWriter
from services.files.embed import DEFAULT_MAX_TOKENS, DEFAULT_OVERLAP_TOKENS
from services.files.embeddings import Embeddings
from services.files.extract import UnsupportedType, detect_type
from services.files.keywords import KeywordQuery, query_vector, words
from services.files.store import (
    FAILED,
    PROCESSING,
    READY,
    File,
    FileStore,
    Missing,
    StoreFile,
    VectorStore,
)
from services.files.vectors import VectorIndex

log = logging.getLogger("agentmesh.files")

FILE = ResourceName.of(f.File)
VECTOR_STORE = ResourceName.of(f.VectorStore)
_STATES = {
    PROCESSING: f.PROCESSING_STATE_PROCESSING,
    READY: f.PROCESSING_STATE_READY,
    FAILED: f.PROCESSING_STATE_FAILED,
}
# The upload metadata key a client may put its own SHA-256 of the bytes under: the
# upload is refused if the bytes that arrived hash to anything else.
CHECKSUM_KEY = "sha256"
_FILTER_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_DEFAULT_RESULTS = 10
_WATCH_POLL_SECONDS = 0.2


def file_proto(file: File) -> f.File:
    return f.File(
        name=FILE.format(file.id),
        filename=file.filename,
        mime_type=file.mime_type,
        size_bytes=file.size_bytes,
        sha256=file.sha256,
        state=_STATES[file.state],
        error=file.error,
        chunk_count=file.chunk_count,
        chunks_embedded=file.chunks_embedded,
        metadata=file.metadata,
        create_time=timestamp(file.create_time),
    )


def store_proto(store: VectorStore) -> f.VectorStore:
    return f.VectorStore(
        name=VECTOR_STORE.format(store.id),
        display_name=store.display_name,
        embedding_provider=store.embedding_provider,
        embedding_model=store.embedding_model,
        file_count=store.file_count,
        create_time=timestamp(store.create_time),
        chunking=f.Chunking(max_tokens=store.max_tokens, overlap_tokens=store.overlap_tokens),
        dimensions=store.dimensions,
    )


def store_file_proto(store_file: StoreFile) -> f.VectorStoreFile:
    return f.VectorStoreFile(
        name=f"{VECTOR_STORE.format(store_file.store_id)}/files/{store_file.file_id}",
        file=FILE.format(store_file.file_id),
        state=_STATES[store_file.state],
        error=store_file.error,
    )


def search_filter(request: f.SearchVectorStoreRequest) -> dict[str, str]:
    """File metadata a result must have; keys are plain names, values strings."""
    wanted = json_format.MessageToDict(request.filter) if request.HasField("filter") else {}
    violations = []
    for key, value in wanted.items():
        # json.dumps: a key is shown escaped, never with a raw quote or line break.
        if not _FILTER_KEY.fullmatch(key):
            violations.append((f"filter[{json.dumps(key[:64])}]", "keys are 1-64 of A-Za-z0-9_.-"))
        elif not isinstance(value, str):
            violations.append((f'filter["{key}"]', "file metadata values are strings"))
    if violations:
        raise InvalidArgument(violations)
    return wanted


class FileServicer(files_pb2_grpc.FileServiceServicer):
    def __init__(
        self,
        store: FileStore,
        blobs: BlobStore,
        index: VectorIndex,
        max_bytes: int,
        embeddings: Embeddings,
        on_staged: Callable[[], None],
        pages: Pages,
    ):
        self._store = store
        self._pages = pages
        self._blobs = blobs
        self._index = index
        self._max_bytes = max_bytes
        self._embeddings = embeddings
        self._on_staged = on_staged

    # ---- files ---------------------------------------------------------------------

    async def UploadFile(
        self, requests: AsyncIterator[f.UploadFileRequest], context: grpc.aio.ServicerContext
    ) -> f.File:
        user = current_user()
        metadata: f.UploadFileRequest.Metadata | None = None
        writer: BlobWriter | None = None
        try:
            async for part in requests:
                kind = part.WhichOneof("part")
                if metadata is None:
                    if kind != "metadata":
                        raise InvalidArgument(
                            [("metadata", "send the file's metadata first, then its bytes")]
                        )
                    metadata = part.metadata
                    writer = await asyncio.to_thread(self._blobs.writer, self._max_bytes)
                elif kind != "chunk":
                    raise InvalidArgument([("metadata", "send the metadata once, first")])
                else:
                    assert writer is not None
                    await asyncio.to_thread(writer.write, part.chunk)
            if metadata is None or writer is None:
                raise InvalidArgument([("metadata", "the upload sent no metadata")])
            if writer.size == 0:
                raise InvalidArgument([("chunk", "the file is empty")], reason="EMPTY_FILE")
            writer.close()
            claimed = metadata.metadata.get(CHECKSUM_KEY, "").lower()
            if claimed and claimed != writer.sha256:
                raise InvalidArgument(
                    [
                        (
                            f'metadata.metadata["{CHECKSUM_KEY}"]',
                            "the bytes received do not have this SHA-256; upload again",
                        )
                    ],
                    reason="CHECKSUM_MISMATCH",
                )
            try:
                head = await asyncio.to_thread(writer.head)
                mime_type = detect_type(head, metadata.mime_type, metadata.filename, writer.path)
            except UnsupportedType as error:
                raise InvalidArgument(
                    [("metadata.mime_type", str(error))], reason="UNSUPPORTED_FILE_TYPE"
                ) from None
            size = writer.size
            sha256 = await asyncio.to_thread(self._blobs.commit, writer)
            writer = None
        except BlobTooLarge:
            raise InvalidArgument(
                [("chunk", f"the file is larger than the limit of {self._max_bytes} bytes")],
                reason="FILE_TOO_LARGE",
            ) from None
        finally:
            if writer is not None:
                await asyncio.to_thread(writer.discard)
        extra = {key: value for key, value in metadata.metadata.items() if key != CHECKSUM_KEY}
        file = File(
            new_id(),
            user.user_id,
            metadata.filename,
            mime_type,
            size,
            sha256,
            PROCESSING,
            "",
            extra,
            utc_now(),
        )
        await self._store.create_file(file)
        self._on_staged()
        return file_proto(file)

    async def GetFile(self, request: f.GetFileRequest, context) -> f.File:
        return file_proto(await self._file(request.name))

    async def ListFiles(self, request: f.ListFilesRequest, context) -> f.ListFilesResponse:
        cursor = self._pages.open(request)
        page = await self._store.list_files(
            current_user().user_id,
            cursor.after,
            cursor.size,
        )
        return f.ListFilesResponse(
            files=[file_proto(file) for file in page.items],
            next_page_token=cursor.next_token(page.last_seq),
        )

    async def DeleteFile(self, request: f.DeleteFileRequest, context) -> empty_pb2.Empty:
        file = await self._file(request.name)
        stores = [
            await self._store.get_store(file.user_id, store_id)
            for store_id in await self._store.store_ids_of(file.id)
        ]
        if not await self._store.delete_file(file.user_id, file.id):
            raise NotFound(request.name)
        # The rows first: a search that races this sees no file rather than half of one.
        for store in stores:
            await self._index.delete_file(store.dimensions, store.id, file.id)
        if not await self._store.blob_in_use(file.sha256):
            try:
                await asyncio.to_thread(self._blobs.delete, file.sha256)
            except Unavailable:
                # The file is deleted (its rows and vectors are gone, and a retry
                # would find nothing to delete); only its bytes stay behind.
                log.warning("the blob of %s stays in the blob store", request.name)
        return empty_pb2.Empty()

    async def WatchFile(self, request: f.WatchFileRequest, context) -> AsyncIterator[f.File]:
        last = None
        while True:
            current = file_proto(await self._file(request.name))
            if current != last:
                yield current
                last = current
            if current.state != f.PROCESSING_STATE_PROCESSING:
                return
            await asyncio.sleep(_WATCH_POLL_SECONDS)

    async def _file(self, name: str) -> File:
        try:
            return await self._store.get_file(current_user().user_id, FILE.id(name))
        except Missing:
            raise NotFound(name) from None

    # ---- vector stores ---------------------------------------------------------------

    async def CreateVectorStore(
        self, request: f.CreateVectorStoreRequest, context
    ) -> f.VectorStore:
        user = current_user()
        wanted = request.vector_store
        model, dimensions, window = await self._embeddings.settings(user.user_id, wanted)
        max_tokens = wanted.chunking.max_tokens or min(DEFAULT_MAX_TOKENS, window)
        overlap = wanted.chunking.overlap_tokens or min(DEFAULT_OVERLAP_TOKENS, max_tokens // 4)
        violations = []
        if max_tokens > window:
            violations.append(
                (
                    "vector_store.chunking.max_tokens",
                    f"{model} reads at most {window} word pieces a chunk",
                )
            )
        if overlap >= max_tokens:
            violations.append(
                ("vector_store.chunking.overlap_tokens", "must be less than max_tokens")
            )
        if violations:
            raise InvalidArgument(violations)
        store = VectorStore(
            new_id(),
            user.user_id,
            wanted.display_name,
            wanted.embedding_provider,
            model,
            dimensions,
            max_tokens,
            overlap,
            utc_now(),
        )
        await self._store.create_store(store)
        return store_proto(store)

    async def GetVectorStore(self, request: f.GetVectorStoreRequest, context) -> f.VectorStore:
        return store_proto(await self._vector_store(request.name))

    async def ListVectorStores(
        self, request: f.ListVectorStoresRequest, context
    ) -> f.ListVectorStoresResponse:
        cursor = self._pages.open(request)
        page = await self._store.list_stores(
            current_user().user_id,
            cursor.after,
            cursor.size,
        )
        return f.ListVectorStoresResponse(
            vector_stores=[store_proto(store) for store in page.items],
            next_page_token=cursor.next_token(page.last_seq),
        )

    async def DeleteVectorStore(
        self, request: f.DeleteVectorStoreRequest, context
    ) -> empty_pb2.Empty:
        store = await self._vector_store(request.name)
        if not await self._store.delete_store(store.user_id, store.id):
            raise NotFound(request.name)
        await self._index.delete_store(store.dimensions, store.id)
        return empty_pb2.Empty()

    async def AddVectorStoreFile(
        self, request: f.AddVectorStoreFileRequest, context
    ) -> f.VectorStoreFile:
        store = await self._vector_store(request.vector_store)
        file = await self._file(request.file)
        if file.state == FAILED:
            raise FailedPrecondition(
                f"{request.file} failed processing ({file.error}); it cannot be indexed",
                reason="FILE_FAILED",
            )
        store_file = await self._store.add_to_store(store.user_id, store.id, file.id)
        self._on_staged()
        return store_file_proto(store_file)

    async def SearchVectorStore(
        self, request: f.SearchVectorStoreRequest, context
    ) -> f.SearchVectorStoreResponse:
        store = await self._vector_store(request.vector_store)
        wanted = search_filter(request)
        vector = await self._embeddings.query(store, request.query)
        hits = await self._index.search(
            store.dimensions,
            store.id,
            store.user_id,
            vector,
            await self._keywords(store, request.query),
            request.max_results or _DEFAULT_RESULTS,
            wanted,
        )
        names = await self._store.filenames(store.user_id, {hit.file for hit in hits})
        return f.SearchVectorStoreResponse(
            results=[
                f.SearchResult(
                    file=FILE.format(hit.file),
                    filename=names[hit.file],
                    text=hit.text,
                    score=hit.score,
                    chunk_index=hit.chunk_index,
                )
                for hit in hits
                # A file deleted while its vectors were being removed is not shown.
                if hit.file in names
            ]
        )

    async def _keywords(self, store: VectorStore, query: str) -> KeywordQuery | None:
        """The query's side of BM25 in this store; None for a query of stop words."""
        query_words = words(query)
        if not query_words:
            return None
        chunks, frequencies = await self._store.term_stats(store.id, set(query_words))
        return query_vector(query_words, chunks, frequencies)

    async def _vector_store(self, name: str) -> VectorStore:
        try:
            return await self._store.get_store(current_user().user_id, VECTOR_STORE.id(name))
        except Missing:
            raise NotFound(name) from None
