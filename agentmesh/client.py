"""A Python client for agentmesh: the generated stubs with the caller's key attached."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from agentmesh.gen.files.v1 import files_pb2_grpc
from agentmesh.gen.guardrails.v1 import guardrails_pb2_grpc
from agentmesh.gen.providers.v1 import providers_pb2_grpc
from agentmesh.gen.registry.v1 import account_pb2_grpc, registry_pb2_grpc, workflows_pb2_grpc
from agentmesh.gen.runner.v1 import runner_pb2_grpc
from agentmesh.gen.triggers.v1 import schedules_pb2_grpc, triggers_pb2_grpc, webhooks_pb2_grpc


class _AddMetadata:
    def __init__(self, add: Callable[[grpc.aio.Metadata], None]):
        self._add = add

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        self._add(metadata)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


# grpc.aio files each interceptor under the first call kind it implements, so
# every kind needs an object of its own.
class _UnaryUnary(_AddMetadata, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(self._details(details), request)


class _UnaryStream(_AddMetadata, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(self._details(details), request)


class _StreamUnary(_AddMetadata, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, request_iterator):
        return await continuation(self._details(details), request_iterator)


class _StreamStream(_AddMetadata, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, details, request_iterator):
        return await continuation(self._details(details), request_iterator)


def metadata_interceptors(add: Callable[[grpc.aio.Metadata], None]) -> list:
    """Interceptors that let `add` put headers on every call, of every kind."""
    return [kind(add) for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]


def bearer(token: str) -> Callable[[grpc.aio.Metadata], None]:
    def add(metadata: grpc.aio.Metadata) -> None:
        metadata.add("authorization", f"Bearer {token}")

    return add


class Client:
    """Stubs for every implemented service, on one channel, authenticated as api_key."""

    def __init__(self, target: str, api_key: str):
        self.channel = grpc.aio.insecure_channel(
            target, interceptors=metadata_interceptors(bearer(api_key))
        )
        self.registry = registry_pb2_grpc.RegistryServiceStub(self.channel)
        self.accounts = account_pb2_grpc.AccountServiceStub(self.channel)
        self.providers = providers_pb2_grpc.ProviderServiceStub(self.channel)
        self.workflows = workflows_pb2_grpc.WorkflowServiceStub(self.channel)
        self.runner = runner_pb2_grpc.RunnerServiceStub(self.channel)
        self.files = files_pb2_grpc.FileServiceStub(self.channel)
        self.guardrails = guardrails_pb2_grpc.GuardrailServiceStub(self.channel)
        self.schedules = schedules_pb2_grpc.ScheduleServiceStub(self.channel)
        self.webhooks = webhooks_pb2_grpc.WebhookServiceStub(self.channel)
        self.triggers = triggers_pb2_grpc.TriggerServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
