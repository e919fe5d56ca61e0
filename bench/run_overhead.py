"""What running an agent through the mesh costs over the SDK in-process, in one run.

The floor is the Agents SDK's `Runner.run` in this process, on the same model
server over HTTP (the stand-in, which answers at once: the gap is all overhead),
with the same agents: instructions, an HTTP tool posting to a local endpoint, a
handoff. The mesh runs them through the real path: gRPC, auth, validation, the
registry's definitions and the providers' credentials (cached), credits reserved
and settled, the run, its events and its conversation persisted (SQLite, the
embedded default; --postgres for Postgres), outbox events to NATS.

Cases: one turn; two turns with one HTTP tool; a handoff (two model calls).
For each: throughput at concurrency 1 and 16 as a ratio to in-process, the
process's CPU per run (model server and tool endpoint included on both sides), p50/p99
latency added at concurrency 1, and for StreamRun the time to its first event
and to its first text (in-process: run_streamed's first text delta). The SDK's
own run_streamed is shown too: StreamRun streams from its model (RunAgent asks
for whole replies). Once both are set up, the process settles its heap as
`agentmesh up` does (agentmesh.server.settle_heap): both sides run under it.

    .venv/bin/python bench/run_overhead.py [--runs 40] [--postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
from agents import (
    Agent,
    FunctionTool,
    ModelSettings,
    OpenAIChatCompletionsModel,
    Runner,
    handoff,
    set_trace_processors,
)
from aiohttp import web

from agentmesh.client import Client
from agentmesh.config import Settings
from agentmesh.gen.providers.v1 import providers_pb2 as p
from agentmesh.gen.registry.v1 import account_pb2 as a
from agentmesh.gen.registry.v1 import registry_pb2 as r
from agentmesh.gen.runner.v1 import runner_pb2 as rn
from agentmesh.mesh import Mesh
from agentmesh.model_server import DEFAULT_MODEL, ModelServer
from agentmesh.server import settle_heap
from services import PLUGINS

KEY = "sk-bench-" + "k" * 24
INSTRUCTIONS = "You are a helpful assistant. Answer briefly."
# What each case asks; the stand-in's rules make the turns (see agentmesh.model_server).
CASES = {
    "one turn": ("single", "hello there"),
    "tool": ("tooler", 'call lookup {"q": "order 42"}'),
    "handoff": ("triage", "transfer_to_specialist please"),
}
CONCURRENCY = (1, 16)


async def tool_endpoint() -> tuple[web.AppRunner, str]:
    async def lookup(request: web.Request) -> web.Response:
        return web.json_response({"found": await request.json()})

    app = web.Application()
    app.router.add_post("/lookup", lookup)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/lookup"


# ---- the floor: the SDK in-process ---------------------------------------------------


def sdk_agents(model_url: str, tool_url: str, http: aiohttp.ClientSession) -> dict[str, Agent]:
    client = openai.AsyncOpenAI(base_url=model_url, api_key=KEY, max_retries=0)
    model = OpenAIChatCompletionsModel(DEFAULT_MODEL, client)
    settings = ModelSettings(include_usage=True)

    async def lookup(_: Any, arguments: str) -> str:
        async with http.post(tool_url, data=arguments or "{}") as reply:
            return await reply.text()

    tool = FunctionTool(
        name="lookup",
        description="Looks an order up.",
        params_json_schema={
            "type": "object",
            "properties": {"q": {"type": "string"}},
            "required": ["q"],
        },
        on_invoke_tool=lookup,
        strict_json_schema=False,
    )
    specialist = Agent(
        name="specialist", instructions=INSTRUCTIONS, model=model, model_settings=settings
    )
    return {
        "single": Agent(
            name="single", instructions=INSTRUCTIONS, model=model, model_settings=settings
        ),
        "tooler": Agent(
            name="tooler",
            instructions=INSTRUCTIONS,
            model=model,
            model_settings=settings,
            tools=[tool],
        ),
        "triage": Agent(
            name="triage",
            instructions=INSTRUCTIONS,
            model=model,
            model_settings=settings,
            handoffs=[handoff(specialist)],
        ),
    }


# ---- the mesh ----------------------------------------------------------------------------


async def user_on_model(mesh: Mesh, data_dir: Path, model_url: str) -> Client:
    """A new user with ample credits whose default provider is the model server."""
    admin = Client(mesh.address, (data_dir / "admin.key").read_text().strip())
    user = await admin.accounts.CreateUser(a.CreateUserRequest(user=a.User(display_name="bench")))
    key = await admin.accounts.CreateApiKey(a.CreateApiKeyRequest(parent=user.name))
    await admin.accounts.GrantCredits(a.GrantCreditsRequest(user=user.name, amount=1_000_000_000))
    await admin.close()
    client = Client(mesh.address, key.secret)
    await client.providers.CreateProvider(
        p.CreateProviderRequest(
            provider=p.Provider(
                display_name="stand-in",
                type=p.PROVIDER_TYPE_CUSTOM,
                base_url=model_url,
                api_key=KEY,
                is_default=True,
            )
        )
    )
    return client


async def mesh_tenant(mesh: Mesh, data_dir: Path, model_url: str, tool_url: str) -> Client:
    client = await user_on_model(mesh, data_dir, model_url)

    async def agent(agent_id: str, **fields: Any) -> None:
        await client.registry.CreateAgent(
            r.CreateAgentRequest(
                agent=r.Agent(
                    display_name=agent_id, instructions=INSTRUCTIONS, model=DEFAULT_MODEL, **fields
                ),
                agent_id=agent_id,
            )
        )

    await agent("single")
    await agent(
        "tooler",
        tools=[
            r.Tool(
                name="lookup",
                description="Looks an order up.",
                function=r.FunctionTool(http=r.HttpFunction(url=tool_url)),
            )
        ],
    )
    await agent("specialist")
    await agent("triage", handoffs=["agents/specialist"])
    return client


# ---- measuring --------------------------------------------------------------------------


async def measure(
    call: Callable[[], Awaitable[Any]], runs: int, concurrency: int
) -> dict[str, float]:
    """Latencies of `runs` calls, `concurrency` at a time, their throughput, and the
    process's CPU time per call (the mesh runs in this process: all of its cost)."""
    latencies: list[float] = []
    queue = iter(range(runs))

    async def worker() -> None:
        for _ in queue:
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    latencies.sort()
    return {
        "rps": runs / elapsed,
        "cpu": cpu / runs * 1000,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[min(int(len(latencies) * 0.99), len(latencies) - 1)] * 1000,
    }


