"""Agent definitions as the registry serves them, cached for runs.

A revision never changes, so a definition is cached by revision for good; which
revision is an agent's current one is cached until `agents.changed` says otherwise.
"""

from __future__ import annotations

from collections import OrderedDict

import grpc
from google.protobuf import json_format

from agentmesh.auth import USER_HEADER
from agentmesh.errors import FailedPrecondition, NotFound, PeerError
from agentmesh.gen.registry.v1 import events_pb2, registry_pb2, registry_pb2_grpc
from agentmesh.names import ResourceName

AGENT = ResourceName.of(registry_pb2.Agent)
_CACHE_SIZE = 4096


class AgentDefinitions:
    def __init__(self, registry: grpc.aio.Channel):
        self._registry = registry_pb2_grpc.RegistryServiceStub(registry)
        self._revisions: OrderedDict[tuple[str, str, str], registry_pb2.Agent] = OrderedDict()
        self._current: OrderedDict[tuple[str, str], str] = OrderedDict()

    async def get(self, user: str, agent_id: str, revision: str = "") -> registry_pb2.Agent:
        """The agent at a revision (its current one when empty), as `user` sees it."""
        revision = revision or self._current.get((user, agent_id), "")
        if revision and (cached := self._revisions.get((user, agent_id, revision))):
            self._revisions.move_to_end((user, agent_id, revision))
            return cached
        name = AGENT.format(agent_id) + (f"@{revision}" if revision else "")
        try:
            agent = await self._registry.GetAgent(
                registry_pb2.GetAgentRequest(name=name), metadata=((USER_HEADER, user),), timeout=10
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(name) from None
            raise PeerError.of(error) from None
        if not revision:
            self._current[(user, agent_id)] = agent.revision_id
            if len(self._current) > _CACHE_SIZE:  # the oldest is asked for again
                self._current.popitem(last=False)
        self._revisions[(user, agent_id, agent.revision_id)] = agent
        if len(self._revisions) > _CACHE_SIZE:
            self._revisions.popitem(last=False)
        return agent

    async def graph(
        self, user: str, agent_id: str, pinned: dict[str, str]
    ) -> dict[str, registry_pb2.Agent]:
        """Every agent a run of `agent_id` may reach (handoffs and agent tools), each at
        its pinned revision or, if none is pinned, its current one."""
        found: dict[str, registry_pb2.Agent] = {}
        waiting = [agent_id]
        while waiting:
            current = waiting.pop()
            if current in found:
                continue
            try:
                agent = await self.get(user, current, pinned.get(current, ""))
            except NotFound:
                if current == agent_id:
                    raise
                # The registry refuses deleting an agent in use; a run that still
                # reaches one (an old pinned revision) says so plainly.
                raise FailedPrecondition(
                    f"{AGENT.format(current)}, which this agent uses, no longer exists",
                    reason="AGENT_MISSING",
                ) from None
            found[current] = agent
            waiting.extend(AGENT.id(target) for target in agent.handoffs)
            waiting.extend(
                AGENT.id(tool.agent.agent)
                for tool in agent.tools
                if tool.WhichOneof("kind") == "agent"
            )
        return found

    def forget(self, event: events_pb2.AgentChanged) -> None:
        self._current.pop((event.user, AGENT.id(event.agent)), None)

    async def context_values(self, user: str, agent_id: str, context: str) -> dict:
        """The values of the named context (agents/{agent}/contexts/{context}), or of the
        agent's default context when none is named (empty when it has none)."""
        metadata = ((USER_HEADER, user),)
        try:
            if context:
                found = await self._registry.GetContext(
                    registry_pb2.GetContextRequest(name=context), metadata=metadata, timeout=10
                )
                return json_format.MessageToDict(found.values)
            token = ""
            while True:
                page = await self._registry.ListContexts(
                    registry_pb2.ListContextsRequest(
                        parent=AGENT.format(agent_id), page_size=1000, page_token=token
                    ),
                    metadata=metadata,
                    timeout=10,
                )
                for candidate in page.contexts:
                    if candidate.is_default:
                        return json_format.MessageToDict(candidate.values)
                token = page.next_page_token
                if not token:
                    return {}
        except grpc.aio.AioRpcError as error:
            raise PeerError.of(error) from None
