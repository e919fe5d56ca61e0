"""Tenants are walls: user B can neither see nor touch user A's resources, through any RPC.

Each case is one request B sends naming A's resources. B must get the error a
resource that does not exist gets, byte for byte apart from the name (so B cannot
probe for existence), the error must not mention anything of A's that B did not
send, and afterwards A's (and B's) resources must be exactly as before. As a
control, A sending the same request gets what an owner gets, which proves the
request named A's resources correctly.

To cover a new RPC, add a Case (or a ListCase) below; test_every_rpc_is_covered
fails until you do.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message
from rpc_helpers import ADMIN_ONLY, SERVICE_ONLY, error_info, error_text, field_violations

from agentmesh.client import Client
from agentmesh.gen.guardrails.v1 import guardrails_pb2 as g
from agentmesh.gen.registry.v1 import account_pb2 as a
from agentmesh.gen.registry.v1 import registry_pb2 as r
from agentmesh.gen.registry.v1 import workflows_pb2 as w
from agentmesh.gen.registry.v1 import workflows_pb2_grpc

OK = grpc.StatusCode.OK
NOT_FOUND = grpc.StatusCode.NOT_FOUND
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT


@dataclass(frozen=True)
class Ids:
    """The ids a case's request is built from.

    The ones in THEIRS are A's resources (or, in `missing()`, ids nothing has);
    the `own_*` ones are B's, for requests that mix B's resources with A's.
    """

    user: str  # A
    agent: str  # A's agent; it hands off to `target` and has context `context`
    revision: str  # `agent`'s first revision
    target: str  # A's agent that `agent` hands off to, and `workflow` runs
    context: str
    key: str  # A's spare API key (not the one A's client uses)
    workflow: str  # A's workflow
    own_user: str  # B
    own_agent: str
    own_context: str
    own_workflow: str  # B's workflow, running `own_agent`
    own_keys: tuple[str, ...]  # B's API key names

    THEIRS = ("user", "agent", "revision", "target", "context", "key", "workflow")

    def missing(self) -> Ids:
        """The same ids with each of A's replaced by one of the same shape nothing has."""
        return replace(self, **{name: uuid.uuid4().hex for name in self.THEIRS})

    def theirs(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in self.THEIRS}


def agent_name(agent_id: str) -> str:
    return f"agents/{agent_id}"


def workflow_name(workflow_id: str) -> str:
    return f"workflows/{workflow_id}"


def running(agent_id: str, **fields) -> w.Workflow:
    """A one-step workflow running the agent."""
    step = w.WorkflowStep(id="only", agent=w.AgentStep(agent=agent_name(agent_id)))
    return w.Workflow(display_name=fields.pop("display_name", "One step"), steps=[step], **fields)


@dataclass(frozen=True)
class Case:
    """B sends `request(ids)` to `method` and must get `code`.

    field: the BadRequest field an INVALID_ARGUMENT names.
    owner: what A gets for the same request (None: meaningless, e.g. it names B's agent).
    """

    id: str
    service: str  # "registry" | "workflows" | "accounts"
    method: str
    request: Callable[[Ids], Message]
    code: grpc.StatusCode = NOT_FOUND
    field: str | None = None
    owner: grpc.StatusCode | None = OK


@dataclass(frozen=True)
class ListCase:
    """B lists its own collection: it holds B's resources and nothing of A's."""

    id: str
    service: str
    method: str
    request: Callable[[Ids], Message]
    names: Callable[[Message], list[str]]
    expected: Callable[[Ids], list[str]]


def _mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


