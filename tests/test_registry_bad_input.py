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
from support import expect_rpc_error

from agentmesh.catalog import list_all_agents
from agentmesh.gen.guardrails.v1 import guardrails_pb2 as g
from agentmesh.gen.registry.v1 import registry_pb2 as r

BLOCK = g.RegexCheck.ACTION_BLOCK
SOURCE = "def main(**arguments):\n    return arguments\n"


def agent(display_name: str = "Bad input", **fields) -> r.Agent:
    return r.Agent(display_name=display_name, **fields)


def tool(name: str = "lookup", **kind) -> r.Tool:
    """A tool of the given kind; a code function tool when no kind is given."""
    if not kind:
        kind = {"function": r.FunctionTool(code=r.CodeFunction(source=SOURCE))}
    return r.Tool(name=name, **kind)


def function(parameters=None, **implementation) -> dict:
    implementation = implementation or {"code": r.CodeFunction(source=SOURCE)}
    return {"function": r.FunctionTool(parameters=parameters, **implementation)}


def http_tool(url: str) -> r.Tool:
    return tool(**function(http=r.HttpFunction(url=url)))


def regex_guardrail(pattern: str, name: str = "no-secrets") -> g.Guardrail:
    return g.Guardrail(name=name, regex=g.RegexCheck(pattern=pattern, action=BLOCK))


def agent_guardrail(target: str) -> g.Guardrail:
    return g.Guardrail(name="judge", agent=g.AgentCheck(agent=target))


def schema_guardrail(schema: dict) -> g.Guardrail:
    detector = g.BuiltinCheck(json_schema=g.JsonSchemaConformance(schema=schema))
    return g.Guardrail(name="shape", builtin=detector)


async def invalid(call) -> tuple[list[str], error_details_pb2.ErrorInfo]:
    """Awaits a call that must fail with INVALID_ARGUMENT; returns its fields and ErrorInfo."""
    error = await expect_rpc_error(call, grpc.StatusCode.INVALID_ARGUMENT)
    return field_violations(error), error_info(error)


