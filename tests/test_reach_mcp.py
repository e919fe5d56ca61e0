"""The mesh's MCP server (/mcp, streamable HTTP), through the `mcp` package's own client:
a key's agents are its tools, calling one runs the agent for that key's user on the
user's scripted model, and another user's key neither sees nor runs them. Last, the
loop: an agentmesh agent whose MCP tool is this server calls another agent through it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2
from mcp import ClientSession
from mcp.client.client import Client as McpClient
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS, PaginatedRequestParams
from support import Users, create_agent, service_token, use_model

from agentmesh.client import Client
from agentmesh.gen.guardrails.v1 import guardrails_pb2 as g
from agentmesh.gen.registry.v1 import account_pb2 as a
from agentmesh.gen.registry.v1 import registry_pb2 as r
from agentmesh.gen.runner.v1 import runner_pb2 as rn
from agentmesh.mesh import Mesh
from agentmesh.model_server import ModelServer, Reply, ToolCall
from services.reach.mcp_server import CONVERSATION_KEY, RUN_KEY, TOOL_INPUT_SCHEMA

State = rn.Run.State
KEY = "sk-reach-mcp-test-" + "k" * 24  # the scripted model's API key


@pytest.fixture(scope="module")
async def users(sqlite_mesh: Mesh) -> AsyncIterator[Users]:
    # That mesh allows 127.0.0.1 outbound: the outer agent's MCP tool points at it.
    factory = Users(sqlite_mesh)
    yield factory
    await factory.close()


@dataclass
class Tenant:
    client: Client
    key: str
    model: ModelServer
    mcp_url: str

    async def agent(self, agent_id: str, **fields) -> r.Agent:
        return await create_agent(self.client, agent_id, **fields)

    @contextlib.asynccontextmanager
    async def mcp(self) -> AsyncIterator[ClientSession]:
        """An MCP client session on the mesh, with this tenant's key as bearer token."""
        headers = {"authorization": f"Bearer {self.key}"}
        async with (
            create_mcp_http_client(headers=headers) as http,
            streamable_http_client(self.mcp_url, http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            yield session


@contextlib.asynccontextmanager
async def new_tenant(users: Users) -> AsyncIterator[Tenant]:
    """A user with credits, an API key, and their own scripted model as default provider."""
    admin = users.admin.accounts
    user = await admin.CreateUser(a.CreateUserRequest(user=a.User(display_name="tenant")))
    key = (await admin.CreateApiKey(a.CreateApiKeyRequest(parent=user.name))).secret
    await admin.GrantCredits(a.GrantCreditsRequest(user=user.name, amount=1000))
    async with ModelServer(api_key=KEY) as model, Client(users.mesh.address, key) as client:
        await use_model(client, model)
        yield Tenant(client, key, model, f"{users.mesh.http_url}/mcp")


@pytest.fixture
async def tenant(users) -> AsyncIterator[Tenant]:
    async with new_tenant(users) as made:
        yield made


@pytest.fixture
async def other(users) -> AsyncIterator[Tenant]:
    async with new_tenant(users) as made:
        yield made


def text_of(result) -> str:
    return "\n".join(item.text for item in result.content)


# ---- listing --------------------------------------------------------------------------------


async def test_the_tools_are_the_callers_agents_and_follow_the_registry(tenant, other):
    await tenant.agent("helper", handoff_description="Answers questions about invoices.")
    await other.agent("not-yours")
    async with tenant.mcp() as session:
        (tool,) = (await session.list_tools()).tools
        assert (tool.name, tool.title) == ("helper", "helper")
        assert tool.description == "Answers questions about invoices."
        assert tool.input_schema == TOOL_INPUT_SCHEMA and tool.output_schema is None
        # An agent made while the session is open is a tool on the next listing.
        await tenant.agent("newcomer")
        listed = await session.list_tools()
        assert sorted(tool.name for tool in listed.tools) == ["helper", "newcomer"]
        assert listed.next_cursor is None
        # A cursor the registry did not hand out is the client's error, in MCP's shape.
        with pytest.raises(MCPError) as refused:
            await session.list_tools(params=PaginatedRequestParams(cursor="not-a-cursor"))
        assert refused.value.code == INVALID_PARAMS


# ---- calling --------------------------------------------------------------------------------


async def test_a_call_runs_the_agent_streams_progress_and_continues_its_conversation(tenant):
    await tenant.agent("helper", instructions="Be brief.")
    answer = " ".join(f"word{i}" for i in range(60))
    tenant.model.enqueue(Reply(text=answer), Reply(text="you are Ada"))
    progress: list[str] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(message or "")

    async with tenant.mcp() as session:
        first = await session.call_tool(
            "helper", {"input": "I am Ada"}, progress_callback=on_progress
        )
        assert not first.is_error, first.content
        assert first.content[0].text == answer
        assert "".join(progress) == answer  # the answer as it was written
        conversation = first.meta[CONVERSATION_KEY]
        assert conversation.startswith("conversations/") and conversation in first.content[1].text

        second = await session.call_tool(
            "helper", {"input": "who am I?", "conversation": conversation}
        )
    assert (second.is_error, second.content[0].text) == (False, "you are Ada")
    assert second.meta[CONVERSATION_KEY] == conversation
    # The model saw the earlier turn, and both runs are the user's, on the one conversation.
    sent = [m["content"] for m in tenant.model.requests[-1].body["messages"]]
    assert sent == ["Be brief.", "I am Ada", answer, "who am I?"]
    run = await tenant.client.runner.GetRun(rn.GetRunRequest(name=second.meta[RUN_KEY]))
    assert (run.state, run.conversation, run.input) == (
        State.STATE_SUCCEEDED,
        conversation,
        "who am I?",
    )


async def test_a_structured_answer_is_structured_content_too(tenant):
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    await tenant.agent("typed", output_type=json_format.ParseDict(schema, struct_pb2.Struct()))
    tenant.model.enqueue(Reply(text='{"answer": "42"}'))
    async with tenant.mcp() as session:
        (tool,) = (await session.list_tools()).tools
        assert tool.output_schema == schema
        result = await session.call_tool("typed", {"input": "the answer?"})
    assert not result.is_error, result.content
    assert result.structured_content == {"answer": "42"}
    assert json.loads(result.content[0].text) == {"answer": "42"}


async def test_a_failed_run_is_a_tool_error_with_its_reason(tenant):
    await tenant.agent("fragile")
    tenant.model.enqueue(Reply(error_status=500))
    async with tenant.mcp() as session:
        result = await session.call_tool("fragile", {"input": "hi"})
    assert result.is_error and text_of(result).startswith("the run failed: ")
    assert KEY not in text_of(result)
    run = await tenant.client.runner.GetRun(rn.GetRunRequest(name=result.meta[RUN_KEY]))
    info = error_details_pb2.ErrorInfo()
    assert run.state == State.STATE_FAILED
    assert any(d.Unpack(info) for d in run.error.details) and info.reason == "PROVIDER_ERROR"
    assert run.error.message in text_of(result)


async def test_a_blocked_run_is_a_tool_error_with_the_guardrails_message(tenant):
    no_secrets = g.Guardrail(
        name="no-secrets",
        override_message="Please do not paste keys into the chat.",
        builtin=g.BuiltinCheck(secrets=g.SecretsDetector()),
    )
    await tenant.agent("guarded", input_guardrails=[no_secrets])
    async with tenant.mcp() as session:
        result = await session.call_tool(
            "guarded", {"input": "my key is sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"}
        )
    assert result.is_error
    assert text_of(result) == "a guardrail blocked the run: Please do not paste keys into the chat."
    assert tenant.model.requests == []


async def test_a_run_that_waits_for_approval_says_which_run_and_approval(tenant):
    pay = r.Tool(
        name="pay",
        require_approval=True,
        function=r.FunctionTool(http=r.HttpFunction(url="http://127.0.0.1:9/pay")),
    )
    await tenant.agent("payer", tools=[pay])
    tenant.model.enqueue(Reply(tool_calls=[ToolCall("pay", {"amount": 5})]))
    async with tenant.mcp() as session:
        result = await session.call_tool("payer", {"input": "pay it"})
    assert result.is_error
    run_name = result.meta[RUN_KEY]
    (approval,) = (
        await tenant.client.runner.ListApprovals(rn.ListApprovalsRequest(parent=run_name))
    ).approvals
    assert f"the run {run_name} awaits approval of pay ({approval.name})" in text_of(result)
    run = await tenant.client.runner.GetRun(rn.GetRunRequest(name=run_name))
    assert run.state == State.STATE_AWAITING_APPROVAL


async def test_bad_calls_are_tool_errors_and_run_nothing(tenant):
    await tenant.agent("helper")
    async with tenant.mcp() as session:
        missing = await session.call_tool("ghost", {"input": "hi"})
        misnamed = await session.call_tool("agents/helper@1", {"input": "hi"})
        no_input = await session.call_tool("helper", {})
        bad_conversation = await session.call_tool(
            "helper", {"input": "hi", "conversation": "conversations/nope"}
        )
    assert (missing.is_error, text_of(missing)) == (True, "agents/ghost not found")
    assert (misnamed.is_error, text_of(misnamed)) == (True, "no tool named 'agents/helper@1'")
    assert no_input.is_error and "`input`" in text_of(no_input)
    assert bad_conversation.is_error and "conversations/nope" in text_of(bad_conversation)
    assert tenant.model.requests == []


async def test_a_client_on_the_2026_protocol_lists_and_calls_too(tenant):
    # mcp's high-level Client probes server/discover and speaks the stateless
    # 2026-07-28 protocol when the server does, as this one does.
    await tenant.agent("helper")
    tenant.model.enqueue(Reply(text="hello from 2026"))
    headers = {"authorization": f"Bearer {tenant.key}"}
    async with (
        create_mcp_http_client(headers=headers) as http,
        McpClient(streamable_http_client(tenant.mcp_url, http_client=http)) as client,
    ):
        assert client.session.protocol_version == "2026-07-28"
        assert [tool.name for tool in (await client.list_tools()).tools] == ["helper"]
        result = await client.call_tool("helper", {"input": "hi"})
    assert not result.is_error and result.meta is not None
    conversation = result.meta[CONVERSATION_KEY]
    assert text_of(result) == f"hello from 2026\nconversation: {conversation}"


# ---- tenancy and keys -----------------------------------------------------------------------


async def test_another_users_key_neither_sees_nor_runs_the_agents(tenant, other):
    await tenant.agent("private")
    async with other.mcp() as session:
        assert (await session.list_tools()).tools == []
        theirs = await session.call_tool("private", {"input": "hi"})
        missing = await session.call_tool("absent", {"input": "hi"})
    # Exactly what a missing agent answers.
    assert theirs.is_error and text_of(theirs) == text_of(missing).replace("absent", "private")
    assert tenant.model.requests == [] and other.model.requests == []


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        ("Bearer sk-not-a-key", 401),
        ("Basic dXNlcjpwYXNz", 401),
        ("service", 403),  # the service token is for gRPC peers, never over HTTP
    ],
)
async def test_a_request_without_a_valid_api_key_is_refused_before_mcp(
    sqlite_mesh, tenant, authorization, status
):
    if authorization == "service":
        authorization = f"Bearer {service_token(sqlite_mesh)}"
    headers = {"accept": "application/json, text/event-stream"}
    if authorization:
        headers["authorization"] = authorization
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "probe", "version": "1"},
        },
    }
    async with httpx.AsyncClient() as http:
        answer = await http.post(tenant.mcp_url, json=initialize, headers=headers)
    assert answer.status_code == status
    if status == 401:
        assert answer.headers["www-authenticate"].startswith("Bearer ")
    assert answer.json()["error"] == "invalid_token" and answer.json()["error_description"]
    assert service_token(sqlite_mesh) not in answer.text


