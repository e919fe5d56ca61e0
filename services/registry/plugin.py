"""The registry as a mesh service: its servicers and its background work."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from agentmesh.config import write_private_file
from agentmesh.mesh import MeshContext, MeshService
from agentmesh.sealing import MCP_AUTHORIZATIONS, Sealer
from agentmesh.tasks import cancel, every
from services.registry.provider_types import ProviderTypes
from services.registry.servicer import AccountServicer, RegistryServicer, WorkflowServicer
from services.registry.store import RegistryStore

MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger("agentmesh.registry")


class Registry(MeshService):
    def __init__(self, context: MeshContext, store: RegistryStore):
        super().__init__(
            RegistryServicer(
                store,
                context.events,
                context.pages,
                Sealer(context.settings.resolved_service_token(), MCP_AUTHORIZATIONS),
                context.settings.outbound_allow,
                ProviderTypes(context.peer("providers")),
            ),
            WorkflowServicer(store, context.events, context.pages),
            AccountServicer(store, context.authenticator, context.events, context.pages),
        )
        self._store = store
        self._sweeper = every(
            context.settings.reservation_sweep_seconds,
            "releasing expired reservations",
            self._release_expired_reservations,
            log,
        )

    async def stop(self) -> None:
        await cancel([self._sweeper])

    async def _release_expired_reservations(self) -> None:
        if released := await self._store.credits.release_expired():
            log.info("released %d expired credit reservations", released)


async def create(context: MeshContext) -> Registry:
    assert context.database is not None
    store = RegistryStore(context.database)
    settings = context.settings
    await _bootstrap_admin(store, settings.data_dir / "admin.key", settings.admin_credits)
    return Registry(context, store)


async def _bootstrap_admin(store: RegistryStore, key_file: Path, credits: int) -> None:
    """On the very first start: an admin user with credits to run agents, and its key
    in data_dir/admin.key (0600)."""
    if await store.accounts.count_users():
        return
    admin = await store.accounts.create_user("admin", "", admin=True)
    key = await store.accounts.create_api_key(admin.id, "bootstrap", None)
    if credits:
        await store.credits.grant_credits(admin.id, credits, "bootstrap")
    await asyncio.to_thread(_write_key, key_file, key.secret)
    log.info("created admin user users/%s; its API key is in %s", admin.id, key_file)


def _write_key(key_file: Path, secret: str) -> None:
    key_file.unlink(missing_ok=True)
    write_private_file(key_file, secret + "\n")
