"""Shared fixtures: a real mesh (embedded NATS, SQLite or a real Postgres) per database."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from agentmesh.client import Client
from agentmesh.config import Settings
from agentmesh.gen.registry.v1 import account_pb2
from agentmesh.mesh import Mesh
from agentmesh.testing.postgres import TemporaryPostgres

_databases = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> TemporaryPostgres:
    with TemporaryPostgres() as server:
        yield server


def database_url(backend: str, postgres: TemporaryPostgres | None, data_dir) -> str:
    """A fresh, empty database of the given backend."""
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{data_dir}/{{service}}.db"
    return postgres.create_database(f"mesh{next(_databases)}")


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="session")
async def mesh(backend, request, tmp_path_factory) -> AsyncIterator[Mesh]:
    """The mesh on each database backend; tests that take it run once per backend."""
    data_dir = tmp_path_factory.mktemp(f"mesh-{backend}")
    pg = request.getfixturevalue("postgres") if backend == "postgres" else None
    settings = Settings(data_dir=data_dir, port=0, database_url=database_url(backend, pg, data_dir))
    async with Mesh(settings) as running:
        yield running


@pytest.fixture(scope="session")
async def sqlite_mesh(tmp_path_factory) -> AsyncIterator[Mesh]:
    """One SQLite mesh, for tests whose subject does not depend on the database."""
    data_dir = tmp_path_factory.mktemp("mesh-sqlite-only")
    # No OPENAI_API_KEY, whatever the environment: the stand-in is the system default.
    settings = Settings(data_dir=data_dir, port=0, openai_api_key="", outbound_allow=["127.0.0.1"])
    async with Mesh(settings) as running:
        yield running


def admin_key(mesh: Mesh) -> str:
    return (mesh.settings.data_dir / "admin.key").read_text().strip()


def service_token(mesh: Mesh) -> str:
    return mesh.settings.resolved_service_token()


NewUser = Callable[..., Awaitable[tuple[Client, account_pb2.User]]]


async def _user_factory(mesh: Mesh) -> AsyncIterator[NewUser]:
    clients: list[Client] = []
    admin = Client(mesh.address, admin_key(mesh))
    clients.append(admin)

    async def new_user(credits: int = 0) -> tuple[Client, account_pb2.User]:
        user = await admin.accounts.CreateUser(
            account_pb2.CreateUserRequest(user=account_pb2.User(display_name="tenant"))
        )
        key = await admin.accounts.CreateApiKey(account_pb2.CreateApiKeyRequest(parent=user.name))
        if credits:
            await admin.accounts.GrantCredits(
                account_pb2.GrantCreditsRequest(user=user.name, amount=credits)
            )
        client = Client(mesh.address, key.secret)
        clients.append(client)
        return client, user

    yield new_user
    for client in clients:
        await client.close()


@pytest.fixture
async def new_user(mesh) -> AsyncIterator[NewUser]:
    """Makes a fresh user (with an API key) on `mesh`; returns its client and User."""
    async for factory in _user_factory(mesh):
        yield factory


@pytest.fixture
async def new_sqlite_user(sqlite_mesh) -> AsyncIterator[NewUser]:
    async for factory in _user_factory(sqlite_mesh):
        yield factory


@pytest.fixture
async def admin(sqlite_mesh) -> AsyncIterator[Client]:
    async with Client(sqlite_mesh.address, admin_key(sqlite_mesh)) as client:
        yield client
