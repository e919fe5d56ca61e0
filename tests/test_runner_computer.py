# ruff: noqa: F811 - the runner's fixtures, imported, are redefined as test parameters
"""The computer tool in runs: allowed programs only (judged on the parsed command), run
in the sandbox over a workspace that lasts the run, with blocked paths invisible and
read-only mode; whatever it refuses goes back to the model as the tool's error."""

from __future__ import annotations

import glob
import json
import tempfile
import uuid

import grpc
import pytest
from support import expect_rpc_error
from test_runner import Tenant, runner_mesh, tenant, users  # noqa: F401 - fixtures

from agentmesh.gen.registry.v1 import registry_pb2 as r
from agentmesh.gen.runner.v1 import runner_pb2 as rn
from agentmesh.model_server import Reply, ToolCall
from services.runner.tools import CommandRefused, parse_command

State = rn.Run.State
OS_RELEASE = "/usr/lib/os-release"


def computer(name: str, allowed: list[str], **fields) -> r.Tool:
    return r.Tool(name=name, computer=r.ComputerTool(allowed_commands=allowed, **fields))


def call(tool: str, command: str, call_id: str) -> ToolCall:
    return ToolCall(tool, {"command": command}, call_id=call_id)


def outputs(run: rn.Run) -> dict[str, str]:
    """Each tool call's output by call id."""
    return {
        item.call_id: item.data for item in run.items if item.type == rn.RunItem.TYPE_TOOL_OUTPUT
    }


def result(output: str) -> dict:
    """A command's exit code and output, as the model got them."""
    assert not output.startswith("error:"), output
    return json.loads(output)


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("ls -la", ["ls", "-la"]),
        ("echo 'a; b' \"c|d\"", ["echo", "a; b", "c|d"]),  # quoted: plain arguments
        ("echo a#b", ["echo", "a#b"]),
    ],
)
def test_a_command_line_is_parsed_like_a_shell_would(command, argv):
    assert parse_command(command, {"ls", "echo"}) == argv


@pytest.mark.parametrize(
    "command",
    [
        "rm -rf .",
        "ls; rm -rf .",
        "ls&&rm -rf .",
        "ls | rm",
        "ls > out",
        "echo $(rm -rf .)",
        "echo `rm -rf .`",
        "echo ${HOME}",
        "(rm -rf .)",
        "ls\nrm -rf .",
        "/bin/ls",
        "./ls",
        "LD_PRELOAD=x ls",
        "echo 'unclosed",
        "",
    ],
)
def test_anything_but_one_allowed_program_is_refused(command):
    with pytest.raises(CommandRefused):
        parse_command(command, {"ls", "echo"})


async def test_allowed_commands_run_and_the_rest_is_refused_back_to_the_model(tenant: Tenant):
    agent = await tenant.agent("sysadmin", tools=[computer("shell", ["echo", "ls"])])
    tenant.model.enqueue(
        Reply(
            tool_calls=[
                call("shell", "echo hello 'a; b'", "ok"),
                call("shell", "rm -rf .", "not-allowed"),
                call("shell", "ls; rm -rf .", "smuggled"),
                call("shell", "echo $(id)", "substituted"),
                call("shell", "ls /no/such/dir", "fails"),
            ]
        ),
        Reply(text="done"),
    )
    run = await tenant.run(agent.name, "tidy up")
    assert run.state == State.STATE_SUCCEEDED, run.error
    out = outputs(run)
    assert result(out["ok"]) == {"exit_code": 0, "stdout": "hello a; b\n", "stderr": ""}
    assert out["not-allowed"].startswith("error: shell refused the command: 'rm' is not an allowed")
    assert out["smuggled"].startswith("error: shell refused") and "operators" in out["smuggled"]
    assert (
        out["substituted"].startswith("error: shell refused")
        and "substitution" in out["substituted"]
    )
    # A program that fails is the program's answer, not a refusal.
    failed = result(out["fails"])
    assert failed["exit_code"] != 0 and "No such file" in failed["stderr"]
    # The model was told which programs it has.
    offered = tenant.model.requests[0].body["tools"][0]["function"]
    assert offered["name"] == "shell" and "echo, ls" in offered["description"]


