"""Changes other services react to arrive on NATS as protobuf events."""

from __future__ import annotations

import asyncio

import nats
import pytest
from google.protobuf import field_mask_pb2

from agentmesh.events import AGENTS_CHANGED, PROVIDERS_CHANGED
from agentmesh.gen.events.v1 import events_pb2 as e
from agentmesh.gen.providers.v1 import providers_pb2 as p
from agentmesh.gen.registry.v1 import registry_pb2 as r


@pytest.fixture
async def subscribe(sqlite_mesh):
    client = await nats.connect(sqlite_mesh.nats_url)

    async def collect(subject: str, event_type):
        queue: asyncio.Queue = asyncio.Queue()

        async def on_message(msg):
            await queue.put(event_type.FromString(msg.data))

        await client.subscribe(subject, cb=on_message)
        await client.flush()
        return queue

    yield collect
    await client.close()


async def _next(queue: asyncio.Queue):
    return await asyncio.wait_for(queue.get(), 5)


async def test_agent_changes_are_published(new_sqlite_user, subscribe):
    events = await subscribe(AGENTS_CHANGED, e.AgentChanged)
    client, user = await new_sqlite_user()
    created = await client.registry.CreateAgent(
        r.CreateAgentRequest(agent=r.Agent(display_name="a"))
    )
    event = await _next(events)
    assert (event.agent, event.user, event.kind) == (created.name, user.name, e.CHANGE_KIND_CREATED)
    assert event.etag == created.etag

    updated = await client.registry.UpdateAgent(
        r.UpdateAgentRequest(
            agent=r.Agent(name=created.name, instructions="x"),
            update_mask=field_mask_pb2.FieldMask(paths=["instructions"]),
        )
    )
    event = await _next(events)
    assert (event.kind, event.etag) == (e.CHANGE_KIND_UPDATED, updated.etag)

    await client.registry.DeleteAgent(r.DeleteAgentRequest(name=created.name))
    event = await _next(events)
    assert (event.agent, event.kind) == (created.name, e.CHANGE_KIND_DELETED)


async def test_provider_changes_are_published(new_sqlite_user, subscribe, sqlite_mesh):
    events = await subscribe(PROVIDERS_CHANGED, e.ProviderChanged)
    client, user = await new_sqlite_user()
    created = await client.providers.CreateProvider(
        p.CreateProviderRequest(
            provider=p.Provider(
                display_name="x",
                type=p.PROVIDER_TYPE_CUSTOM,
                base_url="http://127.0.0.1:9/v1",
                api_key="sk-" + "a" * 30,
            )
        )
    )
    event = await _next(events)
    assert (event.provider, event.user, event.kind) == (
        created.name,
        user.name,
        e.CHANGE_KIND_CREATED,
    )
    await client.providers.UpdateProvider(
        p.UpdateProviderRequest(
            provider=p.Provider(name=created.name, api_key="sk-" + "b" * 30),
            update_mask=field_mask_pb2.FieldMask(paths=["api_key"]),
        )
    )
    assert (await _next(events)).kind == e.CHANGE_KIND_UPDATED
    await client.providers.DeleteProvider(p.DeleteProviderRequest(name=created.name))
    assert (await _next(events)).kind == e.CHANGE_KIND_DELETED
