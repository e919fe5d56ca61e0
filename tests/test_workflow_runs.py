# ruff: noqa: F811 - the runner's fixtures, imported, are redefined as test parameters
"""Workflow runs through the running mesh: steps that are agent runs, templates over
earlier outputs, CEL branches, loops, parallel fan-out, pauses, cancels and tenants.

The model is the scripted stand-in server; when nothing is queued it answers
"stand-in reply to: <the step's input>", so an output shows what a step was given.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from rpc_helpers import error_info
from support import expect_rpc_error
from test_runner import (  # noqa: F401 - fixtures
    Tenant,
    endpoint,
    eventually,
    http_tool,
    runner_mesh,
    struct,
    tenant,
    users,
)
from test_runner_replicas import gate, gated_tool  # noqa: F401 - fixtures

from agentmesh.gen.registry.v1 import account_pb2 as a
from agentmesh.gen.registry.v1 import workflows_pb2 as w
from agentmesh.gen.runner.v1 import runner_pb2 as rn
from agentmesh.model_server import Reply, ToolCall
from agentmesh.templates import TemplateError
from services.runner.workflows import StepFailed, evaluate, render_input

State = rn.Run.State
ENDED = (State.STATE_SUCCEEDED, State.STATE_FAILED, State.STATE_CANCELLED, State.STATE_BLOCKED)
CATEGORY = {
    "type": "object",
    "properties": {"category": {"type": "string"}},
    "required": ["category"],
    "additionalProperties": False,
}
VERDICT = {
    "type": "object",
    "properties": {"verdict": {"type": "string"}, "notes": {"type": "string"}},
    "required": ["verdict", "notes"],
    "additionalProperties": False,
}


def step(step_id: str, agent: str, input: str = "", **fields) -> w.WorkflowStep:
    return w.WorkflowStep(
        id=step_id, agent=w.AgentStep(agent=f"agents/{agent}", input=input), **fields
    )


def switch(*cases: tuple[str, str], default: str = "end") -> w.Transition:
    return w.Transition(
        switch=w.Transition.Switch(
            cases=[w.Transition.Case(condition=c, goto=g) for c, g in cases], default=default
        )
    )


async def save(tenant: Tenant, *steps: w.WorkflowStep, workflow_id: str = "") -> w.Workflow:
    return await tenant.client.workflows.CreateWorkflow(
        w.CreateWorkflowRequest(
            workflow=w.Workflow(display_name="flow", steps=steps), workflow_id=workflow_id
        )
    )


async def run(tenant: Tenant, workflow: w.Workflow, text: str = "hello", **fields):
    return await tenant.client.runner.RunWorkflow(
        rn.RunWorkflowRequest(workflow=workflow.name, input=text, **fields)
    )


def visited(run: rn.WorkflowRun) -> list[str]:
    """The step (and branch) of every step run, in the order they started."""
    return [f"{s.step}.{s.branch}" if s.branch else s.step for s in run.steps]


def reason_of(status) -> tuple[str, dict]:
    from google.rpc import error_details_pb2

    info = error_details_pb2.ErrorInfo()
    for detail in status.details:
        if detail.Unpack(info):
            return info.reason, dict(info.metadata)
    return "", {}


async def ended(tenant: Tenant, name: str) -> rn.WorkflowRun | None:
    found = await tenant.client.runner.GetWorkflowRun(rn.GetWorkflowRunRequest(name=name))
    return found if found.state in ENDED else None


# ---- the seed's example and its fixed bugs ---------------------------------------------------


async def test_the_seeds_example_a_branch_on_structured_output_jumps_to_its_step(tenant):
    """User input -> classify -> a condition on its structured output -> billing (the
    third step): support, between them, never runs."""
    await tenant.agent("classify", output_type=struct(CATEGORY))
    await tenant.agent("support")
    await tenant.agent("billing")
    flow = await save(
        tenant,
        step(
            "classify",
            "classify",
            "Classify: {{ input }}",
            next=switch(
                ('steps.classify.output.category == "billing"', "billing"), default="support"
            ),
        ),
        step("support", "support", next=w.Transition(goto="end")),
        step(
            "billing",
            "billing",
            "Invoice question ({{ steps.classify.output.category }}): {{ input }}",
        ),
    )
    tenant.model.enqueue(Reply(text=json.dumps({"category": "billing"})))
    done = await run(tenant, flow, "Why was I charged twice?")
    assert done.state == State.STATE_SUCCEEDED, done.error
    assert visited(done) == ["classify", "billing"]
    first, last = done.steps
    assert first.input == "Classify: Why was I charged twice?"
    assert json_format.MessageToDict(first.structured_output) == {"category": "billing"}
    assert first.next_step == "billing" and last.next_step == "end"
    assert last.input == "Invoice question (billing): Why was I charged twice?"
    assert done.final_output == "stand-in reply to: " + last.input
    # Each step is a run of its own, marked as the workflow run's, in its trace.
    for step_run in done.steps:
        agent_run = await tenant.client.runner.GetRun(rn.GetRunRequest(name=step_run.run))
        assert agent_run.workflow_run == done.name and agent_run.trace == done.trace
        assert agent_run.state == State.STATE_SUCCEEDED
    assert len(tenant.model.requests) == 2
    # Usage and credits are the steps' summed.
    assert done.usage.requests == 2
    assert done.credits == sum(s.credits for s in done.steps) > 0
    assert (await tenant.balance()).balance == 1000 - done.credits


async def test_a_jump_lands_exactly_on_its_target_even_the_first_step(tenant):
    await tenant.agent("writer")
    await tenant.agent("checker")
    flow = await save(
        tenant,
        step("write", "writer", "{{ input }} #{{ steps.check.output }}", max_visits=3),
        step(
            "check",
            "checker",
            "check {{ steps.write.output }}",
            max_visits=3,
            next=switch(("steps.check.visits < 3", "write")),
        ),
    )
    done = await run(tenant, flow, "draft")
    assert done.state == State.STATE_SUCCEEDED, done.error
    assert visited(done) == ["write", "check"] * 3
    assert [s.visit for s in done.steps] == [1, 1, 2, 2, 3, 3]
    assert [s.next_step for s in done.steps] == ["check", "write"] * 2 + ["check", "end"]
    # The first visit's template read a step that had not run: empty, not an error.
    assert done.steps[0].input == "draft #"
    assert done.steps[2].input == f"draft #{done.steps[1].output}"


async def test_a_condition_over_a_missing_field_fails_the_run_and_names_it(tenant):
    await tenant.agent("classify", output_type=struct(CATEGORY))
    await tenant.agent("billing")
    flow = await save(
        tenant,
        step(
            "classify",
            "classify",
            next=switch(('steps.classify.output.priority == "high"', "billing")),
        ),
        step("billing", "billing"),
    )
    tenant.model.enqueue(Reply(text=json.dumps({"category": "billing"})))
    done = await run(tenant, flow)
    assert done.state == State.STATE_FAILED
    assert done.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "priority" in done.error.message
    reason, metadata = reason_of(done.error)
    assert reason == "CONDITION_FAILED"
    assert metadata["field"] == "steps[0].next.switch.cases[0].condition"
    assert visited(done) == ["classify"]  # billing was not run in its place
    assert len(tenant.model.requests) == 1


# ---- loops and fan-out -------------------------------------------------------------------------


async def test_a_bounded_loop_ends_when_its_condition_says_so(tenant):
    await tenant.agent("drafter")
    await tenant.agent("reviewer", output_type=struct(VERDICT))
    flow = await save(
        tenant,
        step("draft", "drafter", "{{ input }} {{ steps.review.output.notes }}", max_visits=5),
        step(
            "review",
            "reviewer",
            max_visits=5,
            next=switch(('steps.review.output.verdict == "redo"', "draft")),
        ),
    )
    tenant.model.enqueue(
        Reply(text="draft one"),
        Reply(text=json.dumps({"verdict": "redo", "notes": "shorter"})),
        Reply(text="draft two"),
        Reply(text=json.dumps({"verdict": "ok", "notes": ""})),
    )
    done = await run(tenant, flow, "Write a haiku")
    assert done.state == State.STATE_SUCCEEDED, done.error
    assert visited(done) == ["draft", "review", "draft", "review"]
    assert done.steps[2].input == "Write a haiku shorter"
    assert json_format.MessageToDict(done.structured_output) == {"verdict": "ok", "notes": ""}


async def test_a_loop_that_would_pass_its_bound_fails_instead(tenant):
    await tenant.agent("poller")
    flow = await save(
        tenant,
        step("poll", "poller", max_visits=2, next=switch(("true", "poll"))),
    )
    done = await run(tenant, flow)
    assert done.state == State.STATE_FAILED
    reason, metadata = reason_of(done.error)
    assert (reason, metadata["field"]) == ("MAX_VISITS_EXCEEDED", "steps[0].max_visits")
    assert visited(done) == ["poll", "poll"] and len(tenant.model.requests) == 2


async def test_a_parallel_step_fans_out_and_joins_for_the_next_step(tenant):
    await tenant.agent("money")
    await tenant.agent("product")
    await tenant.agent("summary")
    flow = await save(
        tenant,
        w.WorkflowStep(
            id="fan",
            parallel=w.ParallelStep(
                branches=[
                    w.ParallelStep.Branch(
                        id="money",
                        agent=w.AgentStep(agent="agents/money", input="cost of {{ input }}"),
                    ),
                    w.ParallelStep.Branch(
                        id="product",
                        agent=w.AgentStep(agent="agents/product", input="use of {{ input }}"),
                    ),
                ]
            ),
        ),
        step("sum", "summary", "{{ steps.fan.output.money }} | {{ steps.fan.output.product }}"),
    )
    done = await run(tenant, flow, "a bike")
    assert done.state == State.STATE_SUCCEEDED, done.error
    assert sorted(visited(done)[:2]) == ["fan.money", "fan.product"]
    assert visited(done)[2:] == ["fan", "sum"]
    join = done.steps[2]
    outputs = {
        "money": "stand-in reply to: cost of a bike",
        "product": "stand-in reply to: use of a bike",
    }
    assert json_format.MessageToDict(join.structured_output) == outputs
    assert join.run == "" and join.next_step == "sum"
    assert done.steps[3].input == f"{outputs['money']} | {outputs['product']}"
    assert done.usage.requests == 3


async def test_a_join_that_waits_for_the_first_branch_cancels_the_other(tenant, gate):
    await tenant.agent("quick")
    await tenant.agent("stuck", tools=[gated_tool(gate)])
    await tenant.agent("next")
    flow = await save(
        tenant,
        w.WorkflowStep(
            id="race",
            parallel=w.ParallelStep(
                branches=[
                    w.ParallelStep.Branch(
                        id="stuck", agent=w.AgentStep(agent="agents/stuck", input="call wait")
                    ),
                    w.ParallelStep.Branch(id="quick", agent=w.AgentStep(agent="agents/quick")),
                ],
                wait_for=1,
            ),
        ),
        step("after", "next", "{{ steps.race.output.quick }}"),
    )
    done = await run(tenant, flow, "who is first")
    assert done.state == State.STATE_SUCCEEDED, done.error
    assert gate.called.is_set()  # the stuck branch was in its tool when the join went on
    branches = {s.branch: s for s in done.steps if s.branch}
    assert branches["quick"].state == State.STATE_SUCCEEDED
    assert branches["stuck"].state == State.STATE_CANCELLED
    join = next(s for s in done.steps if s.step == "race" and not s.branch)
    assert json_format.MessageToDict(join.structured_output) == {
        "quick": "stand-in reply to: who is first"
    }
    assert done.steps[-1].input == "stand-in reply to: who is first"
    stuck = await eventually(lambda: _run_ended(tenant, branches["stuck"].run), within=10)
    assert stuck.state == State.STATE_CANCELLED


async def _run_ended(tenant: Tenant, name: str) -> rn.Run | None:
    found = await tenant.client.runner.GetRun(rn.GetRunRequest(name=name))
    return found if found.state in ENDED else None


# ---- streaming, submitting, cancelling ----------------------------------------------------------


async def test_streamed_and_watched_events_carry_steps_and_their_runs(tenant):
    await tenant.agent("one")
    await tenant.agent("two")
    flow = await save(tenant, step("a", "one"), step("b", "two", "{{ steps.a.output }}!"))
    events = [
        event
        async for event in tenant.client.runner.StreamWorkflow(
            rn.RunWorkflowRequest(workflow=flow.name, input="go")
        )
    ]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "workflow_started" and kinds[-1] == "workflow_finished"
    assert kinds.count("step_started") == 2 and kinds.count("step_finished") == 2
    finished = events[-1].workflow_finished
    assert finished.state == State.STATE_SUCCEEDED and finished.final_output.endswith("go!")
    # Each step's run events come between its step_started and its step_finished.
    for step_run in finished.steps:
        start = next(i for i, e in enumerate(events) if e.step_started.run == step_run.run)
        end = next(i for i, e in enumerate(events) if e.step_finished.run == step_run.run)
        inner = [e.run_event for e in events[start:end] if e.HasField("run_event")]
        assert inner[0].HasField("run_started") and inner[-1].HasField("run_finished")
        assert inner[-1].run_finished.name == step_run.run
    own = [e.sequence for e in events if not e.HasField("run_event")]
    assert own == list(range(1, len(own) + 1))
    watched = [
        e
        async for e in tenant.client.runner.WatchWorkflowRun(
            rn.WatchWorkflowRunRequest(name=finished.name)
        )
    ]
    assert [e for e in watched if not e.HasField("run_event")] == [
        e for e in events if not e.HasField("run_event")
    ]
    later = [
        e
        async for e in tenant.client.runner.WatchWorkflowRun(
            rn.WatchWorkflowRunRequest(name=finished.name, after_sequence=own[-2])
        )
    ]
    assert [e.sequence for e in later] == [own[-1]]


async def test_a_submitted_workflow_runs_from_the_queue_once(tenant):
    await tenant.agent("solo")
    flow = await save(tenant, step("only", "solo"))
    submitted = await tenant.client.runner.SubmitWorkflow(
        rn.RunWorkflowRequest(workflow=flow.name, input="queued job", request_id="job-1")
    )
    assert submitted.state == State.STATE_QUEUED
    again = await tenant.client.runner.SubmitWorkflow(
        rn.RunWorkflowRequest(workflow=flow.name, input="queued job", request_id="job-1")
    )
    assert again.name == submitted.name
    done = await eventually(lambda: ended(tenant, submitted.name))
    assert done.state == State.STATE_SUCCEEDED and done.final_output.endswith("queued job")
    listed = await tenant.client.runner.ListWorkflowRuns(
        rn.ListWorkflowRunsRequest(workflow=flow.name)
    )
    assert [r.name for r in listed.workflow_runs] == [submitted.name]
    assert len(tenant.model.requests) == 1


async def test_a_cancelled_workflow_run_stops_its_step_and_runs_nothing_after(tenant):
    await tenant.agent("slow")
    await tenant.agent("after")
    flow = await save(tenant, step("slow", "slow"), step("after", "after"))
    tenant.model.enqueue(Reply(text="too late", delay_s=30))
    submitted = await tenant.client.runner.SubmitWorkflow(
        rn.RunWorkflowRequest(workflow=flow.name, input="x")
    )
    await eventually(lambda: _asked(tenant))
    cancelled = await tenant.client.runner.CancelWorkflowRun(
        rn.CancelWorkflowRunRequest(name=submitted.name)
    )
    assert cancelled.state == State.STATE_CANCELLED
    assert visited(cancelled) == ["slow"] and not cancelled.error.code
    step_run = await tenant.client.runner.GetRun(rn.GetRunRequest(name=cancelled.steps[0].run))
    assert step_run.state == State.STATE_CANCELLED
    await asyncio.sleep(0.3)
    assert len(tenant.model.requests) == 1
    assert (await tenant.balance()).reserved == 0


async def _asked(tenant: Tenant) -> bool:
    return bool(tenant.model.requests)


# ---- approvals -----------------------------------------------------------------------------------


async def test_a_tool_approval_inside_a_step_pauses_the_workflow_until_resolved(tenant, endpoint):
    base, received = endpoint
    await tenant.agent("payer", tools=[http_tool("pay", f"{base}/echo", require_approval=True)])
    await tenant.agent("notify")
    flow = await save(
        tenant, step("pay", "payer"), step("notify", "notify", "paid: {{ steps.pay.output }}")
    )
    tenant.model.enqueue(Reply(tool_calls=[ToolCall("pay", {"amount": 5})]))
    paused = await run(tenant, flow, "pay it")
    assert paused.state == State.STATE_AWAITING_APPROVAL, paused.error
    assert visited(paused) == ["pay"] and paused.steps[0].state == State.STATE_AWAITING_APPROVAL
    approvals = await tenant.client.runner.ListApprovals(
        rn.ListApprovalsRequest(parent=paused.steps[0].run)
    )
    tenant.model.enqueue(Reply(text="paid 5"))
    await tenant.client.runner.ResolveApproval(
        rn.ResolveApprovalRequest(
            name=approvals.approvals[0].name, decision=rn.ResolveApprovalRequest.DECISION_APPROVE
        )
    )
    done = await eventually(lambda: ended(tenant, paused.name))
    assert done.state == State.STATE_SUCCEEDED, done.error
    assert visited(done) == ["pay", "notify"] and done.steps[1].input == "paid: paid 5"
    assert received == [{"amount": 5}]


async def test_a_paused_workflow_run_is_cancelled_with_its_step(tenant, endpoint):
    base, received = endpoint
    await tenant.agent("payer", tools=[http_tool("pay", f"{base}/echo", require_approval=True)])
    flow = await save(tenant, step("pay", "payer"))
    tenant.model.enqueue(Reply(tool_calls=[ToolCall("pay", {"amount": 9})]))
    paused = await run(tenant, flow, "pay it")
    assert paused.state == State.STATE_AWAITING_APPROVAL, paused.error
    cancelled = await tenant.client.runner.CancelWorkflowRun(
        rn.CancelWorkflowRunRequest(name=paused.name)
    )
    assert cancelled.state == State.STATE_CANCELLED
    assert cancelled.steps[0].state == State.STATE_CANCELLED
    step_run = await tenant.client.runner.GetRun(rn.GetRunRequest(name=paused.steps[0].run))
    assert step_run.state == State.STATE_CANCELLED and received == []
    # Cancelling what ended changes nothing.
    again = await tenant.client.runner.CancelWorkflowRun(
        rn.CancelWorkflowRunRequest(name=paused.name)
    )
    assert again == cancelled


async def test_the_workflows_credit_cap_stops_it_before_a_step_it_cannot_pay(tenant):
    await tenant.agent("spender")
    flow = await save(tenant, step("one", "spender"), step("two", "spender"))
    done = await run(tenant, flow, "spend", max_credits=1)
    assert done.state == State.STATE_FAILED
    assert done.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert visited(done) == ["one"] and done.credits == 1
    assert len(tenant.model.requests) == 1
    assert (await tenant.balance()).balance == 1000 - 1


# ---- tenants ---------------------------------------------------------------------------------


async def test_another_users_workflows_and_workflow_runs_are_not_found(tenant, users):
    await tenant.agent("mine")
    flow = await save(tenant, step("only", "mine"))
    done = await run(tenant, flow)
    other, _ = await users.new(credits=100)
    runner = other.runner
    for call in (
        runner.RunWorkflow(rn.RunWorkflowRequest(workflow=flow.name, input="x")),
        runner.SubmitWorkflow(rn.RunWorkflowRequest(workflow=flow.name, input="x")),
        runner.GetWorkflowRun(rn.GetWorkflowRunRequest(name=done.name)),
        runner.CancelWorkflowRun(rn.CancelWorkflowRunRequest(name=done.name)),
        _drain(runner.WatchWorkflowRun(rn.WatchWorkflowRunRequest(name=done.name))),
        _drain(runner.StreamWorkflow(rn.RunWorkflowRequest(workflow=flow.name, input="x"))),
    ):
        error = await expect_rpc_error(call, grpc.StatusCode.NOT_FOUND)
        error_info(error, "NOT_FOUND")
    missing = await expect_rpc_error(
        runner.GetWorkflowRun(rn.GetWorkflowRunRequest(name="workflowRuns/nope")),
        grpc.StatusCode.NOT_FOUND,
    )
    theirs = await expect_rpc_error(
        runner.GetWorkflowRun(rn.GetWorkflowRunRequest(name=done.name)),
        grpc.StatusCode.NOT_FOUND,
    )
    assert missing.details().replace("nope", "X") == theirs.details().replace(
        done.name.removeprefix("workflowRuns/"), "X"
    )
    listed = await runner.ListWorkflowRuns(rn.ListWorkflowRunsRequest())
    assert list(listed.workflow_runs) == []
    by_workflow = await runner.ListWorkflowRuns(rn.ListWorkflowRunsRequest(workflow=flow.name))
    assert list(by_workflow.workflow_runs) == []


async def _drain(stream) -> list:
    return [event async for event in stream]


# ---- the command line ------------------------------------------------------------------------


async def _cli(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agentmesh.cli",
        "workflows",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, output.decode()


async def test_the_cli_applies_the_example_workflows_and_runs_one_step_by_step(
    tenant, users, runner_mesh
):
    for agent_id in ("triage", "billing", "support"):
        await tenant.agent(agent_id)
    key = await users.admin.accounts.CreateApiKey(a.CreateApiKeyRequest(parent=tenant.user.name))
    where = ["--target", runner_mesh.address, "--key", key.secret]
    example = Path(__file__).parent.parent / "examples" / "workflows.json"
    code, output = await _cli("apply", str(example), *where)
    assert code == 0, output
    assert "workflows/support-desk" in output
    # Applying again updates it in place.
    code, output = await _cli("apply", str(example), *where)
    assert code == 0 and "workflows/support-desk" in output, output

    tenant.model.enqueue(Reply(text="billing"), Reply(text="Your refund is on its way."))
    code, output = await _cli("run", "support-desk", "I was charged twice", *where)
    assert code == 0, output
    assert "SUCCEEDED" in output and "Your refund is on its way." in output
    assert "triage" in output and "billing" in output
    (done,) = (
        await tenant.client.runner.ListWorkflowRuns(
            rn.ListWorkflowRunsRequest(workflow="workflows/support-desk")
        )
    ).workflow_runs
    assert visited(done) == ["triage", "billing"]


# ---- conditions and templates, alone ----------------------------------------------------------


def test_conditions_read_outputs_by_field_and_fail_clearly():
    variables = {
        "input": "hi",
        "vars": {"tier": "gold"},
        "steps": {"a": {"output": {"score": 0.9, "tags": ["x", "urgent"]}, "visits": 1}},
    }
    path = "steps[0].next.switch.cases[0].condition"
    assert evaluate('steps.a.output.score > 0.5 && vars.tier == "gold"', variables, path)
    assert evaluate('steps.a.output.tags.exists(t, t == "urgent")', variables, path)
    assert not evaluate('has(steps.b) && steps.b.output == "x"', variables, path)
    for condition, reason in [
        ("steps.a.output.missing == 1", "CONDITION_FAILED"),  # a field that is not there
        ("steps.b.output == 1", "CONDITION_FAILED"),  # a step that has not run
        ("steps.a.output.score", "CONDITION_FAILED"),  # not a bool
        ('steps.a.output.score > "x"', "CONDITION_FAILED"),  # no such overload
    ]:
        with pytest.raises(StepFailed) as failed:
            evaluate(condition, variables, path)
        assert reason_of(failed.value.status) == (reason, {"field": path}), condition
    many = {"steps": {"a": {"output": list(range(100)), "visits": 1}}}
    costly = "steps.a.output.all(x, steps.a.output.all(y, steps.a.output.all(z, true)))"
    with pytest.raises(StepFailed) as failed:
        evaluate(costly, many, path)
    assert reason_of(failed.value.status)[0] == "CONDITION_TOO_COSTLY"
    assert evaluate("steps.a.output.all(x, x >= 0)", many, path)


def test_templates_render_fields_json_and_steps_not_run_as_empty():
    variables = {
        "input": "hi",
        "vars": {"n": 2},
        "steps": {"a": {"output": {"city": "Oslo", "temps": [1, 2]}, "visits": 1}},
    }
    rendered = render_input(
        "{{ input }} {{ steps.a.output.city }} {{ steps.a.output.temps }} {{ vars.n }}"
        " [{{ steps.b.output }}]",
        variables,
        {"a"},
    )
    assert rendered == "hi Oslo [1, 2] 2 []"
    assert render_input("", variables, set()) == "hi"
    with pytest.raises(TemplateError, match="nope"):
        render_input("{{ steps.a.output.nope }}", variables, {"a"})
