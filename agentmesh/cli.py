"""The agentmesh command: run the mesh or one service, or use a running mesh.

agentmesh up [--apply FILE] [--ask AGENT TEXT]   every service on one port
agentmesh serve NAME                             one service alone (split deployment)
agentmesh agents list | apply FILE
agentmesh run AGENT "input" [--conversation C] [--context key=value]
agentmesh runs list | get RUN | watch RUN
agentmesh approvals list RUN | approve NAME | reject NAME --reason WHY
agentmesh traces list [--agent NAME] | show TRACE
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import grpc
import typer
from google.protobuf import json_format, struct_pb2
from pydantic import ValidationError
from rich.live import Live
from rich.table import Table
from rich.text import Text

from agentmesh.catalog import apply_definitions, list_all_agents, load_definitions
from agentmesh.cli_common import (
    Key,
    KeyFile,
    Target,
    async_command,
    client_for,
    err,
    fail,
    local_problem,
    out,
)
from agentmesh.cli_files import files_app
from agentmesh.cli_traces import traces_app
from agentmesh.cli_triggers import schedules_app, triggers_app, webhooks_app
from agentmesh.cli_workflows import workflows_app
from agentmesh.client import Client
from agentmesh.config import Settings
from agentmesh.gateway import DEPLOYABLE, Gateway
from agentmesh.gen.registry.v1 import registry_pb2
from agentmesh.gen.runner.v1 import runner_pb2

if TYPE_CHECKING:  # the server side is imported only by `up` and `serve`: a client
    # command starts in about a second, not the eight the Agents SDK and all services take.
    from agentmesh.mesh import Mesh, ServicePlugin

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
agents_app = typer.Typer(help="Agents in the registry.", no_args_is_help=True)
runs_app = typer.Typer(help="Runs: list, read, watch.", no_args_is_help=True)
approvals_app = typer.Typer(
    help="Tool calls waiting for a person's decision.", no_args_is_help=True
)
app.add_typer(agents_app, name="agents")
app.add_typer(runs_app, name="runs")
app.add_typer(approvals_app, name="approvals")

State = runner_pb2.Run.State
DataDir = Annotated[Path | None, typer.Option(help="Default .agentmesh")]
Port = Annotated[int | None, typer.Option(help="Default 50051; 0 picks a free port")]
Host = Annotated[str | None, typer.Option(help="Default 127.0.0.1")]
HttpPort = Annotated[
    int | None,
    typer.Option(help="The OpenAI API, A2A, MCP and webhooks; default 8081 (free with --port 0)"),
]


def _settings(data_dir: Path | None, port: int | None, host: str | None, **more: Any) -> Settings:
    overrides: dict[str, Any] = {"data_dir": data_dir, "port": port, "host": host, **more}
    try:
        return Settings(**{name: value for name, value in overrides.items() if value is not None})
    except ValidationError as error:  # a port out of range, a setting from the environment
        problems = (f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        fail("; ".join(problems))


def _serve(settings: Settings, plugins: tuple[ServicePlugin, ...], after_start: Any = None) -> None:
    from agentmesh import logs
    from agentmesh.mesh import Mesh
    from agentmesh.server import settle_heap, termination_signal

    logs.configure(settings.log_level)

    async def serve() -> None:
        async with Mesh(settings, plugins) as mesh, contextlib.AsyncExitStack() as in_front:
            gateway: Gateway | None = None
            if settings.gateway:  # in the exit stack: stopped before the mesh behind it
                gateway = await in_front.enter_async_context(
                    Gateway(
                        mesh.address,
                        http=mesh.http_address,
                        host=settings.host,
                        port=settings.gateway_port,
                        work_dir=settings.data_dir / "gateway",
                    )
                )
            settle_heap()
            if after_start is not None:
                await after_start(mesh)
            async with termination_signal() as stop:
                out.print(f"agentmesh is up on {mesh.address} (Ctrl-C or SIGTERM to stop)")
                if mesh.http_url:
                    out.print(f"HTTP APIs (OpenAI, A2A, MCP, webhooks) on {mesh.http_url}")
                if gateway is not None:
                    key = f"$(cat {settings.data_dir / 'admin.key'})"
                    out.print(f"REST, gRPC-Web and gRPC through Envoy on {gateway.url}, e.g.")
                    out.print(
                        f'  curl -H "authorization: Bearer {key}" {gateway.url}/api/v1/agents',
                        soft_wrap=True,
                    )
                await stop.wait()
        out.print("agentmesh stopped")

    try:
        asyncio.run(serve())
    except OSError as error:  # a taken port, an unwritable data dir
        err.print(f"agentmesh: cannot start: {error}")
        raise typer.Exit(1) from None


@app.command()
def up(
    data_dir: DataDir = None,
    port: Port = None,
    host: Host = None,
    http_port: HttpPort = None,
    apply: Annotated[Path | None, typer.Option(help="Agent definitions (JSON) to apply")] = None,
    ask: Annotated[
        tuple[str, str] | None, typer.Option(help="Run AGENT on TEXT once up, and print it")
    ] = None,
    gateway: Annotated[
        bool | None, typer.Option("--gateway", help="Envoy in front: REST, gRPC-Web, gRPC")
    ] = None,
    gateway_port: Annotated[
        int | None, typer.Option(help="Default 8080; 0 picks a free port")
    ] = None,
) -> None:
    """Every service, on one port, on embedded defaults."""
    settings = _settings(
        data_dir, port, host, http_port=http_port, gateway=gateway, gateway_port=gateway_port
    )
    try:
        definitions = load_definitions(apply) if apply else None
    except (OSError, ValueError) as error:
        fail(local_problem(error))

    async def after_start(mesh: Mesh) -> None:
        key = (settings.data_dir / "admin.key").read_text().strip()
        async with Client(mesh.address, key) as client:
            if definitions:
                applied = await apply_definitions(client, definitions)
                out.print(f"applied {len(applied)} agent definitions; the registry now lists:")
                out.print(_agents_table(await list_all_agents(client)))
            if ask:
                try:
                    await _stream_run(client, ask[0], ask[1], conversation="", context={})
                except (grpc.aio.AioRpcError, typer.BadParameter) as error:
                    # The mesh is up whatever one run did: say why, and keep serving.
                    message = error.details() if isinstance(error, grpc.aio.AioRpcError) else error
                    err.print(Text.assemble((f"the run of {ask[0]} failed", "red"), f": {message}"))

    from services import PLUGINS

    _serve(settings, PLUGINS, after_start)


@app.command()
def serve(
    name: Annotated[str, typer.Argument(help=", ".join(DEPLOYABLE))],
    data_dir: DataDir = None,
    port: Port = None,
    host: Host = None,
    http_port: HttpPort = None,
) -> None:
    """One service alone, for a split deployment."""
    try:
        from services import plugins_named

        plugins = plugins_named(name)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    _serve(_settings(data_dir, port, host, http_port=http_port), plugins)


# ---- agents ---------------------------------------------------------------------------


def _agents_table(agents: list[registry_pb2.Agent]) -> Table:
    names = {agent.name: agent.display_name for agent in agents}
    table = Table("AGENT", "DISPLAY NAME", "TOOLS", "HANDOFFS", box=None)
    for agent in agents:
        handoffs = ", ".join(names.get(h, h) for h in agent.handoffs) or "-"
        table.add_row(agent.name, agent.display_name, str(len(agent.tools)), handoffs)
    return table


@agents_app.command("list")
@async_command
async def agents_list(
    target: Target = "127.0.0.1:50051",
    key: Key = None,
    key_file: KeyFile = Path(".agentmesh/admin.key"),
) -> None:
    async with client_for(target, key, key_file) as client:
        out.print(_agents_table(await list_all_agents(client)))


@agents_app.command("apply")
@async_command
async def agents_apply(
    file: Path,
    target: Target = "127.0.0.1:50051",
    key: Key = None,
    key_file: KeyFile = Path(".agentmesh/admin.key"),
) -> None:
    async with client_for(target, key, key_file) as client:
        await apply_definitions(client, load_definitions(file))
        out.print(_agents_table(await list_all_agents(client)))


async def _agent_name(client: Client, agent: str) -> str:
    """An agent by resource name, id or display name."""
    if agent.startswith("agents/"):
        return agent
    matches = [
        a.name for a in await list_all_agents(client) if agent in (a.name[7:], a.display_name)
    ]
    if len(matches) != 1:
        raise typer.BadParameter(
            f"{agent!r} names {'no agent' if not matches else 'several agents'}; "
            "use its resource name (agents/...)"
        )
    return matches[0]


# ---- runs -----------------------------------------------------------------------------


def _context(pairs: list[str]) -> dict[str, Any]:
    context: dict[str, Any] = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not (name and equals):
            raise typer.BadParameter(f"{pair!r} is not key=value", param_hint="--context")
        try:
            context[name] = json.loads(value)
        except json.JSONDecodeError:
            context[name] = value
    return context


async def _stream_run(
    client: Client, agent: str, text: str, conversation: str, context: dict[str, Any]
) -> runner_pb2.Run:
    request = runner_pb2.RunAgentRequest(
        agent=await _agent_name(client, agent), input=text, conversation=conversation
    )
    request.context_values.CopyFrom(json_format.ParseDict(context, struct_pb2.Struct()))
    return await _show_events(client.runner.StreamRun(request))


async def _show_events(events: Any) -> runner_pb2.Run:
    """Draws a run's events as they come: its answer live, then what it cost."""
    answer = Text()
    finished = runner_pb2.Run()
    agent = ""
    with Live(answer, console=out, refresh_per_second=20, transient=False):
        async for event in events:
            kind = event.WhichOneof("event")
            if kind == "run_started":
                agent = event.run_started.agent
            elif kind == "text_delta":
                answer.append(event.text_delta.delta)
            elif kind == "item" and event.item.type == runner_pb2.RunItem.TYPE_TOOL_CALL:
                answer.append(f"\n[{event.item.tool_name}({event.item.data})]\n", style="dim")
            elif kind == "agent_updated" and event.agent_updated != agent:
                agent = event.agent_updated
                answer.append(f"\n→ {agent}\n", style="cyan")
            elif kind == "approval_required":
                answer.append(
                    f"\n{event.approval_required.name} waits for approval: "
                    f"{event.approval_required.tool_name}({event.approval_required.arguments})\n",
                    style="yellow",
                )
            elif kind == "run_finished":
                finished = event.run_finished
    out.print()
    _summary(finished)
    return finished


