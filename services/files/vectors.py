"""Chunks in Milvus: dense vectors, BM25 sparse vectors, and hybrid search of both.

One collection per embedding dimension, with the vector store id as its partition
key: every query names the store (and the user) in its filter, so a search never
crosses stores or users, and deleting a store deletes by that key. BM25 is an
inner product of sparse vectors (see keywords.py), and a search fuses the dense
and the keyword scores, each scaled over its candidates: names, codes and rare
words that embeddings blur are found by the keyword side.

Chunk ids are deterministic (store, file, index), and rows are upserted: a
redelivered ingestion rewrites the same rows instead of adding copies.

pymilvus is synchronous; every call runs in a worker thread. One client per URI
per process, made on first use (importing pymilvus and starting Milvus Lite cost
a second a mesh that never sees a file should not pay): replicas in one process
(tests) share a Milvus Lite file as pods share a Milvus server.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from services.files.keywords import KeywordQuery

if TYPE_CHECKING:
    from pymilvus import MilvusClient

_TEXT_LIMIT = 16_000  # characters of chunk text kept (chunks are ~1,000)
_KEYWORD_WEIGHT = 0.3
# Candidates each side contributes to the fusion, per result asked for.
_CANDIDATES = 4
_OUTPUT = ["file", "chunk_index", "text"]

_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def milvus_client(uri: str, token: str = "") -> MilvusClient:
    from pymilvus import MilvusClient

    with _clients_lock:
        if uri not in _clients:
            _clients[uri] = MilvusClient(uri, token=token) if token else MilvusClient(uri)
        return _clients[uri]


@dataclass(frozen=True)
class ChunkRow:
    store: str
    user: str
    file: str
    chunk_index: int
    text: str
    vector: list[float]
    keywords: dict[int, float]  # BM25's chunk side (keywords.chunk_vector)
    metadata: dict[str, str]

    @property
    def id(self) -> str:
        return chunk_id(self.store, self.file, self.chunk_index)


@dataclass(frozen=True)
class Hit:
    file: str
    chunk_index: int
    text: str
    score: float


def chunk_id(store: str, file: str, index: int) -> str:
    return f"{store}:{file}:{index}"


def literal(value: str | int) -> str:
    """A value as a Milvus expression literal: JSON's string escaping is the
    expression language's, so no value can end its string and add a condition.
    (Milvus Lite does not take filter parameters, which would be the cleaner way.)"""
    return json.dumps(value, ensure_ascii=False)


def _filter(store: str, user: str, metadata: dict[str, str]) -> str:
    """The filter every search carries: its store and user, and the metadata asked
    for (keys are checked by the caller, values are literals)."""
    terms = [f"store == {literal(store)}", f"user == {literal(user)}"]
    terms += [f'metadata["{key}"] == {literal(value)}' for key, value in sorted(metadata.items())]
    return " and ".join(terms)


class VectorIndex:
    def __init__(self, uri: str, token: str = ""):
        self._uri = uri
        self._token = token
        self._ready: set[int] = set()
        self._lock = asyncio.Lock()

    @property
    def _client(self) -> MilvusClient:
        return milvus_client(self._uri, self._token)

    @staticmethod
    def collection(dimensions: int) -> str:
        return f"agentmesh_chunks_{dimensions}"

    async def ensure(self, dimensions: int) -> str:
        name = self.collection(dimensions)
        if dimensions in self._ready:
            return name
        async with self._lock:
            if dimensions not in self._ready:
                await asyncio.to_thread(self._create, name, dimensions)
                self._ready.add(dimensions)
        return name

    def _create(self, name: str, dimensions: int) -> None:
        from pymilvus import DataType

        client = self._client
        if client.has_collection(name):
            client.load_collection(name)
            return
        schema = client.create_schema(auto_id=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=200)
        schema.add_field("store", DataType.VARCHAR, max_length=64, is_partition_key=True)
        schema.add_field("user", DataType.VARCHAR, max_length=64)
        schema.add_field("file", DataType.VARCHAR, max_length=64)
        schema.add_field("chunk_index", DataType.INT32)
        schema.add_field("text", DataType.VARCHAR, max_length=65_535)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dimensions)
        schema.add_field("keywords", DataType.SPARSE_FLOAT_VECTOR)
        index = client.prepare_index_params()
        index.add_index(
            "vector", index_type="HNSW", metric_type="IP", params={"M": 16, "efConstruction": 200}
        )
        index.add_index("keywords", index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
        client.create_collection(name, schema=schema, index_params=index)

    async def upsert(self, dimensions: int, rows: list[ChunkRow]) -> None:
        name = await self.ensure(dimensions)
        data = [
            {
                "id": row.id,
                "store": row.store,
                "user": row.user,
                "file": row.file,
                "chunk_index": row.chunk_index,
                "text": row.text[:_TEXT_LIMIT],
                "metadata": row.metadata,
                "vector": row.vector,
                "keywords": row.keywords,
            }
            for row in rows
        ]
        await asyncio.to_thread(self._client.upsert, name, data)

    async def flush(self, dimensions: int) -> None:
        """Seals what was written, so searches use the index instead of brute force."""
        name = await self.ensure(dimensions)
        await asyncio.to_thread(self._client.flush, name)

    async def compact(self, dimensions: int) -> None:
        """Asks Milvus to merge small segments (a search visits each one; Milvus Lite
        merges on its own after flushes) and waits until every row is indexed."""
        name = await self.ensure(dimensions)
        await asyncio.to_thread(self._client.compact, name)
        for field in ("vector", "keywords"):
            while True:
                info = await asyncio.to_thread(self._client.describe_index, name, field)
                if not info.get("pending_index_rows"):
                    break
                await asyncio.sleep(0.5)

    async def delete_file(
        self, dimensions: int, store: str, file: str, from_index: int = 0
    ) -> None:
        """Removes a file's chunks from a store (those at from_index and after)."""
        name = await self.ensure(dimensions)
        await asyncio.to_thread(
            self._client.delete,
            name,
            filter=f"store == {literal(store)} and file == {literal(file)} "
            f"and chunk_index >= {int(from_index)}",
        )

    async def delete_store(self, dimensions: int, store: str) -> None:
        name = await self.ensure(dimensions)
        await asyncio.to_thread(self._client.delete, name, filter=f"store == {literal(store)}")

    async def count(self, dimensions: int, store: str, file: str = "") -> int:
        name = await self.ensure(dimensions)
        expression = f"store == {literal(store)}"
        if file:
            expression += f" and file == {literal(file)}"
        rows = await asyncio.to_thread(
            self._client.query, name, filter=expression, output_fields=["count(*)"]
        )
        return int(rows[0]["count(*)"]) if rows else 0

    async def search(
        self,
        dimensions: int,
        store: str,
        user: str,
        vector: list[float],
        keywords: KeywordQuery | None,
        limit: int,
        metadata: dict[str, str] | None = None,
    ) -> list[Hit]:
        """The store's best chunks for the query's vector and (keywords) words: the
        dense and the BM25 candidates together, each scored both ways and fused.
        Without keywords, the vector ranking alone."""
        name = await self.ensure(dimensions)
        expression = _filter(store, user, metadata or {})
        candidates = max(limit * _CANDIDATES, 20)
        dense = asyncio.to_thread(
            self._client.search,
            name,
            data=[vector],
            anns_field="vector",
            filter=expression,
            limit=candidates if keywords else limit,
            output_fields=[*_OUTPUT, "keywords"] if keywords else _OUTPUT,
            search_params={"metric_type": "IP", "params": {"ef": max(64, candidates)}},
        )
        if not keywords:
            return [_hit(found, float(found["distance"])) for found in (await dense)[0]]
        if not keywords.retrieve:
            return fuse(vector, keywords.weights, (await dense)[0], [], limit)
        sparse = asyncio.to_thread(
            self._client.search,
            name,
            data=[keywords.retrieve],
            anns_field="keywords",
            filter=expression,
            limit=candidates,
            output_fields=[*_OUTPUT, "keywords", "vector"],
            search_params={"metric_type": "IP"},
        )
        # Both at once: Milvus answers them in parallel.
        dense_hits, sparse_hits = await asyncio.gather(dense, sparse)
        return fuse(vector, keywords.weights, dense_hits[0], sparse_hits[0], limit)