async def test_the_workspace_lasts_the_run_and_is_never_shared_nor_left_behind(tenant: Tenant):
    marker = f"marker-{uuid.uuid4().hex}"
    agent = await tenant.agent("builder", tools=[computer("shell", ["touch", "ls"])])
    tenant.model.enqueue(
        Reply(tool_calls=[call("shell", f"touch {marker}", "make")]),
        Reply(tool_calls=[call("shell", "ls", "look")]),
        Reply(text="made it"),
    )
    first = await tenant.run(agent.name, "make a file")
    assert first.state == State.STATE_SUCCEEDED, first.error
    out = outputs(first)
    assert result(out["make"])["exit_code"] == 0
    assert result(out["look"])["stdout"] == f"{marker}\n"
    # Another run starts from an empty workspace.
    tenant.model.enqueue(Reply(tool_calls=[call("shell", "ls -A", "again")]), Reply(text="empty"))
    second = await tenant.run(agent.name, "look again")
    assert second.state == State.STATE_SUCCEEDED, second.error
    assert result(outputs(second)["again"])["stdout"] == ""
    # Both workspaces were removed when their runs ended.
    leftovers = glob.glob(f"{tempfile.gettempdir()}/agentmesh-workspace-*/{marker}")
    assert leftovers == []


async def test_blocked_paths_are_not_visible_even_in_the_runs_workspace(tenant: Tenant):
    agent = await tenant.agent(
        "auditor",
        tools=[
            computer("writer", ["mkdir", "cp", "cat"]),
            computer(
                "reader",
                ["cat", "ls"],
                blocked_paths=[OS_RELEASE, "/workspace/secrets"],
            ),
        ],
    )
    tenant.model.enqueue(
        Reply(tool_calls=[call("writer", "mkdir secrets", "mkdir")]),
        Reply(tool_calls=[call("writer", f"cp {OS_RELEASE} secrets/key", "copy")]),
        Reply(
            tool_calls=[
                call("writer", "cat secrets/key", "writer-reads"),
                call("reader", f"cat {OS_RELEASE}", "system-file"),
                call("reader", "cat secrets/key", "workspace-file"),
                call("reader", "ls secrets", "workspace-dir"),
            ]
        ),
        Reply(text="audited"),
    )
    run = await tenant.run(agent.name, "audit")
    assert run.state == State.STATE_SUCCEEDED, run.error
    out = outputs(run)
    assert result(out["copy"])["exit_code"] == 0
    # The same run's workspace: the tool without blocks sees the file.
    assert "PRETTY_NAME" in result(out["writer-reads"])["stdout"]
    # The blocked tool sees nothing of it, in the system tree or the workspace.
    for call_id in ("system-file", "workspace-file", "workspace-dir"):
        assert "PRETTY_NAME" not in out[call_id] and "key" not in result(out[call_id])["stdout"]
    assert result(out["workspace-file"])["exit_code"] != 0


async def test_read_only_mode_writes_nothing_anywhere(tenant: Tenant):
    agent = await tenant.agent(
        "viewer", tools=[computer("shell", ["touch", "mkdir", "ls"], read_only=True)]
    )
    tenant.model.enqueue(
        Reply(
            tool_calls=[
                call("shell", "touch new-file", "workspace"),
                call("shell", "mkdir /tmp/x", "tmp"),
                call("shell", "ls /usr", "read"),
            ]
        ),
        Reply(text="looked"),
    )
    run = await tenant.run(agent.name, "look around")
    assert run.state == State.STATE_SUCCEEDED, run.error
    out = outputs(run)
    for call_id in ("workspace", "tmp"):
        refused = result(out[call_id])
        assert refused["exit_code"] != 0 and "Read-only file system" in refused["stderr"]
    assert "bin" in result(out["read"])["stdout"].split()
    description = tenant.model.requests[0].body["tools"][0]["function"]["description"]
    assert "read-only workspace" in description


async def test_blocked_paths_that_would_break_the_sandbox_fail_before_any_model_call(
    tenant: Tenant,
):
    agent = await tenant.agent(
        "broken", tools=[computer("shell", ["ls"], blocked_paths=["/usr/lib"])]
    )
    error = await expect_rpc_error(tenant.run(agent.name), grpc.StatusCode.FAILED_PRECONDITION)
    assert "'shell'" in error.details() and "/usr/lib" in error.details()
    assert tenant.model.requests == []
