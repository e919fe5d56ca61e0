"""Which embedder a vector store uses: the local model, or a provider's
OpenAI-compatible /v1/embeddings.

A store names its provider (providers/{id}) and model when it is created; the
dimension is learned then, by embedding one probe text, and fixed for the store.
The provider's credentials come from the providers service (never stored here)
each time a store's embedder is needed, cached briefly; the calls go through the
outbound client, so a provider on an internal address needs the allowlist.
"""

from __future__ import annotations

import math
import time
from typing import Protocol

import grpc
import httpx2

from agentmesh.errors import FailedPrecondition, InvalidArgument, PeerError, Unavailable
from agentmesh.gen.files.v1 import files_pb2 as f
from agentmesh.gen.providers.v1 import providers_pb2, providers_pb2_grpc
from agentmesh.names import ResourceName
from agentmesh.outbound import OutboundError, OutboundPolicy, post_json, post_json_client
from services.files.embed import DIMENSIONS, MODEL_NAME, WINDOW, local_embedder_async
from services.files.store import VectorStore

PROVIDER = ResourceName.of(providers_pb2.Provider)
# Names the local model answers to.
LOCAL_MODELS = ("", MODEL_NAME, f"sentence-transformers/{MODEL_NAME}")
# What a store with a remote embedder may put in a chunk (the contract's maximum).
REMOTE_WINDOW = 8192
_CREDENTIALS_SECONDS = 30.0
_TIMEOUT_SECONDS = 60.0
_REPLY_BYTES = 64 * 1024 * 1024
_OPENAI_COMPATIBLE = (providers_pb2.PROVIDER_TYPE_OPENAI, providers_pb2.PROVIDER_TYPE_CUSTOM)


class Embedder(Protocol):
    async def embed(self, texts: list[str], batch_size: int = 32) -> list[list[float]]: ...


class EmbeddingFailed(Exception):
    """A provider's embeddings endpoint failed or answered what is not embeddings."""


class RemoteEmbedder:
    """POSTs to {base_url}/embeddings; vectors come back normalized (inner product is
    cosine, as for the local model)."""

    def __init__(
        self,
        credentials: providers_pb2.Credentials,
        model: str,
        policy: OutboundPolicy,
        client: httpx2.AsyncClient,
    ):
        self._url = credentials.base_url.rstrip("/") + "/embeddings"
        self._headers = {
            **dict(credentials.extra_headers),
            "Authorization": f"Bearer {credentials.api_key}",
        }
        if credentials.organization:
            self._headers["OpenAI-Organization"] = credentials.organization
        self._model = model
        self._policy = policy
        self._client = client

    async def embed(self, texts: list[str], batch_size: int = 32) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), batch_size):
            vectors.extend(await self._batch(texts[start : start + batch_size]))
        return vectors

    async def _batch(self, texts: list[str]) -> list[list[float]]:
        try:
            reply = await post_json(
                self._url,
                {"model": self._model, "input": texts},
                policy=self._policy,
                timeout=_TIMEOUT_SECONDS,
                max_reply_bytes=_REPLY_BYTES,
                headers=self._headers,
                client=self._client,
            )
        except OutboundError as error:
            raise EmbeddingFailed(f"the embeddings endpoint failed: {error}") from None
        try:
            data = sorted(reply["data"], key=lambda item: item["index"])
            vectors = [[float(value) for value in item["embedding"]] for item in data]
        except (TypeError, KeyError, ValueError):
            raise EmbeddingFailed("the embeddings endpoint answered something else") from None
        if len(vectors) != len(texts) or not vectors or not vectors[0]:
            raise EmbeddingFailed("the embeddings endpoint answered the wrong number of vectors")
        return [_normalized(vector) for vector in vectors]


def _normalized(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(value * value for value in vector)) or 1.0
    return [value / norm for value in vector]


class Embeddings:
    def __init__(self, providers: grpc.aio.Channel, policy: OutboundPolicy):
        self._providers = providers_pb2_grpc.ProviderServiceStub(providers)
        self._policy = policy
        self._client = post_json_client(
            policy, timeout=_TIMEOUT_SECONDS, max_reply_bytes=_REPLY_BYTES
        )
        self._credentials: dict[tuple[str, str], tuple[float, providers_pb2.Credentials]] = {}

    async def settings(self, user_id: str, wanted: f.VectorStore) -> tuple[str, int, int]:
        """A new store's model, its dimensions and the word pieces a chunk may hold."""
        if not wanted.embedding_provider:
            if wanted.embedding_model not in LOCAL_MODELS:
                raise InvalidArgument(
                    [
                        (
                            "vector_store.embedding_model",
                            f"without a provider, the model is the local {MODEL_NAME}",
                        )
                    ]
                )
            return MODEL_NAME, DIMENSIONS, WINDOW
        if PROVIDER.match(wanted.embedding_provider) is None:
            raise InvalidArgument(
                [("vector_store.embedding_provider", f"must look like {PROVIDER.pattern}")]
            )
        credentials = await self._resolve(user_id, wanted.embedding_provider)
        model = wanted.embedding_model
        if not model:
            raise InvalidArgument(
                [("vector_store.embedding_model", "name the provider's embedding model")]
            )
        try:
            (probe,) = await self._remote(credentials, model).embed(["dimension probe"])
        except EmbeddingFailed as error:
            raise FailedPrecondition(
                f"{wanted.embedding_provider} cannot embed with {model!r}: {error}",
                reason="EMBEDDINGS_UNAVAILABLE",
            ) from None
        return model, len(probe), REMOTE_WINDOW

    async def for_store(self, store: VectorStore) -> Embedder:
        if not store.embedding_provider:
            return await local_embedder_async()
        credentials = await self._resolve(store.user_id, store.embedding_provider)
        return self._remote(credentials, store.embedding_model)

    async def query(self, store: VectorStore, text: str) -> list[float]:
        """The query's vector, as the store's chunks were embedded."""
        embedder = await self.for_store(store)
        try:
            (vector,) = await embedder.embed([text])
        except EmbeddingFailed as error:
            raise Unavailable(
                f"the store's embeddings provider failed: {error}", retry_after_seconds=5
            ) from None
        return vector

    def _remote(self, credentials: providers_pb2.Credentials, model: str) -> RemoteEmbedder:
        if credentials.type not in _OPENAI_COMPATIBLE:
            raise FailedPrecondition(
                "embeddings need an OpenAI-compatible provider (type openai or custom)",
                reason="EMBEDDINGS_UNAVAILABLE",
            )
        return RemoteEmbedder(credentials, model, self._policy, self._client)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _resolve(self, user_id: str, provider: str) -> providers_pb2.Credentials:
        key = (user_id, provider)
        cached = self._credentials.get(key)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        try:
            credentials = await self._providers.ResolveCredentials(
                providers_pb2.ResolveCredentialsRequest(user=f"users/{user_id}", provider=provider),
                timeout=10,
            )
        except grpc.aio.AioRpcError as error:
            raise PeerError.of(error) from None
        if len(self._credentials) > 10_000:
            self._credentials.clear()
        self._credentials[key] = (time.monotonic() + _CREDENTIALS_SECONDS, credentials)
        return credentials
