"""What the registry asks the providers service: the type of a provider an agent names.

Some tools run only on one kind of provider (web search on OpenAI's Responses API),
and the registry refuses to save an agent whose provider cannot run its tools. The
provider is the providers service's: asked over its public GetProvider, acting for
the caller (the mesh's peer channel carries the user), so another user's provider is
not found, exactly like a missing one.
"""

from __future__ import annotations

import grpc

from agentmesh.errors import PeerError
from agentmesh.gen.providers.v1 import providers_pb2, providers_pb2_grpc

_TIMEOUT_SECONDS = 5.0


class ProviderTypes:
    def __init__(self, providers: grpc.aio.Channel):
        self._providers = providers_pb2_grpc.ProviderServiceStub(providers)

    async def type_of(self, provider: str) -> int | None:
        """The ProviderType of providers/x for the calling user; None if it has none such."""
        try:
            found = await self._providers.GetProvider(
                providers_pb2.GetProviderRequest(name=provider), timeout=_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                return None
            raise PeerError.of(error) from None
        return int(found.type)
