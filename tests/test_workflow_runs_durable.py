# ruff: noqa: F811 - the runner's fixtures, imported, are redefined as test parameters
"""Workflow runs that outlive their runner: a runner process killed in the middle of
a workflow run, and a step's approval decided after every process restarted.

The kill test runs a runner as its own `agentmesh serve runner` process (as
tests/test_runner_replicas.py does), SIGKILLs it, and counts the model calls: a
second runner goes on from the last finished step and runs no finished step again.
"""

from __future__ import annotations

import asyncio
import signal

from support import Users, database_url, mesh_settings, running_mesh, use_model
from test_runner import KEY as RUNNER_KEY
from test_runner import Tenant as RunnerTenant
from test_runner import endpoint, http_tool  # noqa: F401 - fixtures
from test_runner_replicas import FAST, KEY, _serve_runner, child_env, new_tenant, texts

from agentmesh.client import Client
from agentmesh.gen.registry.v1 import account_pb2 as a
from agentmesh.gen.registry.v1 import workflows_pb2 as w
from agentmesh.gen.runner.v1 import runner_pb2 as rn
from agentmesh.mesh import Mesh
from agentmesh.model_server import ModelServer, Reply, ToolCall
from agentmesh.nats_server import EmbeddedNats
from services import plugins_named

State = rn.Run.State
ENDED = (State.STATE_SUCCEEDED, State.STATE_FAILED, State.STATE_CANCELLED, State.STATE_BLOCKED)


def step(step_id: str, agent: str, input: str = "") -> w.WorkflowStep:
    return w.WorkflowStep(id=step_id, agent=w.AgentStep(agent=f"agents/{agent}", input=input))


async def eventually(check, within: float = 20.0):
    async with asyncio.timeout(within):
        while not (result := await check()):  # noqa: ASYNC110 - the state is the server's
            await asyncio.sleep(0.05)
    return result


async def ended(client: Client, name: str) -> rn.WorkflowRun | None:
    found = await client.runner.GetWorkflowRun(rn.GetWorkflowRunRequest(name=name))
    return found if found.state in ENDED else None


def asked(model: ModelServer, text: str) -> int:
    """How many model calls were asked `text` last."""
    return sum(texts(request.body)[-1:] == [text] for request in model.requests)


async def test_a_killed_runners_workflow_run_goes_on_from_its_last_finished_step(
    tmp_path, postgres
):
    async with EmbeddedNats(tmp_path / "nats") as nats, ModelServer(api_key=KEY) as model:
        shared = {
            **FAST,
            "database_url": database_url("postgres", postgres, tmp_path),
            "nats_url": nats.url,
            "service_token": "workflow-kill-test-token",
        }
        async with Mesh(
            mesh_settings(tmp_path / "core", **shared), plugins_named("registry", "providers")
        ) as core:
            peers = {"registry": core.address, "providers": core.address}
            env = child_env(shared, peers)
            child, child_address = await _serve_runner(tmp_path / "child", env)
            users = Users(core)
            try:
                tenant = await new_tenant(users, child_address, model)
                for agent_id in ("first", "second", "third", "fourth"):
                    await tenant.agent(agent_id)
                flow = await tenant.a.workflows.CreateWorkflow(
                    w.CreateWorkflowRequest(
                        workflow=w.Workflow(
                            display_name="four steps",
                            steps=[
                                step("one", "first", "one: {{ input }}"),
                                step("two", "second", "two: {{ steps.one.output }}"),
                                step("three", "third", "three"),
                                step("four", "fourth", "four: {{ steps.two.output }}"),
                            ],
                        )
                    )
                )
                # Steps one and two answer at once; three hangs until its runner dies.
                model.enqueue(Reply(text="1"), Reply(text="2"), Reply(text="never", delay_s=30))
                submitted = await tenant.b.runner.SubmitWorkflow(
                    rn.RunWorkflowRequest(workflow=flow.name, input="go")
                )
                await eventually(lambda: _true(asked(model, "three")))
                child.send_signal(signal.SIGKILL)
                await child.wait()

                settings = mesh_settings(tmp_path / "other", peers=peers, **shared)
                async with Mesh(settings, plugins_named("runner")) as other:
                    tenant.b = Client(other.address, tenant.key)
                    users._clients.append(tenant.b)
                    done = await eventually(lambda: ended(tenant.b, submitted.name))
                    events = [
                        event
                        async for event in tenant.b.runner.WatchWorkflowRun(
                            rn.WatchWorkflowRunRequest(name=submitted.name)
                        )
                    ]
                    balance = await tenant.a.accounts.GetCreditBalance(
                        a.GetCreditBalanceRequest(name=f"{tenant.user.name}/creditBalance")
                    )
            finally:
                if child.returncode is None:
                    child.kill()
                    await child.wait()
                await users.close()

    assert done.state == State.STATE_SUCCEEDED, done.error
    assert [s.step for s in done.steps] == ["one", "two", "three", "four"]
    assert done.steps[3].input == "four: 2"
    # Finished steps ran once; only the step in flight when the runner died ran again.
    assert (asked(model, "one: go"), asked(model, "two: 1")) == (1, 1)
    assert asked(model, "three") == 2
    assert asked(model, "four: 2") == 1
    assert len(model.requests) == 5
    own = [e for e in events if not e.HasField("run_event")]
    assert [e.sequence for e in own] == list(range(1, len(own) + 1))
    assert [e.step_started.step for e in own if e.HasField("step_started")] == [
        "one",
        "two",
        "three",
        "four",
    ]
    assert balance.reserved == 0


