"""Fires schedules: every replica looks for due ticks, and one, of all, fires each.

A tick is claimed in the database before its run is started (schedules_store),
and started with the request id "schedule:{id}:{tick}", so neither two replicas
nor a retry of one tick start two runs.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from agentmesh.ids import utc_now
from services.triggers.records import DueTick
from services.triggers.schedules_store import ScheduleStore
from services.triggers.targets import StartFailed, Targets
from services.triggers.ticks import Timing, plan

log = logging.getLogger("agentmesh.triggers")

# How long a claimed tick whose run did not start waits before any replica tries
# it again.
RETRY_FIRE = timedelta(seconds=10)
_BATCH = 100


def request_id(schedule_id: str, tick: datetime) -> str:
    return f"schedule:{schedule_id}:{int(tick.timestamp() * 1000)}"


class Scheduler:
    def __init__(self, store: ScheduleStore, targets: Targets, grace: timedelta):
        self._store = store
        self._targets = targets
        self._grace = grace
        self.fired = 0  # ticks this replica claimed and fired (for tests)

    async def fire_due(self) -> int:
        """Claims and fires what is due now; returns how many runs it tried to start.
        Ticks that fall due meanwhile (a replica catching up) wait for the next call."""
        now = utc_now()
        fires: list[tuple[DueTick, datetime]] = []
        for due in await self._store.due_ticks(now, _BATCH):
            if due.fire_tick is not None:
                if await self._store.claim_retry(due, now + RETRY_FIRE):
                    fires.append((due, due.fire_tick))
                continue
            assert due.next_fire_time is not None
            timing = Timing(due.cron, due.time_zone, due.interval_seconds)
            try:
                decided = plan(timing, due.missed_tick_policy, due.next_fire_time, now, self._grace)
            except Exception:  # noqa: BLE001 - one schedule must not hold up the rest
                log.exception("schedules/%s: its next tick cannot be computed", due.id)
                continue
            claimed = await self._store.claim_tick(
                due, decided.fire, decided.next, now + RETRY_FIRE
            )
            if not claimed:
                continue  # another replica's
            if decided.fire is None:
                log.info("schedules/%s missed its ticks up to %s", due.id, due.next_fire_time)
            else:
                fires.append((due, decided.fire))
        await asyncio.gather(*(self._fire(due, tick) for due, tick in fires))
        self.fired += len(fires)
        return len(fires)

    async def _fire(self, due: DueTick, tick: datetime) -> None:
        try:
            run = await self._targets.start(
                due.user_id, due.target, due.input, request_id(due.id, tick)
            )
        except StartFailed as failed:
            if failed.transient:
                log.warning(
                    "schedules/%s could not start its run (%s); tried again",
                    due.id,
                    failed.status.message,
                )
                return  # the claim stays; any replica tries again after RETRY_FIRE
            await self._store.fired(due.seq, tick, "", failed.status.SerializeToString())
            return
        await self._store.fired(due.seq, tick, run, None)
