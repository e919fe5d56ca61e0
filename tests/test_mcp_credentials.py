# ruff: noqa: F811 - fixtures, imported, are redefined as test parameters
"""An MCP tool's authorization, against a real MCP server the test starts behind a
gate that lets only the right Authorization header through: the registry stores it
sealed for its user and never shows it to anyone but the runner, which opens it and
sends it; updates keep it only while the tool keeps its name and url, rollbacks bring
it back, spans mask it, and a sealed value opens for no other user."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format
from mcp.server.mcpserver import MCPServer
from rpc_helpers import field_violations
from starlette.responses import PlainTextResponse
from support import Users, expect_rpc_error, service_token, use_model
from test_runner import KEY, Tenant
from test_runner_mcp import reason_of, serving, streamable_app, tool_outputs
from test_traces import stored

from agentmesh.auth import USER_HEADER
from agentmesh.errors import FailedPrecondition
from agentmesh.gen.registry.v1 import registry_pb2 as r
from agentmesh.gen.runner.v1 import runner_pb2 as rn
from agentmesh.mesh import Mesh
from agentmesh.model_server import ModelServer, Reply, ToolCall
from agentmesh.sealing import MCP_AUTHORIZATIONS, Sealer, Unsealable
from services.runner.tools import McpAuthorizations
from services.runner.tracing import MASK

State = rn.Run.State
# No secret pattern matches it: only knowing it masks it.
TOKEN = "opaque-" + secrets.token_hex(16)
AUTHORIZATION = f"Bearer {TOKEN}"


@dataclass
class Gate:
    """In front of an MCP server: only requests with `authorization` get through.
    Keeps the Authorization header of every request it saw."""

    authorization: str
    seen: list[str] = field(default_factory=list)

    def around(self, app: Any) -> Any:
        async def gated(scope, receive, send) -> None:
            if scope["type"] == "http":
                given = dict(scope["headers"]).get(b"authorization", b"").decode()
                self.seen.append(given)
                if given != self.authorization:
                    refused = PlainTextResponse("unauthorized", status_code=401)
                    await refused(scope, receive, send)
                    return
            await app(scope, receive, send)

        return gated


@dataclass
class GatedServer:
    url: str
    gate: Gate


@pytest.fixture(scope="module")
async def server() -> AsyncIterator[GatedServer]:
    gate = Gate(AUTHORIZATION)
    mcp = MCPServer("vault")

    @mcp.tool()
    def whoami() -> str:
        """Says which credential the caller sent."""
        return "you sent " + gate.seen[-1].partition(" ")[2]

    async with serving(gate.around(streamable_app(mcp))) as base_url:
        yield GatedServer(f"{base_url}/mcp", gate)


@pytest.fixture
def gate(server: GatedServer) -> Gate:
    server.gate.seen.clear()
    return server.gate


@pytest.fixture
async def users(sqlite_mesh: Mesh) -> AsyncIterator[Users]:
    factory = Users(sqlite_mesh)
    yield factory
    await factory.close()


@pytest.fixture
async def tenant(users: Users) -> AsyncIterator[Tenant]:
    async with ModelServer(api_key=KEY) as model:
        client, user = await users.new(credits=1000)
        await use_model(client, model)
        yield Tenant(client, user, model)


def vault_tool(url: str, authorization: str = AUTHORIZATION, name: str = "vault") -> r.Tool:
    return r.Tool(name=name, mcp=r.McpTool(url=url, authorization=authorization))


async def update(tenant: Tenant, name: str, *paths: str, **fields) -> r.Agent:
    return await tenant.client.registry.UpdateAgent(
        r.UpdateAgentRequest(
            agent=r.Agent(name=name, **fields), update_mask=field_mask_pb2.FieldMask(paths=paths)
        )
    )


async def sealed_as_stored(users: Users, tenant: Tenant, name: str) -> str:
    """The agent's first tool's authorization as a service (the runner) reads it."""
    agent = await users.service().registry.GetAgent(
        r.GetAgentRequest(name=name), metadata=((USER_HEADER, tenant.user.name),)
    )
    return agent.tools[0].mcp.authorization


def mcp_of(agent: r.Agent) -> list[tuple[bool, str]]:
    """(has_authorization, authorization) of each MCP tool, as a reader got them."""
    return [(t.mcp.has_authorization, t.mcp.authorization) for t in agent.tools if t.mcp.url]


async def run_whoami(tenant: Tenant, agent: str) -> rn.Run:
    tenant.model.enqueue(Reply(tool_calls=[ToolCall("whoami", {})]), Reply(text="done"))
    return await tenant.client.runner.RunAgent(rn.RunAgentRequest(agent=agent, input="who?"))


# ---- stored sealed, never shown ---------------------------------------------------------


async def test_the_authorization_is_stored_sealed_and_no_read_shows_it(
    sqlite_mesh, users, tenant, server, caplog
):
    caplog.set_level(logging.INFO)
    registry = tenant.client.registry
    created = await tenant.agent("keeper", tools=[vault_tool(server.url)])
    first = created.revision_id
    updated = await update(tenant, created.name, "instructions", instructions="Be brief.")
    helper = await tenant.agent("helper")
    handed = await registry.AddHandoff(r.AddHandoffRequest(agent=created.name, target=helper.name))
    unhanded = await registry.RemoveHandoff(
        r.RemoveHandoffRequest(agent=created.name, target=helper.name)
    )
    rolled = await registry.RollbackAgent(
        r.RollbackAgentRequest(name=created.name, revision_id=first)
    )
    got = await registry.GetAgent(r.GetAgentRequest(name=created.name))
    pinned = await registry.GetAgent(r.GetAgentRequest(name=f"{created.name}@{first}"))
    listed = await registry.ListAgents(r.ListAgentsRequest())
    revisions = await registry.ListAgentRevisions(r.ListAgentRevisionsRequest(name=created.name))
    keepers = [a for a in (*listed.agents, *revisions.agents) if a.name.startswith(created.name)]
    assert len(revisions.agents) == 5
    for agent in (created, updated, handed, unhanded, rolled, got, pinned, *keepers):
        assert mcp_of(agent) == [(True, "")], agent.name
        assert TOKEN.encode() not in agent.SerializeToString()

    # The runner (a service) gets it sealed for this user; it opens with the mesh's
    # service token, and the database holds no clear text of it.
    sealed = await sealed_as_stored(users, tenant, created.name)
    assert TOKEN not in sealed
    opened = Sealer(service_token(sqlite_mesh), MCP_AUTHORIZATIONS).open_text(
        sealed, tenant.user.name
    )
    assert opened == AUTHORIZATION
    database = list(sqlite_mesh.settings.data_dir.glob("registry.db*"))
    assert database
    for stored_file in database:
        assert TOKEN.encode() not in stored_file.read_bytes(), stored_file.name
    assert caplog.records and TOKEN not in caplog.text


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer two\r\nX-Injected: header",  # would split into another header
        "Bearer caf\u00e9",  # not ASCII, which a header value must be
        " Bearer padded ",
        "Bearer " + "x" * 4090,  # over 4096 characters
        "Bearer a\0b",
    ],
)
async def test_an_authorization_that_is_no_header_value_is_refused_at_its_field(
    tenant, server, authorization, caplog
):
    caplog.set_level(logging.INFO)
    error = await expect_rpc_error(
        tenant.agent("refused", tools=[vault_tool(server.url, authorization)]),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert set(field_violations(error)) == {"agent.tools[0].mcp.authorization"}
    for said in (str(error), caplog.text):
        assert authorization.strip() not in said and "x" * 100 not in said
    await expect_rpc_error(
        tenant.client.registry.GetAgent(r.GetAgentRequest(name="agents/refused")),
        grpc.StatusCode.NOT_FOUND,
    )


# ---- sent by runs -----------------------------------------------------------------------


async def test_a_run_sends_the_authorization_and_its_spans_mask_it(tenant, server, gate):
    agent = await tenant.agent("caller", tools=[vault_tool(server.url)])
    run = await run_whoami(tenant, agent.name)
    assert run.state == State.STATE_SUCCEEDED, run.error
    assert gate.seen and set(gate.seen) == {AUTHORIZATION}
    assert f"you sent {TOKEN}" in tool_outputs(run)[0]  # the server got it
    # The server echoed the credential into the tool's output: the trace has it masked.
    trace = await stored(tenant.client, run.trace)
    spans = json.dumps([json_format.MessageToDict(span) for span in trace.spans])
    assert TOKEN not in spans and f"you sent {MASK}" in spans


async def test_an_mcp_tool_without_its_authorization_is_refused_by_the_server(tenant, server, gate):
    agent = await tenant.agent("stranger", tools=[vault_tool(server.url, authorization="")])
    run = await tenant.client.runner.RunAgent(rn.RunAgentRequest(agent=agent.name, input="hi"))
    assert run.state == State.STATE_FAILED and reason_of(run) == "MCP_SERVER_UNREACHABLE"
    assert gate.seen and set(gate.seen) == {""}
    assert tenant.model.requests == []


# ---- updates and rollbacks --------------------------------------------------------------


async def test_an_update_keeps_the_authorization_while_the_tool_keeps_its_name_and_url(
    tenant, server, gate
):
    agent = await tenant.agent("updated", tools=[vault_tool(server.url)])
    name = agent.name
    # Other fields changed, and the tools sent back as read (no authorization).
    unrelated = await update(tenant, name, "instructions", instructions="Be brief.")
    echoed = await update(tenant, name, "tools", tools=unrelated.tools)
    assert mcp_of(unrelated) == mcp_of(echoed) == [(True, "")]
    run = await run_whoami(tenant, name)
    assert run.state == State.STATE_SUCCEEDED, run.error
    assert set(gate.seen) == {AUTHORIZATION}

    # Renamed, or pointed elsewhere, without a new one: the tool has none.
    renamed = await update(
        tenant, name, "tools", tools=[vault_tool(server.url, authorization="", name="safe")]
    )
    assert mcp_of(renamed) == [(False, "")]
    elsewhere = f"{server.url}?tenant=other"
    back = await update(tenant, name, "tools", tools=[vault_tool(server.url, authorization="")])
    moved = await update(tenant, name, "tools", tools=[vault_tool(elsewhere, authorization="")])
    assert mcp_of(back) == mcp_of(moved) == [(False, "")]
    gate.seen.clear()
    run = await tenant.client.runner.RunAgent(rn.RunAgentRequest(agent=name, input="hi"))
    assert run.state == State.STATE_FAILED and reason_of(run) == "MCP_SERVER_UNREACHABLE"
    assert set(gate.seen) == {""}

    # A new one with the new url is sent; rolling back to the first revision brings
    # that revision's back.
    fresh = "Bearer " + secrets.token_hex(16)
    rotated = await update(tenant, name, "tools", tools=[vault_tool(elsewhere, fresh)])
    assert mcp_of(rotated) == [(True, "")]
    gate.authorization = fresh
    try:
        gate.seen.clear()
        assert (await run_whoami(tenant, name)).state == State.STATE_SUCCEEDED
        assert set(gate.seen) == {fresh}
    finally:
        gate.authorization = AUTHORIZATION
    rolled = await tenant.client.registry.RollbackAgent(
        r.RollbackAgentRequest(name=name, revision_id=agent.revision_id)
    )
    assert mcp_of(rolled) == [(True, "")]
    gate.seen.clear()
    assert (await run_whoami(tenant, name)).state == State.STATE_SUCCEEDED
    assert set(gate.seen) == {AUTHORIZATION}


# ---- bound to its user ------------------------------------------------------------------


async def test_a_sealed_authorization_opens_for_its_own_user_only(
    sqlite_mesh, users, tenant, server, gate
):
    agent = await tenant.agent("owned", tools=[vault_tool(server.url)])
    sealed = await sealed_as_stored(users, tenant, agent.name)
    token = service_token(sqlite_mesh)
    authorizations = McpAuthorizations(Sealer(token, MCP_AUTHORIZATIONS))
    tool = r.Tool(name="vault", mcp=r.McpTool(url=server.url, authorization=sealed))
    assert authorizations.open(tool, tenant.user.name) == AUTHORIZATION
    assert TOKEN in authorizations.known(tenant.user.name)

    # Copied into another user's definition, it does not open there.
    other_client, other = await users.new(credits=100)
    with pytest.raises(FailedPrecondition) as refused:
        authorizations.open(tool, other.name)
    assert refused.value.reason == "MCP_AUTHORIZATION_UNREADABLE"
    assert sealed not in str(refused.value) and authorizations.known(other.name) == frozenset()
    # Nor under another purpose's key or another service token.
    for sealer in (Sealer(token, "webhook secrets"), Sealer("another-token", MCP_AUTHORIZATIONS)):
        with pytest.raises(Unsealable):
            sealer.open_text(sealed, tenant.user.name)

    # Through the API a user can only give it as their own clear text: it is sealed
    # again as such, and the server gets those characters, never what they seal.
    copied = await other_client.registry.CreateAgent(
        r.CreateAgentRequest(
            agent=r.Agent(display_name="copy", tools=[vault_tool(server.url, sealed)]),
            agent_id="copy",
        )
    )
    run = await other_client.runner.RunAgent(rn.RunAgentRequest(agent=copied.name, input="hi"))
    assert run.state == State.STATE_FAILED and reason_of(run) == "MCP_SERVER_UNREACHABLE"
    assert set(gate.seen) == {sealed}