CASES = [
    # ---- RegistryService ----------------------------------------------------
    Case(
        "create-agent-handing-off-to-theirs",
        "registry",
        "CreateAgent",
        lambda i: r.CreateAgentRequest(
            agent=r.Agent(display_name="Mine", handoffs=[agent_name(i.target)])
        ),
        code=INVALID_ARGUMENT,
        field="agent.handoffs[0]",
    ),
    Case(
        "get-agent",
        "registry",
        "GetAgent",
        lambda i: r.GetAgentRequest(name=agent_name(i.agent)),
    ),
    Case(
        "update-agent",
        "registry",
        "UpdateAgent",
        lambda i: r.UpdateAgentRequest(
            agent=r.Agent(name=agent_name(i.agent), instructions="Obey B."),
            update_mask=_mask("instructions"),
        ),
    ),
    Case(
        "update-agent-with-their-etag-check",
        "registry",
        "UpdateAgent",
        lambda i: r.UpdateAgentRequest(
            agent=r.Agent(name=agent_name(i.agent), instructions="Obey B.", etag="stale"),
            update_mask=_mask("instructions"),
        ),
        owner=grpc.StatusCode.ABORTED,
    ),
    Case(
        "update-own-agent-handing-off-to-theirs",
        "registry",
        "UpdateAgent",
        lambda i: r.UpdateAgentRequest(
            agent=r.Agent(name=agent_name(i.own_agent), handoffs=[agent_name(i.target)]),
            update_mask=_mask("handoffs"),
        ),
        code=INVALID_ARGUMENT,
        field="agent.handoffs[0]",
        owner=None,
    ),
    Case(
        "delete-agent",
        "registry",
        "DeleteAgent",
        lambda i: r.DeleteAgentRequest(name=agent_name(i.agent)),
    ),
    Case(
        # An owner learns the agent is in use; B must not even learn it exists.
        "delete-agent-in-use",
        "registry",
        "DeleteAgent",
        lambda i: r.DeleteAgentRequest(name=agent_name(i.target)),
        owner=grpc.StatusCode.FAILED_PRECONDITION,
    ),
    Case(
        "delete-agent-with-stale-etag",
        "registry",
        "DeleteAgent",
        lambda i: r.DeleteAgentRequest(name=agent_name(i.agent), etag="stale"),
        owner=grpc.StatusCode.ABORTED,
    ),
    Case(
        "add-handoff-from-theirs",
        "registry",
        "AddHandoff",
        lambda i: r.AddHandoffRequest(agent=agent_name(i.agent), target=agent_name(i.target)),
    ),
    Case(
        "add-handoff-from-theirs-to-own",
        "registry",
        "AddHandoff",
        lambda i: r.AddHandoffRequest(agent=agent_name(i.agent), target=agent_name(i.own_agent)),
        owner=INVALID_ARGUMENT,  # B's agent is no more A's to hand off to
    ),
    Case(
        "add-handoff-from-own-to-theirs",
        "registry",
        "AddHandoff",
        lambda i: r.AddHandoffRequest(agent=agent_name(i.own_agent), target=agent_name(i.target)),
        code=INVALID_ARGUMENT,
        field="target",
        owner=None,
    ),
    Case(
        "remove-handoff-from-theirs",
        "registry",
        "RemoveHandoff",
        lambda i: r.RemoveHandoffRequest(agent=agent_name(i.agent), target=agent_name(i.target)),
    ),
    Case(
        "remove-handoff-from-own-to-theirs",
        "registry",
        "RemoveHandoff",
        lambda i: r.RemoveHandoffRequest(
            agent=agent_name(i.own_agent), target=agent_name(i.target)
        ),
        owner=None,
    ),
    Case(
        "create-agent-using-theirs-as-a-tool",
        "registry",
        "CreateAgent",
        lambda i: r.CreateAgentRequest(
            agent=r.Agent(
                display_name="Mine",
                tools=[r.Tool(name="ask", agent=r.AgentTool(agent=agent_name(i.target)))],
            )
        ),
        code=INVALID_ARGUMENT,
        field="agent.tools[0].agent.agent",
    ),
    Case(
        "create-agent-using-theirs-as-a-guardrail",
        "registry",
        "CreateAgent",
        lambda i: r.CreateAgentRequest(
            agent=r.Agent(
                display_name="Mine",
                input_guardrails=[
                    g.Guardrail(name="judge", agent=g.AgentCheck(agent=agent_name(i.target)))
                ],
            )
        ),
        code=INVALID_ARGUMENT,
        field="agent.input_guardrails[0].agent.agent",
    ),
    Case(
        "get-agent-revision",
        "registry",
        "GetAgent",
        lambda i: r.GetAgentRequest(name=f"{agent_name(i.agent)}@{i.revision}"),
    ),
    Case(
        "get-their-revision-under-own-agent",
        "registry",
        "GetAgent",
        lambda i: r.GetAgentRequest(name=f"{agent_name(i.own_agent)}@{i.revision}"),
        owner=None,
    ),
    Case(
        "list-agent-revisions",
        "registry",
        "ListAgentRevisions",
        lambda i: r.ListAgentRevisionsRequest(name=agent_name(i.agent)),
    ),
    Case(
        "rollback-agent",
        "registry",
        "RollbackAgent",
        lambda i: r.RollbackAgentRequest(name=agent_name(i.agent), revision_id=i.revision),
    ),
    Case(
        "rollback-agent-with-stale-etag",
        "registry",
        "RollbackAgent",
        lambda i: r.RollbackAgentRequest(
            name=agent_name(i.agent), revision_id=i.revision, etag="stale"
        ),
        owner=grpc.StatusCode.ABORTED,
    ),
    Case(
        "rollback-own-agent-to-their-revision",
        "registry",
        "RollbackAgent",
        lambda i: r.RollbackAgentRequest(name=agent_name(i.own_agent), revision_id=i.revision),
        owner=None,
    ),
    Case(
        "create-context",
        "registry",
        "CreateContext",
        lambda i: r.CreateContextRequest(
            parent=agent_name(i.agent), context=r.Context(display_name="B's", is_default=True)
        ),
    ),
    Case(
        "get-context",
        "registry",
        "GetContext",
        lambda i: r.GetContextRequest(name=f"agents/{i.agent}/contexts/{i.context}"),
    ),
    Case(
        "get-context-under-own-agent",
        "registry",
        "GetContext",
        lambda i: r.GetContextRequest(name=f"agents/{i.own_agent}/contexts/{i.context}"),
        owner=None,
    ),
    Case(
        "list-contexts",
        "registry",
        "ListContexts",
        lambda i: r.ListContextsRequest(parent=agent_name(i.agent)),
    ),
    Case(
        "delete-context",
        "registry",
        "DeleteContext",
        lambda i: r.DeleteContextRequest(name=f"agents/{i.agent}/contexts/{i.context}"),
    ),
    Case(
        "delete-context-under-own-agent",
        "registry",
        "DeleteContext",
        lambda i: r.DeleteContextRequest(name=f"agents/{i.own_agent}/contexts/{i.context}"),
        owner=None,
    ),
    # ---- WorkflowService ------------------------------------------------------
    Case(
        "create-workflow-running-theirs",
        "workflows",
        "CreateWorkflow",
        lambda i: w.CreateWorkflowRequest(workflow=running(i.target)),
        code=INVALID_ARGUMENT,
        field="workflow.steps[0].agent.agent",
    ),
    Case(
        "get-workflow",
        "workflows",
        "GetWorkflow",
        lambda i: w.GetWorkflowRequest(name=workflow_name(i.workflow)),
    ),
    Case(
        "update-workflow",
        "workflows",
        "UpdateWorkflow",
        lambda i: w.UpdateWorkflowRequest(
            workflow=w.Workflow(name=workflow_name(i.workflow), description="B's now"),
            update_mask=_mask("description"),
        ),
    ),
    Case(
        "update-workflow-with-stale-etag",
        "workflows",
        "UpdateWorkflow",
        lambda i: w.UpdateWorkflowRequest(
            workflow=w.Workflow(name=workflow_name(i.workflow), description="x", etag="stale"),
            update_mask=_mask("description"),
        ),
        owner=grpc.StatusCode.ABORTED,
    ),
    Case(
        "update-own-workflow-running-theirs",
        "workflows",
        "UpdateWorkflow",
        lambda i: w.UpdateWorkflowRequest(
            workflow=running(i.target, name=workflow_name(i.own_workflow)),
            update_mask=_mask("steps"),
        ),
        code=INVALID_ARGUMENT,
        field="workflow.steps[0].agent.agent",
        owner=None,
    ),
    Case(
        "delete-workflow",
        "workflows",
        "DeleteWorkflow",
        lambda i: w.DeleteWorkflowRequest(name=workflow_name(i.workflow)),
    ),
    Case(
        "delete-workflow-with-stale-etag",
        "workflows",
        "DeleteWorkflow",
        lambda i: w.DeleteWorkflowRequest(name=workflow_name(i.workflow), etag="stale"),
        owner=grpc.StatusCode.ABORTED,
    ),
    # ---- AccountService (what a user may call) --------------------------------
    Case(
        "get-user",
        "accounts",
        "GetUser",
        lambda i: a.GetUserRequest(name=f"users/{i.user}"),
    ),
    Case(
        "create-api-key",
        "accounts",
        "CreateApiKey",
        lambda i: a.CreateApiKeyRequest(
            parent=f"users/{i.user}", api_key=a.ApiKey(display_name="B's way in")
        ),
    ),
    Case(
        "list-api-keys",
        "accounts",
        "ListApiKeys",
        lambda i: a.ListApiKeysRequest(parent=f"users/{i.user}"),
    ),
    Case(
        "delete-api-key",
        "accounts",
        "DeleteApiKey",
        lambda i: a.DeleteApiKeyRequest(name=f"users/{i.user}/apiKeys/{i.key}"),
    ),
    Case(
        "delete-their-api-key-under-own-user",
        "accounts",
        "DeleteApiKey",
        lambda i: a.DeleteApiKeyRequest(name=f"users/{i.own_user}/apiKeys/{i.key}"),
        owner=None,
    ),
    Case(
        "get-credit-balance",
        "accounts",
        "GetCreditBalance",
        lambda i: a.GetCreditBalanceRequest(name=f"users/{i.user}/creditBalance"),
    ),
]

