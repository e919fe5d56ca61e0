"""`agentmesh workflows`: save workflow definitions from a file, run one with live steps.

agentmesh workflows apply FILE              creates or updates every workflow of the file
agentmesh workflows list
agentmesh workflows run NAME "input" [--var key=value]   streams the steps as they go
agentmesh workflows runs [--workflow NAME] | get WORKFLOW_RUN

FILE is JSON: {"workflows": [{"id": "support-desk", "display_name": ..., "steps": [...]}]}
(or one such workflow), with the fields of agentmesh.registry.v1.Workflow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from google.protobuf import field_mask_pb2, json_format, struct_pb2
from rich.live import Live
from rich.table import Table
from rich.text import Text

from agentmesh.cli_common import Key, KeyFile, Target, async_command, client_for, err, out
from agentmesh.client import Client
from agentmesh.gen.registry.v1 import workflows_pb2
from agentmesh.gen.runner.v1 import runner_pb2

workflows_app = typer.Typer(help="Workflows: save them, run them.", no_args_is_help=True)

State = runner_pb2.Run.State
# What `apply` changes in a workflow that exists: everything a file can say.
_UPDATED = ["display_name", "description", "steps", "metadata"]


def load_workflows(path: Path) -> list[tuple[str, workflows_pb2.Workflow]]:
    """(id, definition) of every workflow in the file."""
    try:
        data = json.loads(path.read_text())
    except (ValueError, RecursionError) as error:
        raise ValueError(f"{path} is not JSON text: {error}") from None
    entries = data["workflows"] if isinstance(data, dict) and "workflows" in data else [data]
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f'{path} holds no workflow, nor a {{"workflows": [...]}} list of them')
    found = []
    for entry in entries:
        fields = dict(entry)
        workflow_id = str(fields.pop("id", ""))
        try:
            found.append((workflow_id, json_format.ParseDict(fields, workflows_pb2.Workflow())))
        except json_format.ParseError as error:
            raise ValueError(f"workflow {workflow_id!r}: {error}") from None
    return found


async def apply_workflows(
    client: Client, workflows: list[tuple[str, workflows_pb2.Workflow]]
) -> list[workflows_pb2.Workflow]:
    """Creates each workflow, or updates the one of that id to what the file says."""
    applied = []
    for workflow_id, definition in workflows:
        try:
            saved = await client.workflows.CreateWorkflow(
                workflows_pb2.CreateWorkflowRequest(workflow=definition, workflow_id=workflow_id)
            )
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.ALREADY_EXISTS or not workflow_id:
                raise
            name = f"workflows/{workflow_id}"
            current = await client.workflows.GetWorkflow(
                workflows_pb2.GetWorkflowRequest(name=name)
            )
            changed = workflows_pb2.Workflow()
            changed.CopyFrom(definition)
            changed.name, changed.etag = name, current.etag
            saved = await client.workflows.UpdateWorkflow(
                workflows_pb2.UpdateWorkflowRequest(
                    workflow=changed, update_mask=field_mask_pb2.FieldMask(paths=_UPDATED)
                )
            )
        applied.append(saved)
    return applied


def _workflow_name(name: str) -> str:
    return name if name.startswith("workflows/") else f"workflows/{name}"


def _vars(pairs: list[str]) -> struct_pb2.Struct:
    values: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            values[key] = json.loads(value)
        except json.JSONDecodeError:
            values[key] = value
    return json_format.ParseDict(values, struct_pb2.Struct())


def _state(state: int) -> str:
    return State.Name(state).removeprefix("STATE_")  # type: ignore[arg-type]


class StepBoard:
    """The steps of a workflow run as they start and finish: a table drawn live."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, int], runner_pb2.StepRun] = {}

    def update(self, step: runner_pb2.StepRun) -> None:
        self.rows[(step.step, step.branch, step.visit)] = step

    def table(self) -> Table:
        table = Table("STEP", "VISIT", "STATE", "CREDITS", "OUTPUT", box=None)
        for step in self.rows.values():
            label = f"{step.step}.{step.branch}" if step.branch else step.step
            output = (step.output or step.error.message).replace("\n", " ")
            table.add_row(
                label, str(step.visit), _state(step.state), str(step.credits), output[:60]
            )
        return table


