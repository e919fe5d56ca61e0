"""Tools that hold something for the length of a run: the computer and MCP servers.

A run's tools are built for each leg of the run (its start, or its resume after a
pause) by `RunTools`, which the executor closes when the leg ends however it ends:

- computer: a shell tool over one workspace per run leg, made on the first command
  and removed when the leg ends. Commands run in the sandbox (agentmesh/sandbox.py)
  without a shell: the command line is parsed here (shlex), and only a program the
  definition allows runs, with its arguments as they were written. Shell operators
  and substitutions are refused rather than passed on, so the model learns at once
  that `ls; rm -rf .` is not a thing this tool does. A pause for approval ends the
  leg and with it the workspace: the resume may run on another replica, and a run
  may wait a day for a decision without holding disk.
- MCP: a server by URL over streamable HTTP through the SDK's MCP client, connected
  for the leg (the SDK lists its tools each turn) and closed with it. Its URL passes
  the outbound guard before anything connects, and every request of the MCP client
  goes through the guarded HTTP client, which judges the address it connects to.
  A tool's authorization, sealed by the registry for its user, is opened here and
  sent as the Authorization header of each request; the MCP client follows
  redirects within the server's origin only, so it never goes to another host.

A tool's failure is the tool's answer to the model, never the run's end; a server
that cannot be reached at all ends the run with a status naming the tool.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shlex
from collections.abc import Collection
from pathlib import Path
from typing import Any

import httpx2
from agents import FunctionTool, WebSearchTool
from agents.mcp import MCPServerStreamableHttp

from agentmesh.errors import FailedPrecondition, Unavailable, quoted
from agentmesh.gen.registry.v1 import registry_pb2
from agentmesh.outbound import BlockedDestination, OutboundPolicy, guarded_http_client
from agentmesh.sandbox import (
    SandboxError,
    check_blocked_paths,
    create_workspace,
    remove_workspace,
    run_command,
)
from agentmesh.sealing import Sealer, Unsealable

log = logging.getLogger("agentmesh.runner")

# One command's limits: a shell tool's commands are short-lived.
COMMAND_SECONDS = 30.0
COMMAND_MEMORY_MB = 512
# What of a command's stdout and stderr (each) the model gets back.
COMMAND_OUTPUT_BYTES = 64 * 1024
# How long connecting to an MCP server and each of its calls may take.
MCP_TIMEOUT_SECONDS = 30.0
# What one reply of an MCP server (a call's answer, or a stream of its events) may hold.
MCP_REPLY_BYTES = 16 * 1024 * 1024
# Users whose opened MCP authorizations are kept for the span redactor.
_OPENED_USERS = 10_000
# Unquoted shell operators: `ls; rm`, `a | b`, `a && b`, `> file`, `$(...)`, `( ... )`.
_OPERATORS = ";&|<>()"
# Substitutions a shell would expand; nothing here does, so they are refused, not sent.
_SUBSTITUTIONS = ("$(", "${", "`")
_COMMAND_PARAMETERS = {
    "type": "object",
    "properties": {
        "command": {
            "type": "string",
            "description": "One command line: a program and its arguments, quoted as in a shell.",
        }
    },
    "required": ["command"],
    "additionalProperties": False,
}


class CommandRefused(ValueError):
    """A command line the computer tool will not run; the message says why, for the model."""


def parse_command(command: str, allowed: Collection[str]) -> list[str]:
    """The argv a command line stands for, if the tool may run it.

    Decided on the parsed command, never on its text: the program is the first word
    after shell-style quoting is undone, and must be one of `allowed` exactly (no
    path, so a program planted in the workspace is never it). No shell runs, so
    operators (`;`, `|`, `&&`, redirections, subshells) and substitutions (`$(...)`,
    `${...}`, backticks) would not do what they mean: they are refused, quoted or
    not, as is a lone operator in quotes (`echo ';'`); that errs on the safe side.
    """
    if "\n" in command or "\r" in command or "\0" in command:
        raise CommandRefused("one command per call: the command line has a line break or NUL")
    if any(marker in command for marker in _SUBSTITUTIONS):
        raise CommandRefused(
            "shell substitutions ($(...), ${...}, backticks) are not supported: no shell "
            "runs, so nothing would be substituted"
        )
    lexer = shlex.shlex(command, posix=True, punctuation_chars=_OPERATORS)
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        argv = list(lexer)
    except ValueError as error:  # an unclosed quote or a trailing backslash
        raise CommandRefused(f"the command line cannot be parsed: {error}") from None
    if not argv:
        raise CommandRefused("the command line is empty")
    for word in argv:
        if word and all(char in _OPERATORS for char in word):
            raise CommandRefused(
                f"shell operators such as {word!r} are not supported: no shell runs; "
                "run one program per call"
            )
    if argv[0] not in allowed:
        allowed_list = ", ".join(sorted(allowed))
        raise CommandRefused(
            f"{quoted(argv[0], 64)} is not an allowed command; allowed: {allowed_list}"
        )
    return argv


class McpAuthorizations:
    """Opens the MCP tool authorizations the registry sealed, and keeps what it opened
    for whom: the span redactor masks those (`known`, tracing.Redactor)."""

    def __init__(self, sealer: Sealer):
        self._sealer = sealer
        # Each user's set is replaced whole, never changed: the redactor reads it
        # from its own thread.
        self._opened: dict[str, frozenset[str]] = {}

    def open(self, tool: registry_pb2.Tool, user: str) -> str:
        """The tool's Authorization header; FAILED_PRECONDITION if it does not open
        (sealed for another user, or under another service token)."""
        try:
            value = self._sealer.open_text(tool.mcp.authorization, user)
        except Unsealable:
            raise FailedPrecondition(
                f"the authorization of MCP tool {quoted(tool.name)} cannot be opened here: "
                "set it again with UpdateAgent",
                reason="MCP_AUTHORIZATION_UNREADABLE",
            ) from None
        # The header, and the credential after its scheme ("Bearer <token>").
        parts = {value, value.partition(" ")[2]} - {""}
        self._opened[user] = self._opened.pop(user, frozenset()) | parts
        if len(self._opened) > _OPENED_USERS:
            self._opened.pop(next(iter(self._opened)))
        return value

    def known(self, user: str) -> frozenset[str]:
        return self._opened.get(user, frozenset())


class RunTools:
    """What one leg of a run holds for its tools; `aclose` releases all of it.

    Closed in the task that opened it (the run's own): the MCP client's connections
    live in task groups that must be left where they were entered.
    """

    def __init__(self, policy: OutboundPolicy, authorizations: McpAuthorizations):
        self._policy = policy
        self._authorizations = authorizations
        self._stack = contextlib.AsyncExitStack()
        self._workspace: Path | None = None

    async def aclose(self) -> None:
        """Closes the MCP connections and removes the workspace. Never raises: the
        run's outcome is already decided, and a server that hangs on close is left."""
        try:
            async with asyncio.timeout(MCP_TIMEOUT_SECONDS):
                await self._stack.aclose()
        except Exception:  # noqa: BLE001 - closing is best effort; the leg is over
            log.warning("closing a run's MCP connections failed", exc_info=True)
        finally:
            if self._workspace is not None:
                workspace, self._workspace = self._workspace, None
                try:
                    remove_workspace(workspace)
                except OSError:
                    log.warning("removing a run's workspace failed", exc_info=True)

    def workspace(self) -> Path:
        """The leg's workspace, made on first use: runs that never use the computer
        make none."""
        if self._workspace is None:
            self._workspace = create_workspace()
        return self._workspace

    def computer(self, tool: registry_pb2.Tool) -> FunctionTool:
        """The computer tool: one command line per call, run in the sandbox over the
        run's workspace, answered as JSON with the exit code and output."""
        name = tool.name
        computer = tool.computer
        allowed = frozenset(computer.allowed_commands)
        blocked = list(computer.blocked_paths)
        read_only = computer.read_only

        async def run(_: Any, arguments: str) -> str:
            try:
                command = json.loads(arguments or "{}").get("command")
            except (ValueError, AttributeError):
                command = None
            if not isinstance(command, str):
                return f"error: {name} takes {{'command': '<a command line>'}}"
            try:
                argv = parse_command(command, allowed)
                result = await run_command(
                    argv,
                    workspace=self.workspace(),
                    blocked_paths=blocked,
                    read_only=read_only,
                    timeout=COMMAND_SECONDS,
                    memory_mb=COMMAND_MEMORY_MB,
                    max_output_bytes=COMMAND_OUTPUT_BYTES,
                )
            except CommandRefused as refused:
                return f"error: {name} refused the command: {refused}"
            except SandboxError as error:
                return f"error: {name} failed: {error}"
            reply: dict[str, Any] = {
                "exit_code": result.exit_code,
                "stdout": result.stdout,
                "stderr": result.stderr,
            }
            if result.truncated:
                reply["truncated"] = True
            return json.dumps(reply)

        state = "read-only" if read_only else "writable"
        return FunctionTool(
            name=name,
            description=(tool.description or "Runs a command in a sandboxed workspace.")
            + f" Allowed programs: {', '.join(sorted(allowed))}. No shell: one program per"
            f" call, no pipes, redirections or substitutions. The {state} workspace is the"
            " working directory and is kept between calls of this run.",
            params_json_schema=_COMMAND_PARAMETERS,
            on_invoke_tool=run,
            strict_json_schema=False,
            needs_approval=tool.require_approval,
        )

    async def mcp_server(self, tool: registry_pb2.Tool, user: str) -> MCPServerStreamableHttp:
        """The tool's MCP server, connected for this leg (with the authorization `user`'s
        tool has): its URL judged first, then every request over the guarded client."""
        mcp = tool.mcp
        authorization = self._authorizations.open(tool, user) if mcp.authorization else ""
        try:
            self._policy.check_url(mcp.url)
            url = httpx2.URL(mcp.url)
            await self._policy.resolve(url.host, url.port or (443 if url.scheme == "https" else 80))
        except BlockedDestination as blocked:
            raise FailedPrecondition(
                f"the MCP server of tool {quoted(tool.name)} is not reachable from here: {blocked}",
                reason="MCP_SERVER_BLOCKED",
            ) from None
        except (httpx2.InvalidURL, OSError, UnicodeError):
            raise _unreachable(tool) from None
        policy = self._policy

        def http_client(
            headers: dict[str, str] | None = None, timeout: Any = None, auth: Any = None
        ) -> httpx2.AsyncClient:
            # The MCP client follows redirects within the origin itself; each hop still
            # connects through the guard.
            client = guarded_http_client(
                policy,
                timeout=timeout or MCP_TIMEOUT_SECONDS,
                max_reply_bytes=MCP_REPLY_BYTES,
                follow_redirects=False,
            )
            if headers:
                client.headers.update(headers)
            if authorization:
                client.headers["authorization"] = authorization
            return client

        approval: Any = None
        if tool.require_approval:
            approval = "always"
        elif mcp.approval_required_tools:
            approval = {"always": {"tool_names": list(mcp.approval_required_tools)}}
        server = MCPServerStreamableHttp(
            params={
                "url": mcp.url,
                "timeout": MCP_TIMEOUT_SECONDS,
                "httpx_client_factory": http_client,
            },
            name=tool.name,
            cache_tools_list=True,
            client_session_timeout_seconds=MCP_TIMEOUT_SECONDS,
            tool_filter=(
                {"allowed_tool_names": list(mcp.allowed_tools)} if mcp.allowed_tools else None
            ),
            require_approval=approval,
        )
        try:
            await self._stack.enter_async_context(server)
        except Exception:  # noqa: BLE001 - whatever the client raised, the server is not there
            log.warning("connecting to the MCP server of tool %s failed", quoted(tool.name))
            raise _unreachable(tool) from None
        return server


def _unreachable(tool: registry_pb2.Tool) -> Unavailable:
    # The URL itself is not quoted: its path or query may carry a token.
    return Unavailable(
        f"the MCP server of tool {quoted(tool.name)} cannot be reached",
        reason="MCP_SERVER_UNREACHABLE",
    )


_CONTEXT_SIZES: dict[int, Any] = {
    registry_pb2.WebSearchTool.CONTEXT_SIZE_LOW: "low",
    registry_pb2.WebSearchTool.CONTEXT_SIZE_MEDIUM: "medium",
    registry_pb2.WebSearchTool.CONTEXT_SIZE_HIGH: "high",
}


def web_search_tool(config: registry_pb2.WebSearchTool) -> WebSearchTool:
    """The SDK's hosted web search (OpenAI's Responses API runs it, not agentmesh)."""
    place = config.user_location
    fields = {
        "country": place.country,
        "region": place.region,
        "city": place.city,
        "timezone": place.timezone,
    }
    location: Any = {"type": "approximate", **{k: v for k, v in fields.items() if v}}
    return WebSearchTool(
        user_location=location if len(location) > 1 else None,
        search_context_size=_CONTEXT_SIZES.get(config.search_context_size, "medium"),
    )


def computer_problem(tool: registry_pb2.Tool) -> str | None:
    """Why a computer tool's blocked paths cannot be honoured here, or None."""
    try:
        check_blocked_paths(list(tool.computer.blocked_paths))
    except ValueError as error:
        return str(error)
    except SandboxError:
        return None  # reported as the sandbox being unavailable
    return None
