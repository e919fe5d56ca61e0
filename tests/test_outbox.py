"""Events that must not be lost go through the outbox: staged with the change, published
after commit, once, whatever crashes in between. Real NATS (JetStream) and SQLite."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from nats.js.api import RetentionPolicy, StreamConfig
from sqlalchemy.ext.asyncio import AsyncEngine

from agentmesh.db import create_engine
from agentmesh.events import EventBus, event_spec
from agentmesh.gen.registry.v1 import events_pb2 as registry_events
from agentmesh.gen.runner.v1 import events_pb2 as runner_events
from agentmesh.gen.runner.v1 import runner_pb2
from agentmesh.gen.runner.v1.events_pb2 import RunQueued
from agentmesh.gen.traces.v1.events_pb2 import SpanBatch
from agentmesh.nats_server import EmbeddedNats
from agentmesh.outbox import OutboxRelay, outbox_table, stage

RunChanged = runner_events.RunChanged


@pytest.fixture
async def bus() -> AsyncIterator[EventBus]:
    async with EmbeddedNats() as server:
        events = await EventBus.connect(server.url, name="outbox-test")
        yield events
        await events.close()


@pytest.fixture
async def database(tmp_path) -> AsyncIterator[tuple[AsyncEngine, sa.Table]]:
    metadata = sa.MetaData()
    table = outbox_table(metadata)
    changes = sa.Table("changes", metadata, sa.Column("id", sa.String(32), primary_key=True))
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/outbox.db")
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield engine, table, changes
    await engine.dispose()


def changed(run: str) -> RunChanged:
    return RunChanged(run=run, user="users/u", state=runner_pb2.Run.STATE_SUCCEEDED)


async def stored(bus: EventBus) -> list[RunChanged]:
    """Every RunChanged the JetStream stream holds, oldest first."""
    spec = event_spec(RunChanged)
    info = await bus.jetstream.stream_info(spec.stream)
    subscription = await bus.jetstream.pull_subscribe(spec.subject, stream=spec.stream)
    messages = (
        await subscription.fetch(info.state.messages, timeout=5) if info.state.messages else []
    )
    await subscription.unsubscribe()
    return [RunChanged.FromString(message.data) for message in messages]


async def test_a_committed_change_publishes_its_event_and_a_rolled_back_one_does_not(bus, database):
    engine, table, changes = database
    relay = OutboxRelay("runner", engine, table, bus, [RunChanged])
    async with engine.begin() as conn:
        await conn.execute(sa.insert(changes).values(id="a"))
        await stage(conn, table, changed("runs/a"))
    with pytest.raises(RuntimeError):
        async with engine.begin() as conn:
            await conn.execute(sa.insert(changes).values(id="b"))
            await stage(conn, table, changed("runs/b"))
            raise RuntimeError("the change fails after staging its event")

    await bus.ensure_stream(RunChanged)
    assert await relay.relay_once() == 1
    assert [event.run for event in await stored(bus)] == ["runs/a"]
    async with engine.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar() == 0


async def test_a_crash_after_publishing_but_before_deleting_publishes_once(bus, database):
    engine, table, _ = database
    async with engine.begin() as conn:  # two events, one statement, in order
        await stage(conn, table, changed("runs/1"), changed("runs/2"))
    await bus.ensure_stream(RunChanged)
    relay = OutboxRelay("runner", engine, table, bus, [RunChanged])

    # The relay published but died before it could delete the rows: simulate by
    # publishing what it would publish, with the ids it would use.
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(table).order_by(table.c.seq))).all()
    for row in rows:
        await bus.publish(RunChanged.FromString(row.payload), message_id=f"runner-{row.seq}")

    assert await relay.relay_once() == 2  # the restarted relay publishes again...
    assert [event.run for event in await stored(bus)] == ["runs/1", "runs/2"]  # ...once


async def test_the_relay_waits_out_a_nats_outage_and_loses_nothing(tmp_path, database):
    engine, table, _ = database
    nats_dir = tmp_path / "nats"
    server = EmbeddedNats(nats_dir)
    await server.start()
    bus = await EventBus.connect(server.url, name="outbox-outage")
    relay = OutboxRelay("runner", engine, table, bus, [RunChanged], poll_seconds=0.1)
    relay.start()
    try:
        async with engine.begin() as conn:
            await stage(conn, table, changed("runs/before"))
        relay.notify()
        for _ in range(100):
            if await _stored_or_empty(bus):
                break
            await asyncio.sleep(0.05)
        port = server.port
        await server.stop()
        async with engine.begin() as conn:
            await stage(conn, table, changed("runs/during"))
        relay.notify()
        await asyncio.sleep(0.5)  # publishing fails meanwhile; the row stays
        async with engine.connect() as conn:
            assert (await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar() == 1

        server = EmbeddedNats(nats_dir, port=port)
        await server.start()
        for _ in range(200):
            runs = [event.run for event in await _stored_or_empty(bus)]
            if runs == ["runs/before", "runs/during"]:
                break
            await asyncio.sleep(0.05)
        async with engine.connect() as conn:
            left = (await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar()
        info = await bus.jetstream.stream_info(event_spec(RunChanged).stream)
        assert runs == ["runs/before", "runs/during"], (left, info.state)
    finally:
        await relay.stop()
        await bus.close()
        await server.stop()


async def _stored_or_empty(bus: EventBus) -> list[RunChanged]:
    try:
        return await stored(bus)
    except Exception:
        return []  # still reconnecting


def test_only_jetstream_events_may_be_staged():
    with pytest.raises(TypeError):
        asyncio.run(stage(None, None, registry_events.AgentChanged()))  # type: ignore[arg-type]


async def test_streams_are_made_as_their_events_declare_and_a_mismatch_is_refused(bus):
    """RUN_QUEUE and SPANS are work queues (SPANS for a week at most), RUNS keeps every
    message: as each event's options say. A stream made otherwise is refused, never used."""
    await bus.ensure_stream(RunQueued)
    await bus.ensure_stream(SpanBatch)
    await bus.ensure_stream(RunChanged)
    await bus.ensure_stream(SpanBatch)  # again: what exists as declared is left alone
    queue = (await bus.jetstream.stream_info("RUN_QUEUE")).config
    spans = (await bus.jetstream.stream_info("SPANS")).config
    runs = (await bus.jetstream.stream_info("RUNS")).config
    assert queue.retention == spans.retention == RetentionPolicy.WORK_QUEUE
    assert spans.max_age == 7 * 24 * 3600 and not queue.max_age
    assert runs.retention == RetentionPolicy.LIMITS

    await bus.jetstream.delete_stream("RUN_QUEUE")
    await bus.jetstream.add_stream(StreamConfig(name="RUN_QUEUE", subjects=["runs.queued"]))
    with pytest.raises(RuntimeError, match="RUN_QUEUE"):
        await bus.ensure_stream(RunQueued)
