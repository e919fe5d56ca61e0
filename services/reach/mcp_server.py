"""The MCP server: each of the caller's agents as an MCP tool, over streamable HTTP at /mcp.

An IDE, an assistant or another agent platform connects with an agentmesh API key
as its bearer token. `tools/list` lists that user's agents; `tools/call` runs one
through `RunnerService.StreamRun` acting for them, so tenancy, credits, guardrails
and traces are the runner's, as for a gRPC run.

Stateless streamable HTTP: every POST is authenticated and served on its own and
nothing is kept between requests, so any reach replica behind the gateway answers
any request, and one that dies loses no session. What stateless gives up,
server-to-client requests (sampling, elicitation), no tool here needs; progress
notifications still ride each call's own SSE response.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterator
from typing import Any

import grpc
import mcp.types as types
from google.protobuf import json_format
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from agentmesh.auth import Principal, set_principal
from agentmesh.errors import ServiceError, Unavailable, quoted
from agentmesh.gen.registry.v1 import registry_pb2
from agentmesh.gen.runner.v1 import runner_pb2
from services.reach.calls import Reach, http_status, status_of

log = logging.getLogger("agentmesh.reach")

State = runner_pb2.Run.State

# Every tool takes the same arguments: what to ask, and optionally which of its
# conversations to continue.
TOOL_INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "input": {"type": "string", "minLength": 1, "description": "What to ask the agent."},
        "conversation": {
            "type": "string",
            "description": "Continues a conversation (conversations/...) an earlier call of"
            " this tool returned; omit it to start a new one.",
        },
    },
    "required": ["input"],
    "additionalProperties": False,
}
# A tool's name is its agent's id: MCP-valid as it is, stable, and unique for a user.
_AGENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Where a call's result names its run and conversation (MCP `_meta` keys).
RUN_KEY = "agentmesh.dev/run"
CONVERSATION_KEY = "agentmesh.dev/conversation"
# Agents listed per tools/list page; the registry's page token is the MCP cursor.
TOOLS_PAGE_SIZE = 100
# Where the API key check leaves the caller for the handlers, in the request's scope state.
_CALLER = "agentmesh_caller"


class McpAdapter:
    def __init__(self, reach: Reach):
        self._reach = reach
        server: Server[Any] = Server(
            "agentmesh",
            instructions="Each tool runs one of your agentmesh agents on `input` and answers"
            " with its final output. Pass the `conversation` a call returned to continue it.",
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            # Spares the 2026 protocol's header check a tools/list walk per call.
            get_tool_input_schema=lambda name: TOOL_INPUT_SCHEMA,
        )
        # SSE answers (not JSON) so that progress notifications reach the caller.
        self._sessions = StreamableHTTPSessionManager(server, stateless=True)
        self.routes: list[BaseRoute] = [
            Route(
                "/mcp",
                StreamableHTTPASGIApp(self._sessions),
                middleware=[Middleware(RequireApiKey, reach=reach)],
            )
        ]
        self._stopping = asyncio.Event()
        self._serving: asyncio.Task | None = None

    async def start(self) -> None:
        # The session manager's task group lives in a task of its own: it must be
        # left in the task that entered it, and start and stop may run in two.
        started = asyncio.get_running_loop().create_future()
        self._serving = asyncio.create_task(self._serve(started), name="reach: mcp sessions")
        await started

    async def _serve(self, started: asyncio.Future) -> None:
        async with self._sessions.run():
            started.set_result(None)
            await self._stopping.wait()

    async def stop(self) -> None:
        """Ends the calls in flight (their runs are cancelled with them)."""
        self._stopping.set()
        if self._serving is not None:
            await self._serving

    async def _list_tools(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        request = registry_pb2.ListAgentsRequest(
            page_size=TOOLS_PAGE_SIZE, page_token=(params.cursor if params else None) or ""
        )
        try:
            with _acting_for(ctx):
                page = await self._reach.registry.ListAgents(request, timeout=10)
        except Exception as error:  # noqa: BLE001 - MCP would send the exception's text
            code, message = _status_logged(error)
            # A cursor the registry refuses (stale, another caller's) is the client's to fix.
            bad_cursor = code == grpc.StatusCode.INVALID_ARGUMENT
            raise MCPError(
                types.INVALID_PARAMS if bad_cursor else types.INTERNAL_ERROR, message
            ) from None
        return types.ListToolsResult(
            tools=[_tool_of(agent) for agent in page.agents],
            next_cursor=page.next_page_token or None,
        )

    async def _call_tool(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        """Runs the tool's agent. Whatever goes wrong is the tool's error result, which
        the calling model reads, never a protocol error."""
        arguments = params.arguments or {}
        text, conversation = arguments.get("input"), arguments.get("conversation", "")
        if not _AGENT_ID.fullmatch(params.name):
            return _tool_error(f"no tool named {quoted(params.name)}")
        if not isinstance(text, str) or not text.strip():
            return _tool_error("`input` must be a non-empty string: what to ask the agent")
        if not isinstance(conversation, str):
            return _tool_error("`conversation` must be a string, as an earlier call returned it")
        request = runner_pb2.RunAgentRequest(
            agent=f"agents/{params.name}", input=text, conversation=conversation
        )
        try:
            with _acting_for(ctx):
                run, approvals = await self._run(ctx, request)
        except Exception as error:  # noqa: BLE001 - MCP would send the exception's text
            return _tool_error(_status_logged(error)[1])
        return _result_of(run, approvals)

    async def _run(
        self, ctx: ServerRequestContext[Any], request: runner_pb2.RunAgentRequest
    ) -> tuple[runner_pb2.Run, list[runner_pb2.Approval]]:
        """The run as it ended or paused, and the approvals it waits for. What it says
        and the tools it calls are progress, for a client that asked for it (a no-op
        otherwise); text passed the agent's guardrails before it comes here.

        Read to the stream's end, not to run_finished: the runner sends that event
        before it stores the run and closes the stream after, and the caller's next
        step (GetRun, ResolveApproval) must find what the result names."""
        finished: runner_pb2.Run | None = None
        approvals: list[runner_pb2.Approval] = []
        async for event in self._reach.runner.StreamRun(request):
            kind = event.WhichOneof("event")
            if kind == "text_delta":
                await ctx.session.report_progress(event.sequence, message=event.text_delta.delta)
            elif kind == "item" and event.item.type == runner_pb2.RunItem.TYPE_TOOL_CALL:
                await ctx.session.report_progress(
                    event.sequence, message=f"calling {event.item.tool_name}"
                )
            elif kind == "approval_required":
                approvals.append(event.approval_required)
            elif kind == "run_finished":
                finished = event.run_finished
        if finished is None:
            raise Unavailable("the runner stopped before the run ended")
        return finished, approvals


class RequireApiKey:
    """Answers a request without a valid API key before MCP sees it (RFC 6750's
    shape, as the `mcp` package's own bearer auth does), and hands the caller on to
    the handlers in the request's scope."""

    def __init__(self, app: ASGIApp, reach: Reach):
        self._app = app
        self._reach = reach

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            caller = await self._reach.authenticate(Request(scope))
        except ServiceError as error:
            code, message = status_of(error)
            status = http_status(code)
            refused = status in (401, 403)
            response = JSONResponse(
                {
                    "error": "invalid_token" if refused else "temporarily_unavailable",
                    "error_description": message,
                },
                status_code=status,
                headers={"www-authenticate": 'Bearer error="invalid_token"'} if refused else None,
            )
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})[_CALLER] = caller
        await self._app(scope, receive, send)


