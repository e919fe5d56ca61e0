"""Bad input to the registry: INVALID_ARGUMENT naming each bad field, and nothing written.

Every error is checked through its google.rpc details (BadRequest field violations
and an ErrorInfo with a reason), never through its message text.
"""

from __future__ import annotations

import base64

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from rpc_helpers import error_info, field_violations

from agentmesh.catalog import list_all_agents
from agentmesh.gen.guardrails.v1 import guardrails_pb2 as g
from agentmesh.gen.registry.v1 import registry_pb2 as r

FUNCTION = r.TOOL_TYPE_FUNCTION
REGEX = g.GUARDRAIL_IMPLEMENTATION_REGEX


def agent(display_name: str = "Bad input", **fields) -> r.Agent:
    return r.Agent(display_name=display_name, **fields)


def tool(name: str = "lookup", type: int = FUNCTION, **fields) -> r.Tool:
    return r.Tool(type=type, name=name, **fields)


def regex_guardrail(pattern: str) -> g.Guardrail:
    return g.Guardrail(name="no-secrets", implementation=REGEX, config={"pattern": pattern})


def details(error: grpc.aio.AioRpcError) -> tuple[list[str], error_details_pb2.ErrorInfo]:
    """The BadRequest fields (in order) and the one ErrorInfo of an error."""
    return field_violations(error), error_info(error)