def check(run: rn.Run) -> None:
    if run.state != rn.Run.STATE_SUCCEEDED:
        raise RuntimeError(f"a mesh run ended {rn.Run.State.Name(run.state)}: {run.error}")


async def first_events(client: Client, agent: str, text: str, times: int) -> tuple[float, float]:
    """Median ms from StreamRun's call to its first event, and to its first text."""
    firsts, texts = [], []
    for _ in range(times):
        started = time.perf_counter()
        first = text_at = None
        async for event in client.runner.StreamRun(rn.RunAgentRequest(agent=agent, input=text)):
            now = time.perf_counter()
            first = first or now
            if text_at is None and event.HasField("text_delta"):
                text_at = now
            if event.HasField("run_finished"):
                check(event.run_finished)
        assert first is not None and text_at is not None
        firsts.append(first - started)
        texts.append(text_at - started)
    return statistics.median(firsts) * 1000, statistics.median(texts) * 1000


async def sdk_first_text(agent: Agent, text: str, times: int) -> float:
    texts = []
    for _ in range(times):
        started = time.perf_counter()
        at = None
        result = Runner.run_streamed(agent, text)
        async for event in result.stream_events():
            if at is None and getattr(event, "type", "") == "raw_response_event":
                if getattr(event.data, "type", "") == "response.output_text.delta":
                    at = time.perf_counter()
        assert at is not None
        texts.append(at - started)
    return statistics.median(texts) * 1000