LIST_CASES = [
    ListCase(
        "list-agents",
        "registry",
        "ListAgents",
        lambda i: r.ListAgentsRequest(page_size=1000),
        lambda response: [agent.name for agent in response.agents],
        lambda i: [agent_name(i.own_agent)],
    ),
    ListCase(
        "list-workflows",
        "workflows",
        "ListWorkflows",
        lambda i: w.ListWorkflowsRequest(page_size=1000),
        lambda response: [workflow.name for workflow in response.workflows],
        lambda i: [workflow_name(i.own_workflow)],
    ),
    ListCase(
        "list-own-contexts",
        "registry",
        "ListContexts",
        lambda i: r.ListContextsRequest(parent=agent_name(i.own_agent), page_size=1000),
        lambda response: [context.name for context in response.contexts],
        lambda i: [f"agents/{i.own_agent}/contexts/{i.own_context}"],
    ),
    ListCase(
        "list-own-api-keys",
        "accounts",
        "ListApiKeys",
        lambda i: a.ListApiKeysRequest(parent="users/me"),
        lambda response: [key.name for key in response.api_keys],
        lambda i: list(i.own_keys),
    ),
]


def test_every_rpc_is_covered():
    """A new RPC fails here until it has a case (or is declared service- or admin-only)."""
    covered = {(case.service, case.method) for case in [*CASES, *LIST_CASES]}
    services = {
        "registry": r.DESCRIPTOR.services_by_name["RegistryService"],
        "workflows": w.DESCRIPTOR.services_by_name["WorkflowService"],
    }
    for service, descriptor in services.items():
        assert {m for s, m in covered if s == service} == {m.name for m in descriptor.methods}
    account_methods = {m.name for m in a.DESCRIPTOR.services_by_name["AccountService"].methods}
    assert {m for s, m in covered if s == "accounts"} | SERVICE_ONLY | ADMIN_ONLY == (
        account_methods
    )
    assert not SERVICE_ONLY & ADMIN_ONLY