# Each: a bad agent for CreateAgent, the fields that must be named, the ErrorInfo reason.
CREATE_CASES = {
    "empty display_name": (agent(""), ["agent.display_name"], None),
    "oversized instructions": (agent(instructions="x" * 100_001), ["agent.instructions"], None),
    "temperature 3.0": (
        agent(model_settings=r.ModelSettings(temperature=3.0)),
        ["agent.model_settings.temperature"],
        None,
    ),
    "provider not a provider name": (
        agent(model_settings=r.ModelSettings(provider="openai")),
        ["agent.model_settings.provider"],
        None,
    ),
    # Tools: every kind, and the tool's own fields.
    "tool of no kind": (agent(tools=[r.Tool(name="nothing")]), ["agent.tools[0].kind"], None),
    "tool name with spaces": (agent(tools=[tool("look up")]), ["agent.tools[0].name"], None),
    "duplicate tool names": (
        agent(tools=[tool("lookup"), tool("other"), tool("lookup")]),
        ["agent.tools[2].name"],
        None,
    ),
    "function without an implementation": (
        agent(tools=[tool(function=r.FunctionTool())]),
        ["agent.tools[0].function.implementation"],
        None,
    ),
    "code function without source": (
        agent(tools=[tool(**function(code=r.CodeFunction()))]),
        ["agent.tools[0].function.code.source"],
        None,
    ),
    "http function on ftp": (
        agent(tools=[http_tool("ftp://files.example.com/x")]),
        ["agent.tools[0].function.http.url"],
        None,
    ),
    # A non-string $schema once crashed the schema check (INTERNAL).
    "parameters with a numeric $schema": (
        agent(tools=[tool(**function({"$schema": 7, "type": "object"}))]),
        ["agent.tools[0].function.parameters"],
        None,
    ),
    "parameters not a JSON Schema": (
        agent(tools=[tool(**function({"type": "no-such-type"}))]),
        ["agent.tools[0].function.parameters"],
        None,
    ),
    "parameters not an object": (
        agent(tools=[tool(**function({"type": "string"}))]),
        ["agent.tools[0].function.parameters"],
        None,
    ),
    # The schema's own patterns are judged by RE2 too, never by Python's re.
    "parameters with a lookbehind pattern": (
        agent(
            tools=[
                tool(
                    **function(
                        {
                            "type": "object",
                            "properties": {"id": {"type": "string", "pattern": "(?<=x)y"}},
                        }
                    )
                )
            ]
        ),
        ["agent.tools[0].function.parameters"],
        None,
    ),
    "agent tool with a malformed name": (
        agent(tools=[tool(agent=r.AgentTool(agent="agent/x"))]),
        ["agent.tools[0].agent.agent"],
        None,
    ),
    "agent tool naming a missing agent": (
        agent(tools=[tool(agent=r.AgentTool(agent="agents/missing"))]),
        ["agent.tools[0].agent.agent"],
        "AGENT_NOT_FOUND",
    ),
    "file search without vector stores": (
        agent(tools=[tool(file_search=r.FileSearchTool())]),
        ["agent.tools[0].file_search.vector_stores"],
        None,
    ),
    "file search naming no vector store": (
        agent(tools=[tool(file_search=r.FileSearchTool(vector_stores=["stores/x"]))]),
        ["agent.tools[0].file_search.vector_stores[0]"],
        None,
    ),
    "web search of an undefined context size": (
        agent(tools=[tool(web_search=r.WebSearchTool(search_context_size=9))]),
        ["agent.tools[0].web_search.search_context_size"],
        None,
    ),
    "computer without allowed commands": (
        agent(tools=[tool(computer=r.ComputerTool())]),
        ["agent.tools[0].computer.allowed_commands"],
        None,
    ),
    "computer with a relative blocked path": (
        agent(
            tools=[tool(computer=r.ComputerTool(allowed_commands=["ls"], blocked_paths=["etc"]))]
        ),
        ["agent.tools[0].computer.blocked_paths[0]"],
        None,
    ),
    "mcp without a url": (
        agent(tools=[tool(mcp=r.McpTool())]),
        ["agent.tools[0].mcp.url"],
        None,
    ),
    "mcp approval for a tool it never calls": (
        agent(
            tools=[
                tool(
                    mcp=r.McpTool(
                        url="https://mcp.example.com/mcp",
                        allowed_tools=["search"],
                        approval_required_tools=["delete"],
                    )
                )
            ]
        ),
        ["agent.tools[0].mcp.approval_required_tools"],
        None,
    ),
    # Guardrails: every kind.
    "guardrail of no kind": (
        agent(input_guardrails=[g.Guardrail(name="nothing")]),
        ["agent.input_guardrails[0].check"],
        None,
    ),
    "duplicate guardrail names": (
        agent(output_guardrails=[regex_guardrail("a"), regex_guardrail("b")]),
        ["agent.output_guardrails[1].name"],
        None,
    ),
    # Lookbehind is valid for Python's re but not RE2, which the guardrails use.
    "non-RE2 pattern in a regex guardrail": (
        agent(input_guardrails=[regex_guardrail(r"(?<=key=)\w+")]),
        ["agent.input_guardrails[0].regex.pattern"],
        None,
    ),
    "unbalanced pattern in an output regex guardrail": (
        agent(output_guardrails=[regex_guardrail("(unclosed")]),
        ["agent.output_guardrails[0].regex.pattern"],
        None,
    ),
    "regex guardrail without a pattern": (
        agent(input_guardrails=[g.Guardrail(name="e", regex=g.RegexCheck(action=BLOCK))]),
        ["agent.input_guardrails[0].regex.pattern"],
        None,
    ),
    "regex guardrail without an action": (
        agent(input_guardrails=[g.Guardrail(name="e", regex=g.RegexCheck(pattern="x"))]),
        ["agent.input_guardrails[0].regex.action"],
        None,
    ),
    "builtin guardrail of no detector": (
        agent(input_guardrails=[g.Guardrail(name="b", builtin=g.BuiltinCheck())]),
        ["agent.input_guardrails[0].builtin.detector"],
        None,
    ),
    "json schema detector with a bad schema": (
        agent(output_guardrails=[schema_guardrail({"type": "object", "required": "id"})]),
        ["agent.output_guardrails[0].builtin.json_schema.schema"],
        None,
    ),
    "code guardrail without source": (
        agent(input_guardrails=[g.Guardrail(name="c", code=g.CodeCheck())]),
        ["agent.input_guardrails[0].code.source"],
        None,
    ),
    "endpoint guardrail on ftp": (
        agent(input_guardrails=[g.Guardrail(name="e", endpoint=g.EndpointCheck(url="ftp://x"))]),
        ["agent.input_guardrails[0].endpoint.url"],
        None,
    ),
    "agent guardrail naming a missing agent": (
        agent(input_guardrails=[agent_guardrail("agents/missing")]),
        ["agent.input_guardrails[0].agent.agent"],
        "AGENT_NOT_FOUND",
    ),
    # Output schema and handoffs.
    "output_type with a non-string $schema": (
        agent(output_type={"$schema": ["draft"], "type": "object"}),
        ["agent.output_type"],
        None,
    ),
    "output_type of an older draft": (
        agent(output_type={"$schema": "http://json-schema.org/draft-07/schema#"}),
        ["agent.output_type"],
        None,
    ),
    "output_type not a JSON Schema": (
        agent(output_type={"type": "object", "properties": {"answer": {"type": 12}}}),
        ["agent.output_type"],
        None,
    ),
    "handoff to a missing agent": (
        agent(handoffs=["agents/doesnotexist"]),
        ["agent.handoffs[0]"],
        "HANDOFF_TARGET_NOT_FOUND",
    ),
    "malformed handoff name": (agent(handoffs=["not-an-agent"]), ["agent.handoffs[0]"], None),
    "negative credit cap": (agent(max_credits_per_run=-1), ["agent.max_credits_per_run"], None),
}


