"""The providers service: its database, its secret store, its servicer."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agentmesh.config import Settings
from agentmesh.db import create_engine, migrate
from agentmesh.events import EventBus
from agentmesh.gen.providers.v1 import providers_pb2 as p
from agentmesh.gen.providers.v1 import providers_pb2_grpc
from agentmesh.server import GrpcServer
from services.providers.probe import DEFAULT_BASE_URLS
from services.providers.secrets import LocalSecretStore, SecretStore, VaultSecretStore
from services.providers.server import SERVICE_ONLY, ProviderServicer
from services.providers.store import ProviderStore

MIGRATIONS = Path(__file__).parent / "migrations"


def secret_store(settings: Settings) -> SecretStore:
    if settings.secret_store == "vault":
        return VaultSecretStore(
            settings.vault_url,
            token=settings.vault_token or None,
            kubernetes_role=settings.vault_kubernetes_role or None,
            mount_point=settings.vault_mount,
            path_prefix=settings.vault_path_prefix,
        )
    return LocalSecretStore(settings.data_dir / "secrets")


def system_default(settings: Settings, standin_url: str = "") -> p.Credentials | None:
    """What a user with no provider runs on: OPENAI_API_KEY, else the stand-in, else nothing."""
    if settings.openai_api_key:
        return p.Credentials(
            type=p.PROVIDER_TYPE_OPENAI,
            base_url=DEFAULT_BASE_URLS["openai"],
            api_key=settings.openai_api_key,
            version="env",
        )
    if standin_url:
        return p.Credentials(type=p.PROVIDER_TYPE_CUSTOM, base_url=standin_url, version="standin")
    return None


class Providers:
    name = "providers"

    def __init__(self, settings: Settings, events: EventBus, standin_url: str = ""):
        self._settings = settings
        self._events = events
        self._standin_url = standin_url

    async def start(self) -> None:
        url = self._settings.database_url_for(self.name)
        await asyncio.to_thread(migrate, MIGRATIONS, url)
        self.store = ProviderStore(create_engine(url))
        self.secrets = secret_store(self._settings)

    def register(self, server: GrpcServer) -> None:
        server.add(
            "agentmesh.providers.v1.ProviderService",
            providers_pb2_grpc.add_ProviderServiceServicer_to_server,
            ProviderServicer(
                self.store,
                self.secrets,
                self._events,
                system_default(self._settings, self._standin_url),
                self._settings.outbound_allow,
            ),
            service_only=SERVICE_ONLY,
        )

    async def stop(self) -> None:
        await self.store.engine.dispose()
