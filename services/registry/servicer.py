"""gRPC servicers of the registry: protos in, checks and store calls, protos out.

Definitions are checked as typed protos (checks.py, workflows.py) and stored as
their JSON form; references to other agents are checked by the store, in the
write's own transaction, and reported here at the fields that named them.

An MCP tool's authorization is write-only: stored sealed for its user (in the
definition, so revisions and rollbacks keep it), never returned to a user (reads
say has_authorization), and given sealed only to a service reading one agent
(the runner, which opens it to connect).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, timedelta
from typing import Any

import grpc
from google.api import field_behavior_pb2
from google.protobuf import empty_pb2, json_format
from google.protobuf.message import Message

from agentmesh.api import check_update, field_behaviors, merge_update, timestamp, validate
from agentmesh.auth import Authenticator, current_user
from agentmesh.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
from agentmesh.events import EventBus
from agentmesh.gen.common.v1 import common_pb2
from agentmesh.gen.registry.v1 import (
    account_pb2,
    account_pb2_grpc,
    events_pb2,
    registry_pb2,
    registry_pb2_grpc,
    workflows_pb2,
    workflows_pb2_grpc,
)
from agentmesh.ids import new_id, new_revision_id, utc_now
from agentmesh.names import ResourceName
from agentmesh.paging import Pages
from agentmesh.sealing import Sealer
from services.registry import records
from services.registry.api_keys import hash_key
from services.registry.checks import (
    ProviderTypeNeeded,
    agent_references,
    check_agent_definition,
)
from services.registry.provider_types import ProviderTypes
from services.registry.store import RegistryStore
from services.registry.workflows import check_workflow_definition, workflow_agents

AGENT = ResourceName.of(registry_pb2.Agent)
CONTEXT = ResourceName.of(registry_pb2.Context)
WORKFLOW = ResourceName.of(workflows_pb2.Workflow)
USER = ResourceName.of(account_pb2.User)
API_KEY = ResourceName.of(account_pb2.ApiKey)
DEFAULT_RESERVATION_TTL = timedelta(minutes=10)


def _kept_apart(message_type: type[Message], *also: str) -> frozenset[str]:
    """Fields stored beside a definition rather than in it: the name, the etag and
    whatever the contract marks OUTPUT_ONLY."""
    behaviors = field_behaviors(message_type.DESCRIPTOR)
    output_only = {
        name for name, kinds in behaviors.items() if field_behavior_pb2.OUTPUT_ONLY in kinds
    }
    return frozenset({"name", "etag", *output_only, *also})


_AGENT_KEPT_APART = _kept_apart(registry_pb2.Agent, "handoffs")
_WORKFLOW_KEPT_APART = _kept_apart(workflows_pb2.Workflow)


def _definition(message: Message, kept_apart: Iterable[str]) -> dict[str, Any]:
    stored = type(message)()
    stored.CopyFrom(message)
    for field in kept_apart:
        stored.ClearField(field)
    return json_format.MessageToDict(stored, preserving_proto_field_name=True)


# Revisions never change: each one's definition is parsed from JSON (most of a read's
# CPU) once per process, and kept serialized, which parses back far faster.
_PARSED_REVISIONS: dict[tuple[str, str, str], bytes] = {}
_PARSED_REVISIONS_MAX = 4096


def _agent_definition(agent: records.Agent) -> registry_pb2.Agent:
    key = (agent.user_id, agent.id, agent.revision_id)
    serialized = _PARSED_REVISIONS.get(key)
    if serialized is None:
        message = json_format.ParseDict(agent.definition, registry_pb2.Agent())
        if len(_PARSED_REVISIONS) >= _PARSED_REVISIONS_MAX:
            _PARSED_REVISIONS.clear()
        _PARSED_REVISIONS[key] = message.SerializeToString()
        return message
    return registry_pb2.Agent.FromString(serialized)


def _agent_proto(
    agent: records.Agent, as_revision: bool = False, sealed: bool = False
) -> registry_pb2.Agent:
    """The agent as a reader sees it: MCP authorizations hidden (has_authorization
    says which tools have one), or still `sealed` for a service that will open them."""
    message = _agent_definition(agent)
    for tool in message.tools:
        if tool.WhichOneof("kind") == "mcp":
            tool.mcp.has_authorization = bool(tool.mcp.authorization)
            if not sealed:
                tool.mcp.ClearField("authorization")
    name = AGENT.format(agent.id)
    message.name = f"{name}@{agent.revision_id}" if as_revision else name
    message.handoffs.extend(AGENT.format(target) for target in agent.handoffs)
    message.etag = agent.etag
    message.revision_id = agent.revision_id
    message.create_time.CopyFrom(timestamp(agent.create_time))
    message.update_time.CopyFrom(timestamp(agent.update_time))
    message.revision_create_time.CopyFrom(timestamp(agent.update_time))
    return message


def _sealed_authorizations(agent: records.Agent) -> dict[tuple[str, str], str]:
    """The sealed authorization of each MCP tool of a stored agent that has one, by
    the tool's name and url."""
    return {
        (tool.name, tool.mcp.url): tool.mcp.authorization
        for tool in _agent_definition(agent).tools
        if tool.WhichOneof("kind") == "mcp" and tool.mcp.authorization
    }