@pytest.mark.parametrize("case", CREATE_CASES)
async def test_create_agent_rejects_bad_definitions(new_sqlite_user, case):
    bad, expected_fields, reason = CREATE_CASES[case]
    client, _ = await new_sqlite_user()
    existing = await client.registry.CreateAgent(r.CreateAgentRequest(agent=agent("Existing")))

    fields, info = await invalid(client.registry.CreateAgent(r.CreateAgentRequest(agent=bad)))

    assert fields == expected_fields
    assert info.reason == (reason or "INVALID_ARGUMENT")
    assert await list_all_agents(client) == [existing]


# Internal destinations: refused at save time unless AGENT_OUTBOUND_ALLOW names them.
BLOCKED_URLS = [
    "http://127.0.0.1:8080/tool",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.1.2.3/",
    "http://localhost/",
    "http://[::ffff:127.0.0.1]/",
]


@pytest.mark.parametrize("url", BLOCKED_URLS)
@pytest.mark.parametrize(
    "where",
    [
        "agent.tools[0].function.http.url",
        "agent.tools[0].mcp.url",
        "agent.output_guardrails[0].endpoint.url",
    ],
)
async def test_urls_to_internal_addresses_are_refused(new_user, url, where):
    if where.endswith("http.url"):
        bad = agent(tools=[http_tool(url)])
    elif where.endswith("mcp.url"):
        bad = agent(tools=[tool(mcp=r.McpTool(url=url))])
    else:
        bad = agent(output_guardrails=[g.Guardrail(name="e", endpoint=g.EndpointCheck(url=url))])
    client, _ = await new_user()
    fields, info = await invalid(client.registry.CreateAgent(r.CreateAgentRequest(agent=bad)))
    assert fields == [where]
    assert info.reason == "INVALID_ARGUMENT"
    assert await list_all_agents(client) == []


def _schema_holding(value) -> dict:
    return {"type": "object", "properties": {"x": {"enum": [value]}}}


@pytest.mark.parametrize(
    ("bad", "where"),
    [
        (agent("nul\x00name"), "agent.display_name"),
        (agent(instructions="a\x00b"), "agent.instructions"),
        (agent(output_type=_schema_holding(float("nan"))), "agent.output_type"),
        (agent(output_type=_schema_holding(float("inf"))), "agent.output_type"),
        (agent(output_type=_schema_holding("a\x00b")), "agent.output_type"),
        (
            agent(output_guardrails=[schema_guardrail(_schema_holding(float("-inf")))]),
            "agent.output_guardrails[0].builtin.json_schema.schema",
        ),
    ],
    ids=["nul-display-name", "nul-instructions", "nan", "inf", "nul-in-struct", "-inf-deep"],
)
async def test_values_no_store_can_hold_are_refused_by_path(new_user, bad, where):
    """NUL (Postgres text and jsonb refuse it) and NaN/Infinity (JSON cannot hold them)
    are INVALID_ARGUMENT at their field on both databases, and nothing is written."""
    client, _ = await new_user()
    fields, _ = await invalid(client.registry.CreateAgent(r.CreateAgentRequest(agent=bad)))
    assert fields == [where]
    assert await list_all_agents(client) == []


