"""No span is lost or stored twice: the traces service stopped during runs, NATS
restarted during runs, a batch delivered twice, a batch no one can read; two meshes
in one process keep their spans apart; retention deletes old traces in batches.

Runs go through the real runner (the stand-in model server answers them); the bulk
of the 500 traces of the first test is published as SpanBatch events directly, as
runners would, to keep the test fast.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from support import Users, database_url, mesh_settings, use_model
from test_runner import KEY

from agentmesh.events import EventBus
from agentmesh.gen.registry.v1 import registry_pb2 as r
from agentmesh.gen.runner.v1 import runner_pb2 as rn
from agentmesh.gen.traces.v1 import events_pb2
from agentmesh.gen.traces.v1 import traces_pb2 as t
from agentmesh.mesh import Mesh
from agentmesh.model_server import ModelServer
from agentmesh.nats_server import EmbeddedNats
from services import plugins_named
from services.traces.store import SpanRow, TraceRow, TraceStore

State = rn.Run.State
RUNS = plugins_named("registry", "providers", "runner", "guardrails")
TRACES = plugins_named("traces")
RUNS_AND_TRACES = plugins_named("registry", "providers", "runner", "guardrails", "traces")
SYNTHETIC_USER = "users/" + "5" * 32


def store_of(mesh: Mesh) -> TraceStore:
    return mesh.services["traces"].store  # type: ignore[attr-defined]


def synthetic_batch(count: int, spans: int = 4, start: datetime | None = None):
    """`count` traces of `spans` spans each (a root and its children), as a runner
    publishes them; and their span ids."""
    start = start or datetime.now(UTC)
    batch = events_pb2.SpanBatch(user=SYNTHETIC_USER)
    ids = []
    for _ in range(count):
        trace_id = f"trace_{uuid.uuid4().hex}"
        batch.traces.append(t.Trace(name=f"traces/{trace_id}", workflow_name="synthetic"))
        root = ""
        for index in range(spans):
            span = t.Span(
                span_id=f"span_{uuid.uuid4().hex[:24]}",
                trace_id=trace_id,
                parent_id=root,
                type="custom" if index == 0 else "function",
                name=f"step{index}",
            )
            span.start_time.FromDatetime(start + timedelta(milliseconds=index))
            span.end_time.FromDatetime(start + timedelta(milliseconds=10 - index))
            span.data.update({"index": index})
            root = root or span.span_id
            batch.spans.append(span)
            ids.append(span.span_id)
    return batch, ids


async def counts(store: TraceStore) -> tuple[int, int]:
    async with store.engine.connect() as conn:
        traces = (await conn.execute(sa.select(sa.func.count()).select_from(TraceRow))).scalar()
        spans = (await conn.execute(sa.select(sa.func.count()).select_from(SpanRow))).scalar()
    return int(traces or 0), int(spans or 0)


async def summaries(store: TraceStore) -> dict[str, tuple[str, int, int]]:
    """trace id -> (user, span_count as summarized, spans actually stored)."""
    stored = sa.select(sa.func.count()).where(SpanRow.trace_id == TraceRow.id).scalar_subquery()
    async with store.engine.connect() as conn:
        rows = (
            await conn.execute(
                sa.select(TraceRow.id, TraceRow.user_id, TraceRow.span_count, stored)
            )
        ).all()
    return {row[0]: (row[1], row[2], row[3]) for row in rows}


async def settled(store: TraceStore, traces: int, spans: int, within: float = 60.0) -> None:
    """Waits until the store holds exactly this many traces and spans."""
    async with asyncio.timeout(within):
        while (found := await counts(store)) != (traces, spans):  # noqa: ASYNC110 - the database's
            assert found[1] <= spans, f"more spans than were made: {found}"
            await asyncio.sleep(0.2)


async def run_many(client, agent: str, count: int, concurrency: int = 8) -> list[rn.Run]:
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int) -> rn.Run:
        async with gate:
            run = await client.runner.RunAgent(rn.RunAgentRequest(agent=agent, input=f"hi {index}"))
            assert run.state == State.STATE_SUCCEEDED, run.error
            return run

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def tenant_agent(mesh: Mesh, users: Users, model: ModelServer) -> tuple[object, str]:
    client, _ = await users.new(credits=1_000_000)
    await use_model(client, model)
    agent = await client.registry.CreateAgent(
        r.CreateAgentRequest(agent=r.Agent(display_name="busy"), agent_id="busy")
    )
    return client, agent.name


async def real_traces_are_whole(store: TraceStore, runs: list[rn.Run]) -> int:
    """Every run's trace is stored with the same number of spans (each run is the
    same), and the summary counts the rows; returns that number."""
    found = await summaries(store)
    shapes = {found[run.trace.removeprefix("traces/")] for run in runs}
    ((user, count, rows),) = {(u, c, n) for u, c, n in shapes}
    assert count == rows >= 4 and user != SYNTHETIC_USER.removeprefix("users/")
    return count


async def test_the_traces_service_stopped_during_500_runs_loses_and_doubles_no_span(tmp_path):
    """100 runs through the runner and 400 published as a runner would; the traces
    service is stopped while runs go on, and started again."""
    async with EmbeddedNats(tmp_path / "nats") as nats, ModelServer(api_key=KEY) as model:
        shared = {
            "nats_url": nats.url,
            "service_token": "traces-durability-token",
            "outbound_allow": ["127.0.0.1"],
            "trace_flush_seconds": 0.2,
        }
        async with Mesh(mesh_settings(tmp_path / "a", **shared), RUNS) as mesh_a:
            traces_settings = mesh_settings(
                tmp_path / "t", peers={"registry": mesh_a.address}, **shared
            )
            users = Users(mesh_a)
            client, agent = await tenant_agent(mesh_a, users, model)
            bus = await EventBus.connect(nats.url, name="synthetic-runner")
            try:
                synthetic_ids: list[str] = []

                async def publish(count: int) -> None:
                    for _ in range(count // 20):
                        batch, ids = synthetic_batch(20)
                        synthetic_ids.extend(ids)
                        await bus.publish(batch)

                mesh_t = Mesh(traces_settings, TRACES)
                await mesh_t.start()
                runs = await run_many(client, agent, 30)
                await publish(100)

                during = asyncio.create_task(run_many(client, agent, 40))
                await asyncio.sleep(0.3)
                await mesh_t.stop()  # while runs go on, and their spans are published
                await publish(200)
                runs += await during

                async with Mesh(traces_settings, TRACES) as mesh_t:
                    store = store_of(mesh_t)
                    await publish(100)
                    runs += await run_many(client, agent, 30)
                    assert len(runs) == 100 and len(synthetic_ids) == 1600
                    # Real runs' spans: as many per run as the first run stored.
                    async with asyncio.timeout(60):
                        while True:
                            traces, spans = await counts(store)
                            if traces == 500:
                                found = await summaries(store)
                                if all(
                                    found[run.trace.removeprefix("traces/")][1] >= 4 for run in runs
                                ):
                                    break
                            await asyncio.sleep(0.2)
                    per_run = await real_traces_are_whole(store, runs)
                    await settled(store, 500, 100 * per_run + 1600)
                    async with store.engine.connect() as conn:
                        stored_ids = set(
                            (
                                await conn.execute(
                                    sa.select(SpanRow.id).where(
                                        SpanRow.user_id == SYNTHETIC_USER.removeprefix("users/")
                                    )
                                )
                            ).scalars()
                        )
                    assert stored_ids == set(synthetic_ids)
                    synthetic = SYNTHETIC_USER.removeprefix("users/")
                    found = await summaries(store)
                    assert all(c == n == 4 for u, c, n in found.values() if u == synthetic)
            finally:
                await bus.close()
                await users.close()


async def test_nats_restarted_during_runs_loses_no_span(tmp_path):
    nats = EmbeddedNats(tmp_path / "nats")
    await nats.start()
    try:
        async with ModelServer(api_key=KEY) as model:
            settings = mesh_settings(
                tmp_path / "mesh",
                nats_url=nats.url,
                outbound_allow=["127.0.0.1"],
                trace_flush_seconds=0.2,
            )
            async with Mesh(settings, RUNS_AND_TRACES) as mesh:
                users = Users(mesh)
                try:
                    client, agent = await tenant_agent(mesh, users, model)
                    store = store_of(mesh)
                    runs = await run_many(client, agent, 20)
                    during = asyncio.create_task(run_many(client, agent, 20, concurrency=4))
                    await asyncio.sleep(0.2)
                    port = nats.port
                    await nats.stop()
                    await asyncio.sleep(1.0)  # spans pile up meanwhile
                    nats = EmbeddedNats(tmp_path / "nats", port=port)
                    await nats.start()
                    runs += await during
                    runs += await run_many(client, agent, 20)
                    async with asyncio.timeout(60):
                        while True:
                            found = await summaries(store)
                            if len(found) == 60 and all(c >= 4 for _, c, _ in found.values()):
                                break
                            await asyncio.sleep(0.2)
                    per_run = await real_traces_are_whole(store, runs)
                    await settled(store, 60, 60 * per_run)
                finally:
                    await users.close()
    finally:
        await nats.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
async def traces_only(request, tmp_path_factory) -> AsyncIterator[Mesh]:
    """The traces service alone, on each database, deleting traces older than a week
    every 0.2 s, two per transaction."""
    data_dir = tmp_path_factory.mktemp(f"traces-only-{request.param}")
    pg = request.getfixturevalue("postgres") if request.param == "postgres" else None
    settings = mesh_settings(
        data_dir,
        database_url=database_url(request.param, pg, data_dir),
        trace_retention_days=7,
        retention_sweep_seconds=0.2,
        retention_batch=2,
    )
    async with Mesh(settings, TRACES) as mesh:
        yield mesh


async def test_a_batch_delivered_twice_is_stored_once_and_an_unreadable_one_is_dropped(
    traces_only,
):
    store = store_of(traces_only)
    before = await counts(store)
    batch, _ = synthetic_batch(3)
    await traces_only.events.publish(batch)
    await traces_only.events.publish(batch)  # a runner's retry that JetStream did not dedupe
    await settled(store, before[0] + 3, before[1] + 12)
    # Again, once stored (the database's keys, not this group, skip it now), with what
    # no one can read, and a batch after them.
    await traces_only.events.publish(batch)
    await traces_only.events.publish(events_pb2.SpanBatch(user="nobody", spans=batch.spans))
    await traces_only.events.jetstream.publish("spans.batch", b"\xff\xff not protobuf")
    later, _ = synthetic_batch(1)
    # A trace's record alone, its spans in a later batch (the runner sends them apart).
    await traces_only.events.publish(events_pb2.SpanBatch(user=later.user, traces=later.traces))
    await settled(store, before[0] + 4, before[1] + 12)
    await traces_only.events.publish(later)
    await settled(store, before[0] + 4, before[1] + 16)
    found = await summaries(store)
    for trace in batch.traces:
        assert found[trace.name.removeprefix("traces/")][1:] == (4, 4)
    info = await traces_only.events.jetstream.stream_info("SPANS")
    assert info.state.messages == 0  # every message acknowledged or dropped


async def test_retention_deletes_old_traces_in_batches(traces_only):
    store = store_of(traces_only)
    consumer = traces_only.services["traces"].consumer  # type: ignore[attr-defined]
    written = consumer.stored
    old, _ = synthetic_batch(5, start=datetime.now(UTC) - timedelta(days=30))
    recent, _ = synthetic_batch(1)
    await traces_only.events.publish(old)
    await traces_only.events.publish(recent)
    async with asyncio.timeout(15):
        while consumer.stored < written + 24:  # noqa: ASYNC110 - the consumer's counter
            await asyncio.sleep(0.05)
    # All were written; the sweep then deletes the five old ones, two at a time.
    async with asyncio.timeout(15):
        while True:
            found = await summaries(store)
            if not any(trace.name.removeprefix("traces/") in found for trace in old.traces):
                break
            await asyncio.sleep(0.1)
    assert recent.traces[0].name.removeprefix("traces/") in found
    async with store.engine.connect() as conn:
        orphans = (
            await conn.execute(
                sa.select(sa.func.count()).where(
                    SpanRow.trace_id.in_([t.name.removeprefix("traces/") for t in old.traces])
                )
            )
        ).scalar()
    assert orphans == 0


async def test_two_meshes_in_one_process_keep_their_spans_apart(tmp_path):
    async with ModelServer(api_key=KEY) as model:
        meshes = [
            Mesh(
                mesh_settings(
                    tmp_path / name, outbound_allow=["127.0.0.1"], trace_flush_seconds=0.2
                ),
                RUNS_AND_TRACES,
            )
            for name in ("one", "two")
        ]
        for mesh in meshes:
            await mesh.start()
        all_users = [Users(mesh) for mesh in meshes]
        try:
            runs = []
            for mesh, users in zip(meshes, all_users, strict=True):
                client, agent = await tenant_agent(mesh, users, model)
                runs.append(await run_many(client, agent, 3))
            for mesh, own, other in ((meshes[0], runs[0], runs[1]), (meshes[1], runs[1], runs[0])):
                store = store_of(mesh)
                async with asyncio.timeout(15):
                    while len(await summaries(store)) < 3:  # noqa: ASYNC110 - the database's
                        await asyncio.sleep(0.1)
                await asyncio.sleep(0.5)  # anything misrouted would have arrived by now
                found = await summaries(store)
                assert set(found) == {run.trace.removeprefix("traces/") for run in own}
                assert not set(found) & {run.trace.removeprefix("traces/") for run in other}
        finally:
            for users in all_users:
                await users.close()
            for mesh in reversed(meshes):
                await mesh.stop()