def _context_proto(context: records.Context) -> registry_pb2.Context:
    message = registry_pb2.Context(
        name=CONTEXT.format(context.agent_id, context.id),
        display_name=context.display_name,
        is_default=context.is_default,
    )
    message.values.update(context.values)
    message.create_time.CopyFrom(timestamp(context.create_time))
    return message


def _workflow_proto(workflow: records.Workflow) -> workflows_pb2.Workflow:
    message = json_format.ParseDict(workflow.definition, workflows_pb2.Workflow())
    message.name = WORKFLOW.format(workflow.id)
    message.etag = workflow.etag
    message.create_time.CopyFrom(timestamp(workflow.create_time))
    message.update_time.CopyFrom(timestamp(workflow.update_time))
    return message


def _agents_not_found(
    references: list[tuple[str, str]], missing: frozenset[str]
) -> InvalidArgument:
    """The error for references to agents the caller does not have, at each field
    that named one. Another user's agent is reported exactly like a missing one."""
    violations = [
        (path, f"{AGENT.format(agent_id)} not found")
        for path, agent_id in references
        if agent_id in missing
    ]
    handoffs = any(".handoffs[" in path for path, _ in violations)
    return InvalidArgument(
        violations, reason="HANDOFF_TARGET_NOT_FOUND" if handoffs else "AGENT_NOT_FOUND"
    )


