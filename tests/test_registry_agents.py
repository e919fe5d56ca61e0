"""Registry CRUD through the real gRPC server, on SQLite and on Postgres."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2
from rpc_helpers import error_info, field_violations
from support import expect_rpc_error

from agentmesh.catalog import apply_definitions, load_definitions
from agentmesh.gen.guardrails.v1 import guardrails_pb2 as g
from agentmesh.gen.registry.v1 import registry_pb2 as r

EXAMPLES = Path(__file__).parent.parent / "examples" / "agents.json"
INVOICE_SOURCE = "def main(invoice_id):\n    return {'id': invoice_id, 'total': 42}\n"


def agent(display_name: str = "Support", **fields) -> r.Agent:
    return r.Agent(display_name=display_name, **fields)


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


async def test_create_get_update_delete(new_user):
    client, _ = await new_user()
    helper = await client.registry.CreateAgent(r.CreateAgentRequest(agent=agent("Helper")))
    created = await client.registry.CreateAgent(
        r.CreateAgentRequest(
            agent=agent(
                instructions="Answer billing questions.",
                model="gpt-4.1-mini",
                model_settings=r.ModelSettings(temperature=0.2, max_tokens=400),
                tools=[
                    r.Tool(
                        name="lookup_invoice",
                        function=r.FunctionTool(
                            parameters={
                                "type": "object",
                                "properties": {"invoice_id": {"type": "string"}},
                            },
                            code=r.CodeFunction(source=INVOICE_SOURCE),
                        ),
                    ),
                    r.Tool(name="ask_helper", agent=r.AgentTool(agent=helper.name)),
                    r.Tool(
                        name="docs",
                        file_search=r.FileSearchTool(vector_stores=["vectorStores/manuals"]),
                    ),
                ],
                input_guardrails=[
                    g.Guardrail(
                        name="no-keys",
                        regex=g.RegexCheck(pattern=r"sk-\w+", action=g.RegexCheck.ACTION_BLOCK),
                    ),
                    g.Guardrail(name="judge", agent=g.AgentCheck(agent=helper.name)),
                ],
                output_type={"type": "object", "properties": {"answer": {"type": "string"}}},
                metadata={"team": "billing"},
                max_credits_per_run=500,
            )
        )
    )
    assert created.name.startswith("agents/")
    assert created.etag and created.revision_id and created.create_time.seconds > 0
    assert created.revision_create_time == created.update_time
    fetched = await client.registry.GetAgent(r.GetAgentRequest(name=created.name))
    assert fetched == created
    assert fetched.model_settings.temperature == pytest.approx(0.2)
    assert fetched.tools[0].function.code.source == INVOICE_SOURCE
    assert fetched.tools[1].agent.agent == helper.name
    assert fetched.input_guardrails[0].regex.action == g.RegexCheck.ACTION_BLOCK

    updated = await client.registry.UpdateAgent(
        r.UpdateAgentRequest(
            agent=r.Agent(name=created.name, instructions="Be brief.", display_name="ignored"),
            update_mask=mask("instructions"),
        )
    )
    assert updated.instructions == "Be brief."
    assert updated.display_name == "Support"  # not in the mask, so untouched
    assert updated.tools == created.tools
    assert updated.etag != created.etag and updated.revision_id != created.revision_id

    # The helper is in use (as a tool and a guardrail) until the agent is gone.
    in_use = await expect_rpc_error(
        client.registry.DeleteAgent(r.DeleteAgentRequest(name=helper.name)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    error_info(in_use, "AGENT_IN_USE")
    await client.registry.DeleteAgent(r.DeleteAgentRequest(name=created.name))
    await expect_rpc_error(
        client.registry.GetAgent(r.GetAgentRequest(name=created.name)), grpc.StatusCode.NOT_FOUND
    )
    await client.registry.DeleteAgent(r.DeleteAgentRequest(name=helper.name))


async def test_output_only_fields_in_an_update_mask_are_ignored(new_user):
    client, _ = await new_user()
    created = await client.registry.CreateAgent(r.CreateAgentRequest(agent=agent()))
    updated = await client.registry.UpdateAgent(
        r.UpdateAgentRequest(
            agent=r.Agent(name=created.name, instructions="x", revision_id="mine"),
            update_mask=mask("instructions", "revision_id", "create_time"),
        )
    )
    assert updated.instructions == "x"
    assert updated.revision_id not in ("mine", created.revision_id)
    assert updated.create_time == created.create_time


async def test_client_chosen_ids(new_user):
    client, _ = await new_user()
    created = await client.registry.CreateAgent(
        r.CreateAgentRequest(agent=agent("Triage"), agent_id="triage")
    )
    assert created.name == "agents/triage"
    again = await expect_rpc_error(
        client.registry.CreateAgent(r.CreateAgentRequest(agent=agent("Other"), agent_id="triage")),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    error_info(again, "ALREADY_EXISTS")
    assert (await client.registry.GetAgent(r.GetAgentRequest(name="agents/triage"))) == created

    # Ids are per user: another tenant has its own agents/triage, and learns nothing.
    other, _ = await new_user()
    theirs = await other.registry.CreateAgent(
        r.CreateAgentRequest(agent=agent("Their triage"), agent_id="triage")
    )
    assert theirs.name == "agents/triage"
    assert (await client.registry.GetAgent(r.GetAgentRequest(name="agents/triage"))) == created
    # Each one's handoffs name its own agents/triage.
    router = await other.registry.CreateAgent(
        r.CreateAgentRequest(agent=agent("Router", handoffs=["agents/triage"]), agent_id="router")
    )
    assert list(router.handoffs) == ["agents/triage"]
    await client.registry.DeleteAgent(r.DeleteAgentRequest(name="agents/triage"))
    in_use = await expect_rpc_error(
        other.registry.DeleteAgent(r.DeleteAgentRequest(name="agents/triage")),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    error_info(in_use, "AGENT_IN_USE")


async def test_stale_etag_is_aborted_and_changes_nothing(new_user):
    client, _ = await new_user()
    created = await client.registry.CreateAgent(r.CreateAgentRequest(agent=agent()))
    first = await client.registry.UpdateAgent(
        r.UpdateAgentRequest(
            agent=r.Agent(name=created.name, instructions="v2", etag=created.etag),
            update_mask=mask("instructions"),
        )
    )
    await expect_rpc_error(
        client.registry.UpdateAgent(
            r.UpdateAgentRequest(
                agent=r.Agent(name=created.name, instructions="lost", etag=created.etag),
                update_mask=mask("instructions"),
            )
        ),
        grpc.StatusCode.ABORTED,
    )
    current = await client.registry.GetAgent(r.GetAgentRequest(name=created.name))
    assert current.instructions == "v2" and current.etag == first.etag


async def test_concurrent_updates_never_lose_one_silently(new_user):
    client, _ = await new_user()
    created = await client.registry.CreateAgent(r.CreateAgentRequest(agent=agent()))

    async def update(text: str):
        return await client.registry.UpdateAgent(
            r.UpdateAgentRequest(
                agent=r.Agent(name=created.name, instructions=text, etag=created.etag),
                update_mask=mask("instructions"),
            )
        )

    results = await asyncio.gather(*(update(f"v{i}") for i in range(5)), return_exceptions=True)
    winners = [result for result in results if isinstance(result, r.Agent)]
    losers = [result for result in results if not isinstance(result, r.Agent)]
    assert len(winners) == 1
    assert all(loser.code() == grpc.StatusCode.ABORTED for loser in losers)


async def test_concurrent_handoff_additions_all_land(new_user):
    client, _ = await new_user()
    source = await client.registry.CreateAgent(r.CreateAgentRequest(agent=agent("Source")))
    targets = [
        await client.registry.CreateAgent(r.CreateAgentRequest(agent=agent(f"T{i}")))
        for i in range(5)
    ]
    await asyncio.gather(
        *(
            client.registry.AddHandoff(r.AddHandoffRequest(agent=source.name, target=t.name))
            for t in targets
        )
    )
    current = await client.registry.GetAgent(r.GetAgentRequest(name=source.name))
    assert sorted(current.handoffs) == sorted(t.name for t in targets)


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
    in_use = await expect_rpc_error(
        client.registry.DeleteAgent(r.DeleteAgentRequest(name=billing.name)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    error_info(in_use, "AGENT_IN_USE")
    triage = await client.registry.RemoveHandoff(
        r.RemoveHandoffRequest(agent=triage.name, target=billing.name)
    )
    assert list(triage.handoffs) == [refunds.name]
    await client.registry.DeleteAgent(r.DeleteAgentRequest(name=billing.name))

    # Handoffs are also changed through UpdateAgent.
    triage = await client.registry.UpdateAgent(
        r.UpdateAgentRequest(agent=r.Agent(name=triage.name), update_mask=mask("handoffs"))
    )
    assert list(triage.handoffs) == []
    await client.registry.DeleteAgent(r.DeleteAgentRequest(name=refunds.name))

    first = await client.registry.CreateContext(
        r.CreateContextRequest(
            parent=triage.name, context=r.Context(values={"tier": "gold"}, is_default=True)
        )
    )
    second = await client.registry.CreateContext(
        r.CreateContextRequest(parent=triage.name, context=r.Context(is_default=True))
    )
    listed = await client.registry.ListContexts(r.ListContextsRequest(parent=triage.name))
    defaults = {c.name: c.is_default for c in listed.contexts}
    assert defaults == {first.name: False, second.name: True}  # one default at a time
    # In pages, oldest first.
    page = await client.registry.ListContexts(
        r.ListContextsRequest(parent=triage.name, page_size=1)
    )
    rest = await client.registry.ListContexts(
        r.ListContextsRequest(parent=triage.name, page_size=1, page_token=page.next_page_token)
    )
    assert [c.name for c in (*page.contexts, *rest.contexts)] == [first.name, second.name]
    assert page.next_page_token and not rest.next_page_token
    fetched = await client.registry.GetContext(r.GetContextRequest(name=first.name))
    assert fetched.values["tier"] == "gold"
    await client.registry.DeleteContext(r.DeleteContextRequest(name=first.name))
    listed = await client.registry.ListContexts(r.ListContextsRequest(parent=triage.name))
    assert [c.name for c in listed.contexts] == [second.name]

    # Contexts go with their agent.
    await client.registry.DeleteAgent(r.DeleteAgentRequest(name=triage.name))
    await expect_rpc_error(
        client.registry.GetContext(r.GetContextRequest(name=second.name)),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_add_handoff_past_the_limit_is_refused_and_the_agent_stays_updatable(new_user):
    client, _ = await new_user()
    source = await client.registry.CreateAgent(
        r.CreateAgentRequest(agent=agent("Source"), agent_id="source")
    )
    limit = 32  # Agent.handoffs max_items
    targets = await asyncio.gather(
        *(
            client.registry.CreateAgent(
                r.CreateAgentRequest(agent=agent(f"T{i}"), agent_id=f"t{i}")
            )
            for i in range(limit + 1)
        )
    )
    # Concurrently, as clients would: the limit must hold under racing additions too.
    results = await asyncio.gather(
        *(
            client.registry.AddHandoff(r.AddHandoffRequest(agent=source.name, target=t.name))
            for t in targets
        ),
        return_exceptions=True,
    )
    refused = [result for result in results if isinstance(result, grpc.aio.AioRpcError)]
    assert len(refused) == 1, refused
    assert refused[0].code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(refused[0]) == ["target"]
    current = await client.registry.GetAgent(r.GetAgentRequest(name=source.name))
    assert len(current.handoffs) == limit

    updated = await client.registry.UpdateAgent(
        r.UpdateAgentRequest(
            agent=r.Agent(name=source.name, instructions="Still editable."),
            update_mask=mask("instructions"),
        )
    )
    assert updated.instructions == "Still editable." and len(updated.handoffs) == limit


async def _race(attempt, delete) -> tuple[object, object]:
    return tuple(await asyncio.gather(attempt, delete, return_exceptions=True))


def _assert_one_consistent_outcome(referencing, deleting, *, field: str, reason: str) -> None:
    """Either the reference landed and the delete was refused, or the delete landed
    and the reference was refused: never both, never neither, never INTERNAL."""
    ref_failed = isinstance(referencing, grpc.aio.AioRpcError)
    del_failed = isinstance(deleting, grpc.aio.AioRpcError)
    assert ref_failed != del_failed, (referencing, deleting)
    if ref_failed:
        assert referencing.code() == grpc.StatusCode.INVALID_ARGUMENT, referencing
        error_info(referencing, reason)
        assert field_violations(referencing) == [field]
    else:
        assert deleting.code() == grpc.StatusCode.FAILED_PRECONDITION, deleting
        error_info(deleting, "AGENT_IN_USE")


@pytest.mark.parametrize("how", ["create", "update", "add_handoff", "agent_tool"])
async def test_delete_racing_a_reference_never_answers_internal(new_user, how):
    client, _ = await new_user()
    pairs = 20
    targets = await asyncio.gather(
        *(
            client.registry.CreateAgent(r.CreateAgentRequest(agent=agent(f"Target {i}")))
            for i in range(pairs)
        )
    )
    sources = await asyncio.gather(
        *(
            client.registry.CreateAgent(r.CreateAgentRequest(agent=agent(f"Source {i}")))
            for i in range(pairs)
        )
    )

    def referencing(source: r.Agent, target: r.Agent):
        if how == "create":
            return client.registry.CreateAgent(
                r.CreateAgentRequest(agent=agent("New", handoffs=[target.name]))
            )
        if how == "update":
            return client.registry.UpdateAgent(
                r.UpdateAgentRequest(
                    agent=r.Agent(name=source.name, handoffs=[target.name]),
                    update_mask=mask("handoffs"),
                )
            )
        if how == "add_handoff":
            return client.registry.AddHandoff(
                r.AddHandoffRequest(agent=source.name, target=target.name)
            )
        return client.registry.UpdateAgent(
            r.UpdateAgentRequest(
                agent=r.Agent(
                    name=source.name,
                    tools=[r.Tool(name="ask", agent=r.AgentTool(agent=target.name))],
                ),
                update_mask=mask("tools"),
            )
        )

    field, reason = {
        "create": ("agent.handoffs[0]", "HANDOFF_TARGET_NOT_FOUND"),
        "update": ("agent.handoffs[0]", "HANDOFF_TARGET_NOT_FOUND"),
        "add_handoff": ("target", "HANDOFF_TARGET_NOT_FOUND"),
        "agent_tool": ("agent.tools[0].agent.agent", "AGENT_NOT_FOUND"),
    }[how]
    outcomes = await asyncio.gather(
        *(
            _race(
                referencing(source, target),
                client.registry.DeleteAgent(r.DeleteAgentRequest(name=target.name)),
            )
            for source, target in zip(sources, targets, strict=True)
        )
    )
    for referenced, deleted in outcomes:
        _assert_one_consistent_outcome(referenced, deleted, field=field, reason=reason)


async def test_applying_the_example_file_is_idempotent(new_user):
    client, _ = await new_user()
    definitions = load_definitions(EXAMPLES)
    applied = await apply_definitions(client, definitions)
    assert [agent.name for agent in applied] == [
        "agents/billing",
        "agents/support",
        "agents/triage",
    ]
    triage = applied[2]
    assert list(triage.handoffs) == ["agents/billing", "agents/support"]
    assert applied[0].tools[0].function.code.source.startswith("# Canned invoices")

    again = await apply_definitions(client, load_definitions(EXAMPLES))
    assert again == applied  # nothing changed, so no new revision either

    definitions[0]["instructions"] = "Be brief."
    definitions[2]["handoffs"] = ["support"]
    changed = await apply_definitions(client, definitions)
    assert changed[0].instructions == "Be brief."
    assert changed[0].revision_id != applied[0].revision_id
    assert list(changed[2].handoffs) == ["agents/support"]
    assert changed[1] == applied[1]
