# ruff: noqa: F811 - the runner's fixtures, imported, are redefined as test parameters
"""MCP tools in runs, against a real MCP server (the `mcp` package, streamable HTTP)
the test starts: its tools are called through the SDK's MCP client, only the allowed
ones are offered, approval-required ones pause the run, and a URL that leads inside
the network is never connected to."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import uvicorn
from google.rpc import error_details_pb2
from mcp.server.mcpserver import MCPServer
from test_runner import (  # noqa: F401 - fixtures
    Tenant,
    _ended,
    eventually,
    runner_mesh,
    tenant,
    users,
)

from agentmesh import outbound
from agentmesh.gen.registry.v1 import registry_pb2 as r
from agentmesh.gen.runner.v1 import runner_pb2 as rn
from agentmesh.model_server import Reply, ToolCall
from services.runner.tools import MCP_REPLY_BYTES

State = rn.Run.State


@dataclass
class Calls:
    """What the MCP server's tools were called with, in order."""

    made: list[tuple[str, dict]] = field(default_factory=list)


def _mcp_app(calls: Calls) -> MCPServer:
    server = MCPServer("inventory")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Adds two numbers."""
        calls.made.append(("add", {"a": a, "b": b}))
        return a + b

    @server.tool()
    def delete_stock(sku: str) -> str:
        """Deletes all stock of a SKU."""
        calls.made.append(("delete_stock", {"sku": sku}))
        return f"deleted {sku}"

    @server.tool()
    def admin_secret() -> str:
        """Not for agents."""
        calls.made.append(("admin_secret", {}))
        return "hunter2"

    return server


@dataclass
class McpServer:
    url: str
    calls: Calls


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """An ASGI app served by uvicorn on a free port of 127.0.0.1: its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no event
                await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


def streamable_app(server: MCPServer) -> Any:
    return server.streamable_http_app(stateless_http=True, json_response=True)


@pytest.fixture(scope="module")
async def mcp_server() -> AsyncIterator[McpServer]:
    calls = Calls()
    async with serving(streamable_app(_mcp_app(calls))) as base_url:
        yield McpServer(f"{base_url}/mcp", calls)


@pytest.fixture
def calls(mcp_server: McpServer) -> list[tuple[str, dict]]:
    mcp_server.calls.made.clear()
    return mcp_server.calls.made


def mcp_tool(url: str, require_approval: bool = False, **fields) -> r.Tool:
    return r.Tool(
        name="inventory",
        require_approval=require_approval,
        mcp=r.McpTool(url=url, allowed_tools=["add", "delete_stock"], **fields),
    )


def reason_of(run: rn.Run) -> str:
    """The stable reason of the status a run failed with."""
    info = error_details_pb2.ErrorInfo()
    assert any(detail.Unpack(info) for detail in run.error.details)
    return info.reason


def tool_outputs(run: rn.Run) -> list[str]:
    return [item.data for item in run.items if item.type == rn.RunItem.TYPE_TOOL_OUTPUT]


async def test_an_mcp_tool_is_called_and_only_allowed_tools_are_offered(
    tenant: Tenant, mcp_server: McpServer, calls
):
    agent = await tenant.agent("stocker", tools=[mcp_tool(mcp_server.url)])
    tenant.model.enqueue(Reply(tool_calls=[ToolCall("add", {"a": 2, "b": 3})]), Reply(text="5"))
    run = await tenant.run(agent.name, "add them")
    assert run.state == State.STATE_SUCCEEDED, run.error
    assert calls == [("add", {"a": 2, "b": 3})]
    (output,) = tool_outputs(run)
    assert json.loads(output)["text"] == "5"
    # The filtered-out tool was never offered to the model.
    offered = {tool["function"]["name"] for tool in tenant.model.requests[0].body["tools"]}
    assert offered == {"add", "delete_stock"}


