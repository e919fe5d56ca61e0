"""The triggers service on a running mesh: schedules that start runs, outbound webhooks
signed and retried to a real HTTP receiver, inbound webhooks over the mesh's HTTP port.

Every tenant's model is its own scripted model server; the receiver of outbound
webhooks is an aiohttp server that checks each signature itself, by the Standard
Webhooks scheme, not with the service's code.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import grpc
import httpx2
import pytest
from aiohttp import web
from google.protobuf import duration_pb2, field_mask_pb2
from google.rpc import error_details_pb2
from rpc_helpers import details_of
from sqlalchemy import update
from support import Users, create_agent, expect_rpc_error, running_mesh, use_model
from typer.testing import CliRunner, Result

from agentmesh.cli import app
from agentmesh.client import Client
from agentmesh.events import event_spec
from agentmesh.gen.registry.v1 import account_pb2 as a
from agentmesh.gen.registry.v1 import registry_pb2 as r
from agentmesh.gen.registry.v1 import workflows_pb2 as w
from agentmesh.gen.runner.v1 import events_pb2 as runner_events
from agentmesh.gen.runner.v1 import runner_pb2 as rn
from agentmesh.gen.triggers.v1 import schedules_pb2 as s
from agentmesh.gen.triggers.v1 import triggers_pb2 as t
from agentmesh.gen.triggers.v1 import webhooks_pb2 as wh
from agentmesh.mesh import Mesh
from agentmesh.model_server import ModelServer, Reply, ToolCall
from services.triggers.tables import ScheduleRow

Code = grpc.StatusCode
State = rn.Run.State
Policy = s.Schedule.MissedTickPolicy
KEY = "sk-triggers-test-" + "k" * 24
ENDED = (State.STATE_SUCCEEDED, State.STATE_FAILED, State.STATE_CANCELLED, State.STATE_BLOCKED)


@pytest.fixture(scope="module")
async def triggers_mesh(tmp_path_factory) -> AsyncIterator[Mesh]:
    async with running_mesh(
        tmp_path_factory.mktemp("triggers"),
        outbound_allow=["127.0.0.1"],
        schedule_poll_seconds=0.1,
        webhook_poll_seconds=0.1,
        webhook_backoff_seconds=0.2,
        webhook_attempts=3,
        webhook_timeout_seconds=2.0,
        hook_max_bytes=64 * 1024,
    ) as mesh:
        yield mesh


@pytest.fixture
async def users(triggers_mesh) -> AsyncIterator[Users]:
    factory = Users(triggers_mesh)
    yield factory
    await factory.close()


@dataclass
class Tenant:
    client: Client
    user: a.User
    model: ModelServer

    async def agent(self, agent_id: str, **fields) -> r.Agent:
        return await create_agent(self.client, agent_id, **fields)

    async def runs(self, agent: str) -> list[rn.Run]:
        found = await self.client.runner.ListRuns(rn.ListRunsRequest(agent=agent, page_size=1000))
        return list(found.runs)


@pytest.fixture
async def tenant(users) -> AsyncIterator[Tenant]:
    """A user with credits whose default provider is its own scripted model server."""
    async with ModelServer(api_key=KEY) as model:
        client, user = await users.new(credits=10_000)
        await use_model(client, model)
        yield Tenant(client, user, model)


async def eventually(check: Callable, within: float = 15.0):
    """What `check` returns once it returns something true (it reads the server's state)."""
    async with asyncio.timeout(within):
        while not (result := await check()):  # noqa: ASYNC110 - the state is the server's
            await asyncio.sleep(0.05)
    return result


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    (bad,) = details_of(error, error_details_pb2.BadRequest)
    return {v.field: v.description for v in bad.field_violations}


def reason(error: grpc.aio.AioRpcError) -> str:
    (info,) = details_of(error, error_details_pb2.ErrorInfo)
    return info.reason


def every(seconds: float) -> duration_pb2.Duration:
    interval = duration_pb2.Duration()
    interval.FromTimedelta(timedelta(seconds=seconds))
    return interval


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


def schedule(target: str, **fields) -> s.Schedule:
    if "cron" not in fields:
        fields.setdefault("interval", every(3600))
    return s.Schedule(display_name="nightly", target=target, input="go", **fields)


async def create_schedule(client: Client, target: str, **fields) -> s.Schedule:
    return await client.schedules.CreateSchedule(
        s.CreateScheduleRequest(schedule=schedule(target, **fields))
    )


async def get_schedule(client: Client, name: str) -> s.Schedule:
    return await client.schedules.GetSchedule(s.GetScheduleRequest(name=name))


async def set_next_fire_time(mesh: Mesh, name: str, when: datetime) -> None:
    """As after downtime: the schedule's next tick is long past."""
    store = mesh.services["triggers"].store  # type: ignore[attr-defined]
    async with store.engine.begin() as conn:
        await conn.execute(
            update(ScheduleRow)
            .where(ScheduleRow.id == name.removeprefix("schedules/"))
            .values(next_fire_time=when)
        )


# ---- schedules: the resource ------------------------------------------------------------


async def test_a_schedule_is_created_read_listed_updated_and_deleted(tenant):
    agent = await tenant.agent("reporter")
    created = await tenant.client.schedules.CreateSchedule(
        s.CreateScheduleRequest(
            schedule=schedule(agent.name, interval=every(600)), schedule_id="hourly-report"
        )
    )
    assert created.name == "schedules/hourly-report" and created.target == agent.name
    assert created.interval.seconds == 600 and not created.paused
    assert created.missed_tick_policy == Policy.MISSED_TICK_POLICY_SKIP
    first_tick = created.next_fire_time.ToDatetime(UTC) - created.create_time.ToDatetime(UTC)
    assert first_tick == timedelta(seconds=600)
    assert await get_schedule(tenant.client, created.name) == created
    listed = await tenant.client.schedules.ListSchedules(s.ListSchedulesRequest())
    assert [found.name for found in listed.schedules] == [created.name]

    # Cron in a time zone: 09:00 in Tokyo is 00:00 UTC, daylight saving or not.
    retimed = await tenant.client.schedules.UpdateSchedule(
        s.UpdateScheduleRequest(
            schedule=s.Schedule(
                name=created.name,
                cron=s.Cron(expression="0 9 * * *", time_zone="Asia/Tokyo"),
                missed_tick_policy=Policy.MISSED_TICK_POLICY_CATCH_UP_ONCE,
                etag=created.etag,
            ),
            update_mask=mask("cron", "missed_tick_policy"),
        )
    )
    assert retimed.WhichOneof("timing") == "cron" and retimed.etag != created.etag
    nxt = retimed.next_fire_time.ToDatetime(UTC)
    assert (nxt.hour, nxt.minute) == (0, 0) and nxt - datetime.now(UTC) <= timedelta(days=1)
    assert retimed.missed_tick_policy == Policy.MISSED_TICK_POLICY_CATCH_UP_ONCE

    broken = tenant.client.schedules.UpdateSchedule(
        s.UpdateScheduleRequest(
            schedule=s.Schedule(name=created.name, cron=s.Cron(expression="0 25 * * *")),
            update_mask=mask("cron"),
        )
    )
    refused = await expect_rpc_error(broken, Code.INVALID_ARGUMENT)
    assert list(violations(refused)) == ["schedule.cron.expression"]
    assert await get_schedule(tenant.client, created.name) == retimed

    stale = tenant.client.schedules.UpdateSchedule(
        s.UpdateScheduleRequest(
            schedule=s.Schedule(name=created.name, display_name="x", etag=created.etag),
            update_mask=mask("display_name"),
        )
    )
    await expect_rpc_error(stale, Code.ABORTED)
    await expect_rpc_error(
        tenant.client.schedules.CreateSchedule(
            s.CreateScheduleRequest(schedule=schedule(agent.name), schedule_id="hourly-report")
        ),
        Code.ALREADY_EXISTS,
    )
    await tenant.client.schedules.DeleteSchedule(s.DeleteScheduleRequest(name=created.name))
    await expect_rpc_error(get_schedule(tenant.client, created.name), Code.NOT_FOUND)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"cron": s.Cron(expression="61 * * * *")}, "schedule.cron.expression"),
        ({"cron": s.Cron(expression="* * * * * *")}, "schedule.cron.expression"),
        ({"cron": s.Cron(expression="0 0 30 2 *")}, "schedule.cron.expression"),
        (
            {"cron": s.Cron(expression="@daily", time_zone="Mars/Olympus")},
            "schedule.cron.time_zone",
        ),
        (
            {"cron": s.Cron(expression="0 9 * * *", time_zone="../../etc/passwd")},
            "schedule.cron.time_zone",
        ),
        ({"interval": every(0.5)}, "schedule.interval"),
    ],
)
async def test_a_schedule_that_cannot_tick_is_refused_naming_the_field(tenant, fields, field):
    agent = await tenant.agent("ticker")
    refused = await expect_rpc_error(
        create_schedule(tenant.client, agent.name, **fields), Code.INVALID_ARGUMENT
    )
    assert field in violations(refused), violations(refused)
    listed = await tenant.client.schedules.ListSchedules(s.ListSchedulesRequest())
    assert not listed.schedules