def _exit_unless_well(run: runner_pb2.Run) -> None:
    """Exit status 1 for a run that failed, was cancelled or blocked."""
    if run.state not in (State.STATE_SUCCEEDED, State.STATE_AWAITING_APPROVAL):
        raise typer.Exit(1)


def _summary(run: runner_pb2.Run) -> None:
    state = State.Name(run.state).removeprefix("STATE_")
    style = {"SUCCEEDED": "green", "AWAITING_APPROVAL": "yellow"}.get(state, "red")
    out.print(
        Text.assemble(
            (state, style),
            f" {run.name}  {run.usage.requests} model calls, "
            f"{run.usage.input_tokens} in / {run.usage.output_tokens} out tokens, "
            f"{run.credits} credits  {run.conversation}",
        )
    )
    if run.error.message:
        err.print(run.error.message, style="red")


@app.command()
@async_command
async def run(
    agent: Annotated[str, typer.Argument(help="Resource name, id or display name")],
    text: Annotated[str, typer.Argument(help="The input")],
    conversation: Annotated[str, typer.Option(help="conversations/... to continue")] = "",
    context: Annotated[list[str], typer.Option(help="key=value (JSON value or text)")] = [],  # noqa: B006
    target: Target = "127.0.0.1:50051",
    key: Key = None,
    key_file: KeyFile = Path(".agentmesh/admin.key"),
) -> None:
    """Runs an agent and streams its answer as it comes."""
    async with client_for(target, key, key_file) as client:
        finished = await _stream_run(client, agent, text, conversation, _context(context))
    _exit_unless_well(finished)