async def test_an_approval_required_mcp_tool_pauses_the_run_until_approved(
    tenant: Tenant, mcp_server: McpServer, calls
):
    agent = await tenant.agent(
        "careful", tools=[mcp_tool(mcp_server.url, approval_required_tools=["delete_stock"])]
    )
    tenant.model.enqueue(Reply(tool_calls=[ToolCall("delete_stock", {"sku": "X-1"})]))
    run = await tenant.run(agent.name, "clear X-1")
    assert run.state == State.STATE_AWAITING_APPROVAL, run.error
    (approval,) = (
        await tenant.client.runner.ListApprovals(rn.ListApprovalsRequest(parent=run.name))
    ).approvals
    assert approval.tool_name == "delete_stock"
    assert json.loads(approval.arguments) == {"sku": "X-1"}
    assert calls == []  # nothing ran before the decision
    tenant.model.enqueue(Reply(text="cleared"))
    await tenant.client.runner.ResolveApproval(
        rn.ResolveApprovalRequest(
            name=approval.name, decision=rn.ResolveApprovalRequest.DECISION_APPROVE
        )
    )
    done = await eventually(lambda: _ended(tenant.client, run.name))
    assert (done.state, done.final_output) == (State.STATE_SUCCEEDED, "cleared")
    assert calls == [("delete_stock", {"sku": "X-1"})]
    assert "deleted X-1" in tool_outputs(done)[-1]


async def test_a_rejected_mcp_call_never_reaches_the_server(
    tenant: Tenant, mcp_server: McpServer, calls
):
    agent = await tenant.agent("vetoed", tools=[mcp_tool(mcp_server.url, require_approval=True)])
    tenant.model.enqueue(Reply(tool_calls=[ToolCall("add", {"a": 1, "b": 1})]))
    run = await tenant.run(agent.name, "add")
    assert run.state == State.STATE_AWAITING_APPROVAL, run.error
    (approval,) = (
        await tenant.client.runner.ListApprovals(rn.ListApprovalsRequest(parent=run.name))
    ).approvals
    tenant.model.enqueue(Reply(text="fine"))
    await tenant.client.runner.ResolveApproval(
        rn.ResolveApprovalRequest(
            name=approval.name,
            decision=rn.ResolveApprovalRequest.DECISION_REJECT,
            reason="not today",
        )
    )
    done = await eventually(lambda: _ended(tenant.client, run.name))
    assert done.state == State.STATE_SUCCEEDED, done.error
    assert calls == [] and tool_outputs(done)[-1] == "not today"


async def test_an_mcp_url_that_leads_inside_is_never_connected_to(
    tenant: Tenant, mcp_server: McpServer, calls, monkeypatch
):
    # A public-looking name whose DNS answer is a private address.
    async def lookup(host: str, port: int):
        if host == "mcp.example.com":
            return [ipaddress.ip_address("10.0.0.7")]
        raise OSError(host)

    monkeypatch.setattr(outbound, "lookup", lookup)
    agent = await tenant.agent("sneaky", tools=[mcp_tool("http://mcp.example.com/mcp")])
    run = await tenant.run(agent.name, "hi")
    assert run.state == State.STATE_FAILED
    assert run.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert reason_of(run) == "MCP_SERVER_BLOCKED" and "10.0.0.7" in run.error.message
    assert tenant.model.requests == []  # no model call either


async def test_an_mcp_server_that_is_down_fails_the_run_with_unavailable(tenant: Tenant):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed when the test connects: nothing listens
    agent = await tenant.agent("lonely", tools=[mcp_tool(f"http://127.0.0.1:{port}/mcp")])
    run = await tenant.run(agent.name, "hi")
    assert run.state == State.STATE_FAILED
    assert run.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert reason_of(run) == "MCP_SERVER_UNREACHABLE"
    assert "/mcp" not in run.error.message  # a URL's path may carry a token


async def test_an_mcp_reply_past_the_cap_is_not_taken_in(tenant: Tenant):
    """An MCP server is a user-given URL: its replies are capped like any other."""
    server = MCPServer("flood")

    @server.tool()
    def flood() -> str:
        """Answers far too much."""
        return "x" * MCP_REPLY_BYTES

    async with serving(streamable_app(server)) as base_url:
        tool = r.Tool(name="flood", mcp=r.McpTool(url=f"{base_url}/mcp"))
        agent = await tenant.agent("flooded", tools=[tool])
        tenant.model.enqueue(Reply(tool_calls=[ToolCall("flood", {})]), Reply(text="done"))
        run = await tenant.run(agent.name, "flood me")
    # The call failed as a tool's error does: the model hears of it, the run goes on.
    assert (run.state, run.final_output) == (State.STATE_SUCCEEDED, "done"), run.error
    (output,) = tool_outputs(run)
    assert "error occurred while running the tool" in output
    assert "x" * 100 not in tenant.model.requests[-1].body["messages"][-1]["content"]