async def test_schedules_are_walled_between_tenants(tenant, users):
    agent = await tenant.agent("private")
    mine = await create_schedule(tenant.client, agent.name)
    other, _ = await users.new()
    missing = "schedules/" + "0" * 32
    for name in (mine.name, missing):
        for call in (
            other.schedules.GetSchedule(s.GetScheduleRequest(name=name)),
            other.schedules.PauseSchedule(s.PauseScheduleRequest(name=name)),
            other.schedules.ResumeSchedule(s.ResumeScheduleRequest(name=name)),
            other.schedules.DeleteSchedule(s.DeleteScheduleRequest(name=name)),
            other.schedules.UpdateSchedule(
                s.UpdateScheduleRequest(
                    schedule=s.Schedule(name=name, display_name="mine now"),
                    update_mask=mask("display_name"),
                )
            ),
        ):
            error = await expect_rpc_error(call, Code.NOT_FOUND)
            assert name in error.details()  # the same answer as for a missing one
    assert not (await other.schedules.ListSchedules(s.ListSchedulesRequest())).schedules
    # Nor can another tenant's agent be a target: it is not found, as a missing one.
    for target in (agent.name, "agents/nobody"):
        refused = await expect_rpc_error(create_schedule(other, target), Code.INVALID_ARGUMENT)
        assert violations(refused) == {"schedule.target": f"{target} not found"}
        assert reason(refused) == "TARGET_NOT_FOUND"
    assert await get_schedule(tenant.client, mine.name) == mine