@contextlib.contextmanager
def _acting_for(ctx: ServerRequestContext[Any]) -> Iterator[Principal]:
    """Inside, peer calls act for the user whose key this MCP message came with."""
    assert isinstance(ctx.request, Request), "served over HTTP only"
    caller: Principal = ctx.request.scope["state"][_CALLER]
    token = set_principal(caller)
    try:
        yield caller
    finally:
        token.var.reset(token)


def _status_logged(error: Exception) -> tuple[grpc.StatusCode, str]:
    """What the caller may read of an error; one of ours (a bug) is logged in full."""
    if not isinstance(error, (grpc.aio.AioRpcError, ServiceError)):
        log.exception("an MCP request failed")
    return status_of(error)


def _tool_of(agent: registry_pb2.Agent) -> types.Tool:
    schema = json_format.MessageToDict(agent.output_type) if agent.HasField("output_type") else {}
    return types.Tool(
        name=agent.name.removeprefix("agents/"),
        title=agent.display_name,
        description=agent.handoff_description or agent.display_name,
        input_schema=TOOL_INPUT_SCHEMA,
        # MCP output schemas describe objects; other outputs are JSON text only.
        output_schema=schema if schema.get("type") == "object" else None,
    )


def _result_of(run: runner_pb2.Run, approvals: list[runner_pb2.Approval]) -> types.CallToolResult:
    meta = {RUN_KEY: run.name, CONVERSATION_KEY: run.conversation}
    if run.state == State.STATE_SUCCEEDED:
        structured = (
            json_format.MessageToDict(run.structured_output)
            if run.HasField("structured_output")
            else None
        )
        return types.CallToolResult(
            content=[
                types.TextContent(text=run.final_output),
                # For a model calling the tool, which reads content but not _meta.
                types.TextContent(text=f"conversation: {run.conversation}"),
            ],
            structured_content=structured if isinstance(structured, dict) else None,
            _meta=meta,
        )
    if run.state == State.STATE_AWAITING_APPROVAL:
        waiting = ", ".join(f"{a.tool_name} ({a.name})" for a in approvals) or "a tool call"
        reason = (
            f"the run {run.name} awaits approval of {waiting}; it goes on when a person"
            " resolves it (ResolveApproval), and GetRun then has its answer"
        )
    elif run.state == State.STATE_BLOCKED:
        reason = f"a guardrail blocked the run: {run.final_output}"
    elif run.state == State.STATE_FAILED:
        reason = f"the run failed: {run.error.message}"
    else:
        reason = f"the run ended {State.Name(run.state).removeprefix('STATE_').lower()}"
    return _tool_error(reason, meta)


def _tool_error(reason: str, meta: dict[str, Any] | None = None) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=reason)], is_error=True, _meta=meta)