async def _true(value: int) -> bool:
    return bool(value)


async def test_an_approval_inside_a_step_survives_every_runner_restarting(tmp_path, endpoint):
    base, received = endpoint
    settings = {"outbound_allow": ["127.0.0.1"]}
    async with ModelServer(api_key=RUNNER_KEY) as model:
        async with running_mesh(tmp_path, **settings) as mesh:
            users = Users(mesh)
            client, user = await users.new(credits=100)
            await use_model(client, model)
            tenant = RunnerTenant(client, user, model)
            await tenant.agent(
                "payer", tools=[http_tool("pay", f"{base}/echo", require_approval=True)]
            )
            await tenant.agent("notify")
            flow = await client.workflows.CreateWorkflow(
                w.CreateWorkflowRequest(
                    workflow=w.Workflow(
                        display_name="pay then notify",
                        steps=[
                            step("pay", "payer"),
                            step("notify", "notify", "done: {{ steps.pay.output }}"),
                        ],
                    )
                )
            )
            model.enqueue(Reply(tool_calls=[ToolCall("pay", {"amount": 7})]))
            paused = await client.runner.RunWorkflow(
                rn.RunWorkflowRequest(workflow=flow.name, input="pay 7")
            )
            assert paused.state == State.STATE_AWAITING_APPROVAL, paused.error
            (approval,) = (
                await client.runner.ListApprovals(
                    rn.ListApprovalsRequest(parent=paused.steps[0].run)
                )
            ).approvals
            key = (
                await client.accounts.CreateApiKey(a.CreateApiKeyRequest(parent=user.name))
            ).secret
            await users.close()
        # Every process is gone; a new one on the same data goes on once it is decided.
        async with running_mesh(tmp_path, **settings) as mesh, Client(mesh.address, key) as client:
            still = await client.runner.GetWorkflowRun(rn.GetWorkflowRunRequest(name=paused.name))
            assert still.state == State.STATE_AWAITING_APPROVAL
            model.enqueue(Reply(text="paid 7"))
            await client.runner.ResolveApproval(
                rn.ResolveApprovalRequest(
                    name=approval.name, decision=rn.ResolveApprovalRequest.DECISION_APPROVE
                )
            )
            done = await eventually(lambda: ended(client, paused.name))
    assert done.state == State.STATE_SUCCEEDED, done.error
    assert [s.step for s in done.steps] == ["pay", "notify"]
    assert done.steps[1].input == "done: paid 7" and received == [{"amount": 7}]
    assert done.usage.requests == 3  # pay's two model calls (one each side of the pause), notify's


async def test_a_stopping_runner_hands_its_workflow_run_to_another_at_once(tmp_path, postgres):
    """A replica that stops (SIGTERM, a rolling update) gives its workflow runs up: with
    a lease that would outlast the test, another replica goes on with them at once."""
    async with EmbeddedNats(tmp_path / "nats") as nats, ModelServer(api_key=KEY) as model:
        shared = {
            **FAST,
            "database_url": database_url("postgres", postgres, tmp_path),
            "nats_url": nats.url,
            "service_token": "workflow-stop-test-token",
        }
        async with Mesh(
            mesh_settings(tmp_path / "core", **shared), plugins_named("registry", "providers")
        ) as core:
            peers = {"registry": core.address, "providers": core.address}
            leaving = Mesh(
                mesh_settings(tmp_path / "a", peers=peers, **{**shared, "run_lease_seconds": 60.0}),
                plugins_named("runner"),
            )
            await leaving.start()
            users = Users(core)
            try:
                tenant = await new_tenant(users, leaving.address, model)
                for agent_id in ("first", "second", "third"):
                    await tenant.agent(agent_id)
                flow = await tenant.a.workflows.CreateWorkflow(
                    w.CreateWorkflowRequest(
                        workflow=w.Workflow(
                            display_name="three steps",
                            steps=[
                                step("one", "first", "one"),
                                step("two", "second", "two"),
                                step("three", "third", "three: {{ steps.two.output }}"),
                            ],
                        )
                    )
                )
                model.enqueue(Reply(text="1"), Reply(text="never sent", delay_s=30))
                stream = tenant.b.runner.StreamWorkflow(
                    rn.RunWorkflowRequest(workflow=flow.name, input="go")
                )
                name = (await stream.read()).workflow_started.name
                await eventually(lambda: _true(asked(model, "two")))
                await leaving.stop()  # its caller still attached: the stop breaks the call
                settings = mesh_settings(tmp_path / "b", peers=peers, **shared)
                async with Mesh(settings, plugins_named("runner")) as other:
                    tenant.b = Client(other.address, tenant.key)
                    users._clients.append(tenant.b)
                    done = await eventually(lambda: ended(tenant.b, name), within=10)
            finally:
                await leaving.stop()
                await users.close()
    assert done.state == State.STATE_SUCCEEDED, done.error
    assert [s.step for s in done.steps] == ["one", "two", "three"]
    assert (asked(model, "one"), asked(model, "two")) == (1, 2)
    assert done.steps[2].input == "three: stand-in reply to: two"
