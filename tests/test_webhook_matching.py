"""Which subscriptions a batch of run events makes deliveries for: many users' events
in one batch, each matched to its own user's subscriptions only, none twice."""

from __future__ import annotations

from agentmesh.db import create_engine
from agentmesh.ids import utc_now
from services.triggers.records import Event, Subscription
from services.triggers.tables import Base
from services.triggers.webhooks_store import WebhookStore


def subscription(user: str, sid: str, types: list[str], agent: str = "") -> Subscription:
    now = utc_now()
    return Subscription(
        sid, user, sid, "https://example.com/hook", types, agent, b"", "e", now, now
    )


def event(eid: str, user: str, agent: str, kind: str) -> Event:
    return Event(eid, user, agent, kind, f"runs/{eid}", "{}")


async def test_a_batch_across_users_makes_each_users_deliveries_once(tmp_path):
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/triggers.db")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    store = WebhookStore(engine)
    try:
        await store.create_subscription(subscription("u1", "all", ["run.succeeded", "run.failed"]))
        await store.create_subscription(subscription("u1", "only-a", ["run.succeeded"], "a"))
        await store.create_subscription(subscription("u2", "fails", ["run.failed"]))
        batch = [
            event("e1", "u1", "a", "run.succeeded"),  # all, only-a
            event("e2", "u2", "a", "run.succeeded"),  # u2 wants failures only
            event("e3", "u1", "b", "run.succeeded"),  # all
            event("e4", "u2", "b", "run.failed"),  # fails
            event("e5", "u3", "a", "run.failed"),  # u3 subscribes to nothing
        ]
        assert await store.record_deliveries(batch) == 4
        made = {
            sid: [d.run for d in (await store.list_deliveries(user, sid, 0, 10)).items]
            for user, sid in (("u1", "all"), ("u1", "only-a"), ("u2", "fails"))
        }
        assert made == {
            "all": ["runs/e3", "runs/e1"],  # newest first
            "only-a": ["runs/e1"],
            "fails": ["runs/e4"],
        }
        # The same events again (JetStream redelivers what was not acknowledged).
        assert await store.record_deliveries(batch) == 0
        assert await store.record_deliveries([event("e5", "u3", "a", "run.failed")]) == 0
    finally:
        await engine.dispose()
