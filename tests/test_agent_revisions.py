"""Agent revisions (AIP-162): every change is an immutable revision; rollback makes a new one."""

from __future__ import annotations

import grpc
from google.protobuf import field_mask_pb2
from rpc_helpers import error_info
from support import expect_rpc_error

from agentmesh.client import Client
from agentmesh.gen.registry.v1 import registry_pb2 as r


async def revisions(client: Client, name: str, page_size: int = 1000) -> list[r.Agent]:
    found, token = [], ""
    while True:
        page = await client.registry.ListAgentRevisions(
            r.ListAgentRevisionsRequest(name=name, page_size=page_size, page_token=token)
        )
        found.extend(page.agents)
        token = page.next_page_token
        if not token:
            return found


async def set_instructions(client: Client, name: str, text: str, etag: str = "") -> r.Agent:
    return await client.registry.UpdateAgent(
        r.UpdateAgentRequest(
            agent=r.Agent(name=name, instructions=text, etag=etag),
            update_mask=field_mask_pb2.FieldMask(paths=["instructions"]),
        )
    )


def revision_name(agent: r.Agent) -> str:
    return f"{agent.name}@{agent.revision_id}"


async def test_every_change_is_a_revision_newest_first(new_user):
    client, _ = await new_user()
    target = await client.registry.CreateAgent(
        r.CreateAgentRequest(agent=r.Agent(display_name="Target"), agent_id="target")
    )
    v1 = await client.registry.CreateAgent(
        r.CreateAgentRequest(agent=r.Agent(display_name="A", instructions="v1"), agent_id="a")
    )
    v2 = await set_instructions(client, v1.name, "v2")
    v3 = await client.registry.AddHandoff(r.AddHandoffRequest(agent=v1.name, target=target.name))
    # Adding a handoff that is there already changes nothing, so makes no revision.
    again = await client.registry.AddHandoff(r.AddHandoffRequest(agent=v1.name, target=target.name))
    assert again == v3
    v4 = await client.registry.RemoveHandoff(
        r.RemoveHandoffRequest(agent=v1.name, target=target.name)
    )

    listed = await revisions(client, v1.name)
    assert [a.name for a in listed] == [revision_name(v) for v in (v4, v3, v2, v1)]
    assert [a.instructions for a in listed] == ["v2", "v2", "v2", "v1"]
    assert [list(a.handoffs) for a in listed] == [[], [target.name], [], []]
    assert len({a.revision_id for a in listed}) == 4
    for revision, agent in zip(listed, (v4, v3, v2, v1), strict=True):
        assert revision.revision_id == agent.revision_id
        assert revision.revision_create_time == agent.revision_create_time
        assert revision.create_time == v1.create_time

    # One revision, by name: exactly what it was, named as a revision.
    fetched = await client.registry.GetAgent(r.GetAgentRequest(name=revision_name(v1)))
    expected = r.Agent()
    expected.CopyFrom(v1)
    expected.name = revision_name(v1)
    assert fetched == expected


async def test_a_revision_is_immutable(new_user):
    client, _ = await new_user()
    v1 = await client.registry.CreateAgent(
        r.CreateAgentRequest(agent=r.Agent(display_name="A", instructions="first"))
    )
    before = await client.registry.GetAgent(r.GetAgentRequest(name=revision_name(v1)))
    for i in range(3):
        await set_instructions(client, v1.name, f"later {i}")
    after = await client.registry.GetAgent(r.GetAgentRequest(name=revision_name(v1)))
    assert after == before and after.instructions == "first"


async def test_revisions_page_newest_first(new_user):
    client, _ = await new_user()
    agent = await client.registry.CreateAgent(
        r.CreateAgentRequest(agent=r.Agent(display_name="A", instructions="0"))
    )
    for i in range(1, 7):
        agent = await set_instructions(client, agent.name, str(i))
    first = await client.registry.ListAgentRevisions(
        r.ListAgentRevisionsRequest(name=agent.name, page_size=3)
    )
    assert [a.instructions for a in first.agents] == ["6", "5", "4"]
    assert first.next_page_token
    listed = await revisions(client, agent.name, page_size=3)
    assert [a.instructions for a in listed] == ["6", "5", "4", "3", "2", "1", "0"]


