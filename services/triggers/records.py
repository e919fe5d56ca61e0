"""What the triggers service's stores take and return: plain records, never protos."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

# Missed-tick policies and delivery states, as the store keeps them.
SKIP, CATCH_UP_ONCE = "skip", "catch_up_once"
PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"


@dataclass
class Schedule:
    id: str
    user_id: str
    display_name: str
    target: str  # agents/{agent} or workflows/{workflow}
    input: str
    # Either a cron expression (in time_zone, empty meaning UTC) or an interval.
    cron: str
    time_zone: str
    interval_seconds: float
    missed_tick_policy: str
    paused: bool
    next_fire_time: datetime | None
    last_fire_time: datetime | None
    last_run: str
    # A google.rpc.Status, serialized, when the last tick started no run.
    last_error: bytes | None
    etag: str
    create_time: datetime
    update_time: datetime


@dataclass(frozen=True)
class DueTick:
    """A schedule whose tick is due (or whose claimed tick has yet to start its run)."""

    seq: int
    id: str
    user_id: str
    target: str
    input: str
    cron: str
    time_zone: str
    interval_seconds: float
    missed_tick_policy: str
    next_fire_time: datetime | None
    # Set when a replica claimed this tick but its run is not known to have started.
    fire_tick: datetime | None
    fire_retry_time: datetime | None


@dataclass
class Subscription:
    id: str
    user_id: str
    display_name: str
    url: str
    event_types: list[str]  # "run.succeeded", ...
    agent_id: str  # "": every agent
    sealed_secret: bytes
    etag: str
    create_time: datetime
    update_time: datetime


@dataclass
class Delivery:
    id: str
    subscription_id: str
    event_type: str
    run: str
    payload: str
    state: str
    attempts: int
    last_status_code: int
    last_error: str
    last_attempt_time: datetime | None
    next_attempt_time: datetime | None
    create_time: datetime


@dataclass(frozen=True)
class Event:
    """Something that happened to a user's run, as subscriptions are matched to it."""

    id: str  # unique per event: a redelivered event makes no second delivery
    user_id: str
    agent_id: str
    type: str  # "run.succeeded", ...
    run: str
    payload: str  # the JSON body every subscription gets


@dataclass(frozen=True)
class Attempt:
    """A delivery one replica claimed: what to send, where, signed with what."""

    id: str
    user_id: str
    subscription_id: str
    url: str
    payload: str
    sealed_secret: bytes
    attempts: int  # made before this one
    claim: datetime  # the claim's lease: only its holder records the outcome


@dataclass
class Trigger:
    id: str
    user_id: str
    display_name: str
    target: str
    sealed_secret: bytes
    etag: str
    create_time: datetime
    update_time: datetime