async def invalid(call) -> tuple[list[str], error_details_pb2.ErrorInfo]:
    """Awaits a call that must fail with INVALID_ARGUMENT; returns its details."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
    return details(caught.value)


# Each: a bad agent for CreateAgent, the fields that must be named, the ErrorInfo reason.
CREATE_CASES = {
    "empty display_name": (agent(""), ["agent.display_name"], "INVALID_ARGUMENT"),
    "oversized instructions": (
        agent(instructions="x" * 100_001),
        ["agent.instructions"],
        "INVALID_ARGUMENT",
    ),
    "undefined tool type": (agent(tools=[tool(type=99)]), ["agent.tools[0].type"], None),
    "unspecified tool type": (
        agent(tools=[tool(type=r.TOOL_TYPE_UNSPECIFIED)]),
        ["agent.tools[0].type"],
        None,
    ),
    # A non-string $schema once crashed the schema check (INTERNAL).
    "output_type with a non-string $schema": (
        agent(output_type={"$schema": ["draft"], "type": "object"}),
        ["agent.output_type"],
        "INVALID_ARGUMENT",
    ),
    "tool parameters with a numeric $schema": (
        agent(tools=[tool(parameters={"$schema": 7})]),
        ["agent.tools[0].parameters"],
        "INVALID_ARGUMENT",
    ),
    "output_type not a JSON Schema": (
        agent(output_type={"type": "object", "properties": {"answer": {"type": 12}}}),
        ["agent.output_type"],
        "INVALID_ARGUMENT",
    ),
    "tool parameters not a JSON Schema": (
        agent(tools=[tool(parameters={"type": "no-such-type"})]),
        ["agent.tools[0].parameters"],
        "INVALID_ARGUMENT",
    ),
    "handoff to a missing agent": (
        agent(handoffs=["agents/doesnotexist"]),
        ["agent.handoffs[0]"],
        "HANDOFF_TARGET_NOT_FOUND",
    ),
    "malformed handoff name": (agent(handoffs=["not-an-agent"]), ["agent.handoffs[0]"], None),
    "tool name with spaces": (
        agent(tools=[tool("look up invoice")]),
        ["agent.tools[0].name"],
        None,
    ),
    "duplicate tool names": (
        agent(tools=[tool("lookup"), tool("other"), tool("lookup")]),
        ["agent.tools[2].name"],
        "INVALID_ARGUMENT",
    ),
    # Lookbehind is valid for Python's re but not RE2, which the guardrails use.
    "non-RE2 pattern in a regex guardrail": (
        agent(input_guardrails=[regex_guardrail(r"(?<=key=)\w+")]),
        ["agent.input_guardrails[0].config.pattern"],
        "INVALID_ARGUMENT",
    ),
    "unbalanced pattern in an output regex guardrail": (
        agent(output_guardrails=[regex_guardrail("(unclosed")]),
        ["agent.output_guardrails[0].config.pattern"],
        "INVALID_ARGUMENT",
    ),
    "regex guardrail without a pattern": (
        agent(input_guardrails=[g.Guardrail(name="empty", implementation=REGEX)]),
        ["agent.input_guardrails[0].config.pattern"],
        "INVALID_ARGUMENT",
    ),
    "temperature 3.0": (
        agent(model_settings=r.ModelSettings(temperature=3.0)),
        ["agent.model_settings.temperature"],
        None,
    ),
}


@pytest.mark.parametrize("case", CREATE_CASES)
async def test_create_agent_rejects_bad_definitions(new_sqlite_user, case):
    bad, expected_fields, reason = CREATE_CASES[case]
    client, _ = await new_sqlite_user()
    existing = await client.registry.CreateAgent(r.CreateAgentRequest(agent=agent("Existing")))
    before = await list_all_agents(client)

    fields, info = await invalid(client.registry.CreateAgent(r.CreateAgentRequest(agent=bad)))

    assert fields == expected_fields
    assert info.reason == (reason or "INVALID_ARGUMENT")
    after = await list_all_agents(client)
    assert after == before == [existing]
    assert not [a for a in after if a.display_name == bad.display_name and a != existing]


async def test_several_problems_are_all_reported(new_sqlite_user):
    client, _ = await new_sqlite_user()
    fields, info = await invalid(
        client.registry.CreateAgent(
            r.CreateAgentRequest(
                agent=agent(
                    "",
                    instructions="x" * 100_001,
                    model_settings=r.ModelSettings(temperature=3.0, top_p=1.5),
                    tools=[tool("ok"), tool("has space", type=99)],
                    handoffs=["agents/a b"],
                )
            )
        )
    )
    assert sorted(fields) == sorted(
        [
            "agent.display_name",
            "agent.instructions",
            "agent.model_settings.temperature",
            "agent.model_settings.top_p",
            "agent.tools[1].type",
            "agent.tools[1].name",
            "agent.handoffs[0]",
        ]
    )
    assert info.reason == "INVALID_ARGUMENT"
    assert await list_all_agents(client) == []


async def test_several_definition_problems_are_all_reported(new_sqlite_user):
    """The checks buf.validate cannot express also report everything at once."""
    client, _ = await new_sqlite_user()
    fields, _ = await invalid(
        client.registry.CreateAgent(
            r.CreateAgentRequest(
                agent=agent(
                    output_type={"type": 5},
                    tools=[
                        tool("twice"),
                        tool("twice", parameters={"type": "object", "required": "id"}),
                    ],
                    input_guardrails=[regex_guardrail("ok"), regex_guardrail("a{2,1}")],
                    output_guardrails=[regex_guardrail(r"(?!x)")],
                )
            )
        )
    )
    assert sorted(fields) == sorted(
        [
            "agent.output_type",
            "agent.tools[1].name",
            "agent.tools[1].parameters",
            "agent.input_guardrails[1].config.pattern",
            "agent.output_guardrails[0].config.pattern",
        ]
    )
    assert await list_all_agents(client) == []


async def test_several_missing_handoff_targets_are_all_reported(new_sqlite_user):
    client, _ = await new_sqlite_user()
    target = await client.registry.CreateAgent(r.CreateAgentRequest(agent=agent("Target")))
    fields, info = await invalid(
        client.registry.CreateAgent(
            r.CreateAgentRequest(
                agent=agent(handoffs=["agents/missing1", target.name, "agents/missing2"])
            )
        )
    )
    assert fields == ["agent.handoffs[0]", "agent.handoffs[2]"]
    assert info.reason == "HANDOFF_TARGET_NOT_FOUND"
    assert await list_all_agents(client) == [target]


async def test_another_users_agent_is_not_a_handoff_target(new_sqlite_user):
    other, _ = await new_sqlite_user()
    theirs = await other.registry.CreateAgent(r.CreateAgentRequest(agent=agent("Theirs")))
    client, _ = await new_sqlite_user()
    fields, _ = await invalid(
        client.registry.CreateAgent(r.CreateAgentRequest(agent=agent(handoffs=[theirs.name])))
    )
    assert fields == ["agent.handoffs[0]"]
    assert await list_all_agents(client) == []


def _token(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    [
        "not a token",
        "%%%",
        "a",
        _token("v2:10"),
        _token("v1:ten"),
        _token("v1:"),
        base64.urlsafe_b64encode(b"\xff\xfe:1").decode(),
        _token("v1:-5"),
        _token("v1:0"),
        _token("v1:" + "9" * 30),  # a sequence no database integer can hold
        "x" * 513,  # longer than any token (buf.validate max_len)
    ],
)
async def test_list_agents_rejects_a_bad_page_token(new_sqlite_user, token):
    client, _ = await new_sqlite_user()
    await client.registry.CreateAgent(r.CreateAgentRequest(agent=agent()))
    fields, info = await invalid(client.registry.ListAgents(r.ListAgentsRequest(page_token=token)))
    assert fields == ["page_token"]
    assert info.reason == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    "name", ["", "agent/abc", "agents/", "agents/has space", "agents/a/b", "agents/" + "a" * 65]
)
async def test_get_agent_rejects_a_malformed_name(new_sqlite_user, name):
    client, _ = await new_sqlite_user()
    fields, info = await invalid(client.registry.GetAgent(r.GetAgentRequest(name=name)))
    assert fields == ["name"]
    assert info.reason == "INVALID_ARGUMENT"


async def _update_is_rejected(client, request: r.UpdateAgentRequest, original: r.Agent):
    """UpdateAgent fails with INVALID_ARGUMENT and leaves `original` as it was."""
    result = await invalid(client.registry.UpdateAgent(request))
    current = await client.registry.GetAgent(r.GetAgentRequest(name=original.name))
    assert current == original
    return result


async def _original(client) -> r.Agent:
    return await client.registry.CreateAgent(
        r.CreateAgentRequest(
            agent=agent("Original", instructions="Be kind.", tools=[tool("lookup")])
        )
    )


@pytest.mark.parametrize("path", ["no_such_field", "name", "etag", "create_time", "tools.name"])
async def test_update_agent_rejects_an_unknown_mask_path(new_sqlite_user, path):
    client, _ = await new_sqlite_user()
    original = await _original(client)
    fields, info = await _update_is_rejected(
        client,
        r.UpdateAgentRequest(
            agent=r.Agent(name=original.name, instructions="Changed."),
            update_mask=field_mask_pb2.FieldMask(paths=["instructions", path]),
        ),
        original,
    )
    assert fields == ["update_mask"]
    assert info.reason == "INVALID_ARGUMENT"


async def test_update_agent_reports_every_unknown_mask_path(new_sqlite_user):
    client, _ = await new_sqlite_user()
    original = await _original(client)
    fields, _ = await _update_is_rejected(
        client,
        r.UpdateAgentRequest(
            agent=r.Agent(name=original.name, instructions="Changed."),
            update_mask=field_mask_pb2.FieldMask(paths=["bogus", "instructions", "etag"]),
        ),
        original,
    )
    assert fields == ["update_mask", "update_mask"]


@pytest.mark.parametrize(
    "name", ["", "agent/abc", "agents/", "agents/has space", "agents/a/contexts/b", "abc"]
)
async def test_update_agent_rejects_a_malformed_name(new_sqlite_user, name):
    client, _ = await new_sqlite_user()
    original = await _original(client)
    fields, info = await invalid(
        client.registry.UpdateAgent(
            r.UpdateAgentRequest(
                agent=r.Agent(name=name, instructions="Changed."),
                update_mask=field_mask_pb2.FieldMask(paths=["instructions"]),
            )
        )
    )
    assert fields == ["agent.name"]
    assert info.reason == "INVALID_ARGUMENT"
    assert await client.registry.GetAgent(r.GetAgentRequest(name=original.name)) == original


async def test_update_agent_reports_name_and_mask_together(new_sqlite_user):
    client, _ = await new_sqlite_user()
    fields, _ = await invalid(
        client.registry.UpdateAgent(
            r.UpdateAgentRequest(
                agent=r.Agent(name="agent/abc"),
                update_mask=field_mask_pb2.FieldMask(paths=["bogus"]),
            )
        )
    )
    assert sorted(fields) == ["agent.name", "update_mask"]


async def test_update_agent_cannot_empty_display_name(new_sqlite_user):
    client, _ = await new_sqlite_user()
    original = await _original(client)
    fields, info = await _update_is_rejected(
        client,
        r.UpdateAgentRequest(
            agent=r.Agent(name=original.name, display_name="", instructions="Changed."),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name", "instructions"]),
        ),
        original,
    )
    assert fields == ["agent.display_name"]
    assert info.reason == "INVALID_ARGUMENT"


async def test_update_agent_validates_merged_fields(new_sqlite_user):
    client, _ = await new_sqlite_user()
    original = await _original(client)
    fields, _ = await _update_is_rejected(
        client,
        r.UpdateAgentRequest(
            agent=r.Agent(
                name=original.name,
                model_settings=r.ModelSettings(temperature=3.0),
                tools=[tool("dup"), tool("dup"), tool("bad name")],
                output_type={"type": 5},
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["model_settings", "tools", "output_type"]),
        ),
        original,
    )
    # buf.validate problems come first; the definition checks need a valid message.
    assert sorted(fields) == ["agent.model_settings.temperature", "agent.tools[2].name"]

    fields, _ = await _update_is_rejected(
        client,
        r.UpdateAgentRequest(
            agent=r.Agent(
                name=original.name,
                tools=[tool("dup"), tool("dup")],
                output_type={"type": 5},
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["tools", "output_type"]),
        ),
        original,
    )
    assert sorted(fields) == ["agent.output_type", "agent.tools[1].name"]


async def test_update_agent_rejects_missing_handoff_targets(new_sqlite_user):
    client, _ = await new_sqlite_user()
    original = await _original(client)
    fields, info = await _update_is_rejected(
        client,
        r.UpdateAgentRequest(
            agent=r.Agent(name=original.name, handoffs=["agents/missing"]),
            update_mask=field_mask_pb2.FieldMask(paths=["handoffs"]),
        ),
        original,
    )
    assert fields == ["agent.handoffs[0]"]
    assert info.reason == "HANDOFF_TARGET_NOT_FOUND"


async def test_update_agent_requires_an_update_mask(new_sqlite_user):
    client, _ = await new_sqlite_user()
    original = await _original(client)
    fields, info = await _update_is_rejected(
        client,
        r.UpdateAgentRequest(agent=r.Agent(name=original.name, instructions="Changed.")),
        original,
    )
    assert fields == ["update_mask"]
    assert info.reason == "INVALID_ARGUMENT"


async def test_add_handoff_to_a_missing_target(new_sqlite_user):
    client, _ = await new_sqlite_user()
    original = await _original(client)
    fields, info = await invalid(
        client.registry.AddHandoff(
            r.AddHandoffRequest(agent=original.name, target="agents/doesnotexist")
        )
    )
    assert fields == ["target"]
    assert info.reason == "INVALID_ARGUMENT"
    assert await client.registry.GetAgent(r.GetAgentRequest(name=original.name)) == original


async def test_add_handoff_with_malformed_names(new_sqlite_user):
    client, _ = await new_sqlite_user()
    original = await _original(client)
    fields, _ = await invalid(
        client.registry.AddHandoff(r.AddHandoffRequest(agent="agents/", target="nope"))
    )
    assert sorted(fields) == ["agent", "target"]
    assert await client.registry.GetAgent(r.GetAgentRequest(name=original.name)) == original


async def test_add_handoff_to_itself_or_to_another_users_agent(new_sqlite_user):
    other, _ = await new_sqlite_user()
    theirs = await other.registry.CreateAgent(r.CreateAgentRequest(agent=agent("Theirs")))
    client, _ = await new_sqlite_user()
    original = await _original(client)
    for target in (original.name, theirs.name):
        fields, _ = await invalid(
            client.registry.AddHandoff(r.AddHandoffRequest(agent=original.name, target=target))
        )
        assert fields == ["target"]
    assert await client.registry.GetAgent(r.GetAgentRequest(name=original.name)) == original