# ---- schedules: firing ------------------------------------------------------------------


async def runs_of(tenant: Tenant, agent: str, at_least: int) -> list[rn.Run]:
    async def enough():
        runs = await tenant.runs(agent)
        return runs if len(runs) >= at_least else None

    return await eventually(enough)


async def test_a_schedule_fires_each_tick_and_pause_stops_it_until_resumed(tenant):
    agent = await tenant.agent("ticking")
    ticking = await create_schedule(tenant.client, agent.name, interval=every(1))
    runs = await runs_of(tenant, agent.name, 2)
    assert {run.input for run in runs} == {"go"}
    fired = await get_schedule(tenant.client, ticking.name)
    assert fired.last_run in {run.name for run in runs}
    assert fired.last_fire_time.ToDatetime(UTC) >= ticking.create_time.ToDatetime(UTC)

    paused = await tenant.client.schedules.PauseSchedule(s.PauseScheduleRequest(name=ticking.name))
    assert paused.paused and not paused.HasField("next_fire_time")
    again = await tenant.client.schedules.PauseSchedule(s.PauseScheduleRequest(name=ticking.name))
    assert again.etag == paused.etag  # already paused: nothing changed
    count = len(await tenant.runs(agent.name))
    await asyncio.sleep(2.5)  # more than two ticks' time: none of them fires
    assert len(await tenant.runs(agent.name)) == count

    resumed = await tenant.client.schedules.ResumeSchedule(
        s.ResumeScheduleRequest(name=ticking.name)
    )
    assert not resumed.paused and resumed.next_fire_time.ToDatetime(UTC) > datetime.now(UTC)
    await runs_of(tenant, agent.name, count + 1)
    await tenant.client.schedules.DeleteSchedule(s.DeleteScheduleRequest(name=ticking.name))


async def test_missed_ticks_are_skipped_or_caught_up_once(tenant, triggers_mesh):
    agent_skip, agent_catch = await tenant.agent("skipper"), await tenant.agent("catcher")
    skip = await create_schedule(tenant.client, agent_skip.name)
    catch = await create_schedule(
        tenant.client,
        agent_catch.name,
        missed_tick_policy=Policy.MISSED_TICK_POLICY_CATCH_UP_ONCE,
    )
    # Hourly schedules, their next tick 2.5 hours ago: that tick, and the one 1.5
    # hours ago, and the one half an hour ago were all missed.
    long_ago = datetime.now(UTC) - timedelta(hours=2, minutes=30)
    for name in (skip.name, catch.name):
        await set_next_fire_time(triggers_mesh, name, long_ago)

    async def moved_on(name: str) -> s.Schedule | None:
        found = await get_schedule(tenant.client, name)
        return found if found.next_fire_time.ToDatetime(UTC) > datetime.now(UTC) else None

    skipped = await eventually(lambda: moved_on(skip.name))
    caught = await eventually(lambda: moved_on(catch.name))
    # Both go on with the ticks they had: the next one is half an hour away.
    for moved in (skipped, caught):
        ahead = moved.next_fire_time.ToDatetime(UTC) - datetime.now(UTC)
        assert timedelta(minutes=29) < ahead <= timedelta(minutes=30)
    assert await tenant.runs(agent_skip.name) == [] and not skipped.last_run
    caught = await eventually(lambda: _with_last_run(tenant.client, catch.name))
    (run,) = await tenant.runs(agent_catch.name)
    assert caught.last_run == run.name
    # The run stands for the newest missed tick.
    assert caught.last_fire_time.ToDatetime(UTC) == long_ago + timedelta(hours=2)


async def _with_last_run(client: Client, name: str) -> s.Schedule | None:
    found = await get_schedule(client, name)
    return found if found.last_run else None


async def test_a_tick_whose_agent_is_gone_says_why_it_started_nothing(tenant, triggers_mesh):
    agent = await tenant.agent("doomed")
    doomed = await create_schedule(tenant.client, agent.name)
    await tenant.client.registry.DeleteAgent(r.DeleteAgentRequest(name=agent.name))
    await set_next_fire_time(triggers_mesh, doomed.name, datetime.now(UTC))

    async def failed():
        found = await get_schedule(tenant.client, doomed.name)
        return found if found.HasField("last_error") else None

    found = await eventually(failed)
    assert found.last_error.code == Code.NOT_FOUND.value[0] and not found.last_run
    assert agent.name in found.last_error.message


# ---- outbound webhooks: the resource ----------------------------------------------------


def subscription(url: str, *types: wh.EventType, **fields) -> wh.Subscription:
    return wh.Subscription(
        url=url, event_types=list(types or [wh.EVENT_TYPE_RUN_SUCCEEDED]), **fields
    )


async def subscribe(client: Client, url: str, *types: wh.EventType, **fields) -> wh.Subscription:
    return await client.webhooks.CreateSubscription(
        wh.CreateSubscriptionRequest(subscription=subscription(url, *types, **fields))
    )


