"""Runner replicas sharing one Postgres and one NATS: queued runs, watching, cancelling
and busy conversations across processes, and a killed runner's runs taken over.

Replica A is a whole mesh; replica B serves only the runner and asks A for the
registry and providers, as a second runner pod would. The kill test runs a runner
as its own `agentmesh serve runner` process and SIGKILLs it.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from google.rpc import error_details_pb2
from support import (
    Users,
    create_agent,
    database_url,
    expect_rpc_error,
    mesh_settings,
    running_mesh,
    start_agentmesh,
    use_model,
)

from agentmesh.client import Client
from agentmesh.gen.registry.v1 import account_pb2 as a
from agentmesh.gen.registry.v1 import registry_pb2 as r
from agentmesh.gen.runner.v1 import runner_pb2 as rn
from agentmesh.mesh import Mesh
from agentmesh.model_server import ModelServer, Reply, ToolCall
from agentmesh.nats_server import EmbeddedNats
from agentmesh.testing.postgres import TemporaryPostgres
from services import plugins_named

State = rn.Run.State
KEY = "sk-replica-test-" + "k" * 24
ENDED = (State.STATE_SUCCEEDED, State.STATE_FAILED, State.STATE_CANCELLED, State.STATE_BLOCKED)
# Short leases and quick sweeps, so a lost runner is noticed within the test.
FAST = {
    "outbound_allow": ["127.0.0.1"],
    "run_lease_seconds": 1.0,
    "run_lease_renew_seconds": 0.25,
    "run_lease_sweep_seconds": 0.2,
    "run_watch_poll_seconds": 0.05,
    "run_cancel_wait_seconds": 5.0,
}


@dataclass
class Replicas:
    a: Mesh
    b: Mesh


@pytest.fixture(scope="module")
async def replicas(tmp_path_factory, postgres: TemporaryPostgres) -> AsyncIterator[Replicas]:
    root = tmp_path_factory.mktemp("replicas")
    async with EmbeddedNats(root / "nats") as nats:
        shared = {
            **FAST,
            "database_url": database_url("postgres", postgres, root),
            "nats_url": nats.url,
            "service_token": "replica-test-service-token",
        }
        async with running_mesh(root / "a", **shared) as mesh_a:
            peers = {"registry": mesh_a.address, "providers": mesh_a.address}
            settings_b = mesh_settings(root / "b", peers=peers, **shared)
            async with Mesh(settings_b, plugins_named("runner")) as mesh_b:
                yield Replicas(mesh_a, mesh_b)


@dataclass
class Tenant:
    """One user, with a client on each replica and its own scripted model server."""

    a: Client
    b: Client
    user: a.User
    model: ModelServer
    key: str  # an API key of the user's

    async def agent(self, agent_id: str, **fields) -> r.Agent:
        return await create_agent(self.a, agent_id, **fields)


async def new_tenant(users: Users, address_b: str, model: ModelServer, credits=1000) -> Tenant:
    client_a, user = await users.new(credits=credits)
    key = await users.admin.accounts.CreateApiKey(a.CreateApiKeyRequest(parent=user.name))
    client_b = Client(address_b, key.secret)
    users._clients.append(client_b)
    await use_model(client_a, model)
    return Tenant(client_a, client_b, user, model, key.secret)


@pytest.fixture
async def tenant(replicas) -> AsyncIterator[Tenant]:
    users = Users(replicas.a)
    async with ModelServer(api_key=KEY) as model:
        yield await new_tenant(users, replicas.b.address, model)
        await users.close()


class Gate:
    """An HTTP tool that answers only once the test opens the gate."""

    def __init__(self) -> None:
        self.called = asyncio.Event()
        self.open = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.called.set()
        await self.open.wait()
        return web.json_response({"ok": True})


@pytest.fixture
async def gate() -> AsyncIterator[Gate]:
    gate = Gate()
    app = web.Application()
    app.router.add_post("/gate", gate.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    gate.url = f"http://127.0.0.1:{runner.addresses[0][1]}/gate"
    yield gate
    gate.open.set()
    await runner.cleanup()


def gated_tool(gate: Gate) -> r.Tool:
    return r.Tool(name="wait", function=r.FunctionTool(http=r.HttpFunction(url=gate.url)))


async def rest(call) -> list:
    """What a stream that was read from with read() has left (grpc does not let a
    call be both read and iterated)."""
    events = []
    while (event := await call.read()) is not grpc.aio.EOF:
        events.append(event)
    return events


async def eventually(check, within: float = 10.0):
    async with asyncio.timeout(within):
        while not (result := await check()):  # noqa: ASYNC110 - the state is the server's
            await asyncio.sleep(0.05)
    return result


async def ended(client: Client, name: str) -> rn.Run | None:
    run = await client.runner.GetRun(rn.GetRunRequest(name=name))
    return run if run.state in ENDED else None


async def active_run(client: Client, conversation: str) -> str:
    found = await client.runner.GetConversation(rn.GetConversationRequest(name=conversation))
    return found.active_run


def reason_of(status) -> str:
    info = error_details_pb2.ErrorInfo()
    return next((info.reason for d in status.details if d.Unpack(info)), "")


def texts(request_body: dict) -> list[str]:
    return [m.get("content") or "" for m in request_body["messages"] if m["role"] != "system"]


# ---- events a watcher on any replica reads -------------------------------------------


async def test_a_watcher_on_another_replica_follows_a_live_run(tenant, gate):
    agent = await tenant.agent("watched", tools=[gated_tool(gate)])
    tenant.model.enqueue(Reply(tool_calls=[ToolCall("wait", {})]), Reply(text="all done"))
    stream = tenant.a.runner.StreamRun(rn.RunAgentRequest(agent=agent.name, input="go"))
    streamed = [await stream.read()]
    name = streamed[0].run_started.name
    await asyncio.wait_for(gate.called.wait(), 10)

    # While the run waits on its tool, in replica A, replica B already shows its events.
    watch = tenant.b.runner.WatchRun(rn.WatchRunRequest(name=name))
    watched = [await watch.read()]
    while not watched[-1].HasField("item"):
        watched.append(await watch.read())
    assert watched[-1].item.type == rn.RunItem.TYPE_TOOL_CALL
    # One that resumes after a sequence starts right after it.
    later = tenant.b.runner.WatchRun(rn.WatchRunRequest(name=name, after_sequence=1))
    resumed = [await later.read()]
    assert resumed[0].sequence == 2

    gate.open.set()
    streamed += await rest(stream)
    watched += await rest(watch)
    assert watched == streamed
    assert streamed[-1].run_finished.final_output == "all done"
    assert [e.sequence for e in streamed] == list(range(1, len(streamed) + 1))
    resumed += await rest(later)
    assert resumed == streamed[1:]


async def test_an_approval_decided_on_another_replica_resumes_the_run_there(tenant, gate):
    agent = await tenant.agent(
        "approved",
        tools=[r.Tool(name="pay", function=gated_tool(gate).function, require_approval=True)],
    )
    tenant.model.enqueue(Reply(tool_calls=[ToolCall("pay", {"amount": 5})]), Reply(text="paid"))
    run = await tenant.a.runner.RunAgent(rn.RunAgentRequest(agent=agent.name, input="pay"))
    (approval,) = (
        await tenant.b.runner.ListApprovals(rn.ListApprovalsRequest(parent=run.name))
    ).approvals
    gate.open.set()
    await tenant.b.runner.ResolveApproval(
        rn.ResolveApprovalRequest(
            name=approval.name, decision=rn.ResolveApprovalRequest.DECISION_APPROVE
        )
    )
    done = await eventually(lambda: ended(tenant.a, run.name))
    assert (done.state, done.final_output) == (State.STATE_SUCCEEDED, "paid")
    # Both legs in one log, in order, read from the replica that ran neither to its end.
    events = [e async for e in tenant.a.runner.WatchRun(rn.WatchRunRequest(name=run.name))]
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds.count("run_started") == 2 and kinds.count("run_finished") == 2
    assert events[-1].run_finished.state == State.STATE_SUCCEEDED


async def test_a_stopping_replica_hands_its_runs_to_another(replicas, tenant, tmp_path):
    """A replica that stops (SIGTERM, a rolling update) gives up the runs it can: no
    tool began in them, so another replica runs them again at once, not after the
    lease."""
    agent = await tenant.agent("handed")
    tenant.model.enqueue(Reply(text="never sent", delay_s=30), Reply(text="after the handover"))
    settings = mesh_settings(
        tmp_path,
        peers={"registry": replicas.a.address, "providers": replicas.a.address},
        **{**FAST, "run_lease_seconds": 60.0},  # a lease that would outlast the test
        database_url=replicas.a.settings.database_url,
        nats_url=replicas.a.nats_url,
        service_token=replicas.a.settings.service_token,
    )
    leaving = Mesh(settings, plugins_named("runner"))
    await leaving.start()
    try:
        async with Client(leaving.address, tenant.key) as client:
            stream = client.runner.StreamRun(rn.RunAgentRequest(agent=agent.name, input="go"))
            name = (await stream.read()).run_started.name
            await eventually(lambda: _asked(tenant.model, "go"))
            await leaving.stop()  # its caller still attached: the stop breaks the call
    finally:
        await leaving.stop()
    done = await eventually(lambda: ended(tenant.a, name), within=5)
    assert (done.state, done.final_output) == (State.STATE_SUCCEEDED, "after the handover")
    # What the first leg had written into the conversation was taken back first.
    items = await tenant.a.runner.ListConversationItems(
        rn.ListConversationItemsRequest(parent=done.conversation)
    )
    assert [item.text for item in items.items] == ["go", "after the handover"]


# ---- SubmitRun on the work queue ----------------------------------------------------


async def test_submitted_runs_run_once_each_on_some_replica(tenant):
    agent = await tenant.agent("submitted")
    submitted = await asyncio.gather(
        *(
            (tenant.a if i % 2 else tenant.b).runner.SubmitRun(
                rn.RunAgentRequest(agent=agent.name, input=f"job {i}")
            )
            for i in range(8)
        )
    )
    assert all(run.state == State.STATE_QUEUED for run in submitted)
    # Watched from the replica it was not submitted to, from the start to its end.
    events = [
        event
        async for event in tenant.a.runner.WatchRun(rn.WatchRunRequest(name=submitted[0].name))
    ]
    assert events[0].HasField("run_started") and events[-1].HasField("run_finished")
    assert events[-1].run_finished.final_output == "stand-in reply to: job 0"
    done = [await eventually(lambda run=run: ended(tenant.b, run.name)) for run in submitted]
    assert all(run.state == State.STATE_SUCCEEDED for run in done)
    asked = sorted(texts(request.body)[-1] for request in tenant.model.requests)
    assert asked == sorted(f"job {i}" for i in range(8))  # each ran exactly once
    balance = await tenant.a.accounts.GetCreditBalance(
        a.GetCreditBalanceRequest(name=f"{tenant.user.name}/creditBalance")
    )
    assert balance.reserved == 0


# ---- cancel anywhere ---------------------------------------------------------------------


async def test_a_run_is_cancelled_from_another_replica(tenant, gate):
    agent = await tenant.agent("cancelled", tools=[gated_tool(gate)])
    tenant.model.enqueue(Reply(tool_calls=[ToolCall("wait", {})]))
    stream = tenant.a.runner.StreamRun(rn.RunAgentRequest(agent=agent.name, input="go"))
    name = (await stream.read()).run_started.name
    await asyncio.wait_for(gate.called.wait(), 10)
    cancelled = await asyncio.wait_for(tenant.b.runner.CancelRun(rn.CancelRunRequest(name=name)), 5)
    assert cancelled.state == State.STATE_CANCELLED
    last = (await rest(stream))[-1]
    assert last.run_finished.state == State.STATE_CANCELLED
    conversation = await tenant.b.runner.GetConversation(
        rn.GetConversationRequest(name=cancelled.conversation)
    )
    assert conversation.active_run == ""
    await _history_is_whole(tenant.b, cancelled.conversation)


async def test_a_paused_run_cancelled_elsewhere_leaves_no_call_unanswered(tenant, gate):
    agent = await tenant.agent(
        "paused",
        tools=[r.Tool(name="pay", function=gated_tool(gate).function, require_approval=True)],
    )
    tenant.model.enqueue(Reply(tool_calls=[ToolCall("pay", {"amount": 5})]))
    run = await tenant.a.runner.RunAgent(rn.RunAgentRequest(agent=agent.name, input="pay"))
    assert run.state == State.STATE_AWAITING_APPROVAL
    cancelled = await tenant.b.runner.CancelRun(rn.CancelRunRequest(name=run.name))
    assert cancelled.state == State.STATE_CANCELLED
    types = await _history_is_whole(tenant.b, run.conversation)
    assert types[-2:] == ["function_call", "function_call_output"]
    assert not gate.called.is_set()


async def _history_is_whole(client: Client, conversation: str) -> list[str]:
    """Every tool call in the history has its output (a model API refuses one without)."""
    items = (
        await client.runner.ListConversationItems(
            rn.ListConversationItemsRequest(parent=conversation)
        )
    ).items
    calls = {i.data["call_id"] for i in items if i.type == "function_call"}
    outputs = {i.data["call_id"] for i in items if i.type == "function_call_output"}
    assert calls == outputs
    return [item.type for item in items]


async def test_a_queued_run_is_cancelled_before_it_runs(tenant):
    agent = await tenant.agent("queued")
    first = await tenant.a.runner.RunAgent(rn.RunAgentRequest(agent=agent.name, input="x"))
    tenant.model.enqueue(Reply(text="slow", delay_s=1.0))
    waiter_call = asyncio.ensure_future(
        tenant.a.runner.RunAgent(
            rn.RunAgentRequest(agent=agent.name, input="y", conversation=first.conversation)
        )
    )
    await eventually(lambda: active_run(tenant.a, first.conversation))
    waiting = await tenant.b.runner.SubmitRun(
        rn.RunAgentRequest(
            agent=agent.name,
            input="z",
            conversation=first.conversation,
            busy_policy=rn.BUSY_POLICY_ENQUEUE,
        )
    )
    cancelled = await tenant.b.runner.CancelRun(rn.CancelRunRequest(name=waiting.name))
    assert cancelled.state == State.STATE_CANCELLED
    assert (await waiter_call).state == State.STATE_SUCCEEDED
    assert "z" not in [texts(request.body)[-1] for request in tenant.model.requests]


# ---- busy conversations across replicas --------------------------------------------------

Policy = rn.BusyPolicy


@pytest.mark.parametrize(
    "policy",
    [
        Policy.BUSY_POLICY_REJECT,
        Policy.BUSY_POLICY_ENQUEUE,
        Policy.BUSY_POLICY_INTERRUPT,
        Policy.BUSY_POLICY_ROLLBACK,
    ],
    ids=Policy.Name,
)
async def test_a_busy_conversation_follows_the_second_runs_policy(tenant, policy):
    agent = await tenant.agent(f"busy{policy}")
    tenant.model.enqueue(Reply(text="hi"))
    opening = await tenant.a.runner.RunAgent(rn.RunAgentRequest(agent=agent.name, input="hello"))
    conversation = opening.conversation
    slow = 1.5 if policy == Policy.BUSY_POLICY_ENQUEUE else 30
    tenant.model.enqueue(Reply(text="first answer", delay_s=slow), Reply(text="second answer"))
    first_call = tenant.a.runner.StreamRun(
        rn.RunAgentRequest(agent=agent.name, input="first question", conversation=conversation)
    )
    first_name = (await first_call.read()).run_started.name
    await eventually(lambda: _asked(tenant.model, "first question"))

    # The second run comes to the other replica while the first runs.
    second = tenant.b.runner.RunAgent(
        rn.RunAgentRequest(
            agent=agent.name,
            input="second question",
            conversation=conversation,
            busy_policy=policy,
        )
    )
    if policy == Policy.BUSY_POLICY_REJECT:
        error = await expect_rpc_error(second, grpc.StatusCode.ABORTED)
        assert "CONVERSATION_BUSY" in str(error.trailing_metadata())
        first_call.cancel()
        return
    second_run = await asyncio.wait_for(second, 15)
    first_run = (await rest(first_call))[-1].run_finished
    assert first_run.name == first_name
    assert second_run.state == State.STATE_SUCCEEDED, second_run.error
    assert second_run.final_output == "second answer"
    seen = texts(tenant.model.requests[-1].body)
    assert seen[-1] == "second question"
    if policy == Policy.BUSY_POLICY_ENQUEUE:
        # It waited, then ran on the whole history, the first run's answer included.
        assert first_run.state == State.STATE_SUCCEEDED
        assert seen == ["hello", "hi", "first question", "first answer", "second question"]
    elif policy == Policy.BUSY_POLICY_INTERRUPT:
        assert first_run.state == State.STATE_CANCELLED
        assert seen == ["hello", "hi", "first question", "second question"]
    else:
        assert first_run.state == State.STATE_CANCELLED
        assert seen == ["hello", "hi", "second question"]
    assert await active_run(tenant.a, conversation) == ""


async def _asked(model: ModelServer, text: str) -> bool:
    return any(texts(request.body)[-1:] == [text] for request in model.requests)


# ---- a killed runner's runs are taken over -------------------------------------------------


async def _serve_runner(
    data_dir: Path, env: dict[str, str]
) -> tuple[asyncio.subprocess.Process, str]:
    args = ("serve", "runner", "--data-dir", str(data_dir), "--port", "0")
    process, address, _ = await start_agentmesh(*args, env=env, within=60)
    return process, address


def child_env(shared: dict[str, Any], peers: dict[str, str]) -> dict[str, str]:
    """The settings of a runner process beside the test's core mesh, as its environment."""
    return {
        "AGENTMESH_DATABASE_URL": shared["database_url"],
        "AGENTMESH_NATS_URL": shared["nats_url"],
        "AGENTMESH_SERVICE_TOKEN": shared["service_token"],
        "AGENTMESH_PEERS": json.dumps(peers),
        "AGENTMESH_OUTBOUND_ALLOW": json.dumps(FAST["outbound_allow"]),
        "OPENAI_API_KEY": "",
        **{
            f"AGENTMESH_{name.upper()}": str(value)
            for name, value in FAST.items()
            if isinstance(value, float)
        },
    }


