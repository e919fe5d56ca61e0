"""The providers service as a mesh service: its database, its secret store, its servicer."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

from agentmesh.config import Settings
from agentmesh.gen.providers.v1 import providers_pb2 as p
from agentmesh.mesh import MeshContext, MeshService
from agentmesh.model_server import ModelServer
from agentmesh.tasks import cancel, every
from services.providers.probe import DEFAULT_BASE_URLS
from services.providers.secrets import LocalSecretStore, SecretStore, VaultSecretStore
from services.providers.servicer import ProviderServicer
from services.providers.store import ProviderStore

MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger("agentmesh.providers")


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


class Providers(MeshService):
    def __init__(self, servicer: ProviderServicer, standin: ModelServer | None, settings: Settings):
        super().__init__(servicer)
        self._standin = standin
        grace = timedelta(seconds=settings.secret_sweep_grace_seconds)
        self._sweep = every(
            settings.secret_sweep_seconds,
            "sweeping secrets",
            lambda: self._sweep_secrets(servicer, grace),
            log,
        )

    @staticmethod
    async def _sweep_secrets(servicer: ProviderServicer, grace: timedelta) -> None:
        if deleted := await servicer.sweep_secrets(grace):
            log.info("deleted %d secrets that no provider uses", deleted)

    async def stop(self) -> None:
        await cancel([self._sweep])
        if self._standin is not None:
            await self._standin.stop()


async def create(context: MeshContext) -> Providers:
    assert context.database is not None
    settings = context.settings
    standin = None
    if not settings.openai_api_key and settings.standin_model:
        # Without a real default provider the mesh still works offline: the
        # stand-in model server (not a model: it answers by rules) is the default.
        standin = ModelServer()
        await standin.start()
        log.warning(
            "no OPENAI_API_KEY: the system default provider is the stand-in model server at %s "
            "(it answers by fixed rules; it is not a model)",
            standin.base_url,
        )
    servicer = ProviderServicer(
        ProviderStore(context.database),
        secret_store(settings),
        context.events,
        system_default(settings, standin.base_url if standin else ""),
        settings.outbound_allow,
        context.pages,
    )
    return Providers(servicer, standin, settings)