async def test_a_subscription_shows_its_secret_once_and_is_walled(tenant, users):
    agent = await tenant.agent("watched")
    made = await subscribe(
        tenant.client, "https://hooks.example.com/in?token=abc", agent=agent.name
    )
    assert made.name.startswith("subscriptions/") and made.secret.startswith("whsec_")
    assert len(base64.b64decode(made.secret.removeprefix("whsec_"))) == 32
    read = await tenant.client.webhooks.GetSubscription(wh.GetSubscriptionRequest(name=made.name))
    assert read.secret == "" and read.url == made.url and read.agent == agent.name
    listed = await tenant.client.webhooks.ListSubscriptions(wh.ListSubscriptionsRequest())
    assert [found.secret for found in listed.subscriptions] == [""]
    changed = await tenant.client.webhooks.UpdateSubscription(
        wh.UpdateSubscriptionRequest(
            subscription=wh.Subscription(
                name=made.name,
                url="https://hooks.example.com/v2",
                event_types=[wh.EVENT_TYPE_RUN_FAILED, wh.EVENT_TYPE_RUN_AWAITING_APPROVAL],
                etag=made.etag,
            ),
            update_mask=mask("url", "event_types"),
        )
    )
    assert changed.url.endswith("/v2") and changed.secret == "" and changed.agent == agent.name
    assert list(changed.event_types) == [
        wh.EVENT_TYPE_RUN_FAILED,
        wh.EVENT_TYPE_RUN_AWAITING_APPROVAL,
    ]

    other, _ = await users.new()
    for name in (made.name, "subscriptions/" + "0" * 32):
        for call in (
            other.webhooks.GetSubscription(wh.GetSubscriptionRequest(name=name)),
            other.webhooks.DeleteSubscription(wh.DeleteSubscriptionRequest(name=name)),
            other.webhooks.ListDeliveries(wh.ListDeliveriesRequest(parent=name)),
            other.webhooks.GetDelivery(wh.GetDeliveryRequest(name=f"{name}/deliveries/x")),
            other.webhooks.UpdateSubscription(
                wh.UpdateSubscriptionRequest(
                    subscription=wh.Subscription(name=name, url="https://evil.example.com"),
                    update_mask=mask("url"),
                )
            ),
        ):
            error = await expect_rpc_error(call, Code.NOT_FOUND)
            assert name in error.details()
    assert not (await other.webhooks.ListSubscriptions(wh.ListSubscriptionsRequest())).subscriptions
    # Another tenant's agent is no filter of theirs: not found, as a missing one.
    refused = await expect_rpc_error(
        subscribe(other, "https://hooks.example.com/", agent=agent.name), Code.INVALID_ARGUMENT
    )
    assert violations(refused) == {"subscription.agent": f"{agent.name} not found"}
    await tenant.client.webhooks.DeleteSubscription(wh.DeleteSubscriptionRequest(name=made.name))
    await expect_rpc_error(
        tenant.client.webhooks.GetSubscription(wh.GetSubscriptionRequest(name=made.name)),
        Code.NOT_FOUND,
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest",
        "http://192.168.0.10:8080/",
        "http://[::1]/",
    ],
)
async def test_a_subscription_to_a_private_address_is_refused(tenant, url):
    refused = await expect_rpc_error(subscribe(tenant.client, url), Code.INVALID_ARGUMENT)
    assert "internal address" in violations(refused)["subscription.url"]
    made = await subscribe(tenant.client, "https://hooks.example.com/")
    refused = await expect_rpc_error(
        tenant.client.webhooks.UpdateSubscription(
            wh.UpdateSubscriptionRequest(
                subscription=wh.Subscription(name=made.name, url=url), update_mask=mask("url")
            )
        ),
        Code.INVALID_ARGUMENT,
    )
    assert "subscription.url" in violations(refused)
    kept = await tenant.client.webhooks.GetSubscription(wh.GetSubscriptionRequest(name=made.name))
    assert kept.url == "https://hooks.example.com/"


async def test_workflow_events_filtered_by_an_agent_are_refused(tenant):
    agent = await tenant.agent("a-step")
    refused = await expect_rpc_error(
        subscribe(
            tenant.client,
            "https://hooks.example.com/",
            wh.EVENT_TYPE_RUN_SUCCEEDED,
            wh.EVENT_TYPE_WORKFLOW_FAILED,
            agent=agent.name,
        ),
        Code.INVALID_ARGUMENT,
    )
    assert list(violations(refused)) == ["subscription.event_types[1]"]
    made = await subscribe(
        tenant.client, "https://hooks.example.com/", wh.EVENT_TYPE_WORKFLOW_FAILED
    )
    # Nor may an update add the filter.
    refused = await expect_rpc_error(
        tenant.client.webhooks.UpdateSubscription(
            wh.UpdateSubscriptionRequest(
                subscription=wh.Subscription(name=made.name, agent=agent.name),
                update_mask=mask("agent"),
            )
        ),
        Code.INVALID_ARGUMENT,
    )
    assert list(violations(refused)) == ["subscription.event_types[0]"]
    listed = await tenant.client.webhooks.ListSubscriptions(wh.ListSubscriptionsRequest())
    assert [(found.name, found.agent, found.etag) for found in listed.subscriptions] == [
        (made.name, "", made.etag)
    ]


# ---- outbound webhooks: deliveries ------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """An HTTP endpoint answering each POST with the next of `answers` (then 204)."""

    url: str = ""
    answers: list[int] = field(default_factory=list)
    got: list[Received] = field(default_factory=list)

    async def take(self, request: web.Request) -> web.Response:
        self.got.append(Received(dict(request.headers), await request.read(), time.monotonic()))
        return web.Response(status=self.answers.pop(0) if self.answers else 204)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.take)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    yield receiver
    await runner.cleanup()