@dataclass
class Tenants:
    a: Client
    b: Client
    ids: Ids


@pytest.fixture
async def tenants(new_sqlite_user) -> Tenants:
    """A with two agents (one handing off to the other, with two revisions), a context,
    a workflow and a spare key; B likewise."""
    client_a, user_a = await new_sqlite_user(credits=100)
    client_b, user_b = await new_sqlite_user(credits=7)

    target = await client_a.registry.CreateAgent(
        r.CreateAgentRequest(agent=r.Agent(display_name="Billing", instructions="A's secret"))
    )
    agent = await client_a.registry.CreateAgent(
        r.CreateAgentRequest(
            agent=r.Agent(display_name="Triage", metadata={"team": "a"}, handoffs=[target.name])
        )
    )
    agent = await client_a.registry.UpdateAgent(
        r.UpdateAgentRequest(
            agent=r.Agent(name=agent.name, instructions="A's second revision"),
            update_mask=_mask("instructions"),
        )
    )
    context = await client_a.registry.CreateContext(
        r.CreateContextRequest(
            parent=agent.name, context=r.Context(values={"tier": "gold"}, is_default=True)
        )
    )
    workflow = await stub(client_a, "workflows").CreateWorkflow(
        w.CreateWorkflowRequest(workflow=running(target.name.removeprefix("agents/")))
    )
    revisions = await client_a.registry.ListAgentRevisions(
        r.ListAgentRevisionsRequest(name=agent.name)
    )
    key = await client_a.accounts.CreateApiKey(
        a.CreateApiKeyRequest(parent="users/me", api_key=a.ApiKey(display_name="spare"))
    )

    own_agent = await client_b.registry.CreateAgent(
        r.CreateAgentRequest(agent=r.Agent(display_name="B's agent"))
    )
    own_context = await client_b.registry.CreateContext(
        r.CreateContextRequest(parent=own_agent.name, context=r.Context(display_name="B's"))
    )
    own_workflow = await stub(client_b, "workflows").CreateWorkflow(
        w.CreateWorkflowRequest(workflow=running(own_agent.name.removeprefix("agents/")))
    )
    own_keys = await client_b.accounts.ListApiKeys(a.ListApiKeysRequest(parent="users/me"))

    ids = Ids(
        user=user_a.name.removeprefix("users/"),
        agent=agent.name.removeprefix("agents/"),
        revision=revisions.agents[-1].revision_id,
        target=target.name.removeprefix("agents/"),
        context=context.name.rpartition("/")[2],
        key=key.name.rpartition("/")[2],
        workflow=workflow.name.removeprefix("workflows/"),
        own_user=user_b.name.removeprefix("users/"),
        own_agent=own_agent.name.removeprefix("agents/"),
        own_context=own_context.name.rpartition("/")[2],
        own_workflow=own_workflow.name.removeprefix("workflows/"),
        own_keys=tuple(k.name for k in own_keys.api_keys),
    )
    return Tenants(client_a, client_b, ids)