async def test_an_allowlisted_internal_url_is_accepted(new_sqlite_user):
    # The SQLite mesh runs with AGENTMESH_OUTBOUND_ALLOW=["127.0.0.1"].
    client, _ = await new_sqlite_user()
    created = await client.registry.CreateAgent(
        r.CreateAgentRequest(agent=agent(tools=[http_tool("http://127.0.0.1:8080/tool")]))
    )
    assert created.tools[0].function.http.url == "http://127.0.0.1:8080/tool"


async def test_an_agent_cannot_reference_itself(new_sqlite_user):
    client, _ = await new_sqlite_user()
    fields, _ = await invalid(
        client.registry.CreateAgent(
            r.CreateAgentRequest(
                agent_id="loop",
                agent=agent(
                    tools=[tool(agent=r.AgentTool(agent="agents/loop"))],
                    input_guardrails=[agent_guardrail("agents/loop")],
                    handoffs=["agents/loop"],
                ),
            )
        )
    )
    assert sorted(fields) == [
        "agent.handoffs[0]",
        "agent.input_guardrails[0].agent.agent",
        "agent.tools[0].agent.agent",
    ]
    created = await client.registry.CreateAgent(
        r.CreateAgentRequest(agent_id="loop", agent=agent())
    )
    fields, _ = await invalid(
        client.registry.UpdateAgent(
            r.UpdateAgentRequest(
                agent=r.Agent(
                    name=created.name, tools=[tool(agent=r.AgentTool(agent=created.name))]
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["tools"]),
            )
        )
    )
    assert fields == ["agent.tools[0].agent.agent"]
    fields, _ = await invalid(
        client.registry.AddHandoff(r.AddHandoffRequest(agent=created.name, target=created.name))
    )
    assert fields == ["target"]


@pytest.mark.parametrize("agent_id", ["Triage", "1st", "a_b", "-a", "a-", "a" * 64])
async def test_create_agent_rejects_a_bad_agent_id(new_sqlite_user, agent_id):
    client, _ = await new_sqlite_user()
    fields, _ = await invalid(
        client.registry.CreateAgent(r.CreateAgentRequest(agent=agent(), agent_id=agent_id))
    )
    assert fields == ["agent_id"]


async def test_several_problems_are_all_reported(new_sqlite_user):
    client, _ = await new_sqlite_user()
    fields, info = await invalid(
        client.registry.CreateAgent(
            r.CreateAgentRequest(
                agent=agent(
                    "",
                    instructions="x" * 100_001,
                    model_settings=r.ModelSettings(temperature=3.0, top_p=1.5),
                    tools=[tool("ok"), r.Tool(name="has space")],
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
            "agent.tools[1].kind",
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
                        tool("twice", **function({"type": "object", "required": "id"})),
                        http_tool("http://169.254.169.254/"),
                    ],
                    input_guardrails=[regex_guardrail("ok"), regex_guardrail("a{2,1}", "other")],
                    output_guardrails=[regex_guardrail(r"(?!x)")],
                )
            )
        )
    )
    assert sorted(fields) == sorted(
        [
            "agent.output_type",
            "agent.tools[1].name",
            "agent.tools[1].function.parameters",
            "agent.tools[2].function.http.url",
            "agent.input_guardrails[1].regex.pattern",
            "agent.output_guardrails[0].regex.pattern",
        ]
    )
    assert await list_all_agents(client) == []


async def test_several_missing_references_are_all_reported(new_sqlite_user):
    client, _ = await new_sqlite_user()
    target = await client.registry.CreateAgent(r.CreateAgentRequest(agent=agent("Target")))
    fields, info = await invalid(
        client.registry.CreateAgent(
            r.CreateAgentRequest(
                agent=agent(
                    handoffs=["agents/missing1", target.name, "agents/missing2"],
                    tools=[tool(agent=r.AgentTool(agent="agents/missing1"))],
                )
            )
        )
    )
    assert fields == ["agent.handoffs[0]", "agent.handoffs[2]", "agent.tools[0].agent.agent"]
    assert info.reason == "HANDOFF_TARGET_NOT_FOUND"
    assert await list_all_agents(client) == [target]