async def main(runs: int, database_url: str | None) -> None:
    logging.basicConfig(level=logging.WARNING)
    set_trace_processors([])  # as the runner does: no span leaves the process
    data_dir = Path(tempfile.mkdtemp(prefix="agentmesh-bench-run-"))
    overrides: dict[str, Any] = {"database_url": database_url} if database_url else {}
    settings = Settings(
        data_dir=data_dir,
        port=0,
        openai_api_key="",
        standin_model=False,
        outbound_allow=["127.0.0.1"],
        log_level="WARNING",
        **overrides,
    )
    tool_runner, tool_url = await tool_endpoint()
    async with (
        ModelServer(api_key=KEY) as model,
        aiohttp.ClientSession() as http,
        Mesh(settings, PLUGINS) as mesh,
    ):
        logging.getLogger("agentmesh").setLevel(logging.WARNING)
        agents = sdk_agents(model.base_url, tool_url, http)
        client = await mesh_tenant(mesh, data_dir, model.base_url, tool_url)
        settle_heap()
        print(f"runs per measurement: {runs} (x{CONCURRENCY[-1] // 4} at concurrency 16)")
        print(f"database: {database_url or 'SQLite (embedded default)'}\n")
        header = (
            f"{'case':<10} {'path':<10} {'c':>3} {'runs/s':>8} {'ratio':>6} {'cpu ms':>7} "
            f"{'p50 ms':>7} {'p99 ms':>7} {'+p50':>6} {'+p99':>6}"
        )
        print(header)
        print("-" * len(header))
        for case, (agent_id, text) in CASES.items():
            name = f"agents/{agent_id}"

            async def in_process(agent_id: str = agent_id, text: str = text) -> None:
                await Runner.run(agents[agent_id], text)

            async def run_agent(name: str = name, text: str = text) -> None:
                check(await client.runner.RunAgent(rn.RunAgentRequest(agent=name, input=text)))

            async def stream_run(name: str = name, text: str = text) -> None:
                async for event in client.runner.StreamRun(
                    rn.RunAgentRequest(agent=name, input=text)
                ):
                    if event.HasField("run_finished"):
                        check(event.run_finished)

            async def in_process_streamed(agent_id: str = agent_id, text: str = text) -> None:
                result = Runner.run_streamed(agents[agent_id], text)
                async for _ in result.stream_events():
                    pass

            # StreamRun streams from its model (RunAgent asks for whole replies):
            # "SDK stream" is the SDK's own run_streamed, for how much of its gap
            # streaming is.
            paths = {
                "in-process": in_process,
                "SDK stream": in_process_streamed,
                "RunAgent": run_agent,
                "StreamRun": stream_run,
            }
            for call in paths.values():  # warm up clients, caches, connections
                for _ in range(10):
                    await call()
            for concurrency in CONCURRENCY:
                count = runs if concurrency == 1 else runs * concurrency // 4
                floor = await measure(in_process, count, concurrency)
                for path, call in paths.items():
                    result = (
                        floor if path == "in-process" else await measure(call, count, concurrency)
                    )
                    added = ""
                    if path != "in-process" and concurrency == 1:
                        p50, p99 = result["p50"] - floor["p50"], result["p99"] - floor["p99"]
                        added = f"{p50:>6.1f} {p99:>6.1f}"
                    print(
                        f"{case:<10} {path:<10} {concurrency:>3} {result['rps']:>8.1f} "
                        f"{result['rps'] / floor['rps']:>6.2f} {result['cpu']:>7.1f} "
                        f"{result['p50']:>7.1f} {result['p99']:>7.1f} {added}"
                    )
        print()
        first, first_text = await first_events(client, "agents/single", "hello there", 30)
        sdk_text = await sdk_first_text(agents["single"], "hello there", 30)
        print(
            f"StreamRun (one turn, c=1): first event (run_started) {first:.1f} ms, "
            f"first text {first_text:.1f} ms; in-process run_streamed first text {sdk_text:.1f} ms"
        )
        await client.close()
    await tool_runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=40, help="runs per measurement at c=1")
    parser.add_argument("--postgres", action="store_true", help="the mesh on a temporary Postgres")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        url = None
        if args.postgres:
            from agentmesh.testing.postgres import TemporaryPostgres

            postgres = stack.enter_context(TemporaryPostgres())
            url = postgres.create_database("bench_runs")
        asyncio.run(main(args.runs, url))
