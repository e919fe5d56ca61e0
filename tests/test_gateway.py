"""The Envoy gateway for real: its configs pass `envoy --mode validate`, and REST,
gRPC-Web and native gRPC reach the mesh through a running Envoy."""

from __future__ import annotations

import asyncio
import json
import signal
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from google.protobuf import descriptor_pb2
from support import Users, running_mesh, service_token

from agentmesh.client import Client
from agentmesh.gateway import (
    SERVICES,
    Gateway,
    descriptor_set,
    envoy_binary,
    envoy_config,
    grpc_services,
)
from agentmesh.gen.providers.v1 import providers_pb2 as p
from agentmesh.gen.registry.v1 import account_pb2, registry_pb2
from agentmesh.mesh import Mesh

REPO = Path(__file__).resolve().parent.parent
BUF = REPO / ".tools" / "node_modules" / ".bin" / "buf"
sys.path.insert(0, str(REPO / "tools"))
import gateway_config  # noqa: E402


@pytest.fixture(scope="module")
def buf_descriptor(tmp_path_factory) -> bytes:
    assert BUF.exists(), f"{BUF} missing: `make setup-test` installs buf"
    return gateway_config.build_descriptor(BUF, tmp_path_factory.mktemp("buf") / "am.binpb")


def _files(descriptor: bytes) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    files = {}
    for file in descriptor_pb2.FileDescriptorSet.FromString(descriptor).file:
        # protoc leaves json_name out of generated code; Envoy derives the same one.
        for field in file.extension:
            field.ClearField("json_name")
        for message in file.message_type:
            _clear_json_names(message)
        files[file.name] = file
    return files


def _clear_json_names(message: descriptor_pb2.DescriptorProto) -> None:
    for field in [*message.field, *message.extension]:
        field.ClearField("json_name")
    for nested in message.nested_type:
        _clear_json_names(nested)


def test_the_local_gateway_transcodes_the_contract_buf_builds(buf_descriptor):
    built, generated = _files(buf_descriptor), _files(descriptor_set())
    assert set(generated) <= set(built)
    ours = [name for name in generated if name.startswith("agentmesh/")]
    assert len(ours) > 10
    # Ours must match; imports (well-known types) may come from other protobuf releases.
    for name in ours:
        assert generated[name] == built[name], name
    services = {s.name for s in grpc_services(buf_descriptor)}
    assert services == {s.name for s in grpc_services(descriptor_set())}
    assert {s.split(".")[1] for s in services} == set(SERVICES)


def _validate(config: dict | str, directory: Path) -> subprocess.CompletedProcess:
    path = directory / "envoy.yaml"
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "--config-path", str(path)],
        capture_output=True,
        text=True,
        cwd=directory,
    )