@runs_app.command("list")
@async_command
async def runs_list(
    agent: Annotated[str, typer.Option(help="Only this agent's runs")] = "",
    target: Target = "127.0.0.1:50051",
    key: Key = None,
    key_file: KeyFile = Path(".agentmesh/admin.key"),
) -> None:
    async with client_for(target, key, key_file) as client:
        name = await _agent_name(client, agent) if agent else ""
        runs = (
            await client.runner.ListRuns(runner_pb2.ListRunsRequest(agent=name, page_size=100))
        ).runs
    table = Table("RUN", "AGENT", "STATE", "CREDITS", "OUTPUT", box=None)
    # A name is to be copied whole, whatever the terminal's width.
    table.columns[0].min_width = max((len(found.name) for found in runs), default=3)
    table.columns[0].no_wrap = True
    for found in runs:
        state = State.Name(found.state).removeprefix("STATE_")
        table.add_row(found.name, found.agent, state, str(found.credits), found.final_output[:60])
    out.print(table)


@runs_app.command("get")
@async_command
async def runs_get(
    name: str,
    target: Target = "127.0.0.1:50051",
    key: Key = None,
    key_file: KeyFile = Path(".agentmesh/admin.key"),
) -> None:
    async with client_for(target, key, key_file) as client:
        found = await client.runner.GetRun(runner_pb2.GetRunRequest(name=name))
    out.print_json(json_format.MessageToJson(found))