def _hit(found: dict[str, Any], score: float) -> Hit:
    entity = found["entity"]
    return Hit(entity["file"], int(entity["chunk_index"]), entity["text"], score)


def fuse(
    vector: list[float],
    weights: dict[int, float],
    dense: list[dict[str, Any]],
    sparse: list[dict[str, Any]],
    limit: int,
) -> list[Hit]:
    """Relative score fusion over the union of both candidate lists: each chunk's
    cosine and its full BM25 score (every query word, from its sparse vector), each
    scaled to 0..1 over the candidates (they live on unrelated scales), then weighed.

    The vector side weighs more, since BM25 also matches on incidental shared words;
    a rare word or a code that only BM25 finds still lifts its chunk into the results.
    """
    found: dict[str, dict[str, Any]] = {}
    cosine: dict[str, float] = {}
    for hit in dense:
        found[hit["id"]] = hit
        cosine[hit["id"]] = float(hit["distance"])
    for hit in sparse:
        if hit["id"] not in found:
            found[hit["id"]] = hit
            cosine[hit["id"]] = sum(
                a * b for a, b in zip(vector, hit["entity"]["vector"], strict=True)
            )
    bm25 = {
        key: sum(
            weight * hit["entity"]["keywords"].get(term, 0.0) for term, weight in weights.items()
        )
        for key, hit in found.items()
    }
    scores = {
        key: (1.0 - _KEYWORD_WEIGHT) * dense_part + _KEYWORD_WEIGHT * keyword_part
        for key, dense_part, keyword_part in zip(
            found, _scaled(cosine).values(), _scaled(bm25).values(), strict=True
        )
    }
    best = sorted(scores, key=lambda key: scores[key], reverse=True)[:limit]
    return [_hit(found[key], scores[key]) for key in best]


def _scaled(values: dict[str, float]) -> dict[str, float]:
    """Min-max scaling to 0..1; all equal: 1 if they matched at all, else 0."""
    low, high = min(values.values(), default=0.0), max(values.values(), default=0.0)
    if high > low:
        return {key: (value - low) / (high - low) for key, value in values.items()}
    return {key: 1.0 if high > 0 else 0.0 for key in values}