def test_local_split_and_kubernetes_configs_pass_envoy_validate(tmp_path, buf_descriptor):
    descriptor = tmp_path / "agentmesh.binpb"
    descriptor.write_bytes(buf_descriptor)
    services = grpc_services(buf_descriptor)
    one_process = envoy_config(
        dict.fromkeys(SERVICES, "127.0.0.1:50051"), services, "agentmesh.binpb"
    )
    apart = envoy_config(
        {"registry": "127.0.0.1:50061", "providers": "127.0.0.1:50062"}, services, str(descriptor)
    )
    kubernetes = gateway_config.render(buf_descriptor, str(descriptor))
    for config in (one_process, apart, kubernetes):
        result = _validate(config, tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
    # And validation does catch what it should: a service the descriptor lacks.
    broken = json.loads(json.dumps(one_process).replace("TraceService", "TracesService"))
    result = _validate(broken, tmp_path)
    assert result.returncode == 1 and "TracesService" in result.stdout + result.stderr


def test_the_committed_kubernetes_config_is_the_template_rendered(buf_descriptor):
    committed = (REPO / "deploy" / "envoy" / "envoy.yaml").read_text()
    assert committed == gateway_config.render(buf_descriptor), (
        "deploy/envoy/envoy.yaml is stale: run python tools/gateway_config.py"
    )


def test_streams_have_no_route_timeout_and_service_only_methods_stop_at_the_gateway():
    services = grpc_services(descriptor_set())
    config = envoy_config(dict.fromkeys(SERVICES, "127.0.0.1:1"), services, "x.binpb")
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    routes = manager["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]

    def route_for(path: str) -> dict:  # Envoy takes the first route that matches
        return next(
            r
            for r in routes
            if r["match"].get("path") == path or path.startswith(r["match"].get("prefix", "\0"))
        )

    runner = next(s for s in services if s.name == "agentmesh.runner.v1.RunnerService")
    assert {"StreamRun", "WatchRun"} <= set(runner.streaming)
    for method in runner.streaming:
        assert route_for(f"/{runner.name}/{method}")["route"]["timeout"] == "0s"
    assert route_for(f"/{runner.name}/RunAgent")["route"]["timeout"] == "600s"
    account = next(s for s in services if s.name == "agentmesh.registry.v1.AccountService")
    assert "Authenticate" in account.service_only
    for service in services:
        for method in service.service_only:
            assert route_for(f"/{service.name}/{method}")["direct_response"]["status"] == 404
        assert route_for(f"/{service.name}/Any")["route"]["cluster"] == service.cluster


async def test_gateway_dies_with_its_parent_and_several_run_side_by_side(tmp_path):
    # A parent that starts two gateways, says where, and is then killed outright.
    script = (
        "import asyncio, sys\n"
        "from agentmesh.gateway import Gateway\n"
        "async def main():\n"
        "    async with Gateway('127.0.0.1:9') as a, Gateway('127.0.0.1:9') as b:\n"
        "        print(a.port, b.port, flush=True)\n"
        "        await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE, cwd=REPO
    )
    assert parent.stdout is not None
    line = await asyncio.wait_for(parent.stdout.readline(), 30)
    ports = [int(port) for port in line.split()]
    assert len(set(ports)) == 2
    for port in ports:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
    parent.send_signal(signal.SIGKILL)
    await parent.wait()
    for port in ports:
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
            except ConnectionRefusedError:
                break
            except ConnectionResetError:
                pass  # accepted while it was going down: look again
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"an envoy still listens on {port} after its parent died")


# --- Through a running Envoy in front of a running mesh ---------------------------


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory) -> AsyncIterator[Mesh]:
    data_dir = tmp_path_factory.mktemp("gateway-mesh")
    # Providers with a loopback base_url (a local model server) are allowed.
    async with running_mesh(data_dir, outbound_allow=["127.0.0.1"]) as running:
        yield running


@pytest.fixture(scope="module")
async def gateway(mesh) -> AsyncIterator[Gateway]:
    async with Gateway(mesh.address, http=mesh.http_address) as running:
        yield running


@pytest.fixture
async def user_key(mesh) -> AsyncIterator[str]:
    """A fresh user's API key: every test sees only its own resources."""
    users = Users(mesh)
    _, user = await users.new(credits=100_000)  # enough to run agents
    key = await users.admin.accounts.CreateApiKey(account_pb2.CreateApiKeyRequest(parent=user.name))
    yield key.secret
    await users.close()


@pytest.fixture
async def http(gateway, user_key) -> AsyncIterator[aiohttp.ClientSession]:
    headers = {"authorization": f"Bearer {user_key}"}
    async with aiohttp.ClientSession(gateway.url, headers=headers) as session:
        yield session


async def _json(response: aiohttp.ClientResponse, status: int) -> dict:
    body = await response.text()
    assert response.status == status, body
    return json.loads(body)


async def test_rest_creates_gets_lists_updates_and_deletes_an_agent(http):
    async with http.post(
        "/api/v1/agents", json={"displayName": "Support", "instructions": "Help.", "model": "m"}
    ) as response:
        created = await _json(response, 200)
    assert created["name"].startswith("agents/")
    assert created["displayName"] == "Support" and created["etag"]
    async with http.post("/api/v1/agents", json={"displayName": "Billing"}) as response:
        other = await _json(response, 200)

    async with http.get(f"/api/v1/{created['name']}") as response:
        assert await _json(response, 200) == created

    async with http.get("/api/v1/agents", params={"pageSize": "1"}) as response:
        first = await _json(response, 200)
    assert len(first["agents"]) == 1 and first["nextPageToken"]
    async with http.get(
        "/api/v1/agents", params={"pageSize": "1", "pageToken": first["nextPageToken"]}
    ) as response:
        second = await _json(response, 200)
    assert {a["name"] for a in first["agents"] + second["agents"]} == {
        created["name"],
        other["name"],
    }

    async with http.patch(
        f"/api/v1/{created['name']}",
        params={"updateMask": "instructions"},
        json={
            "instructions": "Be brief.",
            "displayName": "not in the mask",
            "etag": created["etag"],
        },
    ) as response:
        updated = await _json(response, 200)
    assert updated["instructions"] == "Be brief."
    assert updated["displayName"] == "Support"
    assert updated["etag"] != created["etag"]

    async with http.delete(f"/api/v1/{created['name']}") as response:
        assert await _json(response, 200) == {}
    async with http.get(f"/api/v1/{created['name']}") as response:
        assert response.status == 404


