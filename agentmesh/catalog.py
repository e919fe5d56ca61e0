"""Agent definitions kept in a JSON file, applied to the registry through its API.

The file holds {"agents": [...]}: each entry is an Agent in proto JSON form plus
"id", the agent's id (it becomes agents/{id}; ids are the caller's own). Its
"handoffs" name other agents by id; agent tools and agent guardrails name them
as the Agent message does, "agents/{id}".

Applying is idempotent: an agent that exists is updated to the file's
definition (and left alone, with no new revision, if it matches already), one
that does not is created with its id. Agents another uses as a tool or a
guardrail are applied first; handoffs last, once every agent exists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.api import field_behavior_pb2
from google.protobuf import field_mask_pb2, json_format

from agentmesh.api import field_behaviors
from agentmesh.client import Client
from agentmesh.gen.registry.v1 import registry_pb2

# What a file defines: every field a client sets, but the name, etag and handoffs.
_DEFINITION_FIELDS = [
    name
    for name, kinds in field_behaviors(registry_pb2.Agent.DESCRIPTOR).items()
    if name not in ("name", "etag", "handoffs") and field_behavior_pb2.OUTPUT_ONLY not in kinds
]
_KEPT_APART = [
    field.name
    for field in registry_pb2.Agent.DESCRIPTOR.fields
    if field.name not in _DEFINITION_FIELDS
]


@dataclass
class _Entry:
    id: str
    definition: registry_pb2.Agent  # without handoffs
    handoffs: list[str]  # agents/{id}

    @property
    def name(self) -> str:
        return f"agents/{self.id}"

    def uses(self) -> set[str]:
        """Names of the agents it uses as tools and guardrails."""
        agent = self.definition
        names = {tool.agent.agent for tool in agent.tools if tool.WhichOneof("kind") == "agent"}
        for guardrail in [*agent.input_guardrails, *agent.output_guardrails]:
            if guardrail.WhichOneof("check") == "agent":
                names.add(guardrail.agent.agent)
        return names


async def list_all_agents(client: Client) -> list[registry_pb2.Agent]:
    agents, token = [], ""
    while True:
        page = await client.registry.ListAgents(
            registry_pb2.ListAgentsRequest(page_size=1000, page_token=token)
        )
        agents.extend(page.agents)
        token = page.next_page_token
        if not token:
            return agents


def load_definitions(path: Path) -> list[dict[str, Any]]:
    """The agents of a definitions file, each checked to make an Agent: ValueError
    (or OSError, for a file that cannot be read) naming what is wrong."""
    try:
        data = json.loads(path.read_text())
    except (ValueError, RecursionError) as error:
        raise ValueError(f"{path} is not JSON text: {error}") from None
    agents = data.get("agents") if isinstance(data, dict) else None
    if not isinstance(agents, list) or not all(isinstance(a, dict) for a in agents):
        raise ValueError(f'{path} holds no {{"agents": [...]}} list of objects')
    for definition in agents:
        _entry(definition)
    return agents


async def apply_definitions(
    client: Client, definitions: list[dict[str, Any]]
) -> list[registry_pb2.Agent]:
    """Creates or updates every agent of the file; returns them in the file's order."""
    entries = [_entry(definition) for definition in definitions]
    applied: dict[str, registry_pb2.Agent] = {}
    for entry in _users_last(entries):
        applied[entry.id] = await _put(client, entry)
    for entry in entries:
        if list(applied[entry.id].handoffs) != entry.handoffs:
            applied[entry.id] = await client.registry.UpdateAgent(
                registry_pb2.UpdateAgentRequest(
                    agent=registry_pb2.Agent(name=entry.name, handoffs=entry.handoffs),
                    update_mask=field_mask_pb2.FieldMask(paths=["handoffs"]),
                )
            )
    return [applied[entry.id] for entry in entries]


def _entry(definition: dict[str, Any]) -> _Entry:
    fields = dict(definition)
    agent_id = fields.pop("id", "")
    if not agent_id:
        raise ValueError(f"an agent of the file has no id: {fields.get('displayName', fields)!r}")
    handoffs = [f"agents/{target}" for target in fields.pop("handoffs", [])]
    try:
        agent = json_format.ParseDict(fields, registry_pb2.Agent())
    except json_format.ParseError as error:
        raise ValueError(f"agent {agent_id!r}: {error}") from None
    return _Entry(agent_id, agent, handoffs)


def _users_last(entries: list[_Entry]) -> list[_Entry]:
    """The entries ordered so that agents used as tools or guardrails come first."""
    by_name = {entry.name: entry for entry in entries}
    ordered: list[_Entry] = []
    placed: set[str] = set()
    visiting: set[str] = set()

    def place(entry: _Entry) -> None:
        if entry.name in placed:
            return
        if entry.name in visiting:
            raise ValueError(f"{entry.name} uses itself through its tools or guardrails")
        visiting.add(entry.name)
        for used in sorted(entry.uses()):
            if used in by_name:  # agents outside the file must exist already
                place(by_name[used])
        ordered.append(entry)
        placed.add(entry.name)

    for entry in entries:
        place(entry)
    return ordered


async def _put(client: Client, entry: _Entry) -> registry_pb2.Agent:
    try:
        current = await client.registry.GetAgent(registry_pb2.GetAgentRequest(name=entry.name))
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return await client.registry.CreateAgent(
            registry_pb2.CreateAgentRequest(agent=entry.definition, agent_id=entry.id)
        )
    defined = registry_pb2.Agent()
    defined.CopyFrom(current)
    for field in _KEPT_APART:
        defined.ClearField(field)
    if defined == entry.definition:
        return current
    update = registry_pb2.Agent()
    update.CopyFrom(entry.definition)
    update.name = entry.name
    return await client.registry.UpdateAgent(
        registry_pb2.UpdateAgentRequest(
            agent=update, update_mask=field_mask_pb2.FieldMask(paths=_DEFINITION_FIELDS)
        )
    )


def format_agents(agents: list[registry_pb2.Agent]) -> str:
    by_name = {agent.name: agent.display_name for agent in agents}
    lines = [f"{'AGENT':<40} {'DISPLAY NAME':<18} {'TOOLS':<5} HANDOFFS"]
    for agent in agents:
        handoffs = ", ".join(by_name.get(h, h) for h in agent.handoffs) or "-"
        lines.append(f"{agent.name:<40} {agent.display_name:<18} {len(agent.tools):<5} {handoffs}")
    return "\n".join(lines)