# ---- the loop: an agentmesh agent calls another through this server --------------------------


def mcp_tool(url: str, authorization: str = "") -> r.Tool:
    # Only the inner agent: the outer one is a tool of this user's server too.
    return r.Tool(
        name="agents", mcp=r.McpTool(url=url, allowed_tools=["inner"], authorization=authorization)
    )


async def test_an_agent_calls_another_through_the_mcp_server(tenant):
    await tenant.agent("inner", handoff_description="Knows the answer.")
    # The tool sends the user's key, as any MCP client of this server does.
    tool = mcp_tool(tenant.mcp_url, authorization=f"Bearer {tenant.key}")
    outer = await tenant.agent("outer", tools=[tool])
    # One model serves both agents, in the order they ask it: outer, inner, outer.
    tenant.model.enqueue(
        Reply(tool_calls=[ToolCall("inner", {"input": "what is six times seven?"})]),
        Reply(text="42, says inner"),
        Reply(text="The inner agent answered 42."),
    )
    run = await tenant.client.runner.RunAgent(rn.RunAgentRequest(agent=outer.name, input="ask"))
    assert run.state == State.STATE_SUCCEEDED, run.error
    assert run.final_output == "The inner agent answered 42."
    # The inner agent was offered by its agent's description and ran on what the
    # outer model asked; its answer reached the outer model as the tool's output.
    offered = tenant.model.requests[0].body["tools"]
    assert [(t["function"]["name"], t["function"]["description"]) for t in offered] == [
        ("inner", "Knows the answer.")
    ]
    assert tenant.model.requests[1].body["messages"][-1]["content"] == "what is six times seven?"
    (inner,) = (await tenant.client.runner.ListRuns(rn.ListRunsRequest(agent="agents/inner"))).runs
    assert inner.final_output == "42, says inner"
    tool_message = tenant.model.requests[2].body["messages"][-1]
    assert tool_message["role"] == "tool"
    assert tool_message["content"] == [
        {"type": "text", "text": "42, says inner"},
        {"type": "text", "text": f"conversation: {inner.conversation}"},
    ]


async def test_an_mcp_tool_without_the_key_cannot_connect(tenant):
    # Pointed at /mcp itself without the key to send: the server refuses it, and
    # the run fails naming the tool before any model is called.
    outer = await tenant.agent("keyless", tools=[mcp_tool(tenant.mcp_url)])
    run = await tenant.client.runner.RunAgent(rn.RunAgentRequest(agent=outer.name, input="ask"))
    assert run.state == State.STATE_FAILED
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in run.error.details)
    assert info.reason == "MCP_SERVER_UNREACHABLE"
    assert tenant.model.requests == []
