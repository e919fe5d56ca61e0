"""What traces cost, in one run: the traces service's intake, and tracing in the runner.

1. Intake: spans per second from publish to committed rows, on Postgres (the
   production store; target 20,000/s on this machine). Span batches as runners send
   them (512 spans, ten per trace, a few hundred bytes of data each) are published
   with JetStream's async publish; the clock stops when the traces service has
   committed the last span.
2. The runner with tracing on against tracing off (`trace_runs`), the same mesh
   otherwise, at concurrency 16: runs per second and the ratio (target: on costs at
   most 10%). With tracing on, the traces service stores every span in the same
   process, as `agentmesh up` runs it; its cost is counted too.

    .venv/bin/python bench/traces.py [--spans 100000] [--runs 200]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from run_overhead import KEY, check, measure, mesh_tenant, tool_endpoint  # noqa: E402

from agentmesh.config import Settings  # noqa: E402
from agentmesh.events import EventBus, event_spec  # noqa: E402
from agentmesh.gen.runner.v1 import runner_pb2 as rn  # noqa: E402
from agentmesh.gen.traces.v1 import events_pb2  # noqa: E402
from agentmesh.gen.traces.v1 import traces_pb2 as t  # noqa: E402
from agentmesh.mesh import Mesh  # noqa: E402
from agentmesh.model_server import ModelServer  # noqa: E402
from agentmesh.nats_server import EmbeddedNats  # noqa: E402
from agentmesh.testing.postgres import TemporaryPostgres  # noqa: E402
from services import plugins_named  # noqa: E402

TARGET_SPANS_PER_SECOND = 20_000
BATCH_SPANS = 512
SPANS_PER_TRACE = 10
USERS = 8


def batches(spans: int) -> list[bytes]:
    """Serialized span batches holding `spans` spans, as runners publish them."""
    out = []
    start = datetime.now(UTC)
    made = 0
    while made < spans:
        batch = events_pb2.SpanBatch(user=f"users/{uuid.uuid4().hex[:8]}{made % USERS:024d}")
        while len(batch.spans) < BATCH_SPANS and made < spans:
            trace_id = f"trace_{uuid.uuid4().hex}"
            batch.traces.append(
                t.Trace(name=f"traces/{trace_id}", workflow_name="agents/bench", agent="agents/b")
            )
            root = ""
            for index in range(SPANS_PER_TRACE):
                span = t.Span(
                    span_id=f"span_{uuid.uuid4().hex[:24]}",
                    trace_id=trace_id,
                    parent_id=root,
                    type="function" if index else "agent",
                    name=f"step{index}",
                )
                span.start_time.FromDatetime(start + timedelta(microseconds=index))
                span.end_time.FromDatetime(start + timedelta(microseconds=100 + index))
                span.data.update(
                    {"type": "function", "input": '{"order": "A-1234"}', "output": "x" * 200}
                )
                root = root or span.span_id
                batch.spans.append(span)
                made += 1
        out.append(batch.SerializeToString())
    return out


async def intake(spans: int) -> None:
    payloads = batches(spans)
    spec = event_spec(events_pb2.SpanBatch)
    data_dir = Path(tempfile.mkdtemp(prefix="agentmesh-bench-traces-"))
    with TemporaryPostgres() as postgres:
        async with EmbeddedNats(data_dir / "nats") as nats:
            settings = Settings(
                data_dir=data_dir,
                port=0,
                nats_url=nats.url,
                database_url=postgres.create_database("bench_traces"),
                log_level="WARNING",
            )
            async with Mesh(settings, plugins_named("traces")) as mesh:
                consumer = mesh.services["traces"].consumer  # type: ignore[attr-defined]
                bus = await EventBus.connect(nats.url, name="bench-runner")
                started = time.perf_counter()
                acks = [
                    await bus.jetstream.publish_async(spec.subject, data, stream=spec.stream)
                    for data in payloads
                ]
                await asyncio.gather(*acks)
                published = time.perf_counter() - started
                while consumer.stored < spans:  # noqa: ASYNC110 - the consumer's counter
                    await asyncio.sleep(0.01)
                elapsed = time.perf_counter() - started
                await bus.close()
    rate = spans / elapsed
    print(f"intake on Postgres: {spans:,} spans in {len(payloads)} batches")
    print(f"  published (acknowledged) in {published:.2f} s: {spans / published:,.0f} spans/s")
    print(
        f"  publish -> committed rows: {elapsed:.2f} s, {rate:,.0f} spans/s "
        f"({rate / TARGET_SPANS_PER_SECOND:.2f}x the {TARGET_SPANS_PER_SECOND:,}/s target)\n"
    )


async def runner_cost(runs: int) -> None:
    tool_runner, tool_url = await tool_endpoint()
    rates: dict[bool, list[float]] = {True: [], False: []}
    async with ModelServer(api_key=KEY) as model:
        meshes: dict[bool, tuple[Mesh, Any]] = {}
        for tracing in (False, True):
            data_dir = Path(tempfile.mkdtemp(prefix="agentmesh-bench-tracing-"))
            settings = Settings(
                data_dir=data_dir,
                port=0,
                openai_api_key="",
                standin_model=False,
                outbound_allow=["127.0.0.1"],
                log_level="WARNING",
                trace_runs=tracing,
            )
            plugins = plugins_named("registry", "providers", "runner", "guardrails", "traces")
            mesh = Mesh(settings, plugins)
            await mesh.start()
            client = await mesh_tenant(mesh, data_dir, model.base_url, tool_url)
            meshes[tracing] = (mesh, client)
        try:
            print(f"runner throughput, tracing on vs off, concurrency 16, {runs} runs each")
            for case, agent, text in (
                ("one turn", "agents/single", "hello there"),
                ("HTTP tool", "agents/tooler", "look up order 42"),
            ):
                for _ in range(2):  # alternating, the best of two
                    for tracing in (False, True):
                        _, client = meshes[tracing]

                        async def run(
                            client: Any = client, agent: str = agent, text: str = text
                        ) -> None:
                            check(
                                await client.runner.RunAgent(
                                    rn.RunAgentRequest(agent=agent, input=text)
                                )
                            )

                        await measure(run, 16, 16)  # warm
                        rates[tracing].append((await measure(run, runs, 16))["rps"])
                off, on = max(rates[False]), max(rates[True])
                print(
                    f"  {case:<10} off {off:7.1f} runs/s   on {on:7.1f} runs/s   "
                    f"on/off {on / off:.2f} (target >= 0.90)"
                )
                rates = {True: [], False: []}
        finally:
            for mesh, client in meshes.values():
                await client.close()
                await mesh.stop()
            await tool_runner.cleanup()


async def main(spans: int, runs: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    await intake(spans)
    await runner_cost(runs)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=200)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.spans, arguments.runs))
