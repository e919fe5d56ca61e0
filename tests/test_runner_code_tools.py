# ruff: noqa: F811 - the runner's fixtures, imported, are redefined as test parameters
"""Code function tools in runs: the source runs in the sandbox, never in the runner,
and whatever it does wrong comes back to the model as the tool's error."""

from __future__ import annotations

import json

from test_runner import Tenant, runner_mesh, tenant, users  # noqa: F401 - fixtures

from agentmesh.gen.registry.v1 import registry_pb2 as r
from agentmesh.gen.runner.v1 import runner_pb2 as rn
from agentmesh.model_server import Reply, ToolCall

State = rn.Run.State


def code_tool(name: str, source: str) -> r.Tool:
    return r.Tool(name=name, function=r.FunctionTool(code=r.CodeFunction(source=source)))


async def test_a_code_tool_runs_in_the_sandbox_and_its_failures_reach_the_model(tenant: Tenant):
    agent = await tenant.agent(
        "coder",
        tools=[
            code_tool("add", "def main(a, b):\n    return {'sum': a + b}\n"),
            code_tool("boom", "def main():\n    raise KeyError('no such invoice')\n"),
            code_tool("peek", "def main():\n    return open('/work/main/pyproject.toml').read()\n"),
        ],
    )
    tenant.model.enqueue(
        Reply(
            tool_calls=[
                ToolCall("add", {"a": 2, "b": 40}),
                ToolCall("boom", {}),
                ToolCall("peek", {}),
            ]
        ),
        Reply(text="done"),
    )
    run = await tenant.run(agent.name, "compute")
    assert run.state == State.STATE_SUCCEEDED, run.error
    outputs = [item.data for item in run.items if item.type == rn.RunItem.TYPE_TOOL_OUTPUT]
    assert json.loads(outputs[0]) == {"sum": 42}
    assert outputs[1].startswith("error: boom failed") and "KeyError" in outputs[1]
    # The service's own files are not there to read.
    assert outputs[2].startswith("error: peek failed") and "agentmesh" not in outputs[2]
