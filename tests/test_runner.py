"""Runs of registry agents through the running mesh, on a model server the test scripts.

Every user here has its own provider pointing at its own stand-in model server, so
each test scripts exactly what the model answers and reads exactly what it was sent,
over the real openai client and HTTP.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from aiohttp import web
from google.protobuf import field_mask_pb2, json_format, struct_pb2
from google.rpc import error_details_pb2
from rpc_helpers import details_of
from support import Users, create_agent, expect_rpc_error, running_mesh, use_model
from typer.testing import CliRunner

from agentmesh.cli import app
from agentmesh.client import Client
from agentmesh.gen.providers.v1 import providers_pb2 as p
from agentmesh.gen.registry.v1 import account_pb2 as a
from agentmesh.gen.registry.v1 import registry_pb2 as r
from agentmesh.gen.registry.v1 import workflows_pb2 as w
from agentmesh.gen.runner.v1 import runner_pb2 as rn
from agentmesh.mesh import Mesh
from agentmesh.model_server import ModelServer, Reply, ToolCall
from services.runner.models import MODEL_REPLY_BYTES

State = rn.Run.State
KEY = "sk-runner-test-" + "k" * 24


@pytest.fixture(scope="module")
async def runner_mesh(tmp_path_factory) -> AsyncIterator[Mesh]:
    data_dir = tmp_path_factory.mktemp("runner")
    async with running_mesh(
        data_dir, outbound_allow=["127.0.0.1"], approval_sweep_seconds=0.2
    ) as mesh:
        yield mesh


@pytest.fixture
async def users(runner_mesh) -> AsyncIterator[Users]:
    factory = Users(runner_mesh)
    yield factory
    await factory.close()


@dataclass
class Tenant:
    client: Client
    user: a.User
    model: ModelServer

    async def agent(self, agent_id: str, **fields) -> r.Agent:
        return await create_agent(self.client, agent_id, **fields)

    async def run(self, agent: str, text: str = "hello", **fields) -> rn.Run:
        return await self.client.runner.RunAgent(
            rn.RunAgentRequest(agent=agent, input=text, **fields)
        )

    async def balance(self) -> a.CreditBalance:
        return await self.client.accounts.GetCreditBalance(
            a.GetCreditBalanceRequest(name=f"{self.user.name}/creditBalance")
        )


@pytest.fixture
async def tenant(users) -> AsyncIterator[Tenant]:
    """A user with credits, and a default provider: its own scripted model server."""
    async with ModelServer(api_key=KEY) as model:
        client, user = await users.new(credits=1000)
        await use_model(client, model)
        yield Tenant(client, user, model)


def http_tool(name: str, url: str, **fields) -> r.Tool:
    return r.Tool(name=name, function=r.FunctionTool(http=r.HttpFunction(url=url)), **fields)


def struct(value: dict) -> struct_pb2.Struct:
    return json_format.ParseDict(value, struct_pb2.Struct())


async def eventually(check, within: float = 10.0):
    """What `check` returns once it returns something true (it reads the server's state)."""
    async with asyncio.timeout(within):
        while not (result := await check()):  # noqa: ASYNC110 - the state is the server's
            await asyncio.sleep(0.05)
    return result


# ---- plain runs ------------------------------------------------------------------


async def test_a_rotated_provider_key_is_used_and_its_old_client_let_go(runner_mesh, tenant):
    """`providers.changed` drops the user's credentials (theirs only); the next run
    uses the new key, and the runner keeps one client for the provider, not one a
    version."""
    models = runner_mesh.services["runner"]._models
    user = tenant.user.name
    agent = await tenant.agent("rotating")
    tenant.model.enqueue(Reply(text="on the first key"))
    assert (await tenant.run(agent.name)).state == State.STATE_SUCCEEDED
    assert models.api_keys(user) == [KEY]
    (provider,) = (await tenant.client.providers.ListProviders(p.ListProvidersRequest())).providers

    rotated = "sk-rotated-" + "r" * 24
    await tenant.client.providers.UpdateProvider(
        p.UpdateProviderRequest(
            provider=p.Provider(name=provider.name, api_key=rotated),
            update_mask=field_mask_pb2.FieldMask(paths=["api_key"]),
        )
    )
    tenant.model.api_key = rotated

    async def forgotten() -> bool:
        return models.api_keys(user) == []

    await eventually(forgotten)
    tenant.model.enqueue(Reply(text="on the second key"))
    run = await tenant.run(agent.name)
    assert run.state == State.STATE_SUCCEEDED, run.error
    assert tenant.model.requests[-1].headers["Authorization"] == f"Bearer {rotated}"
    assert models.api_keys(user) == [rotated]
    assert [name for name, _ in models._clients[user]] == [provider.name]


async def test_a_run_answers_and_records_usage_credits_and_conversation(tenant):
    agent = await tenant.agent("helper", instructions="Be brief.")
    tenant.model.enqueue(Reply(text="hi there"))
    run = await tenant.run(agent.name, "hello")
    assert run.state == State.STATE_SUCCEEDED, run.error
    assert (run.final_output, run.agent, run.last_agent) == ("hi there", agent.name, agent.name)
    assert run.usage.requests == 1 and run.usage.input_tokens > 0 and run.usage.output_tokens == 2
    assert run.credits >= 1 and run.agent_revision == agent.revision_id
    assert run.conversation.startswith("conversations/") and run.trace.startswith("traces/trace_")
    assert (await tenant.balance()).balance == 1000 - run.credits
    # The model got the agent's instructions and the user's text.
    body = tenant.model.requests[-1].body
    assert body["messages"][0]["content"] == "Be brief."
    assert body["messages"][-1] == {"role": "user", "content": "hello"}
    assert await tenant.client.runner.GetRun(rn.GetRunRequest(name=run.name)) == run
    listed = await tenant.client.runner.ListRuns(rn.ListRunsRequest(agent=agent.name))
    assert [listed_run.name for listed_run in listed.runs] == [run.name]


async def test_instructions_read_the_runs_context(tenant):
    agent = await tenant.agent(
        "concierge", instructions="Serve a {{ context.tier }} customer in {{ context.city }}."
    )

    async def instructions(**fields) -> str:
        tenant.model.enqueue(Reply(text="ok"))
        run = await tenant.run(agent.name, **fields)
        assert run.state == State.STATE_SUCCEEDED, run.error
        return tenant.model.requests[-1].body["messages"][0]["content"]

    async def context(is_default: bool, **values) -> r.Context:
        return await tenant.client.registry.CreateContext(
            r.CreateContextRequest(
                parent=agent.name, context=r.Context(values=values, is_default=is_default)
            )
        )

    # No context yet: the template names what is missing.
    run = await tenant.run(agent.name)
    assert run.state == State.STATE_FAILED and "no 'tier'" in run.error.message
    gold = await context(True, tier="gold", city="Rome")
    assert await instructions() == "Serve a gold customer in Rome."
    # A new default replaces the old one at once, for the next run.
    await context(True, tier="silver", city="Oslo")
    assert await instructions() == "Serve a silver customer in Oslo."
    # A named context; the request's values over either.
    assert await instructions(context=gold.name) == "Serve a gold customer in Rome."
    values = struct_pb2.Struct()
    values.update({"city": "Lima"})
    assert await instructions(context_values=values) == "Serve a silver customer in Lima."
    # A deleted context is gone for the next run too.
    await tenant.client.registry.DeleteContext(r.DeleteContextRequest(name=gold.name))
    await expect_rpc_error(tenant.run(agent.name, context=gold.name), grpc.StatusCode.NOT_FOUND)


async def test_streamed_events_come_in_order_and_deltas_make_the_answer(tenant):
    agent = await tenant.agent("streamer")
    words = " ".join(f"word{i}" for i in range(200))
    tenant.model.enqueue(Reply(text=words))
    events = [
        event
        async for event in tenant.client.runner.StreamRun(
            rn.RunAgentRequest(agent=agent.name, input="talk")
        )
    ]
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert [event.sequence for event in events] == list(range(1, len(events) + 1))
    deltas = [event.text_delta.delta for event in events if event.HasField("text_delta")]
    assert "".join(deltas) == words
    # Coalesced: far fewer messages than the server's 200 word-sized deltas.
    assert 1 < len(deltas) < 100
    assert kinds.index("item") > max(i for i, kind in enumerate(kinds) if kind == "text_delta")
    finished = events[-1].run_finished
    assert finished.state == State.STATE_SUCCEEDED and finished.final_output == words
    # A late watcher sees the same events.
    watched = [
        event
        async for event in tenant.client.runner.WatchRun(rn.WatchRunRequest(name=finished.name))
    ]
    assert watched == events


async def test_run_agent_asks_for_whole_replies_and_its_watchers_get_each_message_whole(tenant):
    """RunAgent's caller waits for the end: its models are not asked to stream, and
    the run is the same run a stream would make."""
    agent = await tenant.agent("whole", tools=[http_tool("lookup", "http://127.0.0.1:9/x")])
    words = " ".join(f"word{i}" for i in range(50))
    tenant.model.enqueue(Reply(tool_calls=[ToolCall("lookup", {"q": 1})]), Reply(text=words))
    run = await tenant.run(agent.name, "look it up")
    assert run.state == State.STATE_SUCCEEDED and run.final_output == words
    assert [bool(request.body.get("stream")) for request in tenant.model.requests] == [False] * 2
    assert run.usage.requests == 2 and run.usage.input_tokens > 0 and run.credits > 0
    kinds = [item.type for item in run.items]
    assert kinds == [
        rn.RunItem.TYPE_TOOL_CALL,
        rn.RunItem.TYPE_TOOL_OUTPUT,
        rn.RunItem.TYPE_MESSAGE,
    ]
    watched = [
        event async for event in tenant.client.runner.WatchRun(rn.WatchRunRequest(name=run.name))
    ]
    assert [event.text_delta.delta for event in watched if event.HasField("text_delta")] == [words]
    assert watched[-1].run_finished == run

    tenant.model.enqueue(Reply(text=words))
    streamed = tenant.client.runner.StreamRun(rn.RunAgentRequest(agent=agent.name, input="talk"))
    assert [event async for event in streamed][-1].run_finished.final_output == words
    assert tenant.model.requests[-1].body.get("stream") is True


async def test_a_client_that_hangs_up_cancels_its_run(tenant):
    agent = await tenant.agent("slow")
    tenant.model.enqueue(Reply(text="too late", delay_s=30))
    call = tenant.client.runner.StreamRun(rn.RunAgentRequest(agent=agent.name, input="x"))
    first = await call.read()
    assert first.HasField("run_started")
    call.cancel()
    run = await eventually(lambda: _ended(tenant.client, first.run_started.name), within=10)
    assert run.state == State.STATE_CANCELLED


ENDED = (State.STATE_SUCCEEDED, State.STATE_FAILED, State.STATE_CANCELLED, State.STATE_BLOCKED)


async def _ended(client: Client, name: str) -> rn.Run | None:
    run = await client.runner.GetRun(rn.GetRunRequest(name=name))
    return run if run.state in ENDED else None


async def test_a_retried_request_returns_the_first_run(tenant):
    agent = await tenant.agent("once")
    tenant.model.enqueue(Reply(text="first"))
    first = await tenant.run(agent.name, request_id="req-1")
    again = await tenant.run(agent.name, request_id="req-1")
    assert again == first
    assert len(tenant.model.requests) == 1


# ---- handoffs, agent tools, HTTP tools ---------------------------------------------------


async def test_triage_hands_off_to_billing_and_back(tenant):
    billing = await tenant.agent("billing", handoff_description="invoices")
    triage = await tenant.agent("triage", handoffs=[billing.name])
    await tenant.client.registry.AddHandoff(
        r.AddHandoffRequest(agent=billing.name, target=triage.name)
    )
    tenant.model.enqueue(
        Reply(tool_calls=[ToolCall("transfer_to_billing", {})]),
        Reply(tool_calls=[ToolCall("transfer_to_triage", {})]),
        Reply(text="back at triage"),
    )
    run = await tenant.run(triage.name, "my invoice")
    assert run.state == State.STATE_SUCCEEDED, run.error
    assert (run.final_output, run.last_agent) == ("back at triage", triage.name)
    handoffs = [item.text for item in run.items if item.type == rn.RunItem.TYPE_HANDOFF]
    assert handoffs == [billing.name, triage.name]


async def test_an_agent_used_as_a_tool(tenant):
    expert = await tenant.agent("expert", instructions="You are the expert.")
    main = await tenant.agent(
        "main", tools=[r.Tool(name="ask_expert", agent=r.AgentTool(agent=expert.name))]
    )
    tenant.model.enqueue(
        Reply(tool_calls=[ToolCall("ask_expert", {"input": "what is 2+2"})]),
        Reply(text="4, says the expert"),
        Reply(text="the expert says 4"),
    )
    run = await tenant.run(main.name, "ask the expert")
    assert run.state == State.STATE_SUCCEEDED, run.error
    outputs = [item.data for item in run.items if item.type == rn.RunItem.TYPE_TOOL_OUTPUT]
    assert outputs == ["4, says the expert"]
    # The expert ran on its own instructions and was asked the tool's input.
    expert_request = tenant.model.requests[1].body["messages"]
    assert expert_request[0]["content"] == "You are the expert."
    assert expert_request[-1]["content"] == "what is 2+2"


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[str, list]]:
    """An HTTP tool server: /echo echoes, /fail answers 500, /away redirects inside."""
    received: list = []

    async def echo(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({"echo": received[-1]})

    async def fail(request: web.Request) -> web.Response:
        return web.json_response({"error": "sk-should-not-leak"}, status=500)

    async def away(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://127.0.0.2:9/secret")

    app = web.Application()
    app.router.add_post("/echo", echo)
    app.router.add_post("/fail", fail)
    app.router.add_post("/away", away)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", received
    await runner.cleanup()


async def test_http_tools_post_their_arguments_and_failures_reach_the_model(tenant, endpoint):
    base, received = endpoint
    agent = await tenant.agent(
        "tooluser",
        tools=[
            http_tool("lookup", f"{base}/echo"),
            http_tool("broken", f"{base}/fail"),
            http_tool("moved", f"{base}/away"),
        ],
    )
    tenant.model.enqueue(
        Reply(
            tool_calls=[
                ToolCall("lookup", {"invoice": "A-1"}),
                ToolCall("broken", {}),
                ToolCall("moved", {}),
            ]
        ),
        Reply(text="done"),
    )
    run = await tenant.run(agent.name, "look it up")
    assert run.state == State.STATE_SUCCEEDED, run.error
    assert received == [{"invoice": "A-1"}]
    outputs = [item.data for item in run.items if item.type == rn.RunItem.TYPE_TOOL_OUTPUT]
    assert json.loads(outputs[0]) == {"echo": {"invoice": "A-1"}}
    assert outputs[1].startswith("error: broken failed") and "sk-should-not-leak" not in outputs[1]
    assert outputs[2].startswith("error: moved failed")  # a redirect is never followed


async def test_http_tools_keep_connections_alive_but_no_cookies_across_users(users):
    """The runner keeps its tool connections open; what one user's endpoint sets as a
    cookie never reaches another user's call (nor the same user's next one)."""
    seen: list[tuple[int, str | None]] = []

    async def remember(request: web.Request) -> web.Response:
        seen.append((request.transport.get_extra_info("peername")[1], request.cookies.get("sid")))
        reply = web.json_response({"ok": True})
        reply.set_cookie("sid", "set-for-whoever-called-first")
        return reply

    app = web.Application()
    app.router.add_post("/remember", remember)
    server = web.AppRunner(app, shutdown_timeout=1.0)
    await server.setup()
    await web.TCPSite(server, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{server.addresses[0][1]}/remember"
    try:
        for _ in range(2):  # two users, each running the tool
            async with ModelServer(api_key=KEY) as model:
                client, _ = await users.new(credits=1000)
                await use_model(client, model)
                agent = await create_agent(client, "caller", tools=[http_tool("remember", url)])
                model.enqueue(Reply(tool_calls=[ToolCall("remember", {})]), Reply(text="done"))
                run = await client.runner.RunAgent(rn.RunAgentRequest(agent=agent.name, input="x"))
                assert run.state == State.STATE_SUCCEEDED, run.error
    finally:
        await server.cleanup()
    assert len(seen) == 2 and seen[0][0] == seen[1][0]  # one connection, kept alive
    assert [cookie for _, cookie in seen] == [None, None]


async def test_a_file_search_tool_on_a_missing_store_answers_not_found(tenant):
    """file_search runs on the files service (tests/test_files_search_tool.py); a store
    that is not there is the tool's answer to the model, not the run's end."""
    agent = await tenant.agent(
        "searcher",
        tools=[
            r.Tool(
                name="docs",
                file_search=r.FileSearchTool(vector_stores=["vectorStores/v1"]),
            )
        ],
    )
    tenant.model.enqueue(
        Reply(tool_calls=[ToolCall("docs", {"query": "refunds"})]), Reply(text="none found")
    )
    run = await tenant.run(agent.name)
    assert run.state == State.STATE_SUCCEEDED and run.final_output == "none found"
    outputs = [m for m in tenant.model.requests[-1].body["messages"] if m["role"] == "tool"]
    assert "vectorStores/v1 was not found" in outputs[-1]["content"]


# ---- structured output, failures ------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "temp_c": {"type": "number"}},
    "required": ["city", "temp_c"],
    "additionalProperties": False,
}


async def test_structured_output_valid_and_broken(tenant):
    agent = await tenant.agent("weather", output_type=struct(SCHEMA))
    tenant.model.enqueue(Reply(text=json.dumps({"city": "Oslo", "temp_c": 3.5})))
    run = await tenant.run(agent.name)
    assert run.state == State.STATE_SUCCEEDED, run.error
    assert json_format.MessageToDict(run.structured_output) == {"city": "Oslo", "temp_c": 3.5}
    body = tenant.model.requests[-1].body
    assert set(body["response_format"]["json_schema"]["schema"]["required"]) == {"city", "temp_c"}

    tenant.model.enqueue(Reply(text=json.dumps({"city": "Oslo", "temp_c": "cold"})))
    broken = await tenant.run(agent.name)
    assert broken.state == State.STATE_FAILED
    assert broken.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "temp_c" in broken.error.message


async def test_max_turns_exceeded_fails_the_run(tenant):
    agent = await tenant.agent("looper", tools=[http_tool("spin", "http://127.0.0.1:9/x")])
    tenant.model.enqueue(*[Reply(tool_calls=[ToolCall("spin", {})])] * 3)
    run = await tenant.run(agent.name, max_turns=2)
    assert run.state == State.STATE_FAILED
    assert "MAX_TURNS_EXCEEDED" in run.error.SerializeToString().decode(errors="replace")


@pytest.mark.parametrize(
    ("status", "reason"), [(401, "PROVIDER_UNAUTHENTICATED"), (500, "PROVIDER_ERROR")]
)
async def test_a_provider_error_fails_the_run_with_its_reason_and_no_key(tenant, status, reason):
    agent = await tenant.agent(f"p{status}")
    tenant.model.enqueue(Reply(error_status=status))
    run = await tenant.run(agent.name)
    assert run.state == State.STATE_FAILED
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in run.error.details) and info.reason == reason
    assert KEY not in run.error.SerializeToString().decode(errors="replace")


async def test_a_provider_reply_past_the_cap_fails_the_run_and_the_runner_goes_on(tenant):
    """A user's provider is a user-given URL: what it sends is capped like any other
    reply, or one tenant's server could fill the runner every tenant shares."""
    agent = await tenant.agent("flood")
    tenant.model.enqueue(Reply(text="x" * MODEL_REPLY_BYTES), Reply(text="back to normal"))
    run = await tenant.run(agent.name)
    assert run.state == State.STATE_FAILED
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in run.error.details)
    assert info.reason == "PROVIDER_UNREACHABLE"
    assert f"over the {MODEL_REPLY_BYTES} byte limit" in run.error.message
    after = await tenant.run(agent.name)
    assert (after.state, after.final_output) == (State.STATE_SUCCEEDED, "back to normal")


