"""Agent definitions kept in a JSON file, applied to the registry through its API.

The file holds {"agents": [Agent in proto JSON form, ...]}; handoffs name other
agents of the file by display_name. Applying is idempotent: an agent whose
display_name exists already is updated in place.
"""

from __future__ import annotations

import json
from pathlib import Path

from google.protobuf import field_mask_pb2, json_format

from agentmesh.client import Client
from agentmesh.gen.registry.v1 import registry_pb2 as r

_DEFINITION_FIELDS = [
    field.name
    for field in r.Agent.DESCRIPTOR.fields
    if field.name not in ("name", "create_time", "update_time", "etag", "handoffs")
]


async def list_all_agents(client: Client) -> list[r.Agent]:
    agents, token = [], ""
    while True:
        page = await client.registry.ListAgents(
            r.ListAgentsRequest(page_size=1000, page_token=token)
        )
        agents.extend(page.agents)
        token = page.next_page_token
        if not token:
            return agents


def load_definitions(path: Path) -> list[dict]:
    return json.loads(path.read_text())["agents"]


async def apply_definitions(client: Client, definitions: list[dict]) -> list[r.Agent]:
    existing = {agent.display_name: agent for agent in await list_all_agents(client)}
    applied: dict[str, r.Agent] = {}
    for definition in definitions:
        handoff_names = definition.pop("handoffs", [])
        agent = json_format.ParseDict(definition, r.Agent())
        if agent.display_name in existing:
            agent.name = existing[agent.display_name].name
            applied[agent.display_name] = await client.registry.UpdateAgent(
                r.UpdateAgentRequest(
                    agent=agent, update_mask=field_mask_pb2.FieldMask(paths=_DEFINITION_FIELDS)
                )
            )
        else:
            applied[agent.display_name] = await client.registry.CreateAgent(
                r.CreateAgentRequest(agent=agent)
            )
        definition["handoffs"] = handoff_names
    # Handoffs last: their targets must exist first.
    for definition in definitions:
        source = applied[definition["displayName"]]
        for target_name in definition["handoffs"]:
            source = await client.registry.AddHandoff(
                r.AddHandoffRequest(agent=source.name, target=applied[target_name].name)
            )
        applied[definition["displayName"]] = source
    return list(applied.values())


def format_agents(agents: list[r.Agent]) -> str:
    by_name = {agent.name: agent.display_name for agent in agents}
    lines = [f"{'AGENT':<40} {'DISPLAY NAME':<18} {'TOOLS':<5} HANDOFFS"]
    for agent in agents:
        handoffs = ", ".join(by_name.get(h, h) for h in agent.handoffs) or "-"
        lines.append(f"{agent.name:<40} {agent.display_name:<18} {len(agent.tools):<5} {handoffs}")
    return "\n".join(lines)
