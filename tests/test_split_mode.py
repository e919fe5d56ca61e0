"""Production's shape on one machine: each service its own `agentmesh serve` process,
one Postgres with a database per service, one NATS, and Envoy in front with a
cluster per service. Clients see one API, REST and gRPC, as with one process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import psycopg
import pytest
from support import expect_rpc_error

from agentmesh.client import Client
from agentmesh.gateway import Gateway
from agentmesh.gen.providers.v1 import providers_pb2 as p
from agentmesh.gen.registry.v1 import registry_pb2 as r
from agentmesh.nats_server import EmbeddedNats
from agentmesh.testing.postgres import TemporaryPostgres

SERVICES = ("registry", "providers")  # what is implemented; the runner's turn comes
UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED


async def _serve(service: str, data_dir: Path, env: dict[str, str]):
    """`agentmesh serve SERVICE` as its own process; returns it and its address."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agentmesh.cli",
        "serve",
        service,
        "--data-dir",
        str(data_dir),
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "AGENTMESH_LOG_LEVEL": "WARNING", **env},
    )
    assert process.stdout is not None
    seen: list[str] = []
    while True:
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        assert line, f"agentmesh serve {service} exited early: {seen}"
        seen.append(line)
        if match := re.search(r"agentmesh is up on (\S+)", line):
            return process, match.group(1)


async def _stop(process: asyncio.subprocess.Process) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.stdout is not None
    await asyncio.wait_for(process.stdout.read(), 30)
    assert await process.wait() == 0


@pytest.fixture(scope="module")
async def split_mesh(tmp_path_factory, postgres: TemporaryPostgres) -> AsyncIterator[dict]:
    root = tmp_path_factory.mktemp("split")
    for service in SERVICES:
        postgres.create_database(f"split_{service}")
    async with EmbeddedNats(root / "nats") as nats:
        shared = {
            "AGENTMESH_SERVICE_TOKEN": "split-mode-service-token",
            "AGENTMESH_NATS_URL": nats.url,
            # One Postgres, one database per service: {service} is filled in by each.
            "AGENTMESH_DATABASE_URL": postgres.url("split_{service}"),
            "AGENTMESH_OUTBOUND_ALLOW": '["127.0.0.1"]',
            "OPENAI_API_KEY": "",
        }
        processes = []
        try:
            registry, registry_address = await _serve("registry", root / "registry", shared)
            processes.append(registry)
            peers = {"AGENTMESH_PEERS": json.dumps({"registry": registry_address})}
            providers, providers_address = await _serve(
                "providers", root / "providers", {**shared, **peers}
            )
            processes.append(providers)
            addresses = {"registry": registry_address, "providers": providers_address}
            async with Gateway(addresses) as gateway:
                yield {
                    "gateway": gateway,
                    "admin_key": (root / "registry" / "admin.key").read_text().strip(),
                    "addresses": addresses,
                }
        finally:
            for process in reversed(processes):
                await _stop(process)


async def test_agents_and_providers_through_the_gateway_over_rest_and_grpc(split_mesh):
    gateway = split_mesh["gateway"]
    headers = {"authorization": f"Bearer {split_mesh['admin_key']}"}
    async with aiohttp.ClientSession(gateway.url, headers=headers) as http:
        async with http.post("/api/v1/agents", json={"displayName": "Split"}) as response:
            assert response.status == 200, await response.text()
            agent = await response.json()
        async with http.post(
            "/api/v1/providers",
            json={
                "displayName": "local",
                "type": "PROVIDER_TYPE_CUSTOM",
                "baseUrl": "http://127.0.0.1:9/v1",
                "apiKey": "sk-split-secret",
            },
        ) as response:
            assert response.status == 200, await response.text()
            provider = await response.json()
    assert provider["name"].startswith("providers/")
    assert provider["apiKey"] == "" and "sk-split-secret" not in json.dumps(provider)

    async with Client(gateway.address, split_mesh["admin_key"]) as client:
        agents = await client.registry.ListAgents(r.ListAgentsRequest())
        assert agent["name"] in [a.name for a in agents.agents]
        providers = await client.providers.ListProviders(p.ListProvidersRequest())
        assert [x.name for x in providers.providers] == [provider["name"]]


async def test_each_call_reaches_the_process_that_serves_it(split_mesh):
    # Each process serves its own service only; the gateway serves them all.
    key = split_mesh["admin_key"]
    async with Client(split_mesh["addresses"]["providers"], key) as providers_only:
        await expect_rpc_error(
            providers_only.registry.ListAgents(r.ListAgentsRequest()), UNIMPLEMENTED
        )
    async with Client(split_mesh["addresses"]["registry"], key) as registry_only:
        await expect_rpc_error(
            registry_only.providers.ListProviders(p.ListProvidersRequest()), UNIMPLEMENTED
        )
    async with Client(split_mesh["gateway"].address, key) as both:
        await both.registry.ListAgents(r.ListAgentsRequest())
        await both.providers.ListProviders(p.ListProvidersRequest())


def test_each_service_migrated_its_own_database(split_mesh, postgres):
    for service in SERVICES:
        with psycopg.connect(postgres.url(f"split_{service}", driver="postgresql")) as db:
            tables = {
                row[0]
                for row in db.execute(
                    "SELECT table_name FROM information_schema.tables"
                    " WHERE table_schema = 'public' AND table_name LIKE 'alembic_version%'"
                )
            }
        assert tables == {f"alembic_version_{service}"}
