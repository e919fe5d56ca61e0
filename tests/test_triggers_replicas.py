"""Two triggers replicas and two runner replicas on one Postgres and one NATS: each
schedule tick starts exactly one run, and each run event is delivered exactly once.

Replica A is a whole mesh; replica B serves the runner and the triggers service and
asks A for the registry and providers, as second pods would.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, timedelta

import pytest
from aiohttp import web
from google.protobuf import duration_pb2
from support import Users, database_url, mesh_settings, running_mesh, use_model

from agentmesh.gen.registry.v1 import registry_pb2 as r
from agentmesh.gen.runner.v1 import runner_pb2 as rn
from agentmesh.gen.triggers.v1 import schedules_pb2 as s
from agentmesh.gen.triggers.v1 import webhooks_pb2 as wh
from agentmesh.mesh import Mesh
from agentmesh.model_server import ModelServer
from agentmesh.nats_server import EmbeddedNats
from agentmesh.testing.postgres import TemporaryPostgres
from services import plugins_named

State = rn.Run.State
KEY = "sk-triggers-replicas-" + "k" * 24
TICKS = 4
FAST = {
    "outbound_allow": ["127.0.0.1"],
    "schedule_poll_seconds": 0.1,
    "webhook_poll_seconds": 0.1,
}


@pytest.fixture(scope="module")
async def replicas(tmp_path_factory, postgres: TemporaryPostgres) -> AsyncIterator[list[Mesh]]:
    root = tmp_path_factory.mktemp("triggers-replicas")
    async with EmbeddedNats(root / "nats") as nats:
        shared = {
            **FAST,
            "database_url": database_url("postgres", postgres, root),
            "nats_url": nats.url,
            "service_token": "triggers-replica-test-token",
        }
        async with running_mesh(root / "a", **shared) as mesh_a:
            peers = {"registry": mesh_a.address, "providers": mesh_a.address}
            settings_b = mesh_settings(root / "b", peers=peers, **shared)
            async with Mesh(settings_b, plugins_named("runner", "triggers")) as mesh_b:
                yield [mesh_a, mesh_b]


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[dict]]]:
    """A webhook receiver that takes everything; what it got, in order."""
    received: list[dict] = []

    async def take(request: web.Request) -> web.Response:
        received.append({"id": request.headers["webhook-id"], **json.loads(await request.read())})
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", take)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook", received
    await runner.cleanup()


async def eventually(check, within: float = 20.0):
    async with asyncio.timeout(within):
        while not (result := await check()):  # noqa: ASYNC110 - the state is the server's
            await asyncio.sleep(0.05)
    return result


async def test_each_tick_starts_one_run_and_each_run_is_delivered_once(replicas, receiver):
    url, received = receiver
    users = Users(replicas[0])
    async with ModelServer(api_key=KEY) as model:
        client, _ = await users.new(credits=10_000)
        await use_model(client, model)
        agent = await client.registry.CreateAgent(
            r.CreateAgentRequest(agent=r.Agent(display_name="clock"), agent_id="clock")
        )
        await client.webhooks.CreateSubscription(
            wh.CreateSubscriptionRequest(
                subscription=wh.Subscription(
                    url=url, event_types=[wh.EVENT_TYPE_RUN_SUCCEEDED], agent=agent.name
                )
            )
        )
        interval = duration_pb2.Duration(seconds=1)
        clock = await client.schedules.CreateSchedule(
            s.CreateScheduleRequest(
                schedule=s.Schedule(
                    display_name="clock", target=agent.name, input="tick", interval=interval
                )
            )
        )
        created = clock.create_time.ToDatetime(UTC)

        async def ticked() -> s.Schedule | None:
            found = await client.schedules.GetSchedule(s.GetScheduleRequest(name=clock.name))
            fired = found.last_fire_time.ToDatetime(UTC) if found.last_run else None
            return found if fired and fired >= created + timedelta(seconds=TICKS) else None

        await eventually(ticked)
        await client.schedules.PauseSchedule(s.PauseScheduleRequest(name=clock.name))
        await asyncio.sleep(0.5)  # a tick claimed just before the pause starts its run

        async def settled() -> list[rn.Run] | None:
            found = await client.runner.ListRuns(rn.ListRunsRequest(agent=agent.name))
            done = all(run.state == State.STATE_SUCCEEDED for run in found.runs)
            return list(found.runs) if done and found.runs else None

        runs = await eventually(settled)
        paused = await client.schedules.GetSchedule(s.GetScheduleRequest(name=clock.name))

        # The ticks were create + 1 s, + 2 s, ... up to the last one fired: one run each,
        # and one claim each, whichever replica made it.
        last = paused.last_fire_time.ToDatetime(UTC)
        ticks = round((last - created).total_seconds())
        assert ticks >= TICKS
        assert len(runs) == ticks, [run.create_time.ToDatetime(UTC) for run in runs]
        schedulers = [mesh.services["triggers"].scheduler for mesh in replicas]  # type: ignore[attr-defined]
        assert sum(scheduler.fired for scheduler in schedulers) == ticks

        # Each run's success reached the receiver once, through one replica or the other.
        await eventually(lambda: _at_least(received, len(runs)))
        await asyncio.sleep(0.3)  # a duplicate would arrive by now
        assert sorted(body["data"]["run"] for body in received) == sorted(r.name for r in runs)
        assert len({body["id"] for body in received}) == len(received)
    await users.close()


async def _at_least(received: list, count: int) -> bool:
    return len(received) >= count