async def snapshot(client: Client) -> dict[str, object]:
    """Everything a user owns, read as that user."""
    agents = await client.registry.ListAgents(r.ListAgentsRequest(page_size=1000))
    state: dict[str, object] = {
        "user": await client.accounts.GetUser(a.GetUserRequest(name="users/me")),
        "agents": agents,
        "keys": await client.accounts.ListApiKeys(a.ListApiKeysRequest(parent="users/me")),
        "workflows": await stub(client, "workflows").ListWorkflows(
            w.ListWorkflowsRequest(page_size=1000)
        ),
        "balance": await client.accounts.GetCreditBalance(
            a.GetCreditBalanceRequest(name="users/me/creditBalance")
        ),
    }
    for agent in agents.agents:
        state[f"{agent.name} revisions"] = await client.registry.ListAgentRevisions(
            r.ListAgentRevisionsRequest(name=agent.name, page_size=1000)
        )
        contexts = await client.registry.ListContexts(
            r.ListContextsRequest(parent=agent.name, page_size=1000)
        )
        state[agent.name] = contexts
        for context in contexts.contexts:
            state[context.name] = await client.registry.GetContext(
                r.GetContextRequest(name=context.name)
            )
    return state


def stub(client: Client, service: str):
    if service == "workflows" and not hasattr(client, "workflows"):
        return workflows_pb2_grpc.WorkflowServiceStub(client.channel)
    return getattr(client, service)


async def call(client: Client, case: Case | ListCase, ids: Ids):
    return await getattr(stub(client, case.service), case.method)(case.request(ids))


async def refused(client: Client, case: Case, ids: Ids) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(client, case, ids)
    return caught.value


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
async def test_another_tenants_resources_are_out_of_reach(tenants: Tenants, case: Case):
    ids = tenants.ids
    before_a, before_b = await snapshot(tenants.a), await snapshot(tenants.b)

    error = await refused(tenants.b, case, ids)
    assert error.code() == case.code, error.details()
    info = error_info(error, reason=None)
    if case.code == NOT_FOUND:
        assert info.reason == "NOT_FOUND"
    if case.field is not None:
        assert field_violations(error) == [case.field]
    # Nothing of A's that B did not send comes back to B.
    sent = str(case.request(ids))
    text = error_text(error)
    assert not [v for v in ids.theirs().values() if v in text and v not in sent], text

    # B learns nothing it would not learn about a resource that does not exist.
    missing = ids.missing()
    error_for_missing = await refused(tenants.b, case, missing)
    text_for_missing = error_text(error_for_missing)
    for name, value in missing.theirs().items():
        text_for_missing = text_for_missing.replace(value, getattr(ids, name))
    assert text_for_missing == text

    # Neither tenant's resources changed.
    assert await snapshot(tenants.a) == before_a
    assert await snapshot(tenants.b) == before_b

    # Control: the request does name A's resources; A gets what an owner gets.
    if case.owner is OK:
        await call(tenants.a, case, ids)
    elif case.owner is not None:
        owner_error = await refused(tenants.a, case, ids)
        assert owner_error.code() == case.owner, owner_error.details()


@pytest.mark.parametrize("case", LIST_CASES, ids=lambda case: case.id)
async def test_lists_hold_only_ones_own(tenants: Tenants, case: ListCase):
    response = await call(tenants.b, case, tenants.ids)
    assert case.names(response) == case.expected(tenants.ids)
    assert not [v for v in tenants.ids.theirs().values() if v in str(response)]


def test_ids_cover_every_field():
    # THEIRS must name every field of A's, or missing() would leave some real.
    own = {f.name for f in fields(Ids) if f.name.startswith("own_")}
    assert set(Ids.THEIRS) | own == {f.name for f in fields(Ids)}
