"""`agentmesh up` as a user runs it: a real process, from an empty data dir."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import start_agentmesh, stop_agentmesh

from agentmesh.client import Client
from agentmesh.config import Settings
from agentmesh.gen.providers.v1 import providers_pb2 as p
from agentmesh.gen.registry.v1 import registry_pb2 as r
from agentmesh.mesh import Mesh
from services import PLUGINS

EXAMPLES = Path(__file__).parent.parent / "examples" / "agents.json"


async def _start(
    *args: str, command: tuple[str, ...] = ("up",), env: dict[str, str] | None = None
) -> tuple[asyncio.subprocess.Process, str, list[str]]:
    return await start_agentmesh(*command, "--port", "0", *args, env=env, within=60)


_stop = stop_agentmesh


async def test_up_starts_from_nothing_serves_health_and_stops_cleanly(tmp_path):
    data_dir = tmp_path / "fresh"
    process, address, _ = await _start("--data-dir", str(data_dir))
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "agentmesh.registry.v1.RegistryService"):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
        key_file = data_dir / "admin.key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        async with Client(address, key_file.read_text().strip()) as client:
            assert (await client.registry.ListAgents(r.ListAgentsRequest())).agents == []
    finally:
        rest = await _stop(process)
    assert "agentmesh stopped" in rest
    # Nothing of the mesh is left listening.
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
            raise AssertionError("the server still answers after SIGTERM")
        except grpc.aio.AioRpcError as error:
            assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


async def test_up_applies_the_example_agents_and_lists_them_back(tmp_path):
    process, address, lines = await _start("--data-dir", str(tmp_path), "--apply", str(EXAMPLES))
    try:
        output = "".join(lines)
        assert "applied 3 agent definitions" in output
        for name in ("Billing", "Support", "Triage"):
            assert re.search(rf"agents/\w+\s+{name}\b", output)
        assert re.search(r"Triage\s+0\s+Billing, Support", output)
    finally:
        await _stop(process)
    # Applying again on the same data dir updates in place instead of duplicating.
    process, address, lines = await _start("--data-dir", str(tmp_path), "--apply", str(EXAMPLES))
    try:
        key = (tmp_path / "admin.key").read_text().strip()
        async with Client(address, key) as client:
            agents = (await client.registry.ListAgents(r.ListAgentsRequest())).agents
        assert sorted(a.display_name for a in agents) == ["Billing", "Support", "Triage"]
    finally:
        await _stop(process)


async def test_serve_runs_services_apart_and_they_talk_over_grpc(tmp_path):
    """A split deployment: the providers process checks keys with the registry process."""
    shared = {"AGENTMESH_SERVICE_TOKEN": "split-deployment-token", "OPENAI_API_KEY": ""}
    registry, registry_address, _ = await _start(
        "--data-dir", str(tmp_path / "registry"), command=("serve", "registry"), env=shared
    )
    providers = None
    try:
        providers, providers_address, _ = await _start(
            "--data-dir",
            str(tmp_path / "providers"),
            command=("serve", "providers"),
            env={
                **shared,
                "AGENTMESH_PEERS": json.dumps({"registry": registry_address}),
                "AGENTMESH_OUTBOUND_ALLOW": '["127.0.0.1"]',
            },
        )
        key = (tmp_path / "registry" / "admin.key").read_text().strip()
        async with Client(providers_address, key) as client:
            created = await client.providers.CreateProvider(
                p.CreateProviderRequest(
                    provider=p.Provider(
                        display_name="local",
                        type=p.PROVIDER_TYPE_CUSTOM,
                        base_url="http://127.0.0.1:9/v1",
                    )
                )
            )
            assert created.name.startswith("providers/")
            # The providers process serves no registry of its own.
            try:
                await client.registry.ListAgents(r.ListAgentsRequest())
                raise AssertionError("the providers process answered a registry call")
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNIMPLEMENTED
        async with Client(providers_address, "am_not-a-key") as stranger:
            try:
                await stranger.providers.ListProviders(p.ListProvidersRequest())
                raise AssertionError("an unknown key was accepted")
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        if providers:
            await _stop(providers)
        await _stop(registry)


async def test_a_start_that_fails_half_way_leaves_nothing_running(tmp_path):
    # NATS starts; then the registry cannot reach its database.
    settings = Settings(
        data_dir=tmp_path,
        port=0,
        database_url="postgresql+psycopg://nobody@127.0.0.1:1/{service}",
        standin_model=False,
    )
    mesh = Mesh(settings, PLUGINS)
    with pytest.raises(Exception, match="127.0.0.1"):
        async with mesh:
            pass
    port = int(mesh.nats_url.rsplit(":", 1)[1])
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass


async def test_up_on_a_taken_port_says_so_and_exits(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agentmesh.cli",
            "up",
            "--data-dir",
            str(tmp_path),
            "--port",
            str(port),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "AGENTMESH_LOG_LEVEL": "WARNING"},
        )
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    assert f"cannot start: cannot listen on 127.0.0.1:{port}" in stderr.decode()
    assert "Traceback" not in stderr.decode()


async def test_nats_does_not_outlive_a_killed_mesh(tmp_path):
    process, _, _ = await _start("--data-dir", str(tmp_path))
    nats_log = tmp_path / "nats" / "nats-server.log"
    port = int(
        re.search(r"Listening for client connections on 127.0.0.1:(\d+)", nats_log.read_text())[1]
    )
    process.kill()  # no chance to stop anything
    await process.wait()
    for _ in range(50):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("nats-server still listens after its mesh was killed")


async def test_up_with_the_gateway_serves_rest_through_envoy(tmp_path):
    import aiohttp

    process, _, lines = await _start(
        "--data-dir", str(tmp_path), "--gateway", "--gateway-port", "0"
    )
    try:
        rest = ""
        while not rest:
            line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
            lines.append(line)
            if match := re.search(r"through Envoy on (http://\S+?),", line):
                rest = match.group(1)
        key = (tmp_path / "admin.key").read_text().strip()
        async with aiohttp.ClientSession() as session:
            async with session.get(
                f"{rest}/api/v1/agents", headers={"authorization": f"Bearer {key}"}
            ) as reply:
                assert reply.status == 200, await reply.text()
                assert (await reply.json())["agents"] == []
            async with session.get(f"{rest}/api/v1/agents") as reply:
                assert reply.status == 401
    finally:
        await _stop(process)


_SETTLED_HEAP = """
import gc, weakref
from agentmesh.server import settle_heap

class Node:
    pass

def cycle():
    node = Node()
    node.self = node
    return weakref.ref(node)

early = cycle()
settle_heap()
assert early() is None, "startup's garbage is collected before the rest is frozen"
assert gc.get_freeze_count() > 10_000, gc.get_freeze_count()
late = cycle()
made = [[] for _ in range(25_000)]  # more new objects than a young collection waits for
assert late() is None, "a cycle made after settling is collected without being asked"
"""


def test_a_settled_heap_still_collects_the_cycles_made_after_it():
    """`agentmesh up` and `serve` freeze what starting made and collect less often;
    garbage made while serving must still go (a subprocess: freezing is for life)."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", _SETTLED_HEAP], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
