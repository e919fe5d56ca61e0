"""Shared fixtures: a real mesh (embedded NATS, SQLite or a real Postgres) per database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from support import Users, admin_key, database_url, running_mesh

from agentmesh.client import Client
from agentmesh.mesh import Mesh
from agentmesh.testing.postgres import TemporaryPostgres


@pytest.fixture(scope="session")
def postgres() -> TemporaryPostgres:
    with TemporaryPostgres() as server:
        yield server


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="session")
async def mesh(backend, request, tmp_path_factory) -> AsyncIterator[Mesh]:
    """The mesh on each database backend; tests that take it run once per backend."""
    data_dir = tmp_path_factory.mktemp(f"mesh-{backend}")
    pg = request.getfixturevalue("postgres") if backend == "postgres" else None
    async with running_mesh(data_dir, database_url=database_url(backend, pg, data_dir)) as m:
        yield m


@pytest.fixture(scope="session")
async def sqlite_mesh(tmp_path_factory) -> AsyncIterator[Mesh]:
    """One SQLite mesh, for tests whose subject does not depend on the database."""
    data_dir = tmp_path_factory.mktemp("mesh-sqlite-only")
    async with running_mesh(data_dir, outbound_allow=["127.0.0.1"]) as m:
        yield m


@pytest.fixture
async def users(mesh) -> AsyncIterator[Users]:
    factory = Users(mesh)
    yield factory
    await factory.close()


@pytest.fixture
async def sqlite_users(sqlite_mesh) -> AsyncIterator[Users]:
    factory = Users(sqlite_mesh)
    yield factory
    await factory.close()


@pytest.fixture
def new_user(users):
    """Makes a fresh user (with an API key) on `mesh`; returns its client and User."""
    return users.new


@pytest.fixture
def new_sqlite_user(sqlite_users):
    return sqlite_users.new


@pytest.fixture
async def admin(sqlite_mesh) -> AsyncIterator[Client]:
    async with Client(sqlite_mesh.address, admin_key(sqlite_mesh)) as client:
        yield client
