"""Schedules, and the claims by which one replica, of all, fires each tick.

A tick is claimed by a conditional UPDATE on the next_fire_time the replica
read: the first to commit moves it on (and records the tick it claimed in
fire_tick), every other replica's UPDATE then matches no row. The claimer
starts the run and clears fire_tick; a claim whose run did not start (the
replica died, the runner was away) is tried again after fire_retry_time, by
any replica, with the same request id: the runner returns the first run.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, false, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from agentmesh.db import Page, fetch_page
from agentmesh.errors import Aborted, AlreadyExists, NotFound
from agentmesh.ids import new_id
from services.triggers.records import DueTick, Schedule
from services.triggers.tables import ScheduleRow

# What a client's changes (CreateSchedule, UpdateSchedule) write.
_DEFINITION = (
    "display_name",
    "target",
    "input",
    "cron",
    "time_zone",
    "interval_seconds",
    "missed_tick_policy",
)


def _name(schedule_id: str) -> str:
    return f"schedules/{schedule_id}"


def _schedule(row) -> Schedule:
    return Schedule(
        id=row.id,
        user_id=row.user_id,
        display_name=row.display_name,
        target=row.target,
        input=row.input,
        cron=row.cron,
        time_zone=row.time_zone,
        interval_seconds=row.interval_seconds,
        missed_tick_policy=row.missed_tick_policy,
        paused=row.paused,
        next_fire_time=row.next_fire_time,
        last_fire_time=row.last_fire_time,
        last_run=row.last_run,
        last_error=row.last_error,
        etag=row.etag,
        create_time=row.create_time,
        update_time=row.update_time,
    )


def _due(row) -> DueTick:
    return DueTick(
        seq=row.seq,
        id=row.id,
        user_id=row.user_id,
        target=row.target,
        input=row.input,
        cron=row.cron,
        time_zone=row.time_zone,
        interval_seconds=row.interval_seconds,
        missed_tick_policy=row.missed_tick_policy,
        next_fire_time=row.next_fire_time,
        fire_tick=row.fire_tick,
        fire_retry_time=row.fire_retry_time,
    )


def _mine(user_id: str, schedule_id: str) -> tuple:
    return ScheduleRow.user_id == user_id, ScheduleRow.id == schedule_id


class ScheduleStore:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    async def create_schedule(self, schedule: Schedule) -> None:
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    insert(ScheduleRow).values(
                        user_id=schedule.user_id,
                        id=schedule.id,
                        **{field: getattr(schedule, field) for field in _DEFINITION},
                        paused=schedule.paused,
                        next_fire_time=schedule.next_fire_time,
                        last_run="",
                        etag=schedule.etag,
                        create_time=schedule.create_time,
                        update_time=schedule.update_time,
                    )
                )
        except IntegrityError:
            raise AlreadyExists(f"{_name(schedule.id)} exists already") from None

    async def get_schedule(self, user_id: str, schedule_id: str) -> Schedule:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(ScheduleRow).where(*_mine(user_id, schedule_id)))
            ).first()
        if row is None:
            raise NotFound(_name(schedule_id))
        return _schedule(row)

    async def list_schedules(self, user_id: str, after_seq: int, limit: int) -> Page:
        async with self.engine.connect() as conn:
            rows, last_seq = await fetch_page(
                conn,
                select(ScheduleRow).where(ScheduleRow.user_id == user_id),
                ScheduleRow.seq,
                after_seq,
                limit,
            )
        return Page([_schedule(row) for row in rows], last_seq)

    async def replace_schedule(self, read: Schedule, changed: Schedule) -> bool:
        """Writes `changed` over the schedule as it was `read`; False if it changed
        meanwhile (its etag moved on), and nothing is written."""
        values = {field: getattr(changed, field) for field in _DEFINITION}
        if changed.next_fire_time != read.next_fire_time:
            # A new timing counts from now (a tick of the old one already claimed
            # still starts its run).
            values["next_fire_time"] = changed.next_fire_time
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(ScheduleRow)
                .where(*_mine(read.user_id, read.id), ScheduleRow.etag == read.etag)
                .values(**values, etag=changed.etag, update_time=changed.update_time)
            )
        return result.rowcount == 1

    async def set_paused(
        self,
        user_id: str,
        schedule_id: str,
        paused: bool,
        next_fire_time: datetime | None,
        now: datetime,
    ) -> Schedule:
        """Pauses (next_fire_time None) or resumes the schedule; one already so is
        left as it is. A tick claimed before the pause still starts its run, unless
        it is still waiting for another try when the schedule resumes."""
        values = {"paused": paused, "next_fire_time": next_fire_time}
        if not paused:
            values.update(fire_tick=None, fire_retry_time=None)
        async with self.engine.begin() as conn:
            await conn.execute(
                update(ScheduleRow)
                .where(*_mine(user_id, schedule_id), ScheduleRow.paused != paused)
                .values(**values, etag=new_id(), update_time=now)
            )
            row = (
                await conn.execute(select(ScheduleRow).where(*_mine(user_id, schedule_id)))
            ).first()
        if row is None:
            raise NotFound(_name(schedule_id))
        return _schedule(row)

    async def delete_schedule(self, user_id: str, schedule_id: str, etag: str) -> None:
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(select(ScheduleRow.etag).where(*_mine(user_id, schedule_id)))
            ).first()
            if row is None:
                raise NotFound(_name(schedule_id))
            if etag and etag != row.etag:
                raise Aborted.stale(_name(schedule_id))
            await conn.execute(delete(ScheduleRow).where(*_mine(user_id, schedule_id)))

    # ---- firing -----------------------------------------------------------------

    async def due_ticks(self, now: datetime, limit: int) -> list[DueTick]:
        """Schedules with a tick due and unclaimed, oldest first, then claimed ticks
        whose run is due another try."""
        async with self.engine.connect() as conn:
            due = await conn.execute(
                select(ScheduleRow)
                .where(
                    ScheduleRow.paused == false(),
                    ScheduleRow.fire_tick.is_(None),
                    ScheduleRow.next_fire_time <= now,
                )
                .order_by(ScheduleRow.next_fire_time)
                .limit(limit)
            )
            retries = await conn.execute(
                select(ScheduleRow)
                .where(
                    ScheduleRow.paused == false(),
                    ScheduleRow.fire_tick.is_not(None),
                    ScheduleRow.fire_retry_time <= now,
                )
                .limit(limit)
            )
            return [_due(row) for row in [*due, *retries]]

    async def claim_tick(
        self, due: DueTick, fire: datetime | None, next_fire_time: datetime, retry: datetime
    ) -> bool:
        """Moves the schedule on from the tick read to `next_fire_time`, claiming
        `fire` (None: the tick was missed and starts nothing) for this replica;
        False if another replica did first."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(ScheduleRow)
                .where(
                    ScheduleRow.seq == due.seq,
                    ScheduleRow.paused == false(),
                    ScheduleRow.fire_tick.is_(None),
                    ScheduleRow.next_fire_time == due.next_fire_time,
                )
                .values(
                    next_fire_time=next_fire_time,
                    fire_tick=fire,
                    fire_retry_time=retry if fire is not None else None,
                )
            )
        return result.rowcount == 1

    async def claim_retry(self, due: DueTick, retry: datetime) -> bool:
        """Takes over a claimed tick whose run is not known to have started."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(ScheduleRow)
                .where(
                    ScheduleRow.seq == due.seq,
                    ScheduleRow.fire_tick == due.fire_tick,
                    ScheduleRow.fire_retry_time == due.fire_retry_time,
                )
                .values(fire_retry_time=retry)
            )
        return result.rowcount == 1

    async def fired(self, seq: int, tick: datetime, run: str, error: bytes | None) -> None:
        """Records what the claimed tick did: the run it started, or why none."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(ScheduleRow)
                .where(ScheduleRow.seq == seq, ScheduleRow.fire_tick == tick)
                .values(
                    fire_tick=None,
                    fire_retry_time=None,
                    last_fire_time=tick,
                    last_run=run,
                    last_error=error,
                )
            )
