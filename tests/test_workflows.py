"""Workflow definitions: CRUD, and the checks that make a saved workflow runnable."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import field_mask_pb2
from rpc_helpers import error_info, field_violations
from support import expect_rpc_error

from agentmesh.client import Client
from agentmesh.gen.registry.v1 import registry_pb2 as r
from agentmesh.gen.registry.v1 import workflows_pb2 as w
from agentmesh.gen.registry.v1 import workflows_pb2_grpc

AGENTS = ("classify", "billing", "support")


def workflows(client: Client) -> workflows_pb2_grpc.WorkflowServiceStub:
    return getattr(client, "workflows", None) or workflows_pb2_grpc.WorkflowServiceStub(
        client.channel
    )


def step(step_id: str, agent: str = "classify", input: str = "", **fields) -> w.WorkflowStep:
    return w.WorkflowStep(
        id=step_id, agent=w.AgentStep(agent=f"agents/{agent}", input=input), **fields
    )


def goto(target: str) -> w.Transition:
    return w.Transition(goto=target)


def switch(*cases: tuple[str, str], default: str = "end") -> w.Transition:
    return w.Transition(
        switch=w.Transition.Switch(
            cases=[w.Transition.Case(condition=c, goto=g) for c, g in cases], default=default
        )
    )


def parallel(step_id: str, *branches: tuple[str, str], **fields) -> w.WorkflowStep:
    return w.WorkflowStep(
        id=step_id,
        parallel=w.ParallelStep(
            branches=[
                w.ParallelStep.Branch(id=b, agent=w.AgentStep(agent=f"agents/{a}"))
                for b, a in branches
            ]
        ),
        **fields,
    )


def workflow(*steps: w.WorkflowStep, **fields) -> w.Workflow:
    return w.Workflow(
        display_name=fields.pop("display_name", "Support desk"), steps=steps, **fields
    )


SUPPORT_DESK = workflow(
    step("classify", input="Classify: {{ input }}"),
    step(
        "triage",
        "classify",
        input="{{ steps.classify.output.category }} for {{ vars.customer }}",
        next=switch(
            ('steps.classify.output.category == "billing"', "billing"),
            ('steps.triage.output.tags.exists(t, t == "urgent")', "both"),
            default="support",
        ),
    ),
    step("billing", "billing", next=goto("end")),
    step("support", "support", next=goto("end")),
    parallel("both", ("money", "billing"), ("product", "support")),
)


async def with_agents(client: Client) -> None:
    for agent_id in AGENTS:
        await client.registry.CreateAgent(
            r.CreateAgentRequest(agent=r.Agent(display_name=agent_id), agent_id=agent_id)
        )


@pytest.fixture
async def author(new_sqlite_user) -> Client:
    client, _ = await new_sqlite_user()
    await with_agents(client)
    return client


# Each: a workflow that must be refused, the fields named, the ErrorInfo reason.
INVALID = {
    "no steps": (workflow(), ["workflow.steps"], None),
    "unknown agent": (
        workflow(step("a", "missing")),
        ["workflow.steps[0].agent.agent"],
        "AGENT_NOT_FOUND",
    ),
    "unknown agent in a branch": (
        workflow(parallel("fan", ("x", "billing"), ("y", "missing"))),
        ["workflow.steps[0].parallel.branches[1].agent.agent"],
        "AGENT_NOT_FOUND",
    ),
    "malformed agent name": (
        workflow(w.WorkflowStep(id="a", agent=w.AgentStep(agent="classify"))),
        ["workflow.steps[0].agent.agent"],
        None,
    ),
    "step of no kind": (workflow(w.WorkflowStep(id="a")), ["workflow.steps[0].kind"], None),
    "duplicate step ids": (workflow(step("a"), step("a")), ["workflow.steps[1].id"], None),
    "a step named end": (workflow(step("end")), ["workflow.steps[0].id"], None),
    "goto to no step": (
        workflow(step("a", next=goto("nowhere"))),
        ["workflow.steps[0].next.goto"],
        None,
    ),
    "case to no step": (
        workflow(step("a", next=switch(("input == 'x'", "nowhere")))),
        ["workflow.steps[0].next.switch.cases[0].goto"],
        None,
    ),
    "default to no step": (
        workflow(step("a", next=switch(("input == 'x'", "end"), default="nowhere"))),
        ["workflow.steps[0].next.switch.default"],
        None,
    ),
    "unreachable step": (
        workflow(step("a", next=goto("end")), step("b")),
        ["workflow.steps[1]"],
        None,
    ),
    "no end": (
        workflow(step("a", max_visits=3), step("b", next=goto("a"), max_visits=3)),
        ["workflow.steps[0].next", "workflow.steps[1].next"],
        None,
    ),
    "unbounded cycle": (
        workflow(
            step("draft", next=switch(("input == 'again'", "review"))),
            step("review", next=goto("draft")),
        ),
        ["workflow.steps[0].max_visits", "workflow.steps[1].max_visits"],
        None,
    ),
    "unbounded self-loop": (
        workflow(step("poll", next=switch(('steps.poll.output == "wait"', "poll")))),
        ["workflow.steps[0].max_visits"],
        None,
    ),
    "cel that does not parse": (
        workflow(step("a", next=switch(("steps.a.output ==", "end")))),
        ["workflow.steps[0].next.switch.cases[0].condition"],
        None,
    ),
    "cel with an unknown variable": (
        workflow(step("a", next=switch(('output == "x"', "end")))),
        ["workflow.steps[0].next.switch.cases[0].condition"],
        None,
    ),
    "cel longer than allowed": (
        workflow(step("a", next=switch(("input == '" + "x" * 5000 + "'", "end")))),
        ["workflow.steps[0].next.switch.cases[0].condition"],
        None,
    ),
    "duplicate branch ids": (
        workflow(parallel("fan", ("x", "billing"), ("x", "support"))),
        ["workflow.steps[0].parallel.branches[1].id"],
        None,
    ),
    "one branch only": (
        workflow(parallel("fan", ("x", "billing"))),
        ["workflow.steps[0].parallel.branches"],
        None,
    ),
    "waiting for more branches than there are": (
        workflow(
            w.WorkflowStep(
                id="fan",
                parallel=w.ParallelStep(
                    branches=[
                        w.ParallelStep.Branch(id=b, agent=w.AgentStep(agent="agents/billing"))
                        for b in ("x", "y")
                    ],
                    wait_for=3,
                ),
            )
        ),
        ["workflow.steps[0].parallel.wait_for"],
        None,
    ),
    "template naming no step": (
        workflow(step("a", input="{{ steps.nope.output }}")),
        ["workflow.steps[0].agent.input"],
        None,
    ),
    "template of something else": (
        workflow(step("a", input="{{ secrets.api_key }}")),
        ["workflow.steps[0].agent.input"],
        None,
    ),
    "template never closed": (
        workflow(step("a", input="Answer {{ input")),
        ["workflow.steps[0].agent.input"],
        None,
    ),
    "max_visits above 100": (
        workflow(step("a", max_visits=101)),
        ["workflow.steps[0].max_visits"],
        None,
    ),
}


@pytest.mark.parametrize("case", INVALID)
async def test_invalid_workflows_are_refused(author, case):
    bad, expected, reason = INVALID[case]
    error = await expect_rpc_error(
        workflows(author).CreateWorkflow(w.CreateWorkflowRequest(workflow=bad)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert field_violations(error) == expected
    error_info(error, reason or "INVALID_ARGUMENT")
    listed = await workflows(author).ListWorkflows(w.ListWorkflowsRequest())
    assert list(listed.workflows) == []


async def test_definition_problems_are_reported_together(author):
    error = await expect_rpc_error(
        workflows(author).CreateWorkflow(
            w.CreateWorkflowRequest(
                workflow=workflow(
                    step("draft", input="{{ steps.nope.output }}"),
                    step("review", next=switch(("verdict == 'redo'", "draft"))),
                    step("publish", "missing"),
                )
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert field_violations(error) == [
        "workflow.steps[0].agent.input",
        "workflow.steps[1].next.switch.cases[0].condition",
        "workflow.steps[0].max_visits",
        "workflow.steps[1].max_visits",
        "workflow.steps[2]",
    ]


async def test_another_users_agent_is_as_missing_as_a_missing_one(author, new_sqlite_user):
    other, _ = await new_sqlite_user()
    await other.registry.CreateAgent(
        r.CreateAgentRequest(agent=r.Agent(display_name="Theirs"), agent_id="theirs")
    )
    errors = []
    for agent_id in ("theirs", "nobodys"):
        error = await expect_rpc_error(
            workflows(author).CreateWorkflow(
                w.CreateWorkflowRequest(workflow=workflow(step("a", agent_id)))
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert field_violations(error) == ["workflow.steps[0].agent.agent"]
        errors.append(error.details().replace(agent_id, "X"))
    assert errors[0] == errors[1]


async def test_valid_workflows_are_saved(author):
    created = await workflows(author).CreateWorkflow(
        w.CreateWorkflowRequest(workflow=SUPPORT_DESK, workflow_id="support-desk")
    )
    assert created.name == "workflows/support-desk"
    assert created.etag and created.create_time.seconds > 0
    assert list(created.steps) == list(SUPPORT_DESK.steps)
    # A bounded loop, and a condition using a macro's variable, are fine.
    looping = await workflows(author).CreateWorkflow(
        w.CreateWorkflowRequest(
            workflow=workflow(
                step("draft", input="{{ input }} {{ steps.review.output.notes }}", max_visits=3),
                step(
                    "review",
                    next=switch(
                        ('steps.review.output.issues.exists(i, i.severity == "high")', "draft")
                    ),
                    max_visits=3,
                ),
            )
        )
    )
    assert looping.name.startswith("workflows/")


async def test_crud_with_etag_and_mask(new_user):
    client, _ = await new_user()
    await with_agents(client)
    stub = workflows(client)
    created = await stub.CreateWorkflow(
        w.CreateWorkflowRequest(workflow=SUPPORT_DESK, workflow_id="desk")
    )
    assert await stub.GetWorkflow(w.GetWorkflowRequest(name=created.name)) == created

    again = await expect_rpc_error(
        stub.CreateWorkflow(w.CreateWorkflowRequest(workflow=SUPPORT_DESK, workflow_id="desk")),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    error_info(again, "ALREADY_EXISTS")

    updated = await stub.UpdateWorkflow(
        w.UpdateWorkflowRequest(
            workflow=w.Workflow(
                name=created.name, description="Routes tickets.", display_name="ignored"
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["description"]),
        )
    )
    assert updated.description == "Routes tickets."
    assert updated.display_name == created.display_name and updated.steps == created.steps
    assert updated.etag != created.etag and updated.create_time == created.create_time

    stale = await expect_rpc_error(
        stub.UpdateWorkflow(
            w.UpdateWorkflowRequest(
                workflow=w.Workflow(name=created.name, description="lost", etag=created.etag),
                update_mask=field_mask_pb2.FieldMask(paths=["description"]),
            )
        ),
        grpc.StatusCode.ABORTED,
    )
    error_info(stale, "ETAG_MISMATCH")

    # Steps changed through the mask are checked like new ones.
    bad = await expect_rpc_error(
        stub.UpdateWorkflow(
            w.UpdateWorkflowRequest(
                workflow=w.Workflow(name=created.name, steps=[step("a", next=goto("b"))]),
                update_mask=field_mask_pb2.FieldMask(paths=["steps"]),
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert field_violations(bad) == ["workflow.steps[0].next.goto"]
    bad = await expect_rpc_error(
        stub.UpdateWorkflow(
            w.UpdateWorkflowRequest(
                workflow=w.Workflow(name=created.name, steps=[step("a", "gone")]),
                update_mask=field_mask_pb2.FieldMask(paths=["steps"]),
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert field_violations(bad) == ["workflow.steps[0].agent.agent"]
    bad = await expect_rpc_error(
        stub.UpdateWorkflow(
            w.UpdateWorkflowRequest(
                workflow=w.Workflow(name=created.name, display_name=""),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name", "create_time"]),
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert field_violations(bad) == ["workflow.display_name"]
    assert await stub.GetWorkflow(w.GetWorkflowRequest(name=created.name)) == updated

    await expect_rpc_error(
        stub.DeleteWorkflow(w.DeleteWorkflowRequest(name=created.name, etag=created.etag)),
        grpc.StatusCode.ABORTED,
    )
    await stub.DeleteWorkflow(w.DeleteWorkflowRequest(name=created.name, etag=updated.etag))
    await expect_rpc_error(
        stub.GetWorkflow(w.GetWorkflowRequest(name=created.name)), grpc.StatusCode.NOT_FOUND
    )


async def test_workflow_ids_are_per_user(new_user):
    first, _ = await new_user()
    second, _ = await new_user()
    for client in (first, second):
        await with_agents(client)
        created = await workflows(client).CreateWorkflow(
            w.CreateWorkflowRequest(workflow=SUPPORT_DESK, workflow_id="desk")
        )
        assert created.name == "workflows/desk"


async def test_list_workflows_pages(new_user):
    client, _ = await new_user()
    await with_agents(client)
    stub = workflows(client)
    names = {
        (await stub.CreateWorkflow(w.CreateWorkflowRequest(workflow=SUPPORT_DESK))).name
        for _ in range(7)
    }
    seen, token = [], ""
    while True:
        page = await stub.ListWorkflows(w.ListWorkflowsRequest(page_size=3, page_token=token))
        assert len(page.workflows) <= 3
        seen.extend(workflow.name for workflow in page.workflows)
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == 7 and set(seen) == names


async def test_an_agent_a_workflow_runs_cannot_be_deleted(new_user):
    client, _ = await new_user()
    await with_agents(client)
    stub = workflows(client)
    created = await stub.CreateWorkflow(w.CreateWorkflowRequest(workflow=SUPPORT_DESK))
    in_use = await expect_rpc_error(
        client.registry.DeleteAgent(r.DeleteAgentRequest(name="agents/billing")),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    error_info(in_use, "AGENT_IN_USE")
    assert created.name in in_use.details()

    # A workflow that no longer runs it lets it go.
    await stub.UpdateWorkflow(
        w.UpdateWorkflowRequest(
            workflow=w.Workflow(name=created.name, steps=[step("only", "classify")]),
            update_mask=field_mask_pb2.FieldMask(paths=["steps"]),
        )
    )
    await client.registry.DeleteAgent(r.DeleteAgentRequest(name="agents/billing"))
    await stub.DeleteWorkflow(w.DeleteWorkflowRequest(name=created.name))
    await client.registry.DeleteAgent(r.DeleteAgentRequest(name="agents/classify"))


async def test_delete_racing_a_workflow_save_never_answers_internal(new_user):
    client, _ = await new_user()
    stub = workflows(client)
    agents = await asyncio.gather(
        *(
            client.registry.CreateAgent(r.CreateAgentRequest(agent=r.Agent(display_name=f"A{i}")))
            for i in range(20)
        )
    )

    def saving(agent: r.Agent):
        only = w.WorkflowStep(id="only", agent=w.AgentStep(agent=agent.name))
        return stub.CreateWorkflow(w.CreateWorkflowRequest(workflow=workflow(only)))

    outcomes = await asyncio.gather(
        *(
            asyncio.gather(
                saving(agent),
                client.registry.DeleteAgent(r.DeleteAgentRequest(name=agent.name)),
                return_exceptions=True,
            )
            for agent in agents
        )
    )
    for saved, deleted in outcomes:
        save_failed = isinstance(saved, grpc.aio.AioRpcError)
        assert save_failed != isinstance(deleted, grpc.aio.AioRpcError), (saved, deleted)
        if save_failed:
            assert saved.code() == grpc.StatusCode.INVALID_ARGUMENT, saved
            assert field_violations(saved) == ["workflow.steps[0].agent.agent"]
        else:
            assert deleted.code() == grpc.StatusCode.FAILED_PRECONDITION, deleted
            error_info(deleted, "AGENT_IN_USE")
