"""A TypeScript client, generated from protos/ with buf's protoc-gen-es, against a
running mesh: over native gRPC to the mesh itself and over gRPC-Web through the
Envoy gateway, it creates an agent, lists it, streams a run, and reads the
structured error of a bad request (clients/typescript/src/example.ts)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support import Users, running_mesh

from agentmesh.client import Client
from agentmesh.gateway import Gateway
from agentmesh.gen.registry.v1 import account_pb2, registry_pb2
from agentmesh.gen.runner.v1 import runner_pb2
from agentmesh.mesh import Mesh

REPO = Path(__file__).resolve().parent.parent
CLIENT = REPO / "clients" / "typescript"
BIN = CLIENT / "node_modules" / ".bin"
BUF = REPO / ".tools" / "node_modules" / ".bin" / "buf"


async def _run(*command: str | Path, env: dict[str, str] | None = None) -> str:
    process = await asyncio.create_subprocess_exec(
        *map(str, command),
        cwd=CLIENT,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, f"{command} failed:\n{out.decode()}\n{err.decode()}"
    return out.decode()


@pytest.fixture(scope="module")
async def generated() -> None:
    """The stubs, generated afresh from today's protos (they are not committed, so
    nothing can drift), and the example type-checked against them."""
    assert (BIN / "tsx").exists(), "`make setup-test` installs clients/typescript's node deps"
    assert BUF.exists(), "`make setup-test` installs buf"
    await _run(BUF, "generate", "--template", "buf.gen.yaml")
    assert (CLIENT / "src" / "gen" / "google" / "rpc" / "error_details_pb.ts").exists()
    await _run(BIN / "tsc", "--noEmit", "-p", ".")


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory) -> AsyncIterator[Mesh]:
    async with running_mesh(tmp_path_factory.mktemp("ts-mesh")) as running:
        yield running


@pytest.fixture(scope="module")
async def gateway(mesh) -> AsyncIterator[Gateway]:
    async with Gateway(mesh.address) as running:
        yield running


@pytest.fixture
async def user_key(mesh) -> AsyncIterator[str]:
    """A fresh user with credits for a run (the stand-in model server answers)."""
    users = Users(mesh)
    _, user = await users.new(credits=100_000)
    key = await users.admin.accounts.CreateApiKey(account_pb2.CreateApiKeyRequest(parent=user.name))
    yield key.secret
    await users.close()


@pytest.mark.parametrize("transport", ["grpc", "grpc-web"])
async def test_typescript_client_creates_lists_streams_and_reads_errors(
    generated, mesh, gateway, user_key, transport
):
    target = mesh.address if transport == "grpc" else gateway.address
    out = await _run(
        BIN / "tsx",
        "src/example.ts",
        env={
            "AGENTMESH_TARGET": f"http://{target}",
            "AGENTMESH_API_KEY": user_key,
            "AGENTMESH_TRANSPORT": transport,
        },
    )
    steps = {line["step"]: line for line in map(json.loads, out.splitlines())}

    created = steps["created"]
    assert created["name"].startswith("agents/") and created["etag"]
    assert steps["listed"]["names"] == [created["name"]]  # only this user's agent

    streamed = steps["streamed"]
    assert streamed["events"][0] == "runStarted" and streamed["events"][-1] == "runFinished"
    assert streamed["state"] == "SUCCEEDED" and streamed["text"]
    assert int(streamed["sequence"]) == len(streamed["events"])

    bad = steps["bad-request"]
    assert bad["code"] == "InvalidArgument"
    assert [v["field"] for v in bad["violations"]] == ["agent.display_name"]
    assert all(v["description"] for v in bad["violations"])
    assert steps["not-found"]["code"] == "NotFound"

    # What the TypeScript client made is there for Python too, and the run it
    # streamed is the one the runner recorded.
    async with Client(mesh.address, user_key) as client:
        agent = await client.registry.GetAgent(registry_pb2.GetAgentRequest(name=created["name"]))
        assert agent.display_name == created["displayName"] == "TypeScript example"
        run = await client.runner.GetRun(runner_pb2.GetRunRequest(name=streamed["run"]))
        assert run.agent.split("@")[0] == created["name"]
        assert run.state == runner_pb2.Run.STATE_SUCCEEDED
