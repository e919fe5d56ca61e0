"""SDK agents from registry definitions, plugged into the SDK's own seams.

Every agent a run may reach is built up front, once per run, from definitions the
run pinned (cached; see definitions.py): the SDK's RunState finds a paused run's
current agent by walking handoffs from the starting agent, so the graph must be
whole, and building object by object lets handoffs form cycles (triage -> billing
-> triage). SDK agent names are agent ids: unique, and stable across revisions.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

import jsonschema
import referencing.exceptions
from agents import (
    Agent,
    AgentOutputSchemaBase,
    FunctionTool,
    GuardrailFunctionOutput,
    InputGuardrail,
    Model,
    ModelBehaviorError,
    ModelSettings,
    OpenAIResponsesModel,
    OutputGuardrail,
    RunContextWrapper,
    Tool,
    handoff,
)
from agents.exceptions import UserError
from agents.strict_schema import ensure_strict_json_schema
from google.protobuf import json_format

from agentmesh.errors import FailedPrecondition
from agentmesh.gen.guardrails.v1 import guardrails_pb2
from agentmesh.gen.registry.v1 import registry_pb2
from agentmesh.guardrail_checks import schema_validator
from agentmesh.names import ResourceName
from agentmesh.outbound import OutboundError, OutboundPolicy, post_json, post_json_client
from agentmesh.sandbox import SandboxError, run_code, sandbox_available
from agentmesh.templates import TemplateError, render
from services.runner.file_search import FileSearch
from services.runner.guarding import INPUT, OUTPUT, Guarding, RunGuards
from services.runner.models import Models, WholeReplies
from services.runner.tools import (
    McpAuthorizations,
    RunTools,
    computer_problem,
    web_search_tool,
)

AGENT = ResourceName.of(registry_pb2.Agent)
_DEFAULT_TOOL_SECONDS = 10.0
_DEFAULT_TOOL_MEMORY_MB = 256
_NO_ARGUMENTS = {"type": "object", "properties": {}}


class JsonSchemaOutput(AgentOutputSchemaBase):
    """A final output that must be JSON valid against the agent's own JSON Schema.

    The schema goes to the model as written (made strict when it can be, so the
    model is held to it), and the reply is checked with jsonschema (patterns on RE2,
    no $ref fetched from anywhere): nothing is evaluated.
    """

    def __init__(self, schema: dict[str, Any]):
        self._validator = schema_validator(schema)
        try:
            self._schema, self._strict = ensure_strict_json_schema(copy.deepcopy(schema)), True
        except UserError:
            self._schema, self._strict = schema, False

    def is_plain_text(self) -> bool:
        return False

    def name(self) -> str:
        return "output_type"

    def json_schema(self) -> dict[str, Any]:
        return self._schema

    def is_strict_json_schema(self) -> bool:
        return self._strict

    def validate_json(self, json_str: str) -> Any:
        try:
            value = json.loads(json_str)
        except json.JSONDecodeError:
            raise ModelBehaviorError("the final output is not JSON") from None
        try:
            error = jsonschema.exceptions.best_match(self._validator.iter_errors(value))
        except referencing.exceptions.Unresolvable:
            raise ModelBehaviorError(
                "the agent's output_type refers to a schema outside it, which is never fetched"
            ) from None
        if error is not None:
            where = "/".join(str(part) for part in error.absolute_path) or "the output"
            raise ModelBehaviorError(
                f"the final output breaks the agent's output_type at {where}: {error.message[:200]}"
            )
        return value


def unsupported_tools(graph: Mapping[str, registry_pb2.Agent]) -> list[str]:
    """What this runner cannot run, as "agents/x: tool 'name' (kind)" phrases."""
    problems = []
    for agent_id, definition in graph.items():
        for tool in definition.tools:
            kind = tool.WhichOneof("kind")
            if kind == "function" and tool.function.WhichOneof("implementation") == "code":
                # Never an unsandboxed fallback: without bubblewrap, no code tool runs.
                if sandbox_available():
                    continue
                kind = "code function, and the sandbox (bubblewrap) is not installed"
            elif kind == "computer":
                if not sandbox_available():
                    kind = "computer, and the sandbox (bubblewrap) is not installed"
                elif problem := computer_problem(tool):
                    kind = f"computer: {problem}"
                else:
                    continue
            elif kind in ("function", "agent", "mcp", "web_search", "file_search"):
                continue
            problems.append(f"{AGENT.format(agent_id)}: tool {tool.name!r} ({kind})")
        for side in (definition.input_guardrails, definition.output_guardrails):
            for guardrail in side:
                # Decided here or by the guardrails service; code needs the sandbox.
                if guardrail.WhichOneof("check") == "code" and not sandbox_available():
                    kind = "code guardrail, and the sandbox (bubblewrap) is not installed"
                    problems.append(f"{AGENT.format(agent_id)}: {guardrail.name!r} ({kind})")
    return problems


def check_runnable(graph: Mapping[str, registry_pb2.Agent]) -> None:
    if problems := unsupported_tools(graph):
        raise FailedPrecondition(
            "this runner cannot run these yet (they come with the sandbox, MCP, files and "
            "guardrails services): " + "; ".join(problems),
            reason="UNSUPPORTED_TOOL",
        )


class AgentBuilder:
    def __init__(
        self,
        models: Models,
        policy: OutboundPolicy,
        mcp_authorizations: McpAuthorizations,
        guarding: Guarding | None = None,
        file_search: FileSearch | None = None,
    ):
        self._models = models
        self._policy = policy
        # Endpoint tools' calls, on connections kept alive (a new one per call cost a
        # tool call more than the call).
        self._http = post_json_client(policy, timeout=_DEFAULT_TOOL_SECONDS)
        self._mcp_authorizations = mcp_authorizations
        # Without the guardrails service, only regex and builtin guardrails decide.
        self._guarding = guarding or Guarding()
        self._file_search = file_search

    async def aclose(self) -> None:
        await self._http.aclose()

    def guards(self, user: str, results: list[dict[str, Any]]) -> RunGuards:
        """A run's guardrail decisions, each result added to `results` (its record)."""
        return RunGuards(self._guarding, user, results)

    def run_tools(self) -> RunTools:
        """What a run leg's computer and MCP tools hold; the caller closes it."""
        return RunTools(self._policy, self._mcp_authorizations)

    async def build(
        self,
        user: str,
        graph: Mapping[str, registry_pb2.Agent],
        starting_id: str,
        tools: RunTools | None = None,
        guards: RunGuards | None = None,
        whole_replies: bool = False,
    ) -> Agent:
        """The starting agent of the graph. Computer and MCP tools need `tools` (their
        workspace and connections live there, for the caller to close). With
        `whole_replies`, its models are asked for whole replies (see WholeReplies)."""
        check_runnable(graph)
        agents = {
            agent_id: Agent(
                name=agent_id,
                instructions=_instructions(definition.instructions),
                handoff_description=definition.handoff_description or None,
                model=await self._models.model(
                    user, definition.model_settings.provider, definition.model
                ),
                model_settings=_model_settings(definition.model_settings),
                output_type=(
                    JsonSchemaOutput(json_format.MessageToDict(definition.output_type))
                    if definition.HasField("output_type")
                    else None
                ),
            )
            for agent_id, definition in graph.items()
        }
        for agent_id, definition in graph.items():
            agent = agents[agent_id]
            agent.handoffs = [handoff(agents[AGENT.id(target)]) for target in definition.handoffs]
            agent.tools = [
                self._tool(tool, agents, tools, user)
                for tool in definition.tools
                if tool.WhichOneof("kind") != "mcp"
            ]
            agent.mcp_servers = [
                await _held(tools).mcp_server(tool, user)
                for tool in definition.tools
                if tool.WhichOneof("kind") == "mcp"
            ]
            _check_hosted_tools(agent_id, definition, agent)
            if whole_replies and isinstance(agent.model, Model):
                agent.model = WholeReplies(agent.model)
            # `guards` records each result on the run; without it, nothing is kept.
            run_guards = guards or RunGuards(Guarding(), user)
            agent.input_guardrails = [
                _input_guardrail(g, run_guards) for g in definition.input_guardrails
            ]
            agent.output_guardrails = [
                _output_guardrail(g, run_guards) for g in definition.output_guardrails
            ]
        return agents[starting_id]

    def _tool(
        self,
        tool: registry_pb2.Tool,
        agents: Mapping[str, Agent],
        tools: RunTools | None,
        user: str = "",
    ) -> Tool:
        kind = tool.WhichOneof("kind")
        if kind == "computer":
            return _held(tools).computer(tool)
        if kind == "file_search":
            if self._file_search is None:
                raise FailedPrecondition(
                    "this runner has no files service for file_search", reason="UNSUPPORTED_TOOL"
                )
            return self._file_search.tool(tool, user)
        if kind == "web_search":
            return web_search_tool(tool.web_search)
        if kind == "agent":
            return agents[AGENT.id(tool.agent.agent)].as_tool(
                tool_name=tool.name,
                tool_description=tool.description
                or agents[AGENT.id(tool.agent.agent)].handoff_description,
                needs_approval=tool.require_approval,
            )
        parameters = json_format.MessageToDict(tool.function.parameters)
        return FunctionTool(
            name=tool.name,
            description=tool.description,
            params_json_schema=parameters or _NO_ARGUMENTS,
            on_invoke_tool=self._implementation(tool),
            strict_json_schema=False,
            needs_approval=tool.require_approval,
        )

    def _implementation(self, tool: registry_pb2.Tool) -> Any:
        """The function tool's body: code in the sandbox, or a POST to its endpoint. A
        failure is the tool's answer to the model, never the run's end."""
        name, function = tool.name, tool.function
        if function.WhichOneof("implementation") == "code":
            code = function.code
            timeout = code.timeout.ToTimedelta().total_seconds() or _DEFAULT_TOOL_SECONDS
            memory_mb = code.memory_mb or _DEFAULT_TOOL_MEMORY_MB

            async def run_in_sandbox(_: Any, arguments: str) -> str:
                try:
                    result = await run_code(
                        code.source,
                        "main",
                        _arguments(arguments),
                        timeout=timeout,
                        memory_mb=memory_mb,
                    )
                except ValueError:
                    return f"error: the arguments for {name} are not a JSON object"
                except SandboxError as error:
                    return f"error: {name} failed: {error}"
                return result if isinstance(result, str) else json.dumps(result)

            return run_in_sandbox
        http = function.http
        timeout = http.timeout.ToTimedelta().total_seconds() or _DEFAULT_TOOL_SECONDS
        policy, url, client = self._policy, http.url, self._http

        async def call_endpoint(_: Any, arguments: str) -> str:
            try:
                reply = await post_json(
                    url, _arguments(arguments), policy=policy, timeout=timeout, client=client
                )
            except ValueError:
                return f"error: the arguments for {name} are not a JSON object"
            except OutboundError as error:
                return f"error: {name} failed: {error}"
            return reply if isinstance(reply, str) else json.dumps(reply)

        return call_endpoint


