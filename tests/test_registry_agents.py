"""Registry CRUD through the real gRPC server, on SQLite and on Postgres."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import field_mask_pb2

from agentmesh.gen.registry.v1 import registry_pb2 as r


def agent(display_name: str = "Support", **fields) -> r.Agent:
    return r.Agent(display_name=display_name, **fields)


async def test_create_get_update_delete(new_user):
    client, user = await new_user()
    created = await client.registry.CreateAgent(
        r.CreateAgentRequest(
            agent=agent(
                instructions="Answer billing questions.",
                model="gpt-4.1-mini",
                model_settings=r.ModelSettings(temperature=0.2, max_tokens=400),
                tools=[
                    r.Tool(
                        type=r.TOOL_TYPE_FUNCTION,
                        name="lookup_invoice",
                        parameters={"type": "object", "properties": {"id": {"type": "string"}}},
                    )
                ],
                output_type={"type": "object", "properties": {"answer": {"type": "string"}}},
                metadata={"team": "billing"},
            )
        )
    )
    assert created.name.startswith("agents/")
    assert created.etag and created.create_time.seconds > 0
    fetched = await client.registry.GetAgent(r.GetAgentRequest(name=created.name))
    assert fetched == created
    assert fetched.model_settings.temperature == pytest.approx(0.2)
    assert fetched.tools[0].parameters["properties"]["id"]["type"] == "string"

    updated = await client.registry.UpdateAgent(
        r.UpdateAgentRequest(
            agent=r.Agent(name=created.name, instructions="Be brief.", display_name="ignored"),
            update_mask=field_mask_pb2.FieldMask(paths=["instructions"]),
        )
    )
    assert updated.instructions == "Be brief."
    assert updated.display_name == "Support"  # not in the mask, so untouched
    assert updated.tools == created.tools
    assert updated.etag != created.etag

    await client.registry.DeleteAgent(r.DeleteAgentRequest(name=created.name))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await client.registry.GetAgent(r.GetAgentRequest(name=created.name))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_stale_etag_is_aborted_and_changes_nothing(new_user):
    client, _ = await new_user()
    created = await client.registry.CreateAgent(r.CreateAgentRequest(agent=agent()))
    mask = field_mask_pb2.FieldMask(paths=["instructions"])
    first = await client.registry.UpdateAgent(
        r.UpdateAgentRequest(
            agent=r.Agent(name=created.name, instructions="v2", etag=created.etag),
            update_mask=mask,
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await client.registry.UpdateAgent(
            r.UpdateAgentRequest(
                agent=r.Agent(name=created.name, instructions="lost", etag=created.etag),
                update_mask=mask,
            )
        )
    assert error.value.code() == grpc.StatusCode.ABORTED
    current = await client.registry.GetAgent(r.GetAgentRequest(name=created.name))
    assert current.instructions == "v2" and current.etag == first.etag


async def test_concurrent_updates_never_lose_one_silently(new_user):
    client, _ = await new_user()
    created = await client.registry.CreateAgent(r.CreateAgentRequest(agent=agent()))

    async def update(text: str):
        return await client.registry.UpdateAgent(
            r.UpdateAgentRequest(
                agent=r.Agent(name=created.name, instructions=text, etag=created.etag),
                update_mask=field_mask_pb2.FieldMask(paths=["instructions"]),
            )
        )

    results = await asyncio.gather(*(update(f"v{i}") for i in range(5)), return_exceptions=True)
    winners = [result for result in results if isinstance(result, r.Agent)]
    losers = [result for result in results if not isinstance(result, r.Agent)]
    assert len(winners) == 1
    assert all(loser.code() == grpc.StatusCode.ABORTED for loser in losers)


async def test_pagination_over_250_agents(new_user):
    client, _ = await new_user()
    for start in range(0, 250, 50):
        await asyncio.gather(
            *(
                client.registry.CreateAgent(r.CreateAgentRequest(agent=agent(f"agent-{i:03}")))
                for i in range(start, start + 50)
            )
        )
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await client.registry.ListAgents(r.ListAgentsRequest(page_size=40, page_token=token))
        pages += 1
        assert len(page.agents) <= 40
        seen.extend(a.display_name for a in page.agents)
        token = page.next_page_token
        if not token:
            break
    assert pages == 7  # 6 full pages of 40 and one of 10
    assert sorted(seen) == [f"agent-{i:03}" for i in range(250)]
    assert len(set(seen)) == 250

    default_page = await client.registry.ListAgents(r.ListAgentsRequest())
    assert len(default_page.agents) == 50 and default_page.next_page_token


async def test_handoffs_and_contexts(new_user):
    client, _ = await new_user()
    billing = await client.registry.CreateAgent(r.CreateAgentRequest(agent=agent("Billing")))
    triage = await client.registry.CreateAgent(
        r.CreateAgentRequest(agent=agent("Triage", handoffs=[billing.name]))
    )
    assert list(triage.handoffs) == [billing.name]
    refunds = await client.registry.CreateAgent(r.CreateAgentRequest(agent=agent("Refunds")))
    triage = await client.registry.AddHandoff(
        r.AddHandoffRequest(agent=triage.name, target=refunds.name)
    )
    assert list(triage.handoffs) == [billing.name, refunds.name]

    # A handoff target cannot vanish from under the agent that hands off to it.
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await client.registry.DeleteAgent(r.DeleteAgentRequest(name=billing.name))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    triage = await client.registry.RemoveHandoff(
        r.RemoveHandoffRequest(agent=triage.name, target=billing.name)
    )
    assert list(triage.handoffs) == [refunds.name]
    await client.registry.DeleteAgent(r.DeleteAgentRequest(name=billing.name))

    first = await client.registry.CreateContext(
        r.CreateContextRequest(
            parent=triage.name, context=r.Context(values={"tier": "gold"}, default=True)
        )
    )
    second = await client.registry.CreateContext(
        r.CreateContextRequest(parent=triage.name, context=r.Context(default=True))
    )
    listed = await client.registry.ListContexts(r.ListContextsRequest(parent=triage.name))
    defaults = {c.name: c.default for c in listed.contexts}
    assert defaults == {first.name: False, second.name: True}  # one default at a time
    fetched = await client.registry.GetContext(r.GetContextRequest(name=first.name))
    assert fetched.values["tier"] == "gold"
    await client.registry.DeleteContext(r.DeleteContextRequest(name=first.name))
    listed = await client.registry.ListContexts(r.ListContextsRequest(parent=triage.name))
    assert [c.name for c in listed.contexts] == [second.name]