@runs_app.command("watch")
@async_command
async def runs_watch(
    name: str,
    target: Target = "127.0.0.1:50051",
    key: Key = None,
    key_file: KeyFile = Path(".agentmesh/admin.key"),
) -> None:
    async with client_for(target, key, key_file) as client:
        watched = await _show_events(client.runner.WatchRun(runner_pb2.WatchRunRequest(name=name)))
    _exit_unless_well(watched)


# ---- approvals --------------------------------------------------------------------------


@approvals_app.command("list")
@async_command
async def approvals_list(
    run_name: Annotated[str, typer.Argument(metavar="RUN")],
    target: Target = "127.0.0.1:50051",
    key: Key = None,
    key_file: KeyFile = Path(".agentmesh/admin.key"),
) -> None:
    async with client_for(target, key, key_file) as client:
        found = await client.runner.ListApprovals(runner_pb2.ListApprovalsRequest(parent=run_name))
    table = Table("APPROVAL", "TOOL", "ARGUMENTS", "STATE", box=None)
    for approval in found.approvals:
        state = runner_pb2.Approval.State.Name(approval.state).removeprefix("STATE_")
        table.add_row(approval.name, approval.tool_name, approval.arguments, state)
    out.print(table)


async def _decide(
    name: str,
    decision: runner_pb2.ResolveApprovalRequest.Decision,
    reason: str,
    client: Client,
) -> None:
    decided = await client.runner.ResolveApproval(
        runner_pb2.ResolveApprovalRequest(name=name, decision=decision, reason=reason)
    )
    out.print(
        f"{decided.name}: {runner_pb2.Approval.State.Name(decided.state).removeprefix('STATE_')}"
    )


@approvals_app.command("approve")
@async_command
async def approvals_approve(
    name: str,
    target: Target = "127.0.0.1:50051",
    key: Key = None,
    key_file: KeyFile = Path(".agentmesh/admin.key"),
) -> None:
    async with client_for(target, key, key_file) as client:
        await _decide(name, runner_pb2.ResolveApprovalRequest.DECISION_APPROVE, "", client)


@approvals_app.command("reject")
@async_command
async def approvals_reject(
    name: str,
    reason: Annotated[str, typer.Option(help="What the model is told")],
    target: Target = "127.0.0.1:50051",
    key: Key = None,
    key_file: KeyFile = Path(".agentmesh/admin.key"),
) -> None:
    async with client_for(target, key, key_file) as client:
        await _decide(name, runner_pb2.ResolveApprovalRequest.DECISION_REJECT, reason, client)


app.add_typer(traces_app, name="traces")
app.add_typer(files_app, name="files")
app.add_typer(workflows_app, name="workflows")
app.add_typer(schedules_app, name="schedules")
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(triggers_app, name="triggers")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
