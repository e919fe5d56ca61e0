"""gRPC servicers of the triggers service: protos in, checks and store calls, protos out.

Targets (agents/..., workflows/...) and agent filters are checked on save by
asking the registry as the caller, so another user's agent is refused exactly
like a missing one. Updates follow AIP-134 (merge_update) and are written only
over the resource as it was read (its etag), tried again if it changed meanwhile.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf import empty_pb2
from google.rpc import status_pb2

from agentmesh.api import check_update, merge_update, timestamp
from agentmesh.auth import current_user
from agentmesh.errors import Aborted, InvalidArgument
from agentmesh.gen.triggers.v1 import (
    schedules_pb2,
    schedules_pb2_grpc,
    triggers_pb2,
    triggers_pb2_grpc,
    webhooks_pb2,
    webhooks_pb2_grpc,
)
from agentmesh.ids import new_id, utc_now
from agentmesh.names import ResourceName
from agentmesh.outbound import BlockedDestination, check_url_literal
from agentmesh.paging import Pages
from services.triggers import records
from services.triggers.deliver import subscription_owner
from services.triggers.hooks import trigger_owner
from services.triggers.signatures import Sealer, new_secret
from services.triggers.store import TriggersStore
from services.triggers.targets import Targets
from services.triggers.ticks import BadTiming, Timing

SCHEDULE = ResourceName.of(schedules_pb2.Schedule)
SUBSCRIPTION = ResourceName.of(webhooks_pb2.Subscription)
DELIVERY = ResourceName.of(webhooks_pb2.Delivery)
TRIGGER = ResourceName.of(triggers_pb2.Trigger)
# How often an update is tried again when the resource changed under it.
_UPDATE_TRIES = 3

Policy = schedules_pb2.Schedule.MissedTickPolicy
_POLICIES = {
    Policy.MISSED_TICK_POLICY_UNSPECIFIED: records.SKIP,
    Policy.MISSED_TICK_POLICY_SKIP: records.SKIP,
    Policy.MISSED_TICK_POLICY_CATCH_UP_ONCE: records.CATCH_UP_ONCE,
}
_POLICY_PROTOS = {
    records.SKIP: Policy.MISSED_TICK_POLICY_SKIP,
    records.CATCH_UP_ONCE: Policy.MISSED_TICK_POLICY_CATCH_UP_ONCE,
}
_EVENT_TYPES = {
    webhooks_pb2.EVENT_TYPE_RUN_SUCCEEDED: "run.succeeded",
    webhooks_pb2.EVENT_TYPE_RUN_FAILED: "run.failed",
    webhooks_pb2.EVENT_TYPE_RUN_AWAITING_APPROVAL: "run.awaiting_approval",
    webhooks_pb2.EVENT_TYPE_WORKFLOW_SUCCEEDED: "workflow.succeeded",
    webhooks_pb2.EVENT_TYPE_WORKFLOW_FAILED: "workflow.failed",
    webhooks_pb2.EVENT_TYPE_WORKFLOW_AWAITING_APPROVAL: "workflow.awaiting_approval",
}
_EVENT_TYPE_PROTOS = {name: number for number, name in _EVENT_TYPES.items()}
# Events of workflow runs, which name no agent to filter by.
_WORKFLOW_EVENTS = {
    webhooks_pb2.EVENT_TYPE_WORKFLOW_SUCCEEDED,
    webhooks_pb2.EVENT_TYPE_WORKFLOW_FAILED,
    webhooks_pb2.EVENT_TYPE_WORKFLOW_AWAITING_APPROVAL,
}
_DELIVERY_STATES = {
    records.PENDING: webhooks_pb2.Delivery.STATE_PENDING,
    records.DELIVERED: webhooks_pb2.Delivery.STATE_DELIVERED,
    records.DEAD: webhooks_pb2.Delivery.STATE_DEAD,
}


# ---- schedules ------------------------------------------------------------------------


def _timing(schedule: schedules_pb2.Schedule) -> Timing:
    """The schedule's timing, checked; INVALID_ARGUMENT naming the field at fault."""
    if schedule.HasField("cron"):
        timing = Timing(cron=schedule.cron.expression, time_zone=schedule.cron.time_zone)
    else:
        timing = Timing(interval_seconds=schedule.interval.ToTimedelta().total_seconds())
    try:
        timing.check()
    except BadTiming as bad:
        raise InvalidArgument([(f"schedule.cron.{bad.field}", str(bad))]) from None
    return timing


