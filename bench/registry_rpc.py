"""What the mesh's request path costs over bare gRPC, measured in one run.

The floor is a grpc.aio server answering the same GetAgent with a stored Agent
(no auth, validation, logging or database). The mesh answers through the real
path: interceptor (auth with a cached key, protovalidate, error mapping),
servicer, database (SQLite, then Postgres). Both are called the same way, a plain
stub on a channel of its own, the mesh's with the API key as call metadata: what
a client library adds (agentmesh.client's interceptors cost ~0.2 ms a call in
grpc.aio) is not the request path. Prints p50/p99 latency at
concurrency 1, throughput at concurrency 16, and the ratios the hardening
issue targets (>= 0.5x bare throughput, <= 2x bare p50).

    .venv/bin/python bench/registry_rpc.py [--requests 2000] [--concurrency 16] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import statistics
import tempfile
import time
from pathlib import Path

import grpc

from agentmesh.client import Client
from agentmesh.config import Settings
from agentmesh.gen.registry.v1 import registry_pb2 as r
from agentmesh.gen.registry.v1 import registry_pb2_grpc
from agentmesh.mesh import Mesh
from agentmesh.testing.postgres import TemporaryPostgres
from services import plugins_named


class FloorRegistry(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, agent: r.Agent):
        self._agent = agent

    async def GetAgent(self, request, context):
        return self._agent


async def measure(call, requests: int, concurrency: int) -> dict[str, float]:
    for _ in range(50):  # warm up channels, caches, the event loop
        await call()
    latencies = []
    for _ in range(requests):
        started = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - started)
    latencies.sort()

    async def worker(count: int) -> None:
        for _ in range(count):
            await call()

    started = time.perf_counter()
    await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
    rps = (requests // concurrency * concurrency) / (time.perf_counter() - started)
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "rps": rps,
    }


@contextlib.asynccontextmanager
async def mesh_stub(database_url: str):
    """A registry on the database, an agent in it, and a call of GetAgent for it."""
    data_dir = Path(tempfile.mkdtemp(prefix="agentmesh-bench-"))
    settings = Settings(data_dir=data_dir, port=0, standin_model=False, database_url=database_url)
    async with Mesh(settings, plugins_named("registry")) as mesh:
        key = (data_dir / "admin.key").read_text().strip()
        async with Client(mesh.address, key) as client:
            agent = await client.registry.CreateAgent(
                r.CreateAgentRequest(
                    agent=r.Agent(display_name="bench", instructions="Be brief." * 20)
                )
            )
        request = r.GetAgentRequest(name=agent.name)
        metadata = (("authorization", f"Bearer {key}"),)
        async with grpc.aio.insecure_channel(mesh.address) as channel:
            stub = registry_pb2_grpc.RegistryServiceStub(channel)
            yield agent, lambda: stub.GetAgent(request, metadata=metadata)


@contextlib.asynccontextmanager
async def bare_stub(agent: r.Agent):
    server = grpc.aio.server()
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(FloorRegistry(agent), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    request = r.GetAgentRequest(name=agent.name)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        yield lambda: stub.GetAgent(request)
    await server.stop(None)


async def main(requests: int, concurrency: int, rounds: int) -> None:
    logging.disable(logging.INFO)  # one log line per RPC is not what is measured here
    async with contextlib.AsyncExitStack() as stack:
        postgres = stack.enter_context(TemporaryPostgres())
        agent, sqlite_call = await stack.enter_async_context(
            mesh_stub("sqlite+aiosqlite:///{data_dir}/{service}.db")
        )
        _, postgres_call = await stack.enter_async_context(
            mesh_stub(postgres.create_database("bench"))
        )
        calls = {
            "bare gRPC": await stack.enter_async_context(bare_stub(agent)),
            "agentmesh sqlite": sqlite_call,
            "agentmesh postgres": postgres_call,
        }
        # Rounds in turn, so a machine that slows down for a while (a shared VM)
        # slows every contender alike; each figure is the median over the rounds.
        rounds_of: dict[str, list[dict[str, float]]] = {label: [] for label in calls}
        for _ in range(rounds):
            for label, call in calls.items():
                rounds_of[label].append(await measure(call, requests, concurrency))
    results = {
        label: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for label, runs in rounds_of.items()
    }
    floor = results["bare gRPC"]
    print(
        f"GetAgent, {requests} sequential requests, then concurrency {concurrency}; "
        f"median of {rounds} rounds"
    )
    print(f"{'':20}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}{'p50 x':>8}{'req/s x':>9}")
    for label, result in results.items():
        print(
            f"{label:20}{result['p50_ms']:10.3f}{result['p99_ms']:10.3f}{result['rps']:10.0f}"
            f"{result['p50_ms'] / floor['p50_ms']:8.2f}"
            f"{result['rps'] / floor['rps']:9.2f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.concurrency, args.rounds))
