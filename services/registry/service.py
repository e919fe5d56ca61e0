"""The registry as a mesh service: its database, its servicers, its background work."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from agentmesh.config import Settings, write_private_file
from agentmesh.db import create_engine, migrate
from agentmesh.events import EventBus
from agentmesh.gen.registry.v1 import account_pb2_grpc, registry_pb2_grpc
from agentmesh.server import GrpcServer
from services.registry.server import SERVICE_ONLY, AccountServicer, RegistryServicer
from services.registry.store import RegistryStore

MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger("agentmesh.registry")


class Registry:
    name = "registry"

    def __init__(self, settings: Settings, events: EventBus):
        self._settings = settings
        self._events = events
        self._sweep_seconds = settings.reservation_sweep_seconds
        self._sweeper: asyncio.Task | None = None

    async def start(self) -> None:
        url = self._settings.database_url_for(self.name)
        await asyncio.to_thread(migrate, MIGRATIONS, url)
        self.store = RegistryStore(create_engine(url))
        await self._bootstrap_admin()
        self._sweeper = asyncio.create_task(self._release_expired_reservations())

    def register(self, server: GrpcServer) -> None:
        server.add(
            "agentmesh.registry.v1.RegistryService",
            registry_pb2_grpc.add_RegistryServiceServicer_to_server,
            RegistryServicer(self.store, self._events),
        )
        server.add(
            "agentmesh.registry.v1.AccountService",
            account_pb2_grpc.add_AccountServiceServicer_to_server,
            AccountServicer(self.store, server.authenticator),
            service_only=SERVICE_ONLY,
        )

    async def stop(self) -> None:
        if self._sweeper:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.store.engine.dispose()

    async def _bootstrap_admin(self) -> None:
        """On the very first start: an admin user, its key in data_dir/admin.key (0600)."""
        if await self.store.count_users():
            return
        admin = await self.store.create_user("admin", "", admin=True)
        key = await self.store.create_api_key(admin.id, "bootstrap", None)
        path = self._settings.data_dir / "admin.key"
        path.unlink(missing_ok=True)
        write_private_file(path, key.secret + "\n")
        log.info("created admin user users/%s; its API key is in %s", admin.id, path)

    async def _release_expired_reservations(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_seconds)
            try:
                released = await self.store.release_expired()
                if released:
                    log.info("released %d expired credit reservations", released)
            except Exception:
                log.exception("releasing expired reservations failed")
