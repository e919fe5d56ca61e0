"""Changes other services react to arrive on NATS as protobuf events."""

from __future__ import annotations

import asyncio

import nats
import pytest
from google.protobuf import field_mask_pb2

from agentmesh.events import event_spec
from agentmesh.gen.common.v1 import common_pb2 as c
from agentmesh.gen.providers.v1 import events_pb2 as provider_events
from agentmesh.gen.providers.v1 import providers_pb2 as p
from agentmesh.gen.registry.v1 import account_pb2 as a
from agentmesh.gen.registry.v1 import events_pb2 as registry_events
from agentmesh.gen.registry.v1 import registry_pb2 as r
from agentmesh.gen.registry.v1 import workflows_pb2 as w
from agentmesh.gen.registry.v1 import workflows_pb2_grpc


@pytest.fixture
async def subscribe(sqlite_mesh):
    client = await nats.connect(sqlite_mesh.nats_url)

    async def collect(event_type):
        queue: asyncio.Queue = asyncio.Queue()

        async def on_message(msg):
            await queue.put(event_type.FromString(msg.data))

        # The subject the contract gives the event, read from its options.
        await client.subscribe(event_spec(event_type).subject, cb=on_message)
        await client.flush()
        return queue

    yield collect
    await client.close()


async def _next(queue: asyncio.Queue):
    return await asyncio.wait_for(queue.get(), 5)


async def test_agent_changes_are_published(new_sqlite_user, subscribe):
    events = await subscribe(registry_events.AgentChanged)
    client, user = await new_sqlite_user()
    created = await client.registry.CreateAgent(
        r.CreateAgentRequest(agent=r.Agent(display_name="a"))
    )
    event = await _next(events)
    assert (event.agent, event.user, event.kind) == (created.name, user.name, c.CHANGE_KIND_CREATED)
    assert (event.etag, event.revision_id) == (created.etag, created.revision_id)

    updated = await client.registry.UpdateAgent(
        r.UpdateAgentRequest(
            agent=r.Agent(name=created.name, instructions="x"),
            update_mask=field_mask_pb2.FieldMask(paths=["instructions"]),
        )
    )
    event = await _next(events)
    assert (event.kind, event.etag) == (c.CHANGE_KIND_UPDATED, updated.etag)
    assert event.revision_id == updated.revision_id

    target = await client.registry.CreateAgent(
        r.CreateAgentRequest(agent=r.Agent(display_name="target"))
    )
    await _next(events)
    # One at a time: a gRPC call starts as soon as it is made.
    for change in (
        lambda: client.registry.AddHandoff(
            r.AddHandoffRequest(agent=created.name, target=target.name)
        ),
        lambda: client.registry.RemoveHandoff(
            r.RemoveHandoffRequest(agent=created.name, target=target.name)
        ),
    ):
        changed = await change()
        event = await _next(events)
        assert (event.agent, event.user, event.kind) == (
            created.name,
            user.name,
            c.CHANGE_KIND_UPDATED,
        )
        assert (event.etag, event.revision_id) == (changed.etag, changed.revision_id)

    await client.registry.DeleteAgent(r.DeleteAgentRequest(name=created.name))
    event = await _next(events)
    assert (event.agent, event.user, event.kind) == (created.name, user.name, c.CHANGE_KIND_DELETED)
    assert not event.revision_id


async def test_workflow_changes_are_published(new_sqlite_user, subscribe):
    events = await subscribe(registry_events.WorkflowChanged)
    client, user = await new_sqlite_user()
    agent = await client.registry.CreateAgent(r.CreateAgentRequest(agent=r.Agent(display_name="a")))
    stub = workflows_pb2_grpc.WorkflowServiceStub(client.channel)
    step = w.WorkflowStep(id="only", agent=w.AgentStep(agent=agent.name))
    created = await stub.CreateWorkflow(
        w.CreateWorkflowRequest(workflow=w.Workflow(display_name="one", steps=[step]))
    )
    event = await _next(events)
    assert (event.workflow, event.user, event.kind, event.etag) == (
        created.name,
        user.name,
        c.CHANGE_KIND_CREATED,
        created.etag,
    )
    updated = await stub.UpdateWorkflow(
        w.UpdateWorkflowRequest(
            workflow=w.Workflow(name=created.name, description="x"),
            update_mask=field_mask_pb2.FieldMask(paths=["description"]),
        )
    )
    event = await _next(events)
    assert (event.kind, event.etag) == (c.CHANGE_KIND_UPDATED, updated.etag)
    await stub.DeleteWorkflow(w.DeleteWorkflowRequest(name=created.name))
    event = await _next(events)
    assert (event.workflow, event.kind) == (created.name, c.CHANGE_KIND_DELETED)


async def test_deleted_api_keys_are_published(new_sqlite_user, subscribe):
    events = await subscribe(registry_events.ApiKeyRevoked)
    client, user = await new_sqlite_user()
    key = await client.accounts.CreateApiKey(
        a.CreateApiKeyRequest(parent="users/me", api_key=a.ApiKey(display_name="spare"))
    )
    await client.accounts.DeleteApiKey(a.DeleteApiKeyRequest(name=key.name))
    event = await _next(events)
    assert (event.api_key, event.user) == (key.name, user.name)


async def test_provider_changes_are_published(new_sqlite_user, subscribe, sqlite_mesh):
    events = await subscribe(provider_events.ProviderChanged)
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
        c.CHANGE_KIND_CREATED,
    )
    await client.providers.UpdateProvider(
        p.UpdateProviderRequest(
            provider=p.Provider(name=created.name, api_key="sk-" + "b" * 30),
            update_mask=field_mask_pb2.FieldMask(paths=["api_key"]),
        )
    )
    assert (await _next(events)).kind == c.CHANGE_KIND_UPDATED
    await client.providers.DeleteProvider(p.DeleteProviderRequest(name=created.name))
    assert (await _next(events)).kind == c.CHANGE_KIND_DELETED