def _held(tools: RunTools | None) -> RunTools:
    if tools is None:
        raise FailedPrecondition(
            "computer and MCP tools run only inside a run that holds their workspace and "
            "connections",
            reason="UNSUPPORTED_TOOL",
        )
    return tools


def _check_hosted_tools(agent_id: str, definition: registry_pb2.Agent, agent: Agent) -> None:
    """Hosted tools run on OpenAI's Responses API only. The registry refuses to save
    them for any other provider; an agent saved before that rule fails here, before
    any model is called."""
    for tool in definition.tools:
        if tool.WhichOneof("kind") == "web_search" and not isinstance(
            agent.model, OpenAIResponsesModel
        ):
            raise FailedPrecondition(
                f"{AGENT.format(agent_id)}: tool {tool.name!r} (web search) runs only on an "
                "OpenAI provider (the Responses API); name one in model_settings.provider",
                reason="UNSUPPORTED_TOOL",
            )


def _arguments(text: str) -> dict[str, Any]:
    """A tool call's arguments; ValueError (json's own included) when not a JSON object."""
    value = json.loads(text or "{}")
    if not isinstance(value, dict):
        raise ValueError("not an object")
    return value


def _instructions(text: str) -> Any:
    """Static text, or a template over the run's context (`{{ context.plan }}`)."""
    if "{{" not in text:
        return text or None

    def with_context(wrapper: RunContextWrapper[Any], _: Agent) -> str:
        try:
            return render(text, {"context": wrapper.context or {}})
        except TemplateError as error:
            raise ModelBehaviorError(f"the agent's instructions: {error}") from None

    return with_context