def signed_by(secret: str, got: Received) -> bool:
    """The Standard Webhooks check, as a receiver makes it."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{got.headers['webhook-id']}.{got.headers['webhook-timestamp']}.".encode() + got.body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return expected in got.headers["webhook-signature"].split()


async def deliveries(client: Client, subscription: str) -> list[wh.Delivery]:
    found = await client.webhooks.ListDeliveries(wh.ListDeliveriesRequest(parent=subscription))
    return list(found.deliveries)


async def settled_delivery(client: Client, subscription: str) -> wh.Delivery:
    async def settled():
        found = await deliveries(client, subscription)
        return found[0] if found and found[0].state != wh.Delivery.STATE_PENDING else None

    return await eventually(settled)


async def test_a_webhook_is_signed_retried_after_a_500_and_delivered(tenant, receiver):
    agent = await tenant.agent("notifier")
    receiver.answers = [500]
    sub = await subscribe(tenant.client, receiver.url, agent=agent.name)
    tenant.model.enqueue(Reply(text="done"))
    run = await tenant.client.runner.RunAgent(rn.RunAgentRequest(agent=agent.name, input="hi"))
    assert run.state == State.STATE_SUCCEEDED

    delivery = await settled_delivery(tenant.client, sub.name)
    assert delivery.state == wh.Delivery.STATE_DELIVERED and delivery.attempt_count == 2
    assert (delivery.last_status_code, delivery.last_error) == (204, "")
    assert delivery.event_type == wh.EVENT_TYPE_RUN_SUCCEEDED and delivery.run == run.name
    assert not delivery.HasField("next_attempt_time")
    first, second = receiver.got
    # One message, sent twice: the same id and body, each attempt signed with its time.
    assert (
        first.headers["webhook-id"]
        == second.headers["webhook-id"]
        == delivery.name.rsplit("/", 1)[1]
    )
    assert first.body == second.body == delivery.payload.encode()
    assert signed_by(sub.secret, first) and signed_by(sub.secret, second)
    assert abs(int(second.headers["webhook-timestamp"]) - time.time()) < 30
    body = json.loads(second.body)
    assert body["type"] == "run.succeeded"
    assert body["data"] == {"run": run.name, "agent": agent.name, "state": "SUCCEEDED"}
    # A signature under another secret is no signature.
    forged = Received({**second.headers}, second.body + b" ", second.at)
    assert not signed_by(sub.secret, forged)
    got = await tenant.client.webhooks.GetDelivery(wh.GetDeliveryRequest(name=delivery.name))
    assert got == delivery


async def test_a_webhook_failing_every_attempt_is_dead_after_backing_off(tenant, receiver):
    agent = await tenant.agent("unheard")
    receiver.answers = [500, 503, 500, 500]
    sub = await subscribe(tenant.client, receiver.url, wh.EVENT_TYPE_RUN_FAILED)
    tenant.model.enqueue(Reply(error_status=401))
    run = await tenant.client.runner.RunAgent(rn.RunAgentRequest(agent=agent.name, input="hi"))
    assert run.state == State.STATE_FAILED

    delivery = await settled_delivery(tenant.client, sub.name)
    assert delivery.state == wh.Delivery.STATE_DEAD and delivery.attempt_count == 3
    assert (delivery.last_status_code, delivery.last_error) == (500, "HTTP 500")
    assert not delivery.HasField("next_attempt_time") and delivery.run == run.name
    assert len(receiver.got) == 3
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(receiver.got)]
    # Backoff 0.2 s, then 0.4 s (the test's settings), with a poll's slack.
    assert gaps[0] >= 0.15 and gaps[1] >= 0.35 and gaps[1] > gaps[0]
    assert json.loads(receiver.got[0].body)["type"] == "run.failed"
    await asyncio.sleep(0.5)
    assert len(receiver.got) == 3  # dead: no more attempts
    # Its deliveries go with it.
    await tenant.client.webhooks.DeleteSubscription(wh.DeleteSubscriptionRequest(name=sub.name))
    await expect_rpc_error(
        tenant.client.webhooks.GetDelivery(wh.GetDeliveryRequest(name=delivery.name)),
        Code.NOT_FOUND,
    )


async def test_only_matching_events_are_delivered(tenant, receiver):
    watched, other = await tenant.agent("watched-one"), await tenant.agent("other-one")
    paused = await tenant.agent(
        "asks-first",
        tools=[
            r.Tool(
                name="pay",
                require_approval=True,
                function=r.FunctionTool(http=r.HttpFunction(url="http://127.0.0.1:9/pay")),
            )
        ],
    )
    succeeded = await subscribe(tenant.client, receiver.url, agent=watched.name)
    waiting = await subscribe(tenant.client, receiver.url, wh.EVENT_TYPE_RUN_AWAITING_APPROVAL)
    tenant.model.enqueue(Reply(text="a"), Reply(text="b"), Reply(tool_calls=[ToolCall("pay", {})]))
    for agent in (other, watched, paused):
        await tenant.client.runner.RunAgent(rn.RunAgentRequest(agent=agent.name, input="hi"))

    (delivered,) = [await settled_delivery(tenant.client, succeeded.name)]
    assert json.loads(delivered.payload)["data"]["agent"] == watched.name
    (approval,) = [await settled_delivery(tenant.client, waiting.name)]
    body = json.loads(approval.payload)
    assert (body["type"], body["data"]["agent"]) == ("run.awaiting_approval", paused.name)
    await asyncio.sleep(0.3)
    assert len(await deliveries(tenant.client, succeeded.name)) == 1
    assert len(await deliveries(tenant.client, waiting.name)) == 1
    assert len(receiver.got) == 2


async def published_workflow_changes(mesh: Mesh, names: set[str]) -> list[tuple[str, int]]:
    """(workflow run, state) of every WorkflowRunChanged the runner published about
    these workflow runs, in the stream's order."""
    spec = event_spec(runner_events.WorkflowRunChanged)
    jetstream = mesh.events.jetstream
    stored = (await jetstream.stream_info(spec.stream)).state.messages
    reader = await jetstream.pull_subscribe(spec.subject, stream=spec.stream)
    messages: list = []
    try:
        while len(messages) < stored:
            messages += await reader.fetch(stored - len(messages), timeout=5)
    finally:
        await reader.unsubscribe()
    changes = [runner_events.WorkflowRunChanged.FromString(message.data) for message in messages]
    return [
        (change.workflow_run, change.state) for change in changes if change.workflow_run in names
    ]


