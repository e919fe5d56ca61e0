"""When a schedule's ticks fall, and what a replica does with a due one.

A schedule ticks on a cron expression (croniter, in an IANA time zone from
zoneinfo, daylight saving time included) or every interval. Times in and out
are UTC; cron is evaluated on the zone's clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

from services.triggers.records import CATCH_UP_ONCE


class BadTiming(ValueError):
    """A cron expression or time zone no schedule can tick on; says which and why."""

    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field = field  # "expression" or "time_zone"


def zone(name: str) -> ZoneInfo:
    """The IANA zone of that name (empty: UTC); BadTiming for one not known."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise BadTiming("time_zone", "not an IANA time zone, e.g. Europe/Berlin") from None


@dataclass(frozen=True)
class Timing:
    cron: str = ""
    time_zone: str = ""
    interval_seconds: float = 0.0

    def check(self) -> None:
        """Raises BadTiming unless the expression is five cron fields (or a macro
        such as @daily), the zone is known, and the expression ever fires."""
        if not self.cron:
            return
        fields = self.cron.split()
        if not (len(fields) == 5 or (len(fields) == 1 and fields[0].startswith("@"))):
            raise BadTiming("expression", "must be five fields: minute hour day month weekday")
        if not croniter.is_valid(self.cron):
            raise BadTiming("expression", "not a valid cron expression")
        zone(self.time_zone)
        try:
            self.after(datetime.now(UTC))
        except CroniterBadDateError:
            raise BadTiming("expression", "never fires (no such date)") from None

    def first(self, now: datetime) -> datetime:
        """The first tick of a schedule made, resumed or re-timed at `now`."""
        if self.cron:
            return self.after(now)
        return now + timedelta(seconds=self.interval_seconds)

    def after(self, tick: datetime) -> datetime:
        """The tick after `tick` (strictly later)."""
        if not self.cron:
            return tick + timedelta(seconds=self.interval_seconds)
        local = tick.astimezone(zone(self.time_zone))
        return croniter(self.cron, local).get_next(datetime).astimezone(UTC)

    def latest(self, due: datetime, now: datetime) -> datetime:
        """The last tick at or before `now`, on the ticks that run through `due`."""
        if not self.cron:
            ticks = math.floor((now - due).total_seconds() / self.interval_seconds)
            return due + timedelta(seconds=ticks * self.interval_seconds)
        following = self.after(now)
        local = following.astimezone(zone(self.time_zone))
        return max(due, croniter(self.cron, local).get_prev(datetime).astimezone(UTC))


@dataclass(frozen=True)
class Plan:
    """What to do with a due tick: which tick starts a run (None: none), and the
    tick to consider next."""

    fire: datetime | None
    next: datetime


def plan(timing: Timing, policy: str, due: datetime, now: datetime, grace: timedelta) -> Plan:
    """A tick at most `grace` late fires, and the schedule moves on by one tick (a
    replica that fell behind catches up tick by tick). An older one was missed,
    like every tick since: the newest of them fires if it is itself within grace,
    or if the policy is CATCH_UP_ONCE; otherwise none does. Either way the
    schedule then goes on at its next tick after now."""
    if now - due <= grace:
        return Plan(due, timing.after(due))
    latest = timing.latest(due, now)
    fires = now - latest <= grace or policy == CATCH_UP_ONCE
    return Plan(latest if fires else None, timing.after(latest))