def _schedule_proto(schedule: records.Schedule) -> schedules_pb2.Schedule:
    message = schedules_pb2.Schedule(
        name=SCHEDULE.format(schedule.id),
        display_name=schedule.display_name,
        target=schedule.target,
        input=schedule.input,
        missed_tick_policy=_POLICY_PROTOS[schedule.missed_tick_policy],
        paused=schedule.paused,
        last_run=schedule.last_run,
        etag=schedule.etag,
        create_time=timestamp(schedule.create_time),
        update_time=timestamp(schedule.update_time),
    )
    if schedule.cron:
        message.cron.expression = schedule.cron
        message.cron.time_zone = schedule.time_zone
    else:
        message.interval.FromTimedelta(timedelta(seconds=schedule.interval_seconds))
    if schedule.next_fire_time:
        message.next_fire_time.CopyFrom(timestamp(schedule.next_fire_time))
    if schedule.last_fire_time:
        message.last_fire_time.CopyFrom(timestamp(schedule.last_fire_time))
    if schedule.last_error:
        message.last_error.CopyFrom(status_pb2.Status.FromString(schedule.last_error))
    return message


def _definition(message: schedules_pb2.Schedule) -> dict[str, Any]:
    """What a client sets of a schedule, checked, as the record's fields."""
    timing = _timing(message)
    return {
        "display_name": message.display_name,
        "target": message.target,
        "input": message.input,
        "cron": timing.cron,
        "time_zone": timing.time_zone,
        "interval_seconds": timing.interval_seconds,
        "missed_tick_policy": _POLICIES[message.missed_tick_policy],
    }