def _reported_at(error: InvalidArgument, paths: Iterable[str], field: str) -> InvalidArgument:
    """The same error, with what it says about `paths` said about the request's `field`."""
    moved = set(paths)
    return InvalidArgument(
        [(field if path in moved else path, text) for path, text in error.violations],
        reason=error.reason,
    )


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(
        self,
        store: RegistryStore,
        events: EventBus,
        pages: Pages,
        sealer: Sealer,
        outbound_allow: Sequence[str] = (),
        provider_types: ProviderTypes | None = None,
    ):
        self._agents = store.agents
        self._sealer = sealer
        # None: no providers service to ask; agents naming one for web search are refused.
        self._provider_types = provider_types
        self._pages = pages
        self._contexts = store.contexts
        self._events = events
        self._outbound_allow = list(outbound_allow)

    async def CreateAgent(
        self, request: registry_pb2.CreateAgentRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.Agent:
        user = current_user()
        agent_id = request.agent_id or new_id()
        types: dict[str, int | None] = {}
        while True:  # at most once more, with its provider's type
            try:
                check_agent_definition(
                    request.agent,
                    agent_id=agent_id,
                    outbound_allow=self._outbound_allow,
                    provider_types=types,
                )
                break
            except ProviderTypeNeeded as needed:
                types[needed.provider] = await self._provider_type(needed.provider)
        now = utc_now()
        agent = records.Agent(
            id=agent_id,
            user_id=user.user_id,
            definition=_definition(self._sealed(request.agent, user.user, {}), _AGENT_KEPT_APART),
            handoffs=[AGENT.id(name) for name in request.agent.handoffs],
            etag=new_id(),
            revision_id=new_revision_id(),
            create_time=now,
            update_time=now,
        )
        references = agent_references(request.agent)
        try:
            await self._agents.create_agent(agent, {agent_id for _, agent_id in references})
        except records.AgentsNotFound as missing:
            raise _agents_not_found(references, missing.ids) from None
        await self._publish_change(agent, common_pb2.CHANGE_KIND_CREATED)
        return _agent_proto(agent)

    async def GetAgent(
        self, request: registry_pb2.GetAgentRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.Agent:
        user = current_user()
        name, _, revision_id = request.name.partition("@")
        if revision_id:
            revision = await self._agents.get_agent_revision(
                user.user_id, AGENT.id(name), revision_id
            )
            return _agent_proto(revision, as_revision=True, sealed=user.service)
        agent = await self._agents.get_agent(user.user_id, AGENT.id(name))
        return _agent_proto(agent, sealed=user.service)

    async def ListAgents(
        self, request: registry_pb2.ListAgentsRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListAgentsResponse:
        cursor = self._pages.open(request)
        page = await self._agents.list_agents(
            current_user().user_id,
            cursor.after,
            cursor.size,
        )
        return registry_pb2.ListAgentsResponse(
            agents=[_agent_proto(agent) for agent in page.items],
            next_page_token=cursor.next_token(page.last_seq),
        )

    async def UpdateAgent(
        self, request: registry_pb2.UpdateAgentRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.Agent:
        user = current_user()
        (agent_id,) = check_update("agent", request.agent, request.update_mask, AGENT)

        def update(current: records.Agent) -> registry_pb2.Agent:
            return merge_update("agent", _agent_proto(current), request.agent, request.update_mask)

        return _agent_proto(await self._change(user.user_id, agent_id, update))

    async def DeleteAgent(
        self, request: registry_pb2.DeleteAgentRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        user = current_user()
        await self._agents.delete_agent(user.user_id, AGENT.id(request.name), request.etag)
        await self._events.publish(
            events_pb2.AgentChanged(
                agent=request.name,
                user=user.user,
                kind=common_pb2.CHANGE_KIND_DELETED,
                time=timestamp(utc_now()),
            )
        )
        return empty_pb2.Empty()

    async def ListAgentRevisions(
        self, request: registry_pb2.ListAgentRevisionsRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListAgentRevisionsResponse:
        cursor = self._pages.open(request)
        page = await self._agents.list_agent_revisions(
            current_user().user_id,
            AGENT.id(request.name),
            cursor.after,
            cursor.size,
        )
        return registry_pb2.ListAgentRevisionsResponse(
            agents=[_agent_proto(revision, as_revision=True) for revision in page.items],
            next_page_token=cursor.next_token(page.last_seq),
        )

    async def RollbackAgent(
        self, request: registry_pb2.RollbackAgentRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.Agent:
        user = current_user()
        agent_id = AGENT.id(request.name)
        revision = await self._agents.get_agent_revision(
            user.user_id, agent_id, request.revision_id
        )

        def rollback(current: records.Agent) -> registry_pb2.Agent:
            if request.etag and request.etag != current.etag:
                raise Aborted.stale(request.name)
            return _agent_proto(revision)

        try:
            # The revision's MCP authorizations come back with it.
            agent = await self._change(user.user_id, agent_id, rollback, kept_from=revision)
        except InvalidArgument as invalid:
            # Not the request's fault: an agent the revision names is gone, or
            # the rules have tightened since it was made.
            problems = "; ".join(f"{path}: {text}" for path, text in invalid.violations)
            raise FailedPrecondition(
                f"revision {request.revision_id} cannot be restored: {problems}",
                reason="REVISION_NOT_RESTORABLE",
            ) from None
        return _agent_proto(agent)

    async def AddHandoff(
        self, request: registry_pb2.AddHandoffRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.Agent:
        user = current_user()
        agent_id, target_id = AGENT.id(request.agent), AGENT.id(request.target)

        def add(current: records.Agent) -> registry_pb2.Agent | None:
            if target_id in current.handoffs:
                return None
            changed = _agent_proto(current)
            changed.handoffs.append(request.target)
            return changed

        try:
            agent = await self._change(user.user_id, agent_id, add)
        except InvalidArgument as invalid:
            # The checks are UpdateAgent's, the handoff limit included; what they
            # say about the new handoff is said about the request's target.
            added = [path for path, _ in invalid.violations if path.startswith("agent.handoffs")]
            raise _reported_at(invalid, added, "target") from None
        return _agent_proto(agent)

    async def RemoveHandoff(
        self, request: registry_pb2.RemoveHandoffRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.Agent:
        user = current_user()
        agent_id, target_id = AGENT.id(request.agent), AGENT.id(request.target)

        def remove(current: records.Agent) -> registry_pb2.Agent:
            if target_id not in current.handoffs:
                raise NotFound(f"{request.agent}/handoffs/{target_id}")
            changed = _agent_proto(current)
            changed.handoffs.remove(request.target)
            return changed

        return _agent_proto(await self._change(user.user_id, agent_id, remove))

    async def CreateContext(
        self, request: registry_pb2.CreateContextRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.Context:
        created = await self._contexts.create_context(
            current_user().user_id,
            AGENT.id(request.parent),
            request.context.display_name,
            json_format.MessageToDict(request.context.values),
            request.context.is_default,
        )
        return _context_proto(created)

    async def GetContext(
        self, request: registry_pb2.GetContextRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.Context:
        agent_id, context_id = CONTEXT.parse(request.name)
        found = await self._contexts.get_context(current_user().user_id, agent_id, context_id)
        return _context_proto(found)

    async def ListContexts(
        self, request: registry_pb2.ListContextsRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListContextsResponse:
        cursor = self._pages.open(request)
        page = await self._contexts.list_contexts(
            current_user().user_id,
            AGENT.id(request.parent),
            cursor.after,
            cursor.size,
        )
        return registry_pb2.ListContextsResponse(
            contexts=[_context_proto(found) for found in page.items],
            next_page_token=cursor.next_token(page.last_seq),
        )

    async def DeleteContext(
        self, request: registry_pb2.DeleteContextRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        agent_id, context_id = CONTEXT.parse(request.name)
        await self._contexts.delete_context(current_user().user_id, agent_id, context_id)
        return empty_pb2.Empty()

    async def _change(
        self,
        user_id: str,
        agent_id: str,
        change: Callable[[records.Agent], registry_pb2.Agent | None],
        kept_from: records.Agent | None = None,
    ) -> records.Agent:
        """Makes what `change` turns the current agent into (None: nothing) its new
        revision, checked like a new agent; the store runs it under a lock on the
        agent, so `change` always sees the agent as it is. The MCP authorizations
        `change` leaves empty are kept from `kept_from` (the current agent if None)."""
        references: list[tuple[str, str]] = []
        # Provider types the checks asked for: looked up outside the agent's lock, and
        # the change made again with them.
        types: dict[str, int | None] = {}

        def revise(current: records.Agent) -> tuple[records.Agent, set[str]] | None:
            changed = change(current)
            if changed is None:
                return None
            validate(changed, prefix="agent.")
            check_agent_definition(
                changed,
                agent_id=current.id,
                outbound_allow=self._outbound_allow,
                provider_types=types,
            )
            references[:] = agent_references(changed)
            kept = _sealed_authorizations(kept_from or current)
            stored = self._sealed(changed, USER.format(current.user_id), kept)
            revision = records.Agent(
                id=current.id,
                user_id=current.user_id,
                definition=_definition(stored, _AGENT_KEPT_APART),
                handoffs=[AGENT.id(name) for name in changed.handoffs],
                etag=new_id(),
                revision_id=new_revision_id(),
                create_time=current.create_time,
                update_time=utc_now(),
            )
            return revision, {agent_id for _, agent_id in references}

        while True:
            try:
                agent, changed = await self._agents.change_agent(user_id, agent_id, revise)
                break
            except ProviderTypeNeeded as needed:
                types[needed.provider] = await self._provider_type(needed.provider)
            except records.AgentsNotFound as missing:
                raise _agents_not_found(references, missing.ids) from None
        if changed:
            await self._publish_change(agent, common_pb2.CHANGE_KIND_UPDATED)
        return agent

    def _sealed(
        self, agent: registry_pb2.Agent, user: str, kept: Mapping[tuple[str, str], str]
    ) -> registry_pb2.Agent:
        """The definition to store: each MCP tool's authorization sealed for `user`.
        An empty one takes the sealed one `kept` has for the tool's name and url (a
        client cannot send back what it never sees), so none follows a tool to
        another url."""
        stored = registry_pb2.Agent()
        stored.CopyFrom(agent)
        for tool in stored.tools:
            if tool.WhichOneof("kind") != "mcp":
                continue
            mcp = tool.mcp
            mcp.ClearField("has_authorization")  # said by reads, never stored
            if mcp.authorization:
                mcp.authorization = self._sealer.seal_text(mcp.authorization, user)
            else:
                mcp.authorization = kept.get((tool.name, mcp.url), "")
        return stored

    async def _provider_type(self, provider: str) -> int | None:
        if self._provider_types is None:
            return None
        return await self._provider_types.type_of(provider)

    async def _publish_change(self, agent: records.Agent, kind: common_pb2.ChangeKind) -> None:
        await self._events.publish(
            events_pb2.AgentChanged(
                agent=AGENT.format(agent.id),
                user=USER.format(agent.user_id),
                kind=kind,
                etag=agent.etag,
                time=timestamp(agent.update_time),
                revision_id=agent.revision_id,
            )
        )


class WorkflowServicer(workflows_pb2_grpc.WorkflowServiceServicer):
    def __init__(self, store: RegistryStore, events: EventBus, pages: Pages):
        self._workflows = store.workflows
        self._pages = pages
        self._events = events

    async def CreateWorkflow(
        self, request: workflows_pb2.CreateWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> workflows_pb2.Workflow:
        user = current_user()
        check_workflow_definition(request.workflow)
        now = utc_now()
        workflow = records.Workflow(
            id=request.workflow_id or new_id(),
            user_id=user.user_id,
            definition=_definition(request.workflow, _WORKFLOW_KEPT_APART),
            etag=new_id(),
            create_time=now,
            update_time=now,
        )
        agents = workflow_agents(request.workflow)
        try:
            await self._workflows.create_workflow(workflow, {agent for _, agent in agents})
        except records.AgentsNotFound as missing:
            raise _agents_not_found(agents, missing.ids) from None
        await self._publish_change(workflow, common_pb2.CHANGE_KIND_CREATED)
        return _workflow_proto(workflow)

    async def GetWorkflow(
        self, request: workflows_pb2.GetWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> workflows_pb2.Workflow:
        workflow = await self._workflows.get_workflow(
            current_user().user_id, WORKFLOW.id(request.name)
        )
        return _workflow_proto(workflow)

    async def ListWorkflows(
        self, request: workflows_pb2.ListWorkflowsRequest, context: grpc.aio.ServicerContext
    ) -> workflows_pb2.ListWorkflowsResponse:
        cursor = self._pages.open(request)
        page = await self._workflows.list_workflows(
            current_user().user_id,
            cursor.after,
            cursor.size,
        )
        return workflows_pb2.ListWorkflowsResponse(
            workflows=[_workflow_proto(workflow) for workflow in page.items],
            next_page_token=cursor.next_token(page.last_seq),
        )

    async def UpdateWorkflow(
        self, request: workflows_pb2.UpdateWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> workflows_pb2.Workflow:
        user = current_user()
        (workflow_id,) = check_update("workflow", request.workflow, request.update_mask, WORKFLOW)

        agents: list[tuple[str, str]] = []

        def update(current: records.Workflow) -> tuple[records.Workflow, set[str]]:
            merged = merge_update(
                "workflow", _workflow_proto(current), request.workflow, request.update_mask
            )
            check_workflow_definition(merged)
            agents[:] = workflow_agents(merged)
            workflow = records.Workflow(
                id=current.id,
                user_id=current.user_id,
                definition=_definition(merged, _WORKFLOW_KEPT_APART),
                etag=new_id(),
                create_time=current.create_time,
                update_time=utc_now(),
            )
            return workflow, {agent_id for _, agent_id in agents}

        try:
            workflow = await self._workflows.change_workflow(user.user_id, workflow_id, update)
        except records.AgentsNotFound as missing:
            raise _agents_not_found(agents, missing.ids) from None
        await self._publish_change(workflow, common_pb2.CHANGE_KIND_UPDATED)
        return _workflow_proto(workflow)

    async def DeleteWorkflow(
        self, request: workflows_pb2.DeleteWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        user = current_user()
        await self._workflows.delete_workflow(user.user_id, WORKFLOW.id(request.name), request.etag)
        await self._events.publish(
            events_pb2.WorkflowChanged(
                workflow=request.name,
                user=user.user,
                kind=common_pb2.CHANGE_KIND_DELETED,
                time=timestamp(utc_now()),
            )
        )
        return empty_pb2.Empty()

    async def _publish_change(
        self, workflow: records.Workflow, kind: common_pb2.ChangeKind
    ) -> None:
        await self._events.publish(
            events_pb2.WorkflowChanged(
                workflow=WORKFLOW.format(workflow.id),
                user=USER.format(workflow.user_id),
                kind=kind,
                etag=workflow.etag,
                time=timestamp(workflow.update_time),
            )
        )


def _user_proto(user: records.User) -> account_pb2.User:
    return account_pb2.User(
        name=USER.format(user.id),
        display_name=user.display_name,
        email=user.email,
        admin=user.admin,
        create_time=timestamp(user.create_time),
    )


def _key_proto(key: records.ApiKey) -> account_pb2.ApiKey:
    message = account_pb2.ApiKey(
        name=API_KEY.format(key.user_id, key.id),
        display_name=key.display_name,
        secret=key.secret,
        prefix=key.prefix,
        create_time=timestamp(key.create_time),
    )
    if key.expire_time:
        message.expire_time.CopyFrom(timestamp(key.expire_time))
    return message


def _balance_proto(balance: records.Balance) -> account_pb2.CreditBalance:
    return account_pb2.CreditBalance(
        name=f"{USER.format(balance.user_id)}/creditBalance",
        balance=balance.balance,
        reserved=balance.reserved,
        available=balance.balance - balance.reserved,
    )


def _own_user_id(user_name: str) -> str:
    """The user a caller may act on: itself (or users/me), any user for an admin.

    Anyone else's user answers NOT_FOUND, so a caller cannot learn who exists.
    """
    principal = current_user()
    user_id = USER.id(user_name)
    if user_id == "me":
        return principal.user_id
    if user_id != principal.user_id and not principal.admin:
        raise NotFound(user_name)
    return user_id


class AccountServicer(account_pb2_grpc.AccountServiceServicer):
    def __init__(
        self, store: RegistryStore, authenticator: Authenticator, events: EventBus, pages: Pages
    ):
        self._accounts = store.accounts
        self._pages = pages
        self._credits = store.credits
        self._authenticator = authenticator
        self._events = events

    async def CreateUser(
        self, request: account_pb2.CreateUserRequest, context: grpc.aio.ServicerContext
    ) -> account_pb2.User:
        user = await self._accounts.create_user(
            request.user.display_name, request.user.email, request.user.admin
        )
        return _user_proto(user)

    async def GetUser(
        self, request: account_pb2.GetUserRequest, context: grpc.aio.ServicerContext
    ) -> account_pb2.User:
        return _user_proto(await self._accounts.get_user(_own_user_id(request.name)))

    async def CreateApiKey(
        self, request: account_pb2.CreateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> account_pb2.ApiKey:
        user_id = _own_user_id(request.parent)
        await self._accounts.get_user(user_id)
        expire_time = None
        if request.api_key.HasField("expire_time"):
            expire_time = request.api_key.expire_time.ToDatetime(tzinfo=UTC)
            if expire_time <= utc_now():
                raise InvalidArgument([("api_key.expire_time", "must be in the future")])
        key = await self._accounts.create_api_key(
            user_id, request.api_key.display_name, expire_time
        )
        return _key_proto(key)

    async def ListApiKeys(
        self, request: account_pb2.ListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> account_pb2.ListApiKeysResponse:
        cursor = self._pages.open(request)
        page = await self._accounts.list_api_keys(
            _own_user_id(request.parent),
            cursor.after,
            cursor.size,
        )
        return account_pb2.ListApiKeysResponse(
            api_keys=[_key_proto(key) for key in page.items],
            next_page_token=cursor.next_token(page.last_seq),
        )

    async def DeleteApiKey(
        self, request: account_pb2.DeleteApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        named_user, key_id = API_KEY.parse(request.name)
        user_id = _own_user_id(USER.format(named_user))
        await self._accounts.delete_api_key(user_id, key_id)
        user = USER.format(user_id)
        # Keys are cached for a while: a deleted one stops working in this process
        # now, and in every other once the event reaches it.
        self._authenticator.forget(user)
        await self._events.publish(
            events_pb2.ApiKeyRevoked(
                api_key=API_KEY.format(user_id, key_id), user=user, time=timestamp(utc_now())
            )
        )
        return empty_pb2.Empty()

    async def GetCreditBalance(
        self, request: account_pb2.GetCreditBalanceRequest, context: grpc.aio.ServicerContext
    ) -> account_pb2.CreditBalance:
        user_id = _own_user_id(request.name.removesuffix("/creditBalance"))
        return _balance_proto(await self._credits.get_balance(user_id))

    async def GrantCredits(
        self, request: account_pb2.GrantCreditsRequest, context: grpc.aio.ServicerContext
    ) -> account_pb2.CreditBalance:
        balance = await self._credits.grant_credits(
            USER.id(request.user), request.amount, request.reason
        )
        return _balance_proto(balance)

    async def Authenticate(
        self, request: account_pb2.AuthenticateRequest, context: grpc.aio.ServicerContext
    ) -> account_pb2.Principal:
        found = await self._accounts.key_owner(hash_key(request.api_key))
        if found is None:
            raise NotFound("api key")
        user, expire_time = found
        principal = account_pb2.Principal(user=USER.format(user.id), admin=user.admin)
        if expire_time:
            principal.expire_time.CopyFrom(timestamp(expire_time))
        return principal

    async def ReserveCredits(
        self, request: account_pb2.ReserveCreditsRequest, context: grpc.aio.ServicerContext
    ) -> account_pb2.Reservation:
        ttl = request.ttl.ToTimedelta() if request.HasField("ttl") else timedelta(0)
        reservation = await self._credits.reserve_credits(
            USER.id(request.user), request.amount, ttl or DEFAULT_RESERVATION_TTL
        )
        return account_pb2.Reservation(
            name=f"reservations/{reservation.id}",
            user=request.user,
            amount=reservation.amount,
            expire_time=timestamp(reservation.expire_time),
        )

    async def SettleCredits(
        self, request: account_pb2.SettleCreditsRequest, context: grpc.aio.ServicerContext
    ) -> account_pb2.CreditBalance:
        balance = await self._credits.settle_credits(
            request.reservation.removeprefix("reservations/"), request.amount
        )
        return _balance_proto(balance)

    async def ReleaseCredits(
        self, request: account_pb2.ReleaseCreditsRequest, context: grpc.aio.ServicerContext
    ) -> account_pb2.CreditBalance:
        balance = await self._credits.release_credits(
            request.reservation.removeprefix("reservations/")
        )
        return _balance_proto(balance)