@workflows_app.command("apply")
@async_command
async def workflows_apply(
    file: Path,
    target: Target = "127.0.0.1:50051",
    key: Key = None,
    key_file: KeyFile = Path(".agentmesh/admin.key"),
) -> None:
    """Creates or updates every workflow in FILE (checked by the registry on save)."""
    async with client_for(target, key, key_file) as client:
        applied = await apply_workflows(client, load_workflows(file))
    for workflow in applied:
        out.print(f"{workflow.name}  {workflow.display_name}  ({len(workflow.steps)} steps)")


@workflows_app.command("list")
@async_command
async def workflows_list(
    target: Target = "127.0.0.1:50051",
    key: Key = None,
    key_file: KeyFile = Path(".agentmesh/admin.key"),
) -> None:
    """The workflows defined."""
    async with client_for(target, key, key_file) as client:
        found = await client.workflows.ListWorkflows(
            workflows_pb2.ListWorkflowsRequest(page_size=100)
        )
    table = Table("WORKFLOW", "NAME", "STEPS", box=None)
    for workflow in found.workflows:
        table.add_row(workflow.name, workflow.display_name, str(len(workflow.steps)))
    out.print(table)


@workflows_app.command("run")
@async_command
async def workflows_run(
    name: Annotated[str, typer.Argument(help="workflows/... or its id")],
    text: Annotated[str, typer.Argument(help="The input")],
    var: Annotated[list[str], typer.Option(help="key=value (JSON value or text)")] = [],  # noqa: B006
    target: Target = "127.0.0.1:50051",
    key: Key = None,
    key_file: KeyFile = Path(".agentmesh/admin.key"),
) -> None:
    """Runs a workflow, showing each step as it starts and finishes."""
    board = StepBoard()
    finished = runner_pb2.WorkflowRun()
    approvals: list[runner_pb2.Approval] = []
    request = runner_pb2.RunWorkflowRequest(
        workflow=_workflow_name(name), input=text, vars=_vars(var)
    )
    async with client_for(target, key, key_file) as client:
        with Live(board.table(), console=out, refresh_per_second=8) as live:
            async for event in client.runner.StreamWorkflow(request):
                kind = event.WhichOneof("event")
                if kind in ("step_started", "step_finished"):
                    board.update(getattr(event, kind))
                elif kind == "approval_required":
                    approvals.append(event.approval_required)
                elif kind == "workflow_finished":
                    finished = event.workflow_finished
                live.update(board.table())
    out.print(
        Text.assemble(
            f"{finished.name}: ", (_state(finished.state), "bold"), f"  credits {finished.credits}"
        )
    )
    for approval in approvals:
        out.print(
            f"waits for approval: {approval.name} ({approval.tool_name} {approval.arguments}); "
            "agentmesh approvals approve NAME"
        )
    if finished.final_output:
        out.print(finished.final_output)
    if finished.error.message:
        err.print(finished.error.message, style="red")
    if finished.state not in (State.STATE_SUCCEEDED, State.STATE_AWAITING_APPROVAL):
        raise typer.Exit(1)


@workflows_app.command("runs")
@async_command
async def workflows_runs(
    workflow: Annotated[str, typer.Option(help="Only this workflow's runs")] = "",
    target: Target = "127.0.0.1:50051",
    key: Key = None,
    key_file: KeyFile = Path(".agentmesh/admin.key"),
) -> None:
    """Runs of workflows: one workflow's with --workflow."""
    async with client_for(target, key, key_file) as client:
        found = await client.runner.ListWorkflowRuns(
            runner_pb2.ListWorkflowRunsRequest(
                workflow=_workflow_name(workflow) if workflow else "", page_size=100
            )
        )
    table = Table("WORKFLOW RUN", "WORKFLOW", "STATE", "STEPS", "CREDITS", box=None)
    for run in found.workflow_runs:
        table.add_row(
            run.name, run.workflow, _state(run.state), str(len(run.steps)), str(run.credits)
        )
    out.print(table)


@workflows_app.command("get")
@async_command
async def workflows_get(
    name: Annotated[str, typer.Argument(metavar="RUN", help="workflowRuns/...")],
    target: Target = "127.0.0.1:50051",
    key: Key = None,
    key_file: KeyFile = Path(".agentmesh/admin.key"),
) -> None:
    """A workflow run (workflowRuns/..., as `workflows runs` lists them), as JSON."""
    async with client_for(target, key, key_file) as client:
        found = await client.runner.GetWorkflowRun(runner_pb2.GetWorkflowRunRequest(name=name))
    out.print_json(json_format.MessageToJson(found))
