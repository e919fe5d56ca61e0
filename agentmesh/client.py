"""A Python client for agentmesh: the generated stubs with the caller's key attached."""

from __future__ import annotations

import grpc

from agentmesh.gen.providers.v1 import providers_pb2_grpc
from agentmesh.gen.registry.v1 import account_pb2_grpc, registry_pb2_grpc


class _BearerAuth(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    def __init__(self, api_key: str):
        self._header = ("authorization", f"Bearer {api_key}")

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self._header)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(self._details(details), request)

    async def intercept_stream_unary(self, continuation, details, request_iterator):
        return await continuation(self._details(details), request_iterator)

    async def intercept_stream_stream(self, continuation, details, request_iterator):
        return await continuation(self._details(details), request_iterator)


class Client:
    """Stubs for every implemented service, on one channel, authenticated as api_key."""

    def __init__(self, target: str, api_key: str):
        self.channel = grpc.aio.insecure_channel(target, interceptors=[_BearerAuth(api_key)])
        self.registry = registry_pb2_grpc.RegistryServiceStub(self.channel)
        self.accounts = account_pb2_grpc.AccountServiceStub(self.channel)
        self.providers = providers_pb2_grpc.ProviderServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
