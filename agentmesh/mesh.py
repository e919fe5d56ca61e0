"""Runs agentmesh services in one process, behind one gRPC port.

Each service plugs in through one seam: a `ServicePlugin` whose `create`
factory takes a `MeshContext` (settings, its database opened and migrated,
the event bus, peer channels, the authenticator) and returns the servicers to
serve. The kernel knows no service by name; `agentmesh up`, `agentmesh serve`
and the tests iterate one list of plugins (`services.PLUGINS`).

Services still reach each other through gRPC over a channel, exactly as they
would across pods; sharing a process only saves the deployment.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path

import grpc
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.routing import BaseRoute

from agentmesh.auth import USER_HEADER, Authenticator, Principal, current_principal_or_none
from agentmesh.client import HeaderChannel, Headers, bearer
from agentmesh.config import Settings
from agentmesh.db import dispose, open_database
from agentmesh.errors import Unavailable
from agentmesh.events import EventBus
from agentmesh.gen.registry.v1 import account_pb2, account_pb2_grpc, events_pb2
from agentmesh.http import HttpServer
from agentmesh.nats_server import EmbeddedNats
from agentmesh.paging import Pages
from agentmesh.server import GrpcServer
from agentmesh.telemetry import add_traceparent, traced_unary

log = logging.getLogger("agentmesh")


class MeshService:
    """What a plugin's factory returns: servicers to serve, HTTP routes to serve
    beside them (agentmesh/http.py), and what to stop."""

    def __init__(self, *servicers: object, http: Sequence[BaseRoute] = ()):
        self.servicers = list(servicers)
        self.http = list(http)

    async def stop(self) -> None:
        """Stops background work and closes what the service opened."""


@dataclass(frozen=True)
class ServicePlugin:
    name: str
    create: Callable[[MeshContext], Awaitable[MeshService]]
    # Alembic migrations of the service's own database; None: it keeps no data.
    migrations: Path | None = None
    # Its tables, for the tests that compare migrations with models.
    metadata: MetaData | None = None


def _service_credentials(service_token: str) -> Headers:
    """Calls to a peer carry the service token, and the user the call acts for."""
    add_token = bearer(service_token)

    def add(metadata: grpc.aio.Metadata) -> None:
        add_token(metadata)
        principal = current_principal_or_none()
        if principal is not None and principal.user and USER_HEADER not in metadata:
            metadata.add(USER_HEADER, principal.user)
        add_traceparent(metadata)

    return add


@dataclass
class MeshContext:
    """What the mesh gives one service."""

    name: str
    settings: Settings
    events: EventBus
    authenticator: Authenticator
    # The service's own database, migrated; None for a service without one.
    database: AsyncEngine | None
    # Seals the page tokens of the service's List methods (agentmesh/paging.py).
    pages: Pages
    _peer: Callable[[str], grpc.aio.Channel] = field(repr=False)

    def peer(self, service: str) -> grpc.aio.Channel:
        """A channel to another service (by name, e.g. "registry") that carries the
        service token and, inside an RPC, the user it acts for."""
        return self._peer(service)


def remote_key_lookup(channel: grpc.aio.Channel):
    """Authenticates API keys by asking the registry's AccountService.Authenticate."""
    stub = account_pb2_grpc.AccountServiceStub(channel)

    async def lookup(key: str) -> Principal | None:
        try:
            principal = await stub.Authenticate(
                account_pb2.AuthenticateRequest(api_key=key), timeout=5
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


class Mesh:
    def __init__(self, settings: Settings, plugins: Sequence[ServicePlugin]):
        self.settings = settings
        self.plugins = list(plugins)
        self.port = 0
        self.http_port = 0  # 0: no service serves HTTP
        self.nats_url = ""
        self._nats: EmbeddedNats | None = None
        self._events: EventBus | None = None
        self._server: GrpcServer | None = None
        self._http: HttpServer | None = None
        self.services: dict[str, MeshService] = {}
        self._databases: list[AsyncEngine] = []
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._key_lookup: Callable[[str], Awaitable[Principal | None]] | None = None

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    @property
    def http_address(self) -> str:
        """host:port of the services' HTTP routes; empty when none has any."""
        host = self.settings.host.replace("0.0.0.0", "127.0.0.1")  # noqa: S104
        return f"{host}:{self.http_port}" if self.http_port else ""

    @property
    def http_url(self) -> str:
        return f"http://{self.http_address}" if self.http_port else ""

    @property
    def events(self) -> EventBus:
        assert self._events is not None, "the mesh is not started"
        return self._events

    async def start(self) -> None:
        settings = self.settings
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.nats_url = settings.nats_url
        if not self.nats_url:
            self._nats = EmbeddedNats(settings.data_dir / "nats")
            await self._nats.start()
            self.nats_url = self._nats.url
        self._events = await EventBus.connect(self.nats_url, name="agentmesh")
        self._service_token = settings.resolved_service_token()

        self.authenticator = Authenticator(
            self._service_token, self._lookup_key, settings.auth_cache_seconds
        )
        await self.events.subscribe(events_pb2.ApiKeyRevoked, self._forget_key)
        self._server = GrpcServer(self.authenticator)
        # The port first: services may make peer channels to this very process.
        self.port = self._server.bind(f"{settings.host}:{settings.port}")
        pages = Pages(self._service_token)
        for plugin in self.plugins:
            database = None
            if plugin.migrations is not None:
                url = settings.database_url_for(plugin.name)
                database = await open_database(url, plugin.migrations)
                self._databases.append(database)
            context = MeshContext(
                plugin.name, settings, self.events, self.authenticator, database, pages, self.peer
            )
            service = await plugin.create(context)
            self.services[plugin.name] = service  # only what started is stopped
            for servicer in service.servicers:
                self._server.add(servicer)
        await self._server.start()
        routes = [route for service in self.services.values() for route in service.http]
        if routes:
            self._http = HttpServer(routes)
            self.http_port = self._http.bind(settings.host, settings.resolved_http_port())
            await self._http.start()
        log.info("agentmesh serving %s on %s", ", ".join(self.services), self.address)
        if self.http_port:
            log.info("HTTP APIs on %s", self.http_url)

    async def _lookup_key(self, key: str) -> Principal | None:
        # Keys are checked by asking the registry over gRPC, also when it shares
        # this process: one path, whatever the deployment. The channel is made on
        # first use, when this process's own port is known.
        if self._key_lookup is None:
            self._key_lookup = remote_key_lookup(self.peer("registry"))
        return await self._key_lookup(key)

    async def _forget_key(self, event: events_pb2.ApiKeyRevoked) -> None:
        self.authenticator.forget(event.user)

    def peer(self, service: str) -> grpc.aio.Channel:
        """A channel kept open for the mesh's lifetime to a service: this process if
        it serves it, else where settings.peers says it runs."""
        if service not in self._channels:
            own = self.address.replace("0.0.0.0:", "127.0.0.1:")  # noqa: S104
            # A service this process serves is asked here, whatever the settings say.
            served = any(plugin.name == service for plugin in self.plugins)
            target = own if served else self.settings.peers.get(service) or own
            self._channels[service] = HeaderChannel(
                grpc.aio.insecure_channel(target),
                _service_credentials(self._service_token),
                # A traced run's unary call becomes a span, which the headers name.
                unary=traced_unary,
            )
        return self._channels[service]

    async def stop(self) -> None:
        """Stops what was started, in reverse; also after a start that failed half-way.

        Each step has a deadline: a part that does not stop in time is named in the
        log and left behind, so a process being shut down always goes.
        """
        if self._http is not None:
            await self._within("the HTTP server", self._http.stop())
        if self._server is not None:
            await self._within("the gRPC server", self._server.stop())
        for channel in self._channels.values():
            await channel.close()
        for name, service in reversed(self.services.items()):
            await self._within(f"the {name} service", service.stop())
        for database in self._databases:
            await dispose(database)
        if self._events is not None:
            await self._within("the NATS connection", self._events.close())
        if self._nats:
            await self._nats.stop()

    @staticmethod
    async def _within(part: str, stopping: Awaitable[None], seconds: float = 15.0) -> None:
        try:
            await asyncio.wait_for(stopping, seconds)
        except TimeoutError:
            log.error("%s did not stop within %.0f s; going on without it", part, seconds)

    async def __aenter__(self) -> Mesh:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()
