"""Models for runs, backed by the providers service.

Credentials come from the service-only ResolveCredentials and are cached per
(user, provider) until `providers.changed`; an AsyncOpenAI client is kept open per
(user, provider) for its current key version and reused by every run. Both are kept
per user, for the most recent users: reading a user's keys (for the span redactor)
or dropping them never walks other users' entries. OpenAI itself is spoken to
through the Responses API, every other provider through Chat Completions at its
base_url. Clients for user-given URLs go through the outbound guard.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

import grpc
import openai
from agents import Model, ModelResponse, OpenAIChatCompletionsModel, OpenAIResponsesModel
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseOutputMessage,
    ResponseTextDeltaEvent,
    ResponseUsage,
)

from agentmesh.errors import PeerError
from agentmesh.gen.common.v1 import common_pb2
from agentmesh.gen.providers.v1 import events_pb2, providers_pb2, providers_pb2_grpc
from agentmesh.outbound import OutboundPolicy, guarded_http_client

# Models are slow to answer in full; the guard's deadline is per request.
_MODEL_TIMEOUT_SECONDS = 300.0
# A reply (a whole one, or a stream's events) this large is a server playing games: a
# long model reply is well under a tenth of it, and the runner must not hold more.
MODEL_REPLY_BYTES = 64 * 1024 * 1024
# Users whose credentials and clients are kept; one beyond is read again when needed.
_USERS = 4096


class Models:
    def __init__(self, providers: grpc.aio.Channel, outbound_allow: list[str], default_model: str):
        self._providers = providers_pb2_grpc.ProviderServiceStub(providers)
        self._policy = OutboundPolicy(outbound_allow)
        self._default_model = default_model
        # user -> provider ("" for the user's default) -> credentials
        self._credentials: OrderedDict[str, dict[str, providers_pb2.Credentials]] = OrderedDict()
        # user -> (provider, key version) -> client
        self._clients: OrderedDict[str, dict[tuple[str, str], openai.AsyncOpenAI]] = OrderedDict()

    async def model(self, user: str, provider: str, model_name: str) -> Model:
        """The model an agent of `user` runs on: `provider` (empty: the user's default,
        then the system default) serving `model_name` (empty: the provider's default)."""
        credentials = await self._resolve(user, provider)
        client = self._client(user, credentials)
        name = model_name or credentials.default_model or self._default_model
        if credentials.type == providers_pb2.PROVIDER_TYPE_OPENAI:
            return OpenAIResponsesModel(name, client)
        return OpenAIChatCompletionsModel(name, client)

    async def _resolve(self, user: str, provider: str) -> providers_pb2.Credentials:
        cached = self._credentials.get(user, {}).get(provider)
        if cached is not None:
            self._credentials.move_to_end(user)
            return cached
        try:
            credentials = await self._providers.ResolveCredentials(
                providers_pb2.ResolveCredentialsRequest(user=user, provider=provider),
                timeout=10,
            )
        except grpc.aio.AioRpcError as error:
            raise PeerError.of(error) from None
        self._credentials.setdefault(user, {})[provider] = credentials
        self._credentials.move_to_end(user)
        while len(self._credentials) > _USERS:
            self._credentials.popitem(last=False)
        return credentials

    def _client(self, user: str, credentials: providers_pb2.Credentials) -> openai.AsyncOpenAI:
        clients = self._clients.setdefault(user, {})
        self._clients.move_to_end(user)
        while len(self._clients) > _USERS:  # runs still on one hold it until they end
            self._clients.popitem(last=False)
        key = (credentials.provider, credentials.version)
        if key not in clients:
            # A client for a key version the provider no longer has is dropped: runs
            # still on it hold it until they end, and it goes with the last of them.
            for old in [k for k in clients if k[0] == credentials.provider]:
                del clients[old]
            # The system default (no provider) is the operator's own choice of URL;
            # a user's provider URL is the user's, and goes through the guard.
            http_client = None
            if credentials.provider:
                http_client = guarded_http_client(
                    self._policy,
                    timeout=_MODEL_TIMEOUT_SECONDS,
                    deadline=_MODEL_TIMEOUT_SECONDS,
                    max_reply_bytes=MODEL_REPLY_BYTES,
                )
            headers = dict(credentials.extra_headers)
            query = {}
            if credentials.HasField("azure_openai"):
                query["api-version"] = credentials.azure_openai.api_version
            if credentials.HasField("anthropic") and credentials.anthropic.anthropic_version:
                headers["anthropic-version"] = credentials.anthropic.anthropic_version
            clients[key] = openai.AsyncOpenAI(
                base_url=credentials.base_url,
                api_key=credentials.api_key or "unused",
                organization=credentials.organization or None,
                default_headers=headers or None,
                default_query=query or None,
                http_client=http_client,
                # The runner reports a provider's failure; retrying is the caller's call.
                max_retries=0,
            )
        return clients[key]

    def api_keys(self, user: str) -> list[str]:
        """The keys of `user`'s providers this runner holds, for the span redactor
        (services/runner/tracing.py) to mask wherever they appear. Thread-safe: it
        reads a copy."""
        return [c.api_key for c in list(self._credentials.get(user, {}).values())]

    def forget(self, event: events_pb2.ProviderChanged) -> None:
        """A provider changed: the user's credentials are read again (the default too);
        a deleted provider's clients are dropped."""
        self._credentials.pop(event.user, None)
        if event.kind == common_pb2.CHANGE_KIND_DELETED:
            clients = self._clients.get(event.user, {})
            for key in [k for k in clients if k[0] == event.provider]:
                del clients[key]

    async def close(self) -> None:
        for clients in self._clients.values():
            for client in clients.values():
                await client.close()
        self._clients.clear()


class WholeReplies(Model):
    """A model asked for whole replies, given to the SDK's streamed run as a stream:
    each message's text in one delta, then the completed response.

    For runs no caller reads word by word (RunAgent waits for the end): streaming a
    reply cost the SDK about half again a model call's CPU (a chunk object per token
    and its stream handler). Everything else the run does is the same: one path.
    """

    def __init__(self, model: Model):
        self.wrapped = model
        self.model = getattr(model, "model", "")  # its name, for prices and spans

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        return await self.wrapped.get_response(*args, **kwargs)

    async def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        reply = await self.wrapped.get_response(*args, **kwargs)
        sent = 0
        for index, item in enumerate(reply.output):
            if isinstance(item, ResponseOutputMessage):
                for part, content in enumerate(item.content):
                    if content.type == "output_text" and content.text:
                        yield ResponseTextDeltaEvent(
                            type="response.output_text.delta",
                            delta=content.text,
                            item_id=item.id,
                            output_index=index,
                            content_index=part,
                            logprobs=[],
                            sequence_number=sent,
                        )
                        sent += 1
        usage = reply.usage
        response = Response(
            id=reply.response_id or "",
            created_at=0,
            model=str(self.model),
            object="response",
            output=reply.output,
            tool_choice="auto",
            tools=[],
            parallel_tool_calls=False,
            status="completed",
            # Unvalidated: the SDK reads these fields back as they are.
            usage=ResponseUsage.model_construct(
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                total_tokens=usage.total_tokens,
                input_tokens_details=usage.input_tokens_details,
                output_tokens_details=usage.output_tokens_details,
            ),
        )
        response._request_id = reply.request_id  # the SDK reads it back for its ModelResponse
        yield ResponseCompletedEvent(
            type="response.completed", sequence_number=sent, response=response
        )

    def get_retry_advice(self, request: Any) -> Any:
        return self.wrapped.get_retry_advice(request)
