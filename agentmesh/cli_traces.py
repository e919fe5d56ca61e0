"""`agentmesh traces`: list a user's traces, and draw one as a tree of its spans.

agentmesh traces list [--agent NAME] [--run RUN] [--errors]
agentmesh traces show TRACE          (traces/..., or a run: runs/...)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from google.protobuf import json_format
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from agentmesh.cli_common import Key, KeyFile, Target, async_command, client_for, out
from agentmesh.client import Client
from agentmesh.gen.registry.v1 import registry_pb2
from agentmesh.gen.runner.v1 import runner_pb2
from agentmesh.gen.traces.v1 import traces_pb2, traces_pb2_grpc

traces_app = typer.Typer(help="Traces: every run's spans.", no_args_is_help=True)

Status = traces_pb2.Trace.Status


def _seconds(start: Any, end: Any) -> float | None:
    if not end.seconds and not end.nanos:
        return None
    return (end.ToNanoseconds() - start.ToNanoseconds()) / 1e9


def _duration(start: Any, end: Any) -> str:
    seconds = _seconds(start, end)
    if seconds is None:
        return "running"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


async def _agent_name(client: Client, agent: str) -> str:
    """agents/x as given, else the agent whose id or display name it is."""
    if agent.startswith("agents/"):
        return agent
    listed = await client.registry.ListAgents(registry_pb2.ListAgentsRequest(page_size=1000))
    for found in listed.agents:
        if agent in (found.name.removeprefix("agents/"), found.display_name):
            return found.name
    raise typer.BadParameter(f"no agent named {agent!r}")


@traces_app.command("list")
@async_command
async def traces_list(
    agent: Annotated[str, typer.Option(help="Only this agent's traces")] = "",
    run: Annotated[str, typer.Option(help="Only this run's trace (runs/...)")] = "",
    errors: Annotated[bool, typer.Option("--errors", help="Only traces with an error")] = False,
    limit: Annotated[int, typer.Option(help="How many, newest first")] = 50,
    target: Target = "127.0.0.1:50051",
    key: Key = None,
    key_file: KeyFile = Path(".agentmesh/admin.key"),
) -> None:
    async with client_for(target, key, key_file) as client:
        name = await _agent_name(client, agent) if agent else ""
        listed = await traces_pb2_grpc.TraceServiceStub(client.channel).ListTraces(
            traces_pb2.ListTracesRequest(
                agent=name,
                run=run,
                status=Status.STATUS_ERROR if errors else Status.STATUS_UNSPECIFIED,
                page_size=limit,
            )
        )
    table = Table("TRACE", "AGENT", "RUN", "STARTED", "DURATION", "SPANS", "STATUS", box=None)
    for trace in listed.traces:
        status = Text("error", "red") if trace.status == Status.STATUS_ERROR else Text("ok")
        table.add_row(
            trace.name,
            trace.agent,
            trace.run,
            trace.start_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"),
            _duration(trace.start_time, trace.end_time),
            str(trace.span_count),
            status,
        )
    out.print(table)


def _label(span: traces_pb2.Span) -> Text:
    """One line of the tree: type, name, duration, tokens, error."""
    data = json_format.MessageToDict(span.data)
    text = Text()
    text.append(span.type, style="bold cyan")
    text.append(f" {span.name}")
    text.append(f"  {_duration(span.start_time, span.end_time)}", style="dim")
    usage = data.get("usage") or {}
    if isinstance(usage, dict) and ("input_tokens" in usage or "output_tokens" in usage):
        text.append(
            f"  tokens {int(usage.get('input_tokens', 0))} in / "
            f"{int(usage.get('output_tokens', 0))} out",
            style="magenta",
        )
    if span.type == "guardrail":
        text.append("  tripped" if data.get("triggered") else "  passed", style="yellow")
    if span.error:
        text.append(f"  error: {span.error[:200]}", style="bold red")
    return text


def span_tree(trace: traces_pb2.Trace) -> Tree:
    """The trace as a rich Tree: each span under its parent, in start order; a span
    whose parent is missing hangs from the root."""
    header = Text(trace.name, style="bold")
    header.append(f"  {trace.agent or trace.workflow_name}")
    header.append(f"  {_duration(trace.start_time, trace.end_time)}", style="dim")
    if trace.error:
        header.append(f"  error: {trace.error[:200]}", style="bold red")
    root = Tree(header)
    spans = sorted(trace.spans, key=lambda s: (s.start_time.ToNanoseconds(), s.span_id))
    known = {span.span_id for span in spans}
    children: dict[str, list[traces_pb2.Span]] = {}
    for span in spans:
        parent = span.parent_id if span.parent_id in known else ""
        children.setdefault(parent, []).append(span)

    def grow(node: Tree, parent: str, depth: int) -> None:
        for span in children.get(parent, []):
            branch = node.add(_label(span))
            if depth < 64:
                grow(branch, span.span_id, depth + 1)

    grow(root, "", 0)
    return root


@traces_app.command("show")
@async_command
async def traces_show(
    trace: Annotated[str, typer.Argument(metavar="TRACE", help="traces/... or runs/...")],
    target: Target = "127.0.0.1:50051",
    key: Key = None,
    key_file: KeyFile = Path(".agentmesh/admin.key"),
) -> None:
    async with client_for(target, key, key_file) as client:
        if trace.startswith("runs/"):
            run = await client.runner.GetRun(runner_pb2.GetRunRequest(name=trace))
            trace = run.trace
        elif not trace.startswith("traces/"):
            trace = f"traces/{trace}"
        found = await traces_pb2_grpc.TraceServiceStub(client.channel).GetTrace(
            traces_pb2.GetTraceRequest(name=trace)
        )
    out.print(span_tree(found))
