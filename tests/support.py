"""What tests share: a running mesh, users with keys, their scripted model and agents,
and expecting RPC errors.

Imported by tests as `from support import ...` (pytest puts tests/ on the path).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import grpc
import pytest

from agentmesh.client import Client
from agentmesh.config import Settings
from agentmesh.gen.providers.v1 import providers_pb2
from agentmesh.gen.registry.v1 import account_pb2, registry_pb2
from agentmesh.mesh import Mesh
from agentmesh.model_server import ModelServer
from agentmesh.testing.postgres import TemporaryPostgres
from services import PLUGINS

_databases = itertools.count()


def database_url(backend: str, postgres: TemporaryPostgres | None, data_dir: Path) -> str:
    """A fresh, empty database of the given backend."""
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{data_dir}/{{service}}.db"
    assert postgres is not None
    return postgres.create_database(f"mesh{next(_databases)}")


def mesh_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test mesh: a free port, and no real model provider whatever the
    environment says (the stand-in model server is the system default)."""
    return Settings(**{"data_dir": data_dir, "port": 0, "openai_api_key": "", **overrides})


@contextlib.asynccontextmanager
async def running_mesh(data_dir: Path, **overrides: Any) -> AsyncIterator[Mesh]:
    """Every service of the mesh, started on embedded defaults plus `overrides`."""
    async with Mesh(mesh_settings(data_dir, **overrides), PLUGINS) as mesh:
        yield mesh


def admin_key(mesh: Mesh) -> str:
    return (mesh.settings.data_dir / "admin.key").read_text().strip()


def service_token(mesh: Mesh) -> str:
    return mesh.settings.resolved_service_token()


class Users:
    """Makes users with an API key each on one mesh; closes their clients at the end."""

    def __init__(self, mesh: Mesh):
        self.mesh = mesh
        self.admin = Client(mesh.address, admin_key(mesh))
        self._clients = [self.admin]

    async def new(self, credits: int = 0) -> tuple[Client, account_pb2.User]:
        user = await self.admin.accounts.CreateUser(
            account_pb2.CreateUserRequest(user=account_pb2.User(display_name="tenant"))
        )
        key = await self.admin.accounts.CreateApiKey(
            account_pb2.CreateApiKeyRequest(parent=user.name)
        )
        if credits:
            await self.admin.accounts.GrantCredits(
                account_pb2.GrantCreditsRequest(user=user.name, amount=credits)
            )
        client = Client(self.mesh.address, key.secret)
        self._clients.append(client)
        return client, user

    def service(self) -> Client:
        """A client with the service token (for service-only methods)."""
        client = Client(self.mesh.address, service_token(self.mesh))
        self._clients.append(client)
        return client

    async def close(self) -> None:
        for client in self._clients:
            await client.close()


async def use_model(client: Client, model: ModelServer) -> None:
    """Makes the user's default provider the scripted model server, with the API key
    that server expects."""
    await client.providers.CreateProvider(
        providers_pb2.CreateProviderRequest(
            provider=providers_pb2.Provider(
                display_name="scripted",
                type=providers_pb2.PROVIDER_TYPE_CUSTOM,
                base_url=model.base_url,
                api_key=model.api_key,
                is_default=True,
            )
        )
    )


async def create_agent(client: Client, agent_id: str, **fields: Any) -> registry_pb2.Agent:
    """The agent `agent_id`, displayed under its id unless `fields` name it otherwise."""
    agent = registry_pb2.Agent(**{"display_name": agent_id, **fields})
    return await client.registry.CreateAgent(
        registry_pb2.CreateAgentRequest(agent=agent, agent_id=agent_id)
    )


async def expect_rpc_error(call: Awaitable[Any], code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    """Awaits a call that must fail with `code`; returns the error for its details."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value
    return caught.value


async def start_agentmesh(
    *args: str, env: dict[str, str] | None = None, within: float = 120.0
) -> tuple[asyncio.subprocess.Process, str, list[str]]:
    """`agentmesh ARGS...` as its own process (logging at WARNING), once it says it is
    up: the process, the address it serves on, and what it printed until then."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agentmesh.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "AGENTMESH_LOG_LEVEL": "WARNING", **(env or {})},
    )
    assert process.stdout is not None
    lines: list[str] = []
    while True:
        line = (await asyncio.wait_for(process.stdout.readline(), within)).decode()
        assert line, f"agentmesh {' '.join(args[:2])} exited early: {lines}"
        lines.append(line)
        if match := re.search(r"agentmesh is up on (\S+)", line):
            return process, match.group(1), lines


async def stop_agentmesh(process: asyncio.subprocess.Process) -> str:
    """SIGTERM, and what it printed on the way out; it must exit cleanly."""
    assert process.stdout is not None
    process.send_signal(signal.SIGTERM)
    rest = (await asyncio.wait_for(process.stdout.read(), 30)).decode()
    assert await process.wait() == 0
    return rest