async def test_workflow_runs_that_end_or_pause_are_delivered_signed(
    tenant, users, receiver, triggers_mesh
):
    agent = await tenant.agent(
        "pays-in-a-flow",
        tools=[
            r.Tool(
                name="pay",
                require_approval=True,
                function=r.FunctionTool(http=r.HttpFunction(url="http://127.0.0.1:9/pay")),
            )
        ],
    )
    workflow = await tenant.client.workflows.CreateWorkflow(
        w.CreateWorkflowRequest(
            workflow=w.Workflow(
                display_name="billing",
                steps=[w.WorkflowStep(id="pay", agent=w.AgentStep(agent=agent.name))],
            )
        )
    )
    workflow_events = (
        wh.EVENT_TYPE_WORKFLOW_SUCCEEDED,
        wh.EVENT_TYPE_WORKFLOW_FAILED,
        wh.EVENT_TYPE_WORKFLOW_AWAITING_APPROVAL,
    )
    sub = await subscribe(tenant.client, receiver.url, *workflow_events)
    other, _ = await users.new()
    theirs = await subscribe(other, receiver.url, *workflow_events)
    tenant.model.enqueue(
        Reply(text="paid"), Reply(error_status=401), Reply(tool_calls=[ToolCall("pay", {})])
    )
    runs = [
        await tenant.client.runner.RunWorkflow(
            rn.RunWorkflowRequest(workflow=workflow.name, input="pay the invoice")
        )
        for _ in range(3)
    ]
    succeeded, failed, paused = runs
    assert [run.state for run in runs] == [
        State.STATE_SUCCEEDED,
        State.STATE_FAILED,
        State.STATE_AWAITING_APPROVAL,
    ]
    await tenant.client.runner.CancelWorkflowRun(rn.CancelWorkflowRunRequest(name=paused.name))

    async def all_settled():
        found = await deliveries(tenant.client, sub.name)
        settled = [d for d in found if d.state != wh.Delivery.STATE_PENDING]
        return found if len(settled) == 3 else None

    made = {delivery.run: delivery for delivery in await eventually(all_settled)}
    for run, event_type, kind, state in [
        (succeeded, wh.EVENT_TYPE_WORKFLOW_SUCCEEDED, "workflow.succeeded", "SUCCEEDED"),
        (failed, wh.EVENT_TYPE_WORKFLOW_FAILED, "workflow.failed", "FAILED"),
        (
            paused,
            wh.EVENT_TYPE_WORKFLOW_AWAITING_APPROVAL,
            "workflow.awaiting_approval",
            "AWAITING_APPROVAL",
        ),
    ]:
        delivery = made[run.name]
        assert (delivery.state, delivery.event_type) == (wh.Delivery.STATE_DELIVERED, event_type)
        body = json.loads(delivery.payload)
        assert body["type"] == kind
        assert body["data"] == {"workflow_run": run.name, "workflow": workflow.name, "state": state}
    assert sorted(got.body for got in receiver.got) == sorted(
        delivery.payload.encode() for delivery in made.values()
    )
    assert all(signed_by(sub.secret, got) for got in receiver.got)

    # The runner told each end and pause once, the cancel too, which is no one's news:
    # once the triggers service took in every change, nothing more was delivered.
    names = {run.name for run in runs}
    expected = [
        (succeeded.name, State.STATE_SUCCEEDED),
        (failed.name, State.STATE_FAILED),
        (paused.name, State.STATE_AWAITING_APPROVAL),
        (paused.name, State.STATE_CANCELLED),
    ]

    async def all_published():
        changes = await published_workflow_changes(triggers_mesh, names)
        return changes if len(changes) == len(expected) else None

    assert await eventually(all_published) == expected

    async def taken_in():
        spec = event_spec(runner_events.WorkflowRunChanged)
        consumer = await triggers_mesh.events.jetstream.consumer_info(spec.stream, "triggers")
        return consumer.num_pending == consumer.num_ack_pending == 0

    await eventually(taken_in)
    assert len(await deliveries(tenant.client, sub.name)) == 3 and len(receiver.got) == 3
    # Another tenant's subscription hears nothing of them.
    assert await deliveries(other, theirs.name) == []