async def test_rollback_makes_an_old_revision_current_as_a_new_one(new_user):
    client, _ = await new_user()
    v1 = await client.registry.CreateAgent(
        r.CreateAgentRequest(agent=r.Agent(display_name="A", instructions="good"))
    )
    v2 = await set_instructions(client, v1.name, "bad")

    stale = await expect_rpc_error(
        client.registry.RollbackAgent(
            r.RollbackAgentRequest(name=v1.name, revision_id=v1.revision_id, etag=v1.etag)
        ),
        grpc.StatusCode.ABORTED,
    )
    error_info(stale, "ETAG_MISMATCH")

    rolled_back = await client.registry.RollbackAgent(
        r.RollbackAgentRequest(name=v1.name, revision_id=v1.revision_id, etag=v2.etag)
    )
    assert rolled_back.instructions == "good"
    assert rolled_back.revision_id not in (v1.revision_id, v2.revision_id)
    assert rolled_back.etag not in (v1.etag, v2.etag)
    assert await client.registry.GetAgent(r.GetAgentRequest(name=v1.name)) == rolled_back
    listed = await revisions(client, v1.name)
    assert [a.revision_id for a in listed] == [
        rolled_back.revision_id,
        v2.revision_id,
        v1.revision_id,
    ]


async def test_rollback_to_a_revision_naming_a_deleted_agent(new_user):
    client, _ = await new_user()
    target = await client.registry.CreateAgent(
        r.CreateAgentRequest(agent=r.Agent(display_name="Target"))
    )
    v1 = await client.registry.CreateAgent(
        r.CreateAgentRequest(agent=r.Agent(display_name="A", handoffs=[target.name]))
    )
    v2 = await client.registry.RemoveHandoff(
        r.RemoveHandoffRequest(agent=v1.name, target=target.name)
    )
    await client.registry.DeleteAgent(r.DeleteAgentRequest(name=target.name))
    error = await expect_rpc_error(
        client.registry.RollbackAgent(
            r.RollbackAgentRequest(name=v1.name, revision_id=v1.revision_id)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    error_info(error, "REVISION_NOT_RESTORABLE")
    assert await client.registry.GetAgent(r.GetAgentRequest(name=v1.name)) == v2


async def test_unknown_revisions_and_deleted_agents(new_user):
    client, _ = await new_user()
    agent = await client.registry.CreateAgent(
        r.CreateAgentRequest(agent=r.Agent(display_name="A"), agent_id="short-lived")
    )
    for request in (
        client.registry.GetAgent(r.GetAgentRequest(name=f"{agent.name}@nosuchrevision")),
        client.registry.RollbackAgent(
            r.RollbackAgentRequest(name=agent.name, revision_id="nosuchrevision")
        ),
    ):
        error = await expect_rpc_error(request, grpc.StatusCode.NOT_FOUND)
        error_info(error, "NOT_FOUND")

    # Deleting an agent deletes its revisions: a new agent of the same id starts afresh.
    await client.registry.DeleteAgent(r.DeleteAgentRequest(name=agent.name))
    await expect_rpc_error(
        client.registry.GetAgent(r.GetAgentRequest(name=revision_name(agent))),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_rpc_error(
        client.registry.ListAgentRevisions(r.ListAgentRevisionsRequest(name=agent.name)),
        grpc.StatusCode.NOT_FOUND,
    )
    reborn = await client.registry.CreateAgent(
        r.CreateAgentRequest(agent=r.Agent(display_name="B"), agent_id="short-lived")
    )
    assert [a.revision_id for a in await revisions(client, reborn.name)] == [reborn.revision_id]