def _model_settings(settings: registry_pb2.ModelSettings) -> ModelSettings:
    return ModelSettings(
        temperature=settings.temperature if settings.HasField("temperature") else None,
        top_p=settings.top_p if settings.HasField("top_p") else None,
        max_tokens=settings.max_tokens if settings.HasField("max_tokens") else None,
        extra_args=json_format.MessageToDict(settings.additional_params) or None,
        # Runs are billed by usage: a streamed answer must report it too.
        include_usage=True,
    )


def _text_of(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # input items: the user's words are what is guarded
        return "\n".join(
            str(item.get("content"))
            for item in value
            if isinstance(item, dict) and "content" in item
        )
    return json.dumps(value)


def _input_guardrail(guardrail: guardrails_pb2.Guardrail, guards: RunGuards) -> InputGuardrail:
    async def check(_: Any, agent: Agent, value: Any) -> GuardrailFunctionOutput:
        return await guards.decide(agent.name, guardrail, _text_of(value), INPUT)

    # Decided before the model is called: a tripped input must not be billed.
    return InputGuardrail(guardrail_function=check, name=guardrail.name, run_in_parallel=False)


def _output_guardrail(guardrail: guardrails_pb2.Guardrail, guards: RunGuards) -> OutputGuardrail:
    async def check(_: Any, agent: Agent, value: Any) -> GuardrailFunctionOutput:
        return await guards.decide(agent.name, guardrail, _text_of(value), OUTPUT)

    return OutputGuardrail(guardrail_function=check, name=guardrail.name)