# ---- inbound webhooks ---------------------------------------------------------------------


def signature(secret: str, webhook_id: str, stamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{webhook_id}.{stamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


async def post_hook(
    mesh: Mesh,
    trigger: t.Trigger,
    body: bytes,
    *,
    webhook_id: str = "msg_1",
    secret: str = "",
    stamp: int | None = None,
    headers: dict[str, str | bytes] | None = None,
) -> httpx2.Response:
    """POSTs to the trigger's URL, signed with `secret` (the trigger's own by default)."""
    stamp = int(time.time()) if stamp is None else stamp
    sent = {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": signature(secret or trigger.secret, webhook_id, stamp, body),
        **(headers or {}),
    }
    async with httpx2.AsyncClient(base_url=mesh.http_url, timeout=20) as http:
        return await http.post(trigger.path, content=body, headers=sent)


async def make_trigger(client: Client, target: str) -> t.Trigger:
    return await client.triggers.CreateTrigger(
        t.CreateTriggerRequest(trigger=t.Trigger(display_name="ci", target=target))
    )


async def test_a_trigger_shows_its_secret_once_and_is_walled(tenant, users):
    agent = await tenant.agent("hooked")
    made = await make_trigger(tenant.client, agent.name)
    assert made.secret.startswith("whsec_") and made.path == f"/hooks/{made.name.split('/')[1]}"
    read = await tenant.client.triggers.GetTrigger(t.GetTriggerRequest(name=made.name))
    assert read.secret == "" and read.path == made.path and read.target == agent.name
    listed = await tenant.client.triggers.ListTriggers(t.ListTriggersRequest())
    assert [(found.name, found.secret) for found in listed.triggers] == [(made.name, "")]
    renamed = await tenant.client.triggers.UpdateTrigger(
        t.UpdateTriggerRequest(
            trigger=t.Trigger(name=made.name, display_name="deploys", etag=made.etag),
            update_mask=mask("display_name"),
        )
    )
    assert renamed.display_name == "deploys" and renamed.secret == ""

    other, _ = await users.new()
    for name in (made.name, "triggers/" + "0" * 32):
        for call in (
            other.triggers.GetTrigger(t.GetTriggerRequest(name=name)),
            other.triggers.DeleteTrigger(t.DeleteTriggerRequest(name=name)),
            other.triggers.UpdateTrigger(
                t.UpdateTriggerRequest(
                    trigger=t.Trigger(name=name, target="agents/x"), update_mask=mask("target")
                )
            ),
        ):
            error = await expect_rpc_error(call, Code.NOT_FOUND)
            assert name in error.details()
    refused = await expect_rpc_error(make_trigger(other, agent.name), Code.INVALID_ARGUMENT)
    assert violations(refused) == {"trigger.target": f"{agent.name} not found"}
    await tenant.client.triggers.DeleteTrigger(t.DeleteTriggerRequest(name=made.name))
    await expect_rpc_error(
        tenant.client.triggers.GetTrigger(t.GetTriggerRequest(name=made.name)), Code.NOT_FOUND
    )


async def test_a_signed_request_starts_a_run_once(tenant, triggers_mesh):
    agent = await tenant.agent("deployer")
    trigger = await make_trigger(tenant.client, agent.name)
    tenant.model.enqueue(Reply(text="deployed"))
    body = json.dumps({"ref": "main", "sha": "abc123"}).encode()
    answer = await post_hook(triggers_mesh, trigger, body, webhook_id="msg_2KWPBgLl")
    assert answer.status_code == 202, answer.text
    name = answer.json()["run"]

    async def ended():
        run = await tenant.client.runner.GetRun(rn.GetRunRequest(name=name))
        return run if run.state in ENDED else None

    run = await eventually(ended)
    assert (run.state, run.agent, run.input) == (State.STATE_SUCCEEDED, agent.name, body.decode())
    assert run.final_output == "deployed"
    # The same request again, as someone who recorded it would send it: refused.
    again = await post_hook(triggers_mesh, trigger, body, webhook_id="msg_2KWPBgLl")
    assert again.status_code == 409
    assert [found.name for found in await tenant.runs(agent.name)] == [name]
    # Deleted (with what it remembers), its URL is no more.
    await tenant.client.triggers.DeleteTrigger(t.DeleteTriggerRequest(name=trigger.name))
    gone = await post_hook(triggers_mesh, trigger, body, webhook_id="msg_other")
    assert gone.status_code == 404


async def test_a_trigger_of_a_workflow_starts_a_workflow_run(tenant, triggers_mesh):
    agent = await tenant.agent("summarizer")
    workflow = await tenant.client.workflows.CreateWorkflow(
        w.CreateWorkflowRequest(
            workflow=w.Workflow(
                display_name="digest",
                steps=[w.WorkflowStep(id="summarize", agent=w.AgentStep(agent=agent.name))],
            )
        )
    )
    trigger = await make_trigger(tenant.client, workflow.name)
    tenant.model.enqueue(Reply(text="summed up"))
    answer = await post_hook(triggers_mesh, trigger, b"a long text")
    assert answer.status_code == 202, answer.text
    name = answer.json()["run"]
    assert name.startswith("workflowRuns/")

    async def ended():
        found = await tenant.client.runner.GetWorkflowRun(rn.GetWorkflowRunRequest(name=name))
        return found if found.state in ENDED else None

    run = await eventually(ended)
    assert (run.state, run.workflow, run.input) == (
        State.STATE_SUCCEEDED,
        workflow.name,
        "a long text",
    )
    assert run.final_output == "summed up"


async def test_unsigned_stale_or_oversized_requests_start_nothing(tenant, triggers_mesh):
    agent = await tenant.agent("guarded")
    trigger, other = await make_trigger(tenant.client, agent.name), None
    other = await make_trigger(tenant.client, agent.name)
    body = b"deploy please"
    now = int(time.time())
    refusals = [
        # Signed with another trigger's secret.
        (401, post_hook(triggers_mesh, trigger, body, secret=other.secret)),
        # A body other than the one signed.
        (
            401,
            post_hook(
                triggers_mesh,
                trigger,
                body,
                headers={
                    "webhook-signature": signature(trigger.secret, "msg_1", now, b"deploy nothing")
                },
            ),
        ),
        # Too old, and too far ahead.
        (401, post_hook(triggers_mesh, trigger, body, stamp=now - 600)),
        (401, post_hook(triggers_mesh, trigger, body, stamp=now + 600)),
        (401, post_hook(triggers_mesh, trigger, body, headers={"webhook-signature": ""})),
        # Digits, to str.isdigit, that int() refuses: superscript two and three (latin-1).
        (401, post_hook(triggers_mesh, trigger, body, headers={"webhook-timestamp": b"\xb2\xb3"})),
        (401, post_hook(triggers_mesh, trigger, body, webhook_id="a b")),
        (
            404,
            post_hook(
                triggers_mesh, t.Trigger(path="/hooks/" + "0" * 32), body, secret=trigger.secret
            ),
        ),
        (413, post_hook(triggers_mesh, trigger, b"x" * (64 * 1024 + 1))),
        (400, post_hook(triggers_mesh, trigger, b"")),
        (400, post_hook(triggers_mesh, trigger, b"\xff\xfe")),
    ]
    for status, request in refusals:
        answer = await request
        assert answer.status_code == status, answer.text
        assert "error" in answer.json()
    assert await tenant.runs(agent.name) == []


async def test_a_request_whose_run_cannot_start_may_be_sent_again(tenant, triggers_mesh):
    agent = await tenant.agent("comes-back")
    trigger = await make_trigger(tenant.client, agent.name)
    await tenant.client.registry.DeleteAgent(r.DeleteAgentRequest(name=agent.name))
    refused = await post_hook(triggers_mesh, trigger, b"hello", webhook_id="retry-me")
    assert refused.status_code == 422 and agent.name in refused.json()["error"]
    await tenant.agent("comes-back")
    tenant.model.enqueue(Reply(text="back"))
    # The sender's retry of that very request now starts the run.
    answer = await post_hook(triggers_mesh, trigger, b"hello", webhook_id="retry-me")
    assert answer.status_code == 202, answer.text


# ---- the CLI -------------------------------------------------------------------------------


async def test_the_cli_makes_lists_pauses_and_deletes(tenant, users, triggers_mesh):
    agent = await tenant.agent("from-cli")
    key = await users.admin.accounts.CreateApiKey(a.CreateApiKeyRequest(parent=tenant.user.name))
    common = ["--target", triggers_mesh.address, "--key", key.secret]

    def cli(*args: str) -> Result:
        return CliRunner().invoke(app, [*args, *common], env={"COLUMNS": "200"})

    async def ok(*args: str) -> str:
        result = await asyncio.to_thread(cli, *args)
        assert result.exit_code == 0, result.output
        return result.output

    made = await ok("schedules", "create", agent.name, "report", "--every", "3600", "--id", "cli")
    assert made.startswith("schedules/cli  every 3600 s  next ")
    assert "schedules/cli" in await ok("schedules", "list")
    assert "paused" in await ok("schedules", "pause", "cli")
    assert "paused" in await ok("schedules", "list")
    assert "resumed; next" in await ok("schedules", "resume", "schedules/cli")
    assert json.loads(await ok("schedules", "get", "cli"))["target"] == agent.name
    bad = await asyncio.to_thread(
        cli, "schedules", "create", agent.name, "x", "--cron", "every day", "--id", "bad"
    )
    assert bad.exit_code == 1 and "INVALID_ARGUMENT" in bad.output
    assert "cron.expression" in bad.output
    await ok("schedules", "delete", "cli")
    assert "schedules/cli" not in await ok("schedules", "list")

    made = await ok("webhooks", "create", "https://hooks.example.com/x", "--event", "run.failed")
    name = made.split()[0]
    assert name.startswith("subscriptions/") and "signing secret (shown once): whsec_" in made
    listed = await ok("webhooks", "list")
    assert name in listed and "run.failed" in listed and "whsec_" not in listed
    assert "DELIVERY" in await ok("webhooks", "deliveries", name)
    await ok("webhooks", "delete", name)

    made = await ok("triggers", "create", agent.name, "--http-url", triggers_mesh.http_url)
    name, path = made.split()[0], made.split()[2]
    assert path == f"{triggers_mesh.http_url}/hooks/{name.removeprefix('triggers/')}"
    assert "whsec_" in made and "whsec_" not in await ok("triggers", "get", name)
    await ok("triggers", "delete", name)
    assert name not in await ok("triggers", "list")
