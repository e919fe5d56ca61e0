"""Production's shape on one machine: each service its own `agentmesh serve` process
(the runner twice), one Postgres with a database per service, one NATS, and Envoy in
front with a cluster per service. Clients see one API, REST and gRPC, as with one
process: agents and providers, runs (sync, streamed, background), files and search,
traces, the OpenAI-compatible API and inbound webhooks over HTTP; and a runner replica
killed mid-run is survived."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import openai
import psycopg
import pytest
from files_support import READY, index_file, new_store, search
from support import expect_rpc_error, start_agentmesh, stop_agentmesh, use_model
from test_runner import KEY

from agentmesh.client import Client
from agentmesh.gateway import Gateway
from agentmesh.gen.providers.v1 import providers_pb2 as p
from agentmesh.gen.registry.v1 import registry_pb2 as r
from agentmesh.gen.runner.v1 import runner_pb2 as rn
from agentmesh.gen.traces.v1 import traces_pb2 as t
from agentmesh.gen.traces.v1 import traces_pb2_grpc
from agentmesh.gen.triggers.v1 import triggers_pb2 as tg
from agentmesh.model_server import ModelServer, Reply
from agentmesh.nats_server import EmbeddedNats
from agentmesh.processes import free_port
from agentmesh.testing.postgres import TemporaryPostgres
from services import plugins_named
from services.triggers.signatures import sign

SERVICES = ("registry", "providers", "runner", "guardrails", "files", "traces", "triggers", "reach")
HTTP = ("triggers", "reach")  # they serve HTTP too, each on a port of its own
UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED
State = rn.Run.State
# Leases short enough that a killed replica's run is taken over within seconds.
FAST = {
    "AGENTMESH_RUN_LEASE_SECONDS": "2",
    "AGENTMESH_RUN_LEASE_RENEW_SECONDS": "0.5",
    "AGENTMESH_RUN_LEASE_SWEEP_SECONDS": "0.5",
    "AGENTMESH_TRACE_FLUSH_SECONDS": "0.2",
}


async def _serve(
    service: str, data_dir: Path, env: dict[str, str], port: int = 0, http_port: int = 0
):
    """`agentmesh serve SERVICE` as its own process; returns it and its address."""
    args = ("serve", service, "--data-dir", str(data_dir), "--port", str(port))
    args += ("--http-port", str(http_port)) if http_port else ()
    process, address, _ = await start_agentmesh(*args, env=env)
    return process, address


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:  # else killed by its test
        await stop_agentmesh(process)


@pytest.fixture(scope="module")
async def model() -> AsyncIterator[ModelServer]:
    async with ModelServer(api_key=KEY) as server:
        yield server


@pytest.fixture(scope="module")
async def split_mesh(
    tmp_path_factory, postgres: TemporaryPostgres, model: ModelServer
) -> AsyncIterator[dict]:
    """Every service its own process (the runner twice), wired by settings alone: peers
    on ports chosen up front, one Postgres with a database per service, one NATS."""
    root = tmp_path_factory.mktemp("split")
    for service in SERVICES:
        postgres.create_database(f"split_{service}")
    ports = {name: free_port() for name in (*SERVICES, "runner-b")}
    peers = {service: f"127.0.0.1:{ports[service]}" for service in SERVICES}
    http = {service: f"127.0.0.1:{free_port()}" for service in HTTP}
    async with EmbeddedNats(root / "nats") as nats:
        shared = {
            "AGENTMESH_SERVICE_TOKEN": "split-mode-service-token",
            "AGENTMESH_NATS_URL": nats.url,
            # One Postgres, one database per service: {service} is filled in by each.
            "AGENTMESH_DATABASE_URL": postgres.url("split_{service}"),
            "AGENTMESH_OUTBOUND_ALLOW": '["127.0.0.1"]',
            "AGENTMESH_PEERS": json.dumps(peers),
            "OPENAI_API_KEY": "",
            **FAST,
        }
        processes: dict[str, asyncio.subprocess.Process] = {}
        try:
            # The registry first: every other service checks API keys with it.
            processes["registry"], _ = await _serve(
                "registry", root / "registry", shared, ports["registry"]
            )
            names = [s for s in SERVICES if s != "registry"] + ["runner-b"]
            started = await asyncio.gather(
                *(
                    _serve(
                        name.removesuffix("-b"),
                        root / name,
                        shared,
                        ports[name],
                        int(http[name].rpartition(":")[2]) if name in http else 0,
                    )
                    for name in names
                )
            )
            for name, (process, _) in zip(names, started, strict=True):
                processes[name] = process
            async with Gateway(peers, http=http) as gateway:
                admin_key = (root / "registry" / "admin.key").read_text().strip()
                async with Client(gateway.address, admin_key) as admin:
                    await use_model(admin, model)
                yield {
                    "gateway": gateway,
                    "admin_key": admin_key,
                    "addresses": {**peers, "runner-b": f"127.0.0.1:{ports['runner-b']}"},
                    "processes": processes,
                }
        finally:
            for process in reversed(processes.values()):
                await _stop(process)


async def _eventually(check, within: float = 30.0):
    async with asyncio.timeout(within):
        while not (result := await check()):  # noqa: ASYNC110 - the state is the server's
            await asyncio.sleep(0.1)
    return result


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
        assert provider["name"] in [x.name for x in providers.providers]


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


def _events(lines: list[bytes]) -> list[dict]:
    return [
        json.loads(line.removeprefix(b"data: ")) for line in lines if line.startswith(b"data: ")
    ]


async def _trace(client: Client, name: str) -> t.Trace | None:
    try:
        trace = await traces_pb2_grpc.TraceServiceStub(client.channel).GetTrace(
            t.GetTraceRequest(name=name)
        )
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND, error
        return None
    done = any(not span.parent_id and span.HasField("end_time") for span in trace.spans)
    return trace if done else None


def test_each_service_migrated_its_own_database(split_mesh, postgres):
    keeping = [plugin.name for plugin in plugins_named(*SERVICES) if plugin.migrations]
    assert {"guardrails", "reach"}.isdisjoint(keeping) and len(keeping) == len(SERVICES) - 2
    for service in keeping:
        with psycopg.connect(postgres.url(f"split_{service}", driver="postgresql")) as db:
            tables = {
                row[0]
                for row in db.execute(
                    "SELECT table_name FROM information_schema.tables"
                    " WHERE table_schema = 'public' AND table_name LIKE 'alembic_version%'"
                )
            }
        assert tables == {f"alembic_version_{service}"}


async def test_runs_sync_and_streamed_through_the_gateway_and_their_traces(split_mesh, model):
    gateway, key = split_mesh["gateway"], split_mesh["admin_key"]
    async with Client(gateway.address, key) as client:
        agent = await client.registry.CreateAgent(
            r.CreateAgentRequest(agent=r.Agent(display_name="Splitter"), agent_id="splitter")
        )
        model.enqueue(Reply(text="a sync answer"))
        run = await client.runner.RunAgent(rn.RunAgentRequest(agent=agent.name, input="hi"))
        assert (run.state, run.final_output) == (State.STATE_SUCCEEDED, "a sync answer")

        model.enqueue(Reply(text="a streamed answer"))
        headers = {"authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession(gateway.url, headers=headers) as http:
            async with http.post(f"/api/v1/{agent.name}/run:stream", json={"input": "hi"}) as got:
                assert got.status == 200, await got.text()
                events = _events([line async for line in got.content])
        assert events[-1]["runFinished"]["state"] == "STATE_SUCCEEDED"
        assert "".join(e["textDelta"]["delta"] for e in events if "textDelta" in e) == (
            "a streamed answer"
        )

        # The runner's spans reach the traces service over NATS, in their own process.
        trace = await _eventually(lambda: _trace(client, run.trace))
        assert (trace.run, trace.agent) == (run.name, agent.name)
        assert {"agent", "generation"} <= {span.type for span in trace.spans}


async def test_the_http_apis_through_the_gateway(split_mesh, model):
    """An agent over the OpenAI API (reach's process), and a run an inbound webhook
    starts (triggers' process), each on its own HTTP port behind the one gateway."""
    gateway, key = split_mesh["gateway"], split_mesh["admin_key"]
    async with Client(gateway.address, key) as client:
        agent = await client.registry.CreateAgent(
            r.CreateAgentRequest(agent=r.Agent(display_name="Reached"), agent_id="reached")
        )
        model.enqueue(Reply(text="over the OpenAI API"))
        openai_client = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=key)
        completion = await openai_client.chat.completions.create(
            model="Reached", messages=[{"role": "user", "content": "hi"}]
        )
        assert completion.choices[0].message.content == "over the OpenAI API"

        trigger = await client.triggers.CreateTrigger(
            tg.CreateTriggerRequest(trigger=tg.Trigger(display_name="hook", target=agent.name))
        )
        body = b"from a webhook"
        model.enqueue(Reply(text="hooked"))
        stamp = int(time.time())
        headers = {
            "webhook-id": "msg-1",
            "webhook-timestamp": str(stamp),
            "webhook-signature": sign(trigger.secret, "msg-1", stamp, body),
        }
        async with (
            aiohttp.ClientSession(gateway.url) as http,
            http.post(trigger.path, data=body, headers=headers) as got,
        ):
            assert got.status == 202, await got.text()
            run_name = (await got.json())["run"]
        run = await _eventually(lambda: _ended(client, run_name))
        assert (run.input, run.final_output) == ("from a webhook", "hooked")


async def test_a_file_is_uploaded_indexed_and_searched_through_the_gateway(split_mesh):
    async with Client(split_mesh["gateway"].address, split_mesh["admin_key"]) as client:
        store = await new_store(client)
        text = b"The blue heron nests by the north lake every spring.\n"
        file = await index_file(client, store, "heron.txt", text)
        assert file.state == READY, file.error
        results = await search(client, store, "where does the heron nest?")
        assert results and results[0].file == file.name


async def test_a_runner_replica_killed_mid_run_is_survived(split_mesh, model):
    """Runs last: it kills the replica the gateway routes runs to. A run in flight on it
    is taken over by the other replica, which then also picks background runs."""
    key, addresses = split_mesh["admin_key"], split_mesh["addresses"]
    runner_a = split_mesh["processes"]["runner"]
    async with (
        Client(split_mesh["gateway"].address, key) as client,
        Client(addresses["runner"], key) as on_a,
        Client(addresses["runner-b"], key) as on_b,
    ):
        agent = await client.registry.CreateAgent(
            r.CreateAgentRequest(agent=r.Agent(display_name="Survivor"), agent_id="survivor")
        )
        model.enqueue(Reply(text="never sent", delay_s=30), Reply(text="after the takeover"))
        request = rn.RunAgentRequest(agent=agent.name, input="survive this", request_id="s-1")
        call = asyncio.ensure_future(on_a.runner.RunAgent(request))
        await _eventually(
            lambda: _true(any("survive this" in json.dumps(q.body) for q in model.requests))
        )
        runner_a.send_signal(signal.SIGKILL)
        await runner_a.wait()
        with pytest.raises(grpc.aio.AioRpcError):
            await call
        # The same request again, to the other replica: the first run, once it ended there.
        survived = await asyncio.wait_for(on_b.runner.RunAgent(request), 60)
        assert (survived.state, survived.final_output) == (
            State.STATE_SUCCEEDED,
            "after the takeover",
        )

        model.enqueue(Reply(text="from the queue"))
        submitted = await on_b.runner.SubmitRun(
            rn.RunAgentRequest(agent=agent.name, input="in the background")
        )
        done = await _eventually(lambda: _ended(on_b, submitted.name))
        assert (done.state, done.final_output) == (State.STATE_SUCCEEDED, "from the queue")


async def _true(value: bool) -> bool:
    return value


async def _ended(client: Client, name: str) -> rn.Run | None:
    run = await client.runner.GetRun(rn.GetRunRequest(name=name))
    return run if run.state == State.STATE_SUCCEEDED or run.state == State.STATE_FAILED else None