@pytest.mark.parametrize(
    "where",
    ["agent.handoffs[0]", "agent.tools[0].agent.agent", "agent.output_guardrails[0].agent.agent"],
)
async def test_another_users_agent_cannot_be_referenced(new_sqlite_user, where):
    other, _ = await new_sqlite_user()
    theirs = await other.registry.CreateAgent(
        r.CreateAgentRequest(agent=agent("Theirs"), agent_id="shared-name")
    )
    client, _ = await new_sqlite_user()
    if where.startswith("agent.handoffs"):
        bad = agent(handoffs=[theirs.name])
    elif where.startswith("agent.tools"):
        bad = agent(tools=[tool(agent=r.AgentTool(agent=theirs.name))])
    else:
        bad = agent(output_guardrails=[agent_guardrail(theirs.name)])
    fields, _ = await invalid(client.registry.CreateAgent(r.CreateAgentRequest(agent=bad)))
    assert fields == [where]
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
    created = await client.registry.CreateAgent(r.CreateAgentRequest(agent=agent()))
    fields, info = await invalid(client.registry.ListAgents(r.ListAgentsRequest(page_token=token)))
    assert fields == ["page_token"]
    assert info.reason == "INVALID_ARGUMENT"
    fields, _ = await invalid(
        client.registry.ListAgentRevisions(
            r.ListAgentRevisionsRequest(name=created.name, page_token=token)
        )
    )
    assert fields == ["page_token"]


@pytest.mark.parametrize(
    "name",
    [
        "",
        "agent/abc",
        "agents/",
        "agents/has space",
        "agents/a/b",
        "agents/" + "a" * 65,
        "agents/a@",
        "agents/a@b@c",
        "agents/a@has space",
    ],
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


@pytest.mark.parametrize("path", ["no_such_field", "etag", "tools.name"])
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
                tools=[tool("dup"), tool("dup"), http_tool("http://169.254.169.254/")],
                output_type={"type": 5},
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["tools", "output_type"]),
        ),
        original,
    )
    assert sorted(fields) == [
        "agent.output_type",
        "agent.tools[1].name",
        "agent.tools[2].function.http.url",
    ]


async def test_update_agent_rejects_missing_references(new_sqlite_user):
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
    fields, info = await _update_is_rejected(
        client,
        r.UpdateAgentRequest(
            agent=r.Agent(name=original.name, input_guardrails=[agent_guardrail("agents/gone")]),
            update_mask=field_mask_pb2.FieldMask(paths=["input_guardrails"]),
        ),
        original,
    )
    assert fields == ["agent.input_guardrails[0].agent.agent"]
    assert info.reason == "AGENT_NOT_FOUND"


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
    assert info.reason == "HANDOFF_TARGET_NOT_FOUND"
    assert await client.registry.GetAgent(r.GetAgentRequest(name=original.name)) == original


async def test_add_handoff_with_malformed_names(new_sqlite_user):
    client, _ = await new_sqlite_user()
    original = await _original(client)
    fields, _ = await invalid(
        client.registry.AddHandoff(r.AddHandoffRequest(agent="agents/", target="nope"))
    )
    assert sorted(fields) == ["agent", "target"]
    assert await client.registry.GetAgent(r.GetAgentRequest(name=original.name)) == original


async def test_add_handoff_to_another_users_agent(new_sqlite_user):
    other, _ = await new_sqlite_user()
    theirs = await other.registry.CreateAgent(r.CreateAgentRequest(agent=agent("Theirs")))
    client, _ = await new_sqlite_user()
    original = await _original(client)
    fields, _ = await invalid(
        client.registry.AddHandoff(r.AddHandoffRequest(agent=original.name, target=theirs.name))
    )
    assert fields == ["target"]
    assert await client.registry.GetAgent(r.GetAgentRequest(name=original.name)) == original


async def test_rollback_rejects_a_malformed_revision(new_sqlite_user):
    client, _ = await new_sqlite_user()
    original = await _original(client)
    fields, _ = await invalid(
        client.registry.RollbackAgent(
            r.RollbackAgentRequest(name=original.name, revision_id="has space")
        )
    )
    assert fields == ["revision_id"]