async def test_rest_errors_are_http_codes_with_the_status_and_its_details(http, gateway):
    async with http.get("/api/v1/agents/missing") as response:
        status = await _json(response, 404)
    assert status["code"] == grpc.StatusCode.NOT_FOUND.value[0]
    (info,) = [d for d in status["details"] if d["@type"].endswith("google.rpc.ErrorInfo")]
    assert info["reason"] == "NOT_FOUND"

    async with http.post("/api/v1/agents", json={"displayName": ""}) as response:
        status = await _json(response, 400)
    assert status["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    (bad_request,) = [d for d in status["details"] if d["@type"].endswith("google.rpc.BadRequest")]
    assert [v["field"] for v in bad_request["fieldViolations"]] == ["agent.display_name"]

    async with aiohttp.ClientSession(gateway.url) as anonymous:
        async with anonymous.get("/api/v1/agents") as response:
            assert (await _json(response, 401))["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]


async def test_rest_refuses_unknown_query_parameters_and_oversized_bodies(http):
    async with http.get("/api/v1/agents", params={"pageSise": "1"}) as response:
        assert response.status == 400
        assert "pageSise" in await response.text()
    too_big = json.dumps({"displayName": "x", "instructions": "x" * (5 * 1024 * 1024)})
    async with http.post(
        "/api/v1/agents", data=too_big, headers={"content-type": "application/json"}
    ) as response:
        assert response.status == 413


async def test_rest_streams_a_run_as_server_sent_events(http):
    async with http.post("/api/v1/agents", json={"displayName": "Streamer"}) as response:
        agent = await _json(response, 200)
    async with http.post(f"/api/v1/{agent['name']}/run:stream", json={"input": "hi"}) as response:
        assert response.status == 200
        assert response.headers["content-type"] == "text/event-stream"
        events = [
            json.loads(line.removeprefix(b"data: "))
            async for line in response.content
            if line.startswith(b"data: ")
        ]
    assert "runStarted" in events[0]
    assert events[-1]["runFinished"]["state"] == "STATE_SUCCEEDED"
    assert [int(e["sequence"]) for e in events] == list(range(1, len(events) + 1))
    # An error before the first event is a plain REST error.
    async with http.post("/api/v1/agents/missing/run:stream", json={"input": "hi"}) as response:
        assert (await _json(response, 404))["code"] == grpc.StatusCode.NOT_FOUND.value[0]


async def test_the_http_apis_are_routed_to_their_service(http, gateway):
    """The OpenAI API and A2A (reach's HTTP side) through the gateway, streams too."""
    async with http.post("/api/v1/agents", json={"displayName": "Reachable"}) as response:
        agent = await _json(response, 200)
    body = {"model": "Reachable", "messages": [{"role": "user", "content": "hi"}]}
    async with http.post("/v1/chat/completions", json=body) as response:
        completion = await _json(response, 200)
    assert completion["choices"][0]["message"]["content"]
    async with http.post("/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line.strip() async for line in response.content if line.startswith(b"data: ")]
    assert len(lines) > 2 and lines[-1] == b"data: [DONE]"
    async with http.get(f"/a2a/{agent['name']}/.well-known/agent-card.json") as response:
        card = await _json(response, 200)
    # The card names its endpoint as the caller reached it: through the gateway.
    assert card["name"] == "Reachable"
    assert f"{gateway.url}/a2a/{agent['name']}" in json.dumps(card)
    async with http.get("/v1/models", headers={"authorization": "Bearer wrong"}) as response:
        assert response.status == 401
        assert "error" in await response.json()


def _grpc_web_frames(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    """The message frames and the trailers of a gRPC-Web response body."""
    messages, trailers = [], {}
    while body:
        flags, length = struct.unpack(">BI", body[:5])
        frame, body = body[5 : 5 + length], body[5 + length :]
        if flags & 0x80:
            for line in frame.decode().strip().split("\r\n"):
                key, _, value = line.partition(":")
                trailers[key.strip().lower()] = value.strip()
        else:
            messages.append(frame)
    return messages, trailers


async def test_grpc_web_unary_calls_succeed_and_fail_with_grpc_status(http):
    async with http.post("/api/v1/agents", json={"displayName": "Web"}) as response:
        created = await _json(response, 200)
    headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"}

    async def get_agent(name: str) -> tuple[aiohttp.ClientResponse, list[bytes], dict]:
        message = registry_pb2.GetAgentRequest(name=name).SerializeToString()
        async with http.post(
            "/agentmesh.registry.v1.RegistryService/GetAgent",
            data=struct.pack(">BI", 0, len(message)) + message,
            headers=headers,
        ) as response:
            return response, *_grpc_web_frames(await response.read())

    response, messages, trailers = await get_agent(created["name"])
    assert response.status == 200
    assert response.headers["content-type"].startswith("application/grpc-web")
    assert trailers["grpc-status"] == "0"
    (message,) = messages
    assert registry_pb2.Agent.FromString(message).display_name == "Web"

    response, messages, trailers = await get_agent("agents/missing")
    # An error with no message is "trailers-only": the status comes as headers.
    status = trailers.get("grpc-status") or response.headers["grpc-status"]
    assert status == str(grpc.StatusCode.NOT_FOUND.value[0]) and messages == []


async def test_native_grpc_is_routed_to_each_service(gateway, user_key):
    async with Client(gateway.address, user_key) as client:
        agent = await client.registry.CreateAgent(
            registry_pb2.CreateAgentRequest(agent=registry_pb2.Agent(display_name="gRPC"))
        )
        listed = await client.registry.ListAgents(registry_pb2.ListAgentsRequest())
        assert [a.name for a in listed.agents] == [agent.name]
        provider = await client.providers.CreateProvider(
            p.CreateProviderRequest(
                provider=p.Provider(
                    display_name="local",
                    type=p.PROVIDER_TYPE_CUSTOM,
                    base_url="http://127.0.0.1:9/v1",
                    api_key="sk-never-returned",
                )
            )
        )
        providers = await client.providers.ListProviders(p.ListProvidersRequest())
        assert [x.name for x in providers.providers] == [provider.name]
        assert provider.api_key == "" and provider.api_key_hint
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await client.registry.GetAgent(registry_pb2.GetAgentRequest(name="agents/missing"))
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_service_only_methods_answer_directly_but_not_through_the_gateway(mesh, gateway):
    request = account_pb2.AuthenticateRequest(api_key="am_not-a-key")
    async with Client(mesh.address, service_token(mesh)) as direct:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await direct.accounts.Authenticate(request)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND  # it ran: no such key
    async with Client(gateway.address, service_token(mesh)) as through:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await through.accounts.Authenticate(request)
        assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_cors_preflight_and_exposed_grpc_headers(gateway, http):
    origin = "https://console.example.com"
    async with aiohttp.ClientSession(gateway.url) as browser:
        async with browser.options(
            "/api/v1/agents",
            headers={
                "origin": origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization,content-type,x-grpc-web",
            },
        ) as response:
            assert response.status == 200
            allowed = response.headers
    assert allowed["access-control-allow-origin"] == origin
    assert "POST" in allowed["access-control-allow-methods"]
    for header in ("authorization", "content-type", "x-grpc-web"):
        assert header in allowed["access-control-allow-headers"]
    assert "access-control-allow-credentials" not in allowed
    async with http.get("/api/v1/agents", headers={"origin": origin}) as response:
        assert response.status == 200
        assert "grpc-status" in response.headers["access-control-expose-headers"]


async def test_gateway_answers_its_own_health_check(gateway):
    async with aiohttp.ClientSession(gateway.url) as session:
        async with session.get("/healthz") as response:
            assert response.status == 200


def test_gateway_needs_a_known_service_name():
    with pytest.raises(ValueError, match="registy"):
        envoy_config({"registy": "127.0.0.1:1"}, [], "x.binpb")


async def test_a_gateway_in_a_relative_work_dir_starts(mesh, tmp_path, monkeypatch):
    """`make run` keeps the gateway under the default data dir, `.agentmesh`: a relative
    path, which Envoy (running in that directory) must still find."""
    monkeypatch.chdir(tmp_path)
    async with Gateway(mesh.address, work_dir=Path(".agentmesh") / "gateway") as running:
        async with aiohttp.ClientSession(running.url) as session:
            async with session.get("/healthz") as response:
                assert response.status == 200
    assert (tmp_path / ".agentmesh" / "gateway" / "envoy.json").exists()