# ---- conversations ------------------------------------------------------------------------


async def test_a_conversation_is_remembered_across_runs_and_deleted(tenant):
    agent = await tenant.agent("chatty")
    tenant.model.enqueue(Reply(text="nice to meet you, Ada"), Reply(text="you are Ada"))
    first = await tenant.run(agent.name, "I am Ada")
    second = await tenant.run(agent.name, "who am I?", conversation=first.conversation)
    assert second.conversation == first.conversation
    sent = [m["content"] for m in tenant.model.requests[-1].body["messages"]]
    assert sent == ["I am Ada", "nice to meet you, Ada", "who am I?"]

    runner = tenant.client.runner
    conversation = await runner.GetConversation(rn.GetConversationRequest(name=first.conversation))
    assert conversation.item_count == 4 and conversation.agent == agent.name
    assert conversation.active_run == ""
    items = await runner.ListConversationItems(
        rn.ListConversationItemsRequest(parent=first.conversation, page_size=3)
    )
    assert [item.text for item in items.items] == ["I am Ada", "nice to meet you, Ada", "who am I?"]
    assert [item.run for item in items.items] == [first.name, first.name, second.name]
    rest = await runner.ListConversationItems(
        rn.ListConversationItemsRequest(parent=first.conversation, page_token=items.next_page_token)
    )
    assert [item.text for item in rest.items] == ["you are Ada"] and not rest.next_page_token

    await runner.DeleteConversation(rn.DeleteConversationRequest(name=first.conversation))
    await expect_rpc_error(
        runner.GetConversation(rn.GetConversationRequest(name=first.conversation)),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_rpc_error(
        tenant.run(agent.name, "again", conversation=first.conversation), grpc.StatusCode.NOT_FOUND
    )


async def test_a_second_run_on_a_busy_conversation_is_rejected(tenant):
    agent = await tenant.agent("busy")
    tenant.model.enqueue(Reply(text="first"))
    first = await tenant.run(agent.name)
    tenant.model.enqueue(Reply(text="slow", delay_s=1.0))
    slow = asyncio.create_task(tenant.run(agent.name, conversation=first.conversation))
    await eventually(lambda: _has_active_run(tenant.client, first.conversation))
    error = await expect_rpc_error(
        tenant.run(agent.name, conversation=first.conversation), grpc.StatusCode.ABORTED
    )
    assert "CONVERSATION_BUSY" in str(error.trailing_metadata())
    assert (await slow).state == State.STATE_SUCCEEDED


async def _has_active_run(client: Client, conversation: str) -> bool:
    found = await client.runner.GetConversation(rn.GetConversationRequest(name=conversation))
    return bool(found.active_run)


# ---- approvals -----------------------------------------------------------------------------


async def _paused(
    tenant: Tenant, endpoint_url: str, agent_id: str = "payer"
) -> tuple[rn.Run, list]:
    agent = await tenant.agent(
        agent_id, tools=[http_tool("pay", endpoint_url, require_approval=True)]
    )
    tenant.model.enqueue(Reply(tool_calls=[ToolCall("pay", {"amount": 5})]))
    run = await tenant.run(agent.name, "pay it")
    assert run.state == State.STATE_AWAITING_APPROVAL, run.error
    approvals = await tenant.client.runner.ListApprovals(rn.ListApprovalsRequest(parent=run.name))
    return run, list(approvals.approvals)


async def test_an_approved_call_runs_and_the_run_completes(tenant, endpoint):
    base, received = endpoint
    run, (approval,) = await _paused(tenant, f"{base}/echo")
    assert (approval.tool_name, json.loads(approval.arguments)) == ("pay", {"amount": 5})
    assert approval.state == rn.Approval.STATE_PENDING and received == []
    tenant.model.enqueue(Reply(text="paid"))
    decided = await tenant.client.runner.ResolveApproval(
        rn.ResolveApprovalRequest(
            name=approval.name, decision=rn.ResolveApprovalRequest.DECISION_APPROVE
        )
    )
    assert decided.state == rn.Approval.STATE_APPROVED and decided.decided_by == tenant.user.name
    done = await eventually(lambda: _ended(tenant.client, run.name))
    assert (done.state, done.final_output) == (State.STATE_SUCCEEDED, "paid")
    assert received == [{"amount": 5}]


async def test_what_a_stream_tells_is_stored_before_the_client_hears_it(tenant, endpoint):
    """A client acting on approval_required or run_finished at once (resolving the
    approval, reading the run) finds them as the stream said."""
    base, _ = endpoint
    agent = await tenant.agent(
        "streamed-payer", tools=[http_tool("pay", f"{base}/echo", require_approval=True)]
    )
    tenant.model.enqueue(Reply(tool_calls=[ToolCall("pay", {"amount": 5})]))
    told, found = [], []
    request = rn.RunAgentRequest(agent=agent.name, input="pay it")
    async for event in tenant.client.runner.StreamRun(request):
        if event.HasField("approval_required"):
            told.append(event.approval_required.name)
            parent = event.approval_required.name.rsplit("/approvals/", 1)[0]
            listed = await tenant.client.runner.ListApprovals(
                rn.ListApprovalsRequest(parent=parent)
            )
            found.extend(approval.name for approval in listed.approvals)
        if event.HasField("run_finished"):
            stored = await tenant.client.runner.GetRun(
                rn.GetRunRequest(name=event.run_finished.name)
            )
            assert stored.state == event.run_finished.state == State.STATE_AWAITING_APPROVAL
    assert told and found == told


async def test_two_racing_decisions_apply_once(tenant, endpoint):
    base, received = endpoint
    run, (approval,) = await _paused(tenant, f"{base}/echo")
    tenant.model.enqueue(Reply(text="done"))
    Decision = rn.ResolveApprovalRequest
    results = await asyncio.gather(
        tenant.client.runner.ResolveApproval(
            Decision(name=approval.name, decision=Decision.DECISION_APPROVE)
        ),
        tenant.client.runner.ResolveApproval(
            Decision(name=approval.name, decision=Decision.DECISION_REJECT, reason="no")
        ),
        return_exceptions=True,
    )
    winners = [result for result in results if isinstance(result, rn.Approval)]
    losers = [result for result in results if isinstance(result, grpc.aio.AioRpcError)]
    assert len(winners) == 1 and len(losers) == 1
    assert losers[0].code() == grpc.StatusCode.FAILED_PRECONDITION
    done = await eventually(lambda: _ended(tenant.client, run.name))
    assert done.state == State.STATE_SUCCEEDED
    assert len(received) == (1 if winners[0].state == rn.Approval.STATE_APPROVED else 0)


async def test_a_rejected_call_tells_the_model_why(tenant, endpoint):
    base, received = endpoint
    run, (approval,) = await _paused(tenant, f"{base}/echo")
    tenant.model.enqueue(Reply(text="ok, not paying"))
    await tenant.client.runner.ResolveApproval(
        rn.ResolveApprovalRequest(
            name=approval.name,
            decision=rn.ResolveApprovalRequest.DECISION_REJECT,
            reason="over budget",
        )
    )
    done = await eventually(lambda: _ended(tenant.client, run.name))
    assert done.final_output == "ok, not paying" and received == []
    outputs = [m for m in tenant.model.requests[-1].body["messages"] if m["role"] == "tool"]
    assert outputs[-1]["content"] == "over budget"


async def test_a_paused_run_survives_every_runner_restarting(tmp_path, endpoint):
    base, received = endpoint
    settings = {"outbound_allow": ["127.0.0.1"]}
    async with ModelServer(api_key=KEY) as model:
        async with running_mesh(tmp_path, **settings) as mesh:
            users = Users(mesh)
            client, user = await users.new(credits=100)
            await use_model(client, model)
            tenant = Tenant(client, user, model)
            run, (approval,) = await _paused(tenant, f"{base}/echo")
            key = (
                await client.accounts.CreateApiKey(a.CreateApiKeyRequest(parent=user.name))
            ).secret
            await users.close()
        # Every process is gone; a new one on the same data resumes the run.
        async with running_mesh(tmp_path, **settings) as mesh, Client(mesh.address, key) as client:
            model.enqueue(Reply(text="paid after restart"))
            await client.runner.ResolveApproval(
                rn.ResolveApprovalRequest(
                    name=approval.name, decision=rn.ResolveApprovalRequest.DECISION_APPROVE
                )
            )
            done = await eventually(lambda: _ended(client, run.name))
    assert (done.state, done.final_output) == (State.STATE_SUCCEEDED, "paid after restart")
    assert received == [{"amount": 5}]


async def test_an_expired_approval_rejects_the_call_with_its_reason(tmp_path, endpoint):
    base, received = endpoint
    async with (
        ModelServer(api_key=KEY) as model,
        running_mesh(
            tmp_path,
            outbound_allow=["127.0.0.1"],
            approval_ttl_seconds=0.5,
            approval_sweep_seconds=0.1,
        ) as mesh,
    ):
        users = Users(mesh)
        client, user = await users.new(credits=100)
        await use_model(client, model)
        tenant = Tenant(client, user, model)
        run, (approval,) = await _paused(tenant, f"{base}/echo")
        model.enqueue(Reply(text="it expired"))
        done = await eventually(lambda: _ended(client, run.name))
        expired = (
            await client.runner.ListApprovals(rn.ListApprovalsRequest(parent=run.name))
        ).approvals[0]
        late = await expect_rpc_error(
            client.runner.ResolveApproval(
                rn.ResolveApprovalRequest(
                    name=approval.name, decision=rn.ResolveApprovalRequest.DECISION_APPROVE
                )
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        await users.close()
    assert expired.state == rn.Approval.STATE_EXPIRED and "expired" in expired.reason
    assert (done.state, done.final_output) == (State.STATE_SUCCEEDED, "it expired")
    assert received == [] and "EXPIRED" in late.details()


async def test_a_paused_run_keeps_its_revision_while_the_agent_changes(tenant, endpoint):
    base, _ = endpoint
    run, (approval,) = await _paused(tenant, f"{base}/echo")
    agent = await tenant.client.registry.GetAgent(r.GetAgentRequest(name=run.agent))
    await tenant.client.registry.UpdateAgent(
        r.UpdateAgentRequest(
            agent=r.Agent(name=agent.name, instructions="NEW instructions"),
            update_mask=field_mask_pb2.FieldMask(paths=["instructions"]),
        )
    )
    tenant.model.enqueue(Reply(text="done"))
    await tenant.client.runner.ResolveApproval(
        rn.ResolveApprovalRequest(
            name=approval.name, decision=rn.ResolveApprovalRequest.DECISION_APPROVE
        )
    )
    done = await eventually(lambda: _ended(tenant.client, run.name))
    assert done.agent_revision == run.agent_revision == agent.revision_id
    system = tenant.model.requests[-1].body["messages"][0]
    assert system.get("role") != "system" or "NEW" not in system["content"]
    # A new run takes the new revision.
    tenant.model.enqueue(Reply(text="fresh"))
    fresh = await tenant.run(run.agent)
    assert fresh.agent_revision != run.agent_revision
    assert tenant.model.requests[-1].body["messages"][0]["content"] == "NEW instructions"


# ---- credits -------------------------------------------------------------------------------


async def test_no_credits_is_resource_exhausted_before_any_model_call(users):
    async with ModelServer(api_key=KEY) as model:
        client, user = await users.new(credits=0)
        await use_model(client, model)
        agent = await client.registry.CreateAgent(
            r.CreateAgentRequest(agent=r.Agent(display_name="x"), agent_id="poor")
        )
        error = await expect_rpc_error(
            client.runner.RunAgent(rn.RunAgentRequest(agent=agent.name, input="hi")),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        assert details_of(error, error_details_pb2.QuotaFailure)
        assert model.requests == []


async def test_a_run_that_reaches_its_cap_fails_and_is_charged_the_cap(tenant):
    agent = await tenant.agent("capped", tools=[http_tool("spin", "http://127.0.0.1:9/x")])
    tenant.model.enqueue(*[Reply(tool_calls=[ToolCall("spin", {})])] * 5)
    run = await tenant.run(agent.name, max_credits=1)
    assert run.state == State.STATE_FAILED
    assert run.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert run.credits == 1 and run.max_credits == 1
    assert (await tenant.balance()).balance == 999


async def test_the_agent_cap_holds_and_a_request_may_only_lower_it(tenant):
    agent = await tenant.agent("agentcap", max_credits_per_run=5)
    tenant.model.enqueue(Reply(text="a"), Reply(text="b"))
    assert (await tenant.run(agent.name, max_credits=50)).max_credits == 5
    assert (await tenant.run(agent.name, max_credits=2)).max_credits == 2


async def test_200_racing_runs_never_overspend(users):
    async with ModelServer(api_key=KEY) as model:
        client, user = await users.new(credits=50)
        await use_model(client, model)
        agent = await client.registry.CreateAgent(
            r.CreateAgentRequest(agent=r.Agent(display_name="x"), agent_id="racer")
        )
        results = await asyncio.gather(
            *(
                client.runner.RunAgent(rn.RunAgentRequest(agent=agent.name, input="go"))
                for _ in range(200)
            ),
            return_exceptions=True,
        )
        runs = [result for result in results if isinstance(result, rn.Run)]
        refused = [result for result in results if isinstance(result, grpc.aio.AioRpcError)]
        assert all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in refused)
        assert all(run.state == State.STATE_SUCCEEDED for run in runs)
        balance = await client.accounts.GetCreditBalance(
            a.GetCreditBalanceRequest(name=f"{user.name}/creditBalance")
        )
    assert runs and balance.reserved == 0
    assert balance.balance == 50 - sum(run.credits for run in runs) >= 0


# ---- tenancy -------------------------------------------------------------------------------


async def test_another_users_runs_conversations_and_approvals_are_not_found(
    tenant, users, endpoint
):
    base, _ = endpoint
    run, (approval,) = await _paused(tenant, f"{base}/echo")
    stranger, _ = await users.new(credits=100)
    runner = stranger.runner
    NOT_FOUND = grpc.StatusCode.NOT_FOUND
    await expect_rpc_error(runner.GetRun(rn.GetRunRequest(name=run.name)), NOT_FOUND)
    await expect_rpc_error(runner.CancelRun(rn.CancelRunRequest(name=run.name)), NOT_FOUND)
    await expect_rpc_error(
        runner.ListApprovals(rn.ListApprovalsRequest(parent=run.name)), NOT_FOUND
    )
    await expect_rpc_error(
        runner.ResolveApproval(
            rn.ResolveApprovalRequest(
                name=approval.name, decision=rn.ResolveApprovalRequest.DECISION_APPROVE
            )
        ),
        NOT_FOUND,
    )
    await expect_rpc_error(
        runner.GetConversation(rn.GetConversationRequest(name=run.conversation)), NOT_FOUND
    )
    await expect_rpc_error(
        runner.DeleteConversation(rn.DeleteConversationRequest(name=run.conversation)), NOT_FOUND
    )
    await expect_rpc_error(
        runner.ListConversationItems(rn.ListConversationItemsRequest(parent=run.conversation)),
        NOT_FOUND,
    )
    await expect_rpc_error(
        runner.RunAgent(rn.RunAgentRequest(agent=run.agent, input="mine now")), NOT_FOUND
    )
    await expect_rpc_error(
        runner.RunAgent(
            rn.RunAgentRequest(agent="agents/mine", input="x", conversation=run.conversation)
        ),
        NOT_FOUND,
    )
    assert not (await runner.ListRuns(rn.ListRunsRequest())).runs
    assert not (await runner.ListConversations(rn.ListConversationsRequest())).conversations
    # And the owner's paused run is untouched.
    still = await tenant.client.runner.GetRun(rn.GetRunRequest(name=run.name))
    assert still.state == State.STATE_AWAITING_APPROVAL


# ---- compaction and retention ------------------------------------------------------------

# Seconds after which an idle conversation, and an ended run's events, are deleted.
RETENTION_SECONDS = 2.0


@pytest.fixture(scope="module")
async def bounded_mesh(tmp_path_factory) -> AsyncIterator[Mesh]:
    """A mesh that compacts conversations past 200 tokens and keeps them for seconds."""
    async with running_mesh(
        tmp_path_factory.mktemp("bounded"),
        outbound_allow=["127.0.0.1"],
        conversation_token_budget=200,
        conversation_retention_days=RETENTION_SECONDS / 86400,
        run_retention_days=RETENTION_SECONDS / 86400,
        retention_sweep_seconds=0.2,
    ) as mesh:
        yield mesh


@pytest.fixture
async def bounded(bounded_mesh) -> AsyncIterator[Tenant]:
    users = Users(bounded_mesh)
    async with ModelServer(api_key=KEY) as model:
        client, user = await users.new(credits=1000)
        await use_model(client, model)
        yield Tenant(client, user, model)
    await users.close()


def _words(label: str, count: int = 60) -> str:
    return f"{label}: " + " ".join(f"{label}-word{i}" for i in range(count))


async def test_a_long_conversation_is_compacted_through_the_agents_model(bounded):
    agent = await bounded.agent("long", instructions="Be helpful.")
    bounded.model.enqueue(
        Reply(text=_words("answer one")),
        Reply(text=_words("answer two")),
        Reply(text="The user told fact one; the assistant answered it."),
        Reply(text="three noted"),
    )
    first = await bounded.run(agent.name, _words("fact one"))
    conversation = first.conversation
    second = await bounded.run(agent.name, _words("fact two"), conversation=conversation)
    assert len(bounded.model.requests) == 2  # under budget so far: no compaction
    third = await bounded.run(agent.name, "fact three", conversation=conversation)
    assert third.state == State.STATE_SUCCEEDED, third.error

    # One extra model call, billed to the third run, summarised the oldest turn.
    requests = [request.body["messages"] for request in bounded.model.requests]
    assert len(requests) == 4
    summary_request = requests[2]
    assert "fact one-word59" in summary_request[-1]["content"]
    assert "fact two" not in summary_request[-1]["content"]
    assert third.usage.requests == 2 and second.usage.requests == 1
    assert third.credits > 0

    # The model's input shrank: the summary in place of the oldest turn.
    sent = [m["content"] for m in requests[3]]
    assert sent[0] == "Be helpful."
    assert sent[1].startswith("Summary of the earlier conversation:\nThe user told fact one")
    assert sent[2:] == [_words("fact two"), _words("answer two"), "fact three"]
    # Smaller than the second run's input, though the conversation grew by a turn since.
    assert len(json.dumps(requests[3])) < len(json.dumps(requests[1]))
    assert "fact one-word0" not in json.dumps(requests[3])

    runner = bounded.client.runner
    found = await runner.GetConversation(rn.GetConversationRequest(name=conversation))
    assert found.HasField("compact_time") and found.item_count == 5
    items = (
        await runner.ListConversationItems(rn.ListConversationItemsRequest(parent=conversation))
    ).items
    assert (items[0].role, items[0].run) == ("system", first.name)
    assert items[0].text.startswith("Summary of the earlier conversation:")
    assert [item.run for item in items[1:]] == [second.name] * 2 + [third.name] * 2


async def test_idle_conversations_and_old_run_events_are_deleted(bounded, endpoint):
    base, _ = endpoint
    agent = await bounded.agent("forgetful")
    bounded.model.enqueue(Reply(text="soon forgotten"), Reply(text="a step, soon forgotten"))
    run = await bounded.run(agent.name, "remember me?")
    flow = await bounded.client.workflows.CreateWorkflow(
        w.CreateWorkflowRequest(
            workflow=w.Workflow(
                display_name="forgetful flow",
                steps=[w.WorkflowStep(id="only", agent=w.AgentStep(agent=agent.name))],
            )
        )
    )
    workflow_run = await bounded.client.runner.RunWorkflow(
        rn.RunWorkflowRequest(workflow=flow.name, input="remember me too?")
    )
    assert workflow_run.state == State.STATE_SUCCEEDED, workflow_run.error
    paused, _ = await _paused(bounded, f"{base}/echo", agent_id="holder")
    runner = bounded.client.runner

    async def forgotten() -> bool:
        try:
            await runner.GetConversation(rn.GetConversationRequest(name=run.conversation))
        except grpc.aio.AioRpcError as error:
            return error.code() == grpc.StatusCode.NOT_FOUND
        return False

    await eventually(forgotten, within=RETENTION_SECONDS + 5)
    # The run itself stays (what it cost, how it ended); its event log is gone.
    kept = await runner.GetRun(rn.GetRunRequest(name=run.name))
    assert (kept.state, kept.final_output) == (State.STATE_SUCCEEDED, "soon forgotten")
    assert [event async for event in runner.WatchRun(rn.WatchRunRequest(name=run.name))] == []
    # So for a workflow run: it stays, with its steps; its event log is gone.
    kept_flow = await runner.GetWorkflowRun(rn.GetWorkflowRunRequest(name=workflow_run.name))
    assert kept_flow.state == State.STATE_SUCCEEDED
    assert [s.step for s in kept_flow.steps] == ["only"]

    async def flow_events_forgotten() -> bool:
        watch = runner.WatchWorkflowRun(rn.WatchWorkflowRunRequest(name=workflow_run.name))
        return [event async for event in watch] == []

    await eventually(flow_events_forgotten, within=5)
    # A conversation a paused run holds is kept, however old.
    held = await runner.GetConversation(rn.GetConversationRequest(name=paused.conversation))
    assert held.active_run == paused.name


# ---- the command line ---------------------------------------------------------------------


async def test_the_cli_prints_users_text_as_text_and_says_what_it_cannot_use(
    tenant, users, runner_mesh, tmp_path
):
    """What users and models wrote is printed, never read as rich markup ("[/x]"
    raised, "[a-z]" vanished); a failed run's watch exits 1; a key or file the command
    cannot use is one line and exit 1, never a traceback."""
    agent = await tenant.agent("marked")
    key = await users.admin.accounts.CreateApiKey(a.CreateApiKeyRequest(parent=tenant.user.name))
    where = ["--target", runner_mesh.address]

    def cli(*args: str, key: str | None = key.secret):
        with_key = ["--key", key] if key is not None else []
        return CliRunner().invoke(app, [*args, *where, *with_key], env={"COLUMNS": "60"})

    tenant.model.enqueue(Reply(text="[/x] matches ^[a-z]+$"), Reply(error_status=500))
    ran = await asyncio.to_thread(cli, "run", "marked", "[/x] hello")
    assert ran.exit_code == 0, ran.output
    assert "[/x] matches ^[a-z]+$" in ran.output
    failed = await tenant.run(agent.name)
    listed = await asyncio.to_thread(cli, "runs", "list")
    assert listed.exit_code == 0, listed.output  # its OUTPUT column holds "[/x]"
    assert failed.name in listed.output  # whole, at 60 columns
    watched = await asyncio.to_thread(cli, "runs", "watch", failed.name)
    assert watched.exit_code == 1 and "FAILED" in watched.output

    (tmp_path / "agents.json").write_text('{"agents": [{"id": "x", "colour": "blue"}]}')
    (tmp_path / "broken.json").write_text("{not json")
    refusals = {
        ("agents", "list", "--key-file", str(tmp_path / "none")): "cannot read the API key",
        ("agents", "apply", str(tmp_path / "agents.json")): "agent 'x'",
        ("agents", "apply", str(tmp_path / "broken.json")): "is not JSON text",
        ("agents", "apply", str(tmp_path)): "cannot read",
    }
    for args, said in refusals.items():
        answer = await asyncio.to_thread(
            cli, *args, key=None if "--key-file" in args else key.secret
        )
        assert answer.exit_code == 1 and said in answer.output, (args, answer.output)
        assert isinstance(answer.exception, SystemExit), answer.exception  # no traceback
    not_ascii = await asyncio.to_thread(cli, "agents", "list", key="schlüssel")
    assert not_ascii.exit_code == 1 and "printable ASCII" in not_ascii.output
    no_pair = await asyncio.to_thread(cli, "run", "marked", "hi", "--context", "noequals")
    assert no_pair.exit_code == 2 and "is not key=value" in no_pair.output