async def test_a_killed_runners_runs_are_taken_over(tmp_path, postgres, gate):
    """A run submitted to one runner process is finished by another after the first is
    killed: run again from its start, as no tool had begun; a run in the middle of a
    tool call ends FAILED (RUNNER_LOST) instead, and lets its conversation and
    credits go."""
    async with EmbeddedNats(tmp_path / "nats") as nats, ModelServer(api_key=KEY) as model:
        shared = {
            **FAST,
            "database_url": database_url("postgres", postgres, tmp_path),
            "nats_url": nats.url,
            "service_token": "kill-test-service-token",
        }
        # Registry and providers, but no runner: queued runs can only go to the child.
        async with Mesh(
            mesh_settings(tmp_path / "core", **shared), plugins_named("registry", "providers")
        ) as core:
            peers = {"registry": core.address, "providers": core.address}
            env = child_env(shared, peers)
            child, child_address = await _serve_runner(tmp_path / "child", env)
            users = Users(core)
            try:
                tenant = await new_tenant(users, child_address, model)
                replayed = await tenant.agent("replayed")
                tooled = await tenant.agent("tooled", tools=[gated_tool(gate)])
                model.enqueue(Reply(text="never sent", delay_s=30))
                first = await tenant.b.runner.SubmitRun(
                    rn.RunAgentRequest(agent=replayed.name, input="survive")
                )
                await eventually(lambda: _asked(model, "survive"))
                model.enqueue(Reply(tool_calls=[ToolCall("wait", {})]))
                second = await tenant.b.runner.SubmitRun(
                    rn.RunAgentRequest(agent=tooled.name, input="call the tool")
                )
                await asyncio.wait_for(gate.called.wait(), 10)
                child.send_signal(signal.SIGKILL)
                await child.wait()

                # Another runner replica: it takes both over once their lease ran out.
                settings = mesh_settings(tmp_path / "other", peers=peers, **shared)
                async with Mesh(settings, plugins_named("runner")) as other:
                    tenant.b = Client(other.address, tenant.key)
                    users._clients.append(tenant.b)
                    events = [
                        event
                        async for event in tenant.b.runner.WatchRun(
                            rn.WatchRunRequest(name=first.name)
                        )
                    ]
                    done = await eventually(lambda: ended(tenant.b, first.name))
                    lost = await eventually(lambda: ended(tenant.b, second.name))
                    conversation = await active_run(tenant.b, lost.conversation)
                    lost_history = await _history_is_whole(tenant.b, lost.conversation)
                    balance = await tenant.a.accounts.GetCreditBalance(
                        a.GetCreditBalanceRequest(name=f"{tenant.user.name}/creditBalance")
                    )
            finally:
                if child.returncode is None:
                    child.kill()
                    await child.wait()
                await users.close()

    assert done.state == State.STATE_SUCCEEDED, done.error
    assert done.final_output == "stand-in reply to: survive"
    # Its watcher saw both legs, in one sequence: the lost one, then the replay.
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds.count("run_started") == 2 and kinds[-1] == "run_finished"
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert sum(texts(r.body)[-1:] == ["survive"] for r in model.requests) == 2

    assert lost.state == State.STATE_FAILED
    assert lost.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert reason_of(lost.error) == "RUNNER_LOST"
    assert conversation == ""
    # What it had added to its history (its input; the SDK adds a tool call with its
    # output) was written as the tool began, with the end of its safe point.
    assert lost_history == ["message"]
    # The lost runner's reservations were released, not left to their ttl.
    assert balance.reserved == 0