class ScheduleServicer(schedules_pb2_grpc.ScheduleServiceServicer):
    def __init__(self, store: TriggersStore, targets: Targets, pages: Pages):
        self._schedules = store.schedules
        self._targets = targets
        self._pages = pages

    async def CreateSchedule(
        self, request: schedules_pb2.CreateScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedules_pb2.Schedule:
        user = current_user()
        definition = _definition(request.schedule)
        await self._targets.check(request.schedule.target, "schedule.target")
        now = utc_now()
        timing = Timing(definition["cron"], definition["time_zone"], definition["interval_seconds"])
        schedule = records.Schedule(
            id=request.schedule_id or new_id(),
            user_id=user.user_id,
            **definition,
            paused=False,
            next_fire_time=timing.first(now),
            last_fire_time=None,
            last_run="",
            last_error=None,
            etag=new_id(),
            create_time=now,
            update_time=now,
        )
        await self._schedules.create_schedule(schedule)
        return _schedule_proto(schedule)

    async def GetSchedule(
        self, request: schedules_pb2.GetScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedules_pb2.Schedule:
        found = await self._schedules.get_schedule(
            current_user().user_id, SCHEDULE.id(request.name)
        )
        return _schedule_proto(found)

    async def ListSchedules(
        self, request: schedules_pb2.ListSchedulesRequest, context: grpc.aio.ServicerContext
    ) -> schedules_pb2.ListSchedulesResponse:
        cursor = self._pages.open(request)
        page = await self._schedules.list_schedules(
            current_user().user_id, cursor.after, cursor.size
        )
        return schedules_pb2.ListSchedulesResponse(
            schedules=[_schedule_proto(schedule) for schedule in page.items],
            next_page_token=cursor.next_token(page.last_seq),
        )

    async def UpdateSchedule(
        self, request: schedules_pb2.UpdateScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedules_pb2.Schedule:
        user = current_user()
        (schedule_id,) = check_update("schedule", request.schedule, request.update_mask, SCHEDULE)
        for _ in range(_UPDATE_TRIES):
            current = await self._schedules.get_schedule(user.user_id, schedule_id)
            merged = merge_update(
                "schedule", _schedule_proto(current), request.schedule, request.update_mask
            )
            definition = _definition(merged)
            if merged.target != current.target:
                await self._targets.check(merged.target, "schedule.target")
            now = utc_now()
            changed = dataclasses.replace(current, **definition, etag=new_id(), update_time=now)
            timing = Timing(changed.cron, changed.time_zone, changed.interval_seconds)
            if timing != Timing(current.cron, current.time_zone, current.interval_seconds):
                # A new timing counts from now (a paused schedule counts on resuming).
                changed.next_fire_time = None if current.paused else timing.first(now)
            if await self._schedules.replace_schedule(current, changed):
                return _schedule_proto(changed)
        raise Aborted.stale(SCHEDULE.format(schedule_id))

    async def DeleteSchedule(
        self, request: schedules_pb2.DeleteScheduleRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await self._schedules.delete_schedule(
            current_user().user_id, SCHEDULE.id(request.name), request.etag
        )
        return empty_pb2.Empty()

    async def PauseSchedule(
        self, request: schedules_pb2.PauseScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedules_pb2.Schedule:
        paused = await self._schedules.set_paused(
            current_user().user_id, SCHEDULE.id(request.name), True, None, utc_now()
        )
        return _schedule_proto(paused)

    async def ResumeSchedule(
        self, request: schedules_pb2.ResumeScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedules_pb2.Schedule:
        user_id, schedule_id = current_user().user_id, SCHEDULE.id(request.name)
        current = await self._schedules.get_schedule(user_id, schedule_id)
        now = utc_now()
        timing = Timing(current.cron, current.time_zone, current.interval_seconds)
        resumed = await self._schedules.set_paused(
            user_id, schedule_id, False, timing.first(now), now
        )
        return _schedule_proto(resumed)


# ---- outbound webhooks ----------------------------------------------------------------


def _subscription_proto(
    subscription: records.Subscription, secret: str = ""
) -> webhooks_pb2.Subscription:
    return webhooks_pb2.Subscription(
        name=SUBSCRIPTION.format(subscription.id),
        display_name=subscription.display_name,
        url=subscription.url,
        event_types=[_EVENT_TYPE_PROTOS[name] for name in subscription.event_types],
        agent=f"agents/{subscription.agent_id}" if subscription.agent_id else "",
        secret=secret,
        etag=subscription.etag,
        create_time=timestamp(subscription.create_time),
        update_time=timestamp(subscription.update_time),
    )


def _delivery_proto(delivery: records.Delivery) -> webhooks_pb2.Delivery:
    message = webhooks_pb2.Delivery(
        name=DELIVERY.format(delivery.subscription_id, delivery.id),
        event_type=_EVENT_TYPE_PROTOS[delivery.event_type],
        run=delivery.run,
        payload=delivery.payload,
        state=_DELIVERY_STATES[delivery.state],
        attempt_count=delivery.attempts,
        last_status_code=delivery.last_status_code,
        last_error=delivery.last_error,
        create_time=timestamp(delivery.create_time),
    )
    if delivery.last_attempt_time:
        message.last_attempt_time.CopyFrom(timestamp(delivery.last_attempt_time))
    if delivery.next_attempt_time and delivery.state == records.PENDING:
        message.next_attempt_time.CopyFrom(timestamp(delivery.next_attempt_time))
    return message


class WebhookServicer(webhooks_pb2_grpc.WebhookServiceServicer):
    def __init__(
        self,
        store: TriggersStore,
        targets: Targets,
        sealer: Sealer,
        pages: Pages,
        outbound_allow: Sequence[str],
    ):
        self._webhooks = store.webhooks
        self._targets = targets
        self._sealer = sealer
        self._pages = pages
        self._outbound_allow = list(outbound_allow)

    async def _check(self, subscription: webhooks_pb2.Subscription, agent_changed: bool) -> None:
        violations = []
        try:
            check_url_literal(subscription.url, self._outbound_allow)
        except BlockedDestination as blocked:
            violations.append(("subscription.url", str(blocked)))
        for index, event_type in enumerate(subscription.event_types):
            if subscription.agent and event_type in _WORKFLOW_EVENTS:
                violations.append(
                    (
                        f"subscription.event_types[{index}]",
                        "a workflow run has no agent to filter by: subscribe to workflow "
                        "events without `agent`",
                    )
                )
        if violations:
            raise InvalidArgument(violations)
        if subscription.agent and agent_changed:
            await self._targets.check(subscription.agent, "subscription.agent")

    async def CreateSubscription(
        self, request: webhooks_pb2.CreateSubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> webhooks_pb2.Subscription:
        user = current_user()
        await self._check(request.subscription, agent_changed=True)
        now = utc_now()
        subscription_id, secret = new_id(), new_secret()
        subscription = records.Subscription(
            id=subscription_id,
            user_id=user.user_id,
            display_name=request.subscription.display_name,
            url=request.subscription.url,
            event_types=[_EVENT_TYPES[number] for number in request.subscription.event_types],
            agent_id=request.subscription.agent.removeprefix("agents/"),
            sealed_secret=self._sealer.seal(
                secret, subscription_owner(user.user_id, subscription_id)
            ),
            etag=new_id(),
            create_time=now,
            update_time=now,
        )
        await self._webhooks.create_subscription(subscription)
        return _subscription_proto(subscription, secret)

    async def GetSubscription(
        self, request: webhooks_pb2.GetSubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> webhooks_pb2.Subscription:
        found = await self._webhooks.get_subscription(
            current_user().user_id, SUBSCRIPTION.id(request.name)
        )
        return _subscription_proto(found)

    async def ListSubscriptions(
        self, request: webhooks_pb2.ListSubscriptionsRequest, context: grpc.aio.ServicerContext
    ) -> webhooks_pb2.ListSubscriptionsResponse:
        cursor = self._pages.open(request)
        page = await self._webhooks.list_subscriptions(
            current_user().user_id, cursor.after, cursor.size
        )
        return webhooks_pb2.ListSubscriptionsResponse(
            subscriptions=[_subscription_proto(found) for found in page.items],
            next_page_token=cursor.next_token(page.last_seq),
        )

    async def UpdateSubscription(
        self, request: webhooks_pb2.UpdateSubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> webhooks_pb2.Subscription:
        user = current_user()
        (subscription_id,) = check_update(
            "subscription", request.subscription, request.update_mask, SUBSCRIPTION
        )
        for _ in range(_UPDATE_TRIES):
            current = await self._webhooks.get_subscription(user.user_id, subscription_id)
            read = _subscription_proto(current)
            merged = merge_update("subscription", read, request.subscription, request.update_mask)
            await self._check(merged, agent_changed=merged.agent != read.agent)
            changed = records.Subscription(**vars(current))
            changed.display_name, changed.url = merged.display_name, merged.url
            changed.event_types = [_EVENT_TYPES[number] for number in merged.event_types]
            changed.agent_id = merged.agent.removeprefix("agents/")
            changed.etag, changed.update_time = new_id(), utc_now()
            if await self._webhooks.replace_subscription(current, changed):
                return _subscription_proto(changed)
        raise Aborted.stale(SUBSCRIPTION.format(subscription_id))

    async def DeleteSubscription(
        self, request: webhooks_pb2.DeleteSubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await self._webhooks.delete_subscription(
            current_user().user_id, SUBSCRIPTION.id(request.name), request.etag
        )
        return empty_pb2.Empty()

    async def GetDelivery(
        self, request: webhooks_pb2.GetDeliveryRequest, context: grpc.aio.ServicerContext
    ) -> webhooks_pb2.Delivery:
        subscription_id, delivery_id = DELIVERY.parse(request.name)
        found = await self._webhooks.get_delivery(
            current_user().user_id, subscription_id, delivery_id
        )
        return _delivery_proto(found)

    async def ListDeliveries(
        self, request: webhooks_pb2.ListDeliveriesRequest, context: grpc.aio.ServicerContext
    ) -> webhooks_pb2.ListDeliveriesResponse:
        cursor = self._pages.open(request)
        page = await self._webhooks.list_deliveries(
            current_user().user_id, SUBSCRIPTION.id(request.parent), cursor.after, cursor.size
        )
        return webhooks_pb2.ListDeliveriesResponse(
            deliveries=[_delivery_proto(found) for found in page.items],
            next_page_token=cursor.next_token(page.last_seq),
        )


# ---- inbound webhooks -----------------------------------------------------------------


def _trigger_proto(trigger: records.Trigger, secret: str = "") -> triggers_pb2.Trigger:
    return triggers_pb2.Trigger(
        name=TRIGGER.format(trigger.id),
        display_name=trigger.display_name,
        target=trigger.target,
        secret=secret,
        path=f"/hooks/{trigger.id}",
        etag=trigger.etag,
        create_time=timestamp(trigger.create_time),
        update_time=timestamp(trigger.update_time),
    )


class TriggerServicer(triggers_pb2_grpc.TriggerServiceServicer):
    def __init__(self, store: TriggersStore, targets: Targets, sealer: Sealer, pages: Pages):
        self._triggers = store.triggers
        self._targets = targets
        self._sealer = sealer
        self._pages = pages

    async def CreateTrigger(
        self, request: triggers_pb2.CreateTriggerRequest, context: grpc.aio.ServicerContext
    ) -> triggers_pb2.Trigger:
        user = current_user()
        await self._targets.check(request.trigger.target, "trigger.target")
        now = utc_now()
        trigger_id, secret = new_id(), new_secret()
        trigger = records.Trigger(
            id=trigger_id,
            user_id=user.user_id,
            display_name=request.trigger.display_name,
            target=request.trigger.target,
            sealed_secret=self._sealer.seal(secret, trigger_owner(user.user_id, trigger_id)),
            etag=new_id(),
            create_time=now,
            update_time=now,
        )
        await self._triggers.create_trigger(trigger)
        return _trigger_proto(trigger, secret)

    async def GetTrigger(
        self, request: triggers_pb2.GetTriggerRequest, context: grpc.aio.ServicerContext
    ) -> triggers_pb2.Trigger:
        found = await self._triggers.get_trigger(current_user().user_id, TRIGGER.id(request.name))
        return _trigger_proto(found)

    async def ListTriggers(
        self, request: triggers_pb2.ListTriggersRequest, context: grpc.aio.ServicerContext
    ) -> triggers_pb2.ListTriggersResponse:
        cursor = self._pages.open(request)
        page = await self._triggers.list_triggers(current_user().user_id, cursor.after, cursor.size)
        return triggers_pb2.ListTriggersResponse(
            triggers=[_trigger_proto(found) for found in page.items],
            next_page_token=cursor.next_token(page.last_seq),
        )

    async def UpdateTrigger(
        self, request: triggers_pb2.UpdateTriggerRequest, context: grpc.aio.ServicerContext
    ) -> triggers_pb2.Trigger:
        user = current_user()
        (trigger_id,) = check_update("trigger", request.trigger, request.update_mask, TRIGGER)
        for _ in range(_UPDATE_TRIES):
            current = await self._triggers.get_trigger(user.user_id, trigger_id)
            merged = merge_update(
                "trigger", _trigger_proto(current), request.trigger, request.update_mask
            )
            if merged.target != current.target:
                await self._targets.check(merged.target, "trigger.target")
            changed = records.Trigger(**vars(current))
            changed.display_name, changed.target = merged.display_name, merged.target
            changed.etag, changed.update_time = new_id(), utc_now()
            if await self._triggers.replace_trigger(current, changed):
                return _trigger_proto(changed)
        raise Aborted.stale(TRIGGER.format(trigger_id))

    async def DeleteTrigger(
        self, request: triggers_pb2.DeleteTriggerRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await self._triggers.delete_trigger(
            current_user().user_id, TRIGGER.id(request.name), request.etag
        )
        return empty_pb2.Empty()
