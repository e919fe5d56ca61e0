"""Runs agentmesh services in one process, behind one gRPC port.

Services still reach each other through gRPC stubs over a channel, exactly as
they would across pods; sharing a process only saves the deployment.
"""

from __future__ import annotations

import logging
from datetime import UTC
from typing import Protocol

import grpc

from agentmesh.auth import Authenticator, KeyLookup, Principal
from agentmesh.config import Settings
from agentmesh.errors import Unavailable
from agentmesh.events import EventBus
from agentmesh.gen.registry.v1 import account_pb2, account_pb2_grpc
from agentmesh.nats_server import EmbeddedNats
from agentmesh.server import GrpcServer
from agentmesh.testing.model_server import ModelServer
from services.providers.service import Providers
from services.registry.service import Registry

log = logging.getLogger("agentmesh")

# Services implemented so far, in start order.
SERVICES = ("registry", "providers")


def remote_key_lookup(channel: grpc.aio.Channel, service_token: str) -> KeyLookup:
    """Authenticates API keys by asking the registry's AccountService.Authenticate."""
    stub = account_pb2_grpc.AccountServiceStub(channel)
    metadata = (("authorization", f"Bearer {service_token}"),)

    async def lookup(key: str) -> Principal | None:
        try:
            principal = await stub.Authenticate(
                account_pb2.AuthenticateRequest(api_key=key), metadata=metadata, timeout=5
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                return None
            raise Unavailable("the registry cannot check credentials right now") from None
        expire_time = None
        if principal.HasField("expire_time"):
            expire_time = principal.expire_time.ToDatetime(tzinfo=UTC)
        return Principal(user=principal.user, admin=principal.admin, expire_time=expire_time)

    return lookup


class MeshService(Protocol):
    """What the mesh runs: a service with its own data, registering its servicers."""

    async def start(self) -> None: ...
    def register(self, server: GrpcServer) -> None: ...
    async def stop(self) -> None: ...


class Mesh:
    def __init__(self, settings: Settings, services: tuple[str, ...] = SERVICES):
        unknown = set(services) - set(SERVICES)
        if unknown:
            raise ValueError(f"unknown services: {', '.join(sorted(unknown))}")
        self.settings = settings
        self.services = services
        self.port = 0
        self._nats: EmbeddedNats | None = None
        self._standin: ModelServer | None = None
        self.components: list[MeshService] = []
        self._channels: list[grpc.aio.Channel] = []

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    async def start(self) -> None:
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.nats_url = settings.nats_url
        if not self.nats_url:
            self._nats = EmbeddedNats(settings.data_dir / "nats")
            await self._nats.start()
            self.nats_url = self._nats.url
        self.events = await EventBus.connect(self.nats_url, name="agentmesh")
        service_token = settings.resolved_service_token()

        wanted: list[MeshService] = []
        if "registry" in self.services:
            wanted.append(Registry(settings, self.events))
        if "providers" in self.services:
            wanted.append(Providers(settings, self.events, await self._standin_url()))
        for component in wanted:
            await component.start()
            self.components.append(component)  # only what started is stopped

        self.authenticator = Authenticator(
            service_token, self._lookup_key, settings.auth_cache_seconds
        )
        self.server = GrpcServer(self.authenticator)
        for component in self.components:
            component.register(self.server)
        self.port = self.server.bind(f"{settings.host}:{settings.port}")
        # Keys are checked by asking the registry over gRPC, also when it shares
        # this process: one path, whatever the deployment. No call can arrive
        # before the server starts, so the channel is made once the port is known.
        own_address = self.address.replace("0.0.0.0:", "127.0.0.1:")  # noqa: S104
        registry = self.channel(settings.registry_target or own_address)
        self._key_lookup = remote_key_lookup(registry, service_token)
        await self.server.start()
        log.info("agentmesh serving %s on %s", ", ".join(self.services), self.address)

    async def _lookup_key(self, key: str) -> Principal | None:
        return await self._key_lookup(key)

    async def _standin_url(self) -> str:
        """Starts the stand-in model server when there is no real default provider."""
        if self.settings.openai_api_key or not self.settings.standin_model:
            return ""
        self._standin = ModelServer()
        await self._standin.start()
        log.warning(
            "no OPENAI_API_KEY: the system default provider is the stand-in model server at %s "
            "(it answers by fixed rules; it is not a model)",
            self._standin.base_url,
        )
        return self._standin.base_url

    def channel(self, target: str) -> grpc.aio.Channel:
        """A channel kept open for the mesh's lifetime (service-to-service calls)."""
        channel = grpc.aio.insecure_channel(target)
        self._channels.append(channel)
        return channel

    async def stop(self) -> None:
        """Stops what was started, in reverse; also after a start that failed half-way."""
        if hasattr(self, "server"):
            await self.server.stop()
        for channel in self._channels:
            await channel.close()
        for component in reversed(self.components):
            await component.stop()
        if self._standin:
            await self._standin.stop()
        if hasattr(self, "events"):
            await self.events.close()
        if self._nats:
            await self._nats.stop()

    async def __aenter__(self) -> Mesh:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()
