"""Save-time checks of agent definitions, beyond what buf.validate rules express.

They walk the typed Agent (after buf.validate passed) and report every problem
at once, each at the field path a client has to fix, e.g.
`agent.tools[2].function.http.url`. Whether referenced agents exist is not
checked here but in the write's transaction (agents_store.py); here is only
what can be judged from the definition alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from google.protobuf import json_format, struct_pb2
from jsonschema import Draft202012Validator, FormatChecker, SchemaError

from agentmesh.errors import InvalidArgument, quoted
from agentmesh.gen.guardrails.v1 import guardrails_pb2
from agentmesh.gen.providers.v1 import providers_pb2
from agentmesh.gen.registry.v1 import registry_pb2
from agentmesh.names import ResourceName
from agentmesh.outbound import BlockedDestination, check_url_literal
from agentmesh.patterns import compile_pattern

AGENT = ResourceName.of(registry_pb2.Agent)
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

Violation = tuple[str, str]


def regex_problem(pattern: str) -> str | None:
    """Why the pattern is not valid RE2 (the pattern quoted escaped and capped), or None."""
    try:
        compile_pattern(pattern)
    except ValueError as invalid:
        return str(invalid)
    return None


# The meta-schema's formats, but "regex" (pattern, patternProperties) judged by
# RE2: jsonschema's own check compiles the user's pattern with Python's re.
_FORMATS = FormatChecker()
_FORMATS.checkers = dict(Draft202012Validator.FORMAT_CHECKER.checkers)


@_FORMATS.checks("regex")
def _is_re2(instance: object) -> bool:
    return not isinstance(instance, str) or regex_problem(instance) is None


def schema_problem(schema: struct_pb2.Struct) -> str | None:
    """Why `schema` is not a Draft 2020-12 JSON Schema; None if it is one."""
    value = json_format.MessageToDict(schema)
    dialect = value.get("$schema", SCHEMA_DIALECT)
    # validator_for would look a non-string $schema up as a dict key and crash.
    if not isinstance(dialect, str):
        return "not a valid JSON Schema: $schema must be a string"
    if dialect.rstrip("#") != SCHEMA_DIALECT:
        return f"must be a Draft 2020-12 JSON Schema: $schema {SCHEMA_DIALECT}, or none"
    try:
        Draft202012Validator.check_schema(value, format_checker=_FORMATS)
    except SchemaError as error:
        return f"not a valid JSON Schema: {error.message}"
    return None


def url_problem(url: str, outbound_allow: Iterable[str]) -> str | None:
    try:
        check_url_literal(url, outbound_allow)
    except BlockedDestination as blocked:
        return str(blocked)
    return None


def agent_references(agent: registry_pb2.Agent, field: str = "agent") -> list[Violation]:
    """(field path, agent id) for every agent the definition names: its handoffs,
    agent tools and agent guardrails."""
    found = [(f"{field}.handoffs[{i}]", AGENT.id(name)) for i, name in enumerate(agent.handoffs)]
    for i, tool in enumerate(agent.tools):
        if tool.WhichOneof("kind") == "agent":
            found.append((f"{field}.tools[{i}].agent.agent", AGENT.id(tool.agent.agent)))
    for side in ("input_guardrails", "output_guardrails"):
        for i, guardrail in enumerate(getattr(agent, side)):
            if guardrail.WhichOneof("check") == "agent":
                found.append((f"{field}.{side}[{i}].agent.agent", AGENT.id(guardrail.agent.agent)))
    return found


class ProviderTypeNeeded(Exception):  # noqa: N818 - a request for data, not a failure
    """The check needs the type of this provider (providers/x), which only the providers
    service knows: the caller asks it and checks again with the answer."""

    def __init__(self, provider: str):
        super().__init__(provider)
        self.provider = provider


def hosted_tool_problems(
    agent: registry_pb2.Agent,
    provider_types: Mapping[str, int | None],
    field: str = "agent",
) -> list[Violation]:
    """Hosted tools (web search) that the agent's provider cannot run.

    They run on OpenAI's Responses API only, so the agent must name an OpenAI provider
    in model_settings.provider. Not naming one is refused too: the user's default
    provider and the system default are chosen at run time and may change after the
    agent is saved (the embedded system default speaks Chat Completions), and a run
    must never fail later on what its save accepted. `provider_types` maps provider
    names to their ProviderType (None: no such provider of this user); a name not in
    it raises ProviderTypeNeeded.
    """
    searches = [i for i, tool in enumerate(agent.tools) if tool.WhichOneof("kind") == "web_search"]
    if not searches:
        return []
    provider = agent.model_settings.provider
    if not provider:
        reason = (
            "web search runs only on OpenAI's Responses API: name an OpenAI provider in "
            "model_settings.provider (the default provider is chosen at run time and may "
            "not be OpenAI)"
        )
        return [(f"{field}.tools[{i}].web_search", reason) for i in searches]
    if provider not in provider_types:
        raise ProviderTypeNeeded(provider)
    kind = provider_types[provider]
    if kind is None:
        return [(f"{field}.model_settings.provider", f"{quoted(provider)} not found")]
    if kind == providers_pb2.PROVIDER_TYPE_OPENAI:
        return []
    type_name = providers_pb2.ProviderType.Name(kind).removeprefix("PROVIDER_TYPE_")
    reason = (
        f"web search runs only on OpenAI's Responses API, and {provider} is a {type_name} "
        "provider: name an OpenAI provider in model_settings.provider, or remove the tool"
    )
    return [(f"{field}.tools[{i}].web_search", reason) for i in searches]


def check_agent_definition(
    agent: registry_pb2.Agent,
    *,
    agent_id: str,
    outbound_allow: Iterable[str],
    provider_types: Mapping[str, int | None],
    field: str = "agent",
) -> None:
    """Raises InvalidArgument naming every problem in a definition buf.validate passed
    (ProviderTypeNeeded first if the type of its provider must be looked up)."""
    allow = list(outbound_allow)
    violations: list[Violation] = hosted_tool_problems(agent, provider_types, field)
    if agent.HasField("output_type") and (problem := schema_problem(agent.output_type)):
        violations.append((f"{field}.output_type", problem))
    tool_names: set[str] = set()
    for i, tool in enumerate(agent.tools):
        at = f"{field}.tools[{i}]"
        if tool.name in tool_names:
            violations.append((f"{at}.name", f"another tool is named {tool.name!r}"))
        tool_names.add(tool.name)
        violations.extend(_tool_problems(tool, at, allow))
    for side in ("input_guardrails", "output_guardrails"):
        guardrail_names: set[str] = set()
        for i, guardrail in enumerate(getattr(agent, side)):
            at = f"{field}.{side}[{i}]"
            # Results are reported by name: two of one name could not be told apart.
            if guardrail.name in guardrail_names:
                violations.append(
                    (f"{at}.name", f"another guardrail is named {quoted(guardrail.name)}")
                )
            guardrail_names.add(guardrail.name)
            violations.extend(_guardrail_problems(guardrail, at, allow))
    violations.extend(
        (path, "an agent cannot hand off to itself, nor use itself as a tool or guardrail")
        for path, target in agent_references(agent, field)
        if target == agent_id
    )
    if violations:
        raise InvalidArgument(violations)


def _tool_problems(tool: registry_pb2.Tool, at: str, allow: list[str]) -> list[Violation]:
    kind = tool.WhichOneof("kind")
    problems: list[Violation] = []
    if kind == "function":
        function = tool.function
        if function.HasField("parameters"):
            problem = schema_problem(function.parameters) or _arguments_problem(function.parameters)
            if problem:
                problems.append((f"{at}.function.parameters", problem))
        if function.WhichOneof("implementation") == "http":
            if problem := url_problem(function.http.url, allow):
                problems.append((f"{at}.function.http.url", problem))
    elif kind == "mcp":
        if problem := url_problem(tool.mcp.url, allow):
            problems.append((f"{at}.mcp.url", problem))
        allowed = set(tool.mcp.allowed_tools)
        if allowed and (unknown := sorted(set(tool.mcp.approval_required_tools) - allowed)):
            problems.append(
                (
                    f"{at}.mcp.approval_required_tools",
                    f"{quoted(unknown[0])} is not among allowed_tools, so it is never called",
                )
            )
    return problems


def _arguments_problem(parameters: struct_pb2.Struct) -> str | None:
    # A model calls a function with named arguments: one JSON object.
    if parameters.fields and json_format.MessageToDict(parameters).get("type") != "object":
        return 'must describe the arguments as one object ("type": "object")'
    return None


def _guardrail_problems(
    guardrail: guardrails_pb2.Guardrail, at: str, allow: list[str]
) -> list[Violation]:
    check = guardrail.WhichOneof("check")
    if check == "regex" and (problem := regex_problem(guardrail.regex.pattern)):
        return [(f"{at}.regex.pattern", problem)]
    if check == "builtin" and guardrail.builtin.WhichOneof("detector") == "json_schema":
        if problem := schema_problem(guardrail.builtin.json_schema.schema):
            return [(f"{at}.builtin.json_schema.schema", problem)]
    if check == "endpoint" and (problem := url_problem(guardrail.endpoint.url, allow)):
        return [(f"{at}.endpoint.url", problem)]
    return []
