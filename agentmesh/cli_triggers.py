"""`agentmesh schedules`, `agentmesh webhooks`, `agentmesh triggers`: what starts runs
by itself, and what is told when they end.

agentmesh schedules create TARGET INPUT (--every SECONDS | --cron EXPR [--time-zone TZ])
agentmesh schedules list | get NAME | pause NAME | resume NAME | delete NAME
agentmesh webhooks create URL [--event run.succeeded ...] [--agent AGENT]
agentmesh webhooks list | get NAME | deliveries NAME | delete NAME
agentmesh triggers create TARGET [--http-url URL]
agentmesh triggers list | get NAME | delete NAME

TARGET is agents/{id} or workflows/{id}; NAME is the full name or the id. A webhook's
or trigger's signing secret is printed once, when it is made.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from google.protobuf import duration_pb2, json_format
from rich.table import Table

from agentmesh.cli_common import Key, KeyFile, Target, async_command, client_for, out
from agentmesh.gen.triggers.v1 import schedules_pb2, triggers_pb2, webhooks_pb2

schedules_app = typer.Typer(help="Schedules: runs started on a clock.", no_args_is_help=True)
webhooks_app = typer.Typer(
    help="Outbound webhooks: runs' ends POSTed to your URL.", no_args_is_help=True
)
triggers_app = typer.Typer(help="Inbound webhooks: a URL that starts a run.", no_args_is_help=True)

Policy = schedules_pb2.Schedule.MissedTickPolicy
# Event types as payloads name them, and as the contract numbers them.
EVENTS = {
    "run.succeeded": webhooks_pb2.EVENT_TYPE_RUN_SUCCEEDED,
    "run.failed": webhooks_pb2.EVENT_TYPE_RUN_FAILED,
    "run.awaiting_approval": webhooks_pb2.EVENT_TYPE_RUN_AWAITING_APPROVAL,
    "workflow.succeeded": webhooks_pb2.EVENT_TYPE_WORKFLOW_SUCCEEDED,
    "workflow.failed": webhooks_pb2.EVENT_TYPE_WORKFLOW_FAILED,
    "workflow.awaiting_approval": webhooks_pb2.EVENT_TYPE_WORKFLOW_AWAITING_APPROVAL,
}
_EVENT_NAMES = {number: name for name, number in EVENTS.items()}
_DEFAULT_KEY_FILE = Path(".agentmesh/admin.key")
TargetName = Annotated[str, typer.Argument(metavar="TARGET", help="agents/... or workflows/...")]


def _named(collection: str, name: str) -> str:
    return name if name.startswith(f"{collection}/") else f"{collection}/{name}"


def _time(stamp: Any) -> str:
    if not stamp.seconds and not stamp.nanos:
        return "-"
    return stamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")


def _timing(schedule: schedules_pb2.Schedule) -> str:
    if schedule.HasField("cron"):
        return f"{schedule.cron.expression} ({schedule.cron.time_zone or 'UTC'})"
    return f"every {schedule.interval.ToTimedelta().total_seconds():g} s"


def _show(message: Any) -> None:
    out.print_json(json_format.MessageToJson(message))


# ---- schedules -----------------------------------------------------------------------------


@schedules_app.command("create")
@async_command
async def schedules_create(
    target_name: Annotated[
        str, typer.Argument(metavar="TARGET", help="agents/... or workflows/...")
    ],
    text: Annotated[str, typer.Argument(metavar="INPUT", help="The input of every run")],
    every: Annotated[float, typer.Option(help="Fire every this many seconds")] = 0,
    cron: Annotated[str, typer.Option(help='A cron expression, e.g. "30 9 * * MON-FRI"')] = "",
    time_zone: Annotated[str, typer.Option(help="The cron's IANA time zone (default UTC)")] = "",
    name: Annotated[str, typer.Option(help="A display name (default: the target)")] = "",
    schedule_id: Annotated[str, typer.Option("--id", help="The schedule's id")] = "",
    catch_up: Annotated[
        bool, typer.Option("--catch-up", help="After downtime, run once for the missed ticks")
    ] = False,
    target: Target = "127.0.0.1:50051",
    key: Key = None,
    key_file: KeyFile = _DEFAULT_KEY_FILE,
) -> None:
    """Makes a schedule that starts TARGET with INPUT on every tick."""
    if bool(every) == bool(cron):
        raise typer.BadParameter("give either --every or --cron")
    schedule = schedules_pb2.Schedule(
        display_name=name or target_name,
        target=target_name,
        input=text,
        missed_tick_policy=(
            Policy.MISSED_TICK_POLICY_CATCH_UP_ONCE if catch_up else Policy.MISSED_TICK_POLICY_SKIP
        ),
    )
    if cron:
        schedule.cron.CopyFrom(schedules_pb2.Cron(expression=cron, time_zone=time_zone))
    else:
        interval = duration_pb2.Duration()
        interval.FromTimedelta(timedelta(seconds=every))
        schedule.interval.CopyFrom(interval)
    async with client_for(target, key, key_file) as client:
        made = await client.schedules.CreateSchedule(
            schedules_pb2.CreateScheduleRequest(schedule=schedule, schedule_id=schedule_id)
        )
    out.print(f"{made.name}  {_timing(made)}  next {_time(made.next_fire_time)} UTC")


@schedules_app.command("list")
@async_command
async def schedules_list(
    target: Target = "127.0.0.1:50051",
    key: Key = None,
    key_file: KeyFile = _DEFAULT_KEY_FILE,
) -> None:
    async with client_for(target, key, key_file) as client:
        found = await client.schedules.ListSchedules(
            schedules_pb2.ListSchedulesRequest(page_size=1000)
        )
    table = Table("SCHEDULE", "TARGET", "WHEN", "NEXT (UTC)", "LAST RUN", box=None)
    for schedule in found.schedules:
        failed = schedule.last_error.message
        table.add_row(
            schedule.name,
            schedule.target,
            _timing(schedule),
            "paused" if schedule.paused else _time(schedule.next_fire_time),
            schedule.last_run or (f"failed: {failed}" if failed else "-"),
        )
    out.print(table)


@schedules_app.command("get")
@async_command
async def schedules_get(
    name: str,
    target: Target = "127.0.0.1:50051",
    key: Key = None,
    key_file: KeyFile = _DEFAULT_KEY_FILE,
) -> None:
    async with client_for(target, key, key_file) as client:
        _show(
            await client.schedules.GetSchedule(
                schedules_pb2.GetScheduleRequest(name=_named("schedules", name))
            )
        )


@schedules_app.command("pause")
@async_command
async def schedules_pause(
    name: str,
    target: Target = "127.0.0.1:50051",
    key: Key = None,
    key_file: KeyFile = _DEFAULT_KEY_FILE,
) -> None:
    async with client_for(target, key, key_file) as client:
        paused = await client.schedules.PauseSchedule(
            schedules_pb2.PauseScheduleRequest(name=_named("schedules", name))
        )
    out.print(f"{paused.name} paused")


@schedules_app.command("resume")
@async_command
async def schedules_resume(
    name: str,
    target: Target = "127.0.0.1:50051",
    key: Key = None,
    key_file: KeyFile = _DEFAULT_KEY_FILE,
) -> None:
    async with client_for(target, key, key_file) as client:
        resumed = await client.schedules.ResumeSchedule(
            schedules_pb2.ResumeScheduleRequest(name=_named("schedules", name))
        )
    out.print(f"{resumed.name} resumed; next {_time(resumed.next_fire_time)} UTC")


@schedules_app.command("delete")
@async_command
async def schedules_delete(
    name: str,
    target: Target = "127.0.0.1:50051",
    key: Key = None,
    key_file: KeyFile = _DEFAULT_KEY_FILE,
) -> None:
    async with client_for(target, key, key_file) as client:
        await client.schedules.DeleteSchedule(
            schedules_pb2.DeleteScheduleRequest(name=_named("schedules", name))
        )
    out.print(f"{_named('schedules', name)} deleted")


# ---- outbound webhooks ------------------------------------------------------------------


@webhooks_app.command("create")
@async_command
async def webhooks_create(
    url: str,
    event: Annotated[
        list[str], typer.Option(help=f"What to be told of: {', '.join(EVENTS)} (repeatable)")
    ] = ["run.succeeded", "run.failed"],  # noqa: B006 - typer's way to default a list
    agent: Annotated[str, typer.Option(help="Only this agent's runs (agents/...)")] = "",
    name: Annotated[str, typer.Option(help="A display name")] = "",
    target: Target = "127.0.0.1:50051",
    key: Key = None,
    key_file: KeyFile = _DEFAULT_KEY_FILE,
) -> None:
    """Subscribes URL to run events; prints the signing secret, which is never shown again."""
    unknown = [kind for kind in event if kind not in EVENTS]
    if unknown:
        raise typer.BadParameter(f"unknown events {unknown}; known: {', '.join(EVENTS)}")
    subscription = webhooks_pb2.Subscription(
        display_name=name,
        url=url,
        event_types=[EVENTS[kind] for kind in event],
        agent=_named("agents", agent) if agent else "",
    )
    async with client_for(target, key, key_file) as client:
        made = await client.webhooks.CreateSubscription(
            webhooks_pb2.CreateSubscriptionRequest(subscription=subscription)
        )
    out.print(f"{made.name}  {made.url}")
    out.print(f"signing secret (shown once): {made.secret}")


@webhooks_app.command("list")
@async_command
async def webhooks_list(
    target: Target = "127.0.0.1:50051",
    key: Key = None,
    key_file: KeyFile = _DEFAULT_KEY_FILE,
) -> None:
    async with client_for(target, key, key_file) as client:
        found = await client.webhooks.ListSubscriptions(
            webhooks_pb2.ListSubscriptionsRequest(page_size=1000)
        )
    table = Table("SUBSCRIPTION", "URL", "EVENTS", "AGENT", box=None)
    for subscription in found.subscriptions:
        events = ", ".join(_EVENT_NAMES.get(kind, str(kind)) for kind in subscription.event_types)
        table.add_row(subscription.name, subscription.url, events, subscription.agent or "any")
    out.print(table)


@webhooks_app.command("get")
@async_command
async def webhooks_get(
    name: str,
    target: Target = "127.0.0.1:50051",
    key: Key = None,
    key_file: KeyFile = _DEFAULT_KEY_FILE,
) -> None:
    async with client_for(target, key, key_file) as client:
        _show(
            await client.webhooks.GetSubscription(
                webhooks_pb2.GetSubscriptionRequest(name=_named("subscriptions", name))
            )
        )


@webhooks_app.command("deliveries")
@async_command
async def webhooks_deliveries(
    name: str,
    limit: Annotated[int, typer.Option(help="How many, newest first")] = 50,
    target: Target = "127.0.0.1:50051",
    key: Key = None,
    key_file: KeyFile = _DEFAULT_KEY_FILE,
) -> None:
    """A subscription's deliveries, newest first: what was sent, and how it went."""
    async with client_for(target, key, key_file) as client:
        found = await client.webhooks.ListDeliveries(
            webhooks_pb2.ListDeliveriesRequest(
                parent=_named("subscriptions", name), page_size=limit
            )
        )
    table = Table("DELIVERY", "EVENT", "RUN", "STATE", "ATTEMPTS", "LAST", box=None)
    for delivery in found.deliveries:
        state = webhooks_pb2.Delivery.State.Name(delivery.state).removeprefix("STATE_")
        table.add_row(
            delivery.name.rsplit("/", 1)[1],
            _EVENT_NAMES.get(delivery.event_type, "-"),
            delivery.run,
            state,
            str(delivery.attempt_count),
            delivery.last_error or str(delivery.last_status_code or "-"),
        )
    out.print(table)


@webhooks_app.command("delete")
@async_command
async def webhooks_delete(
    name: str,
    target: Target = "127.0.0.1:50051",
    key: Key = None,
    key_file: KeyFile = _DEFAULT_KEY_FILE,
) -> None:
    async with client_for(target, key, key_file) as client:
        await client.webhooks.DeleteSubscription(
            webhooks_pb2.DeleteSubscriptionRequest(name=_named("subscriptions", name))
        )
    out.print(f"{_named('subscriptions', name)} deleted")


# ---- inbound webhooks ---------------------------------------------------------------------


@triggers_app.command("create")
@async_command
async def triggers_create(
    target_name: Annotated[
        str, typer.Argument(metavar="TARGET", help="agents/... or workflows/...")
    ],
    name: Annotated[str, typer.Option(help="A display name")] = "",
    http_url: Annotated[
        str, typer.Option(help="Where the mesh's HTTP port is reached, to print the full URL")
    ] = "http://127.0.0.1:8081",
    target: Target = "127.0.0.1:50051",
    key: Key = None,
    key_file: KeyFile = _DEFAULT_KEY_FILE,
) -> None:
    """Makes a URL that starts TARGET with each signed request's body; prints its
    signing secret, which is never shown again."""
    async with client_for(target, key, key_file) as client:
        made = await client.triggers.CreateTrigger(
            triggers_pb2.CreateTriggerRequest(
                trigger=triggers_pb2.Trigger(display_name=name, target=target_name)
            )
        )
    out.print(f"{made.name}  POST {http_url.rstrip('/')}{made.path}")
    out.print(f"signing secret (shown once): {made.secret}")


@triggers_app.command("list")
@async_command
async def triggers_list(
    target: Target = "127.0.0.1:50051",
    key: Key = None,
    key_file: KeyFile = _DEFAULT_KEY_FILE,
) -> None:
    async with client_for(target, key, key_file) as client:
        found = await client.triggers.ListTriggers(triggers_pb2.ListTriggersRequest(page_size=1000))
    table = Table("TRIGGER", "TARGET", "PATH", "NAME", box=None)
    for trigger in found.triggers:
        table.add_row(trigger.name, trigger.target, trigger.path, trigger.display_name)
    out.print(table)


@triggers_app.command("get")
@async_command
async def triggers_get(
    name: str,
    target: Target = "127.0.0.1:50051",
    key: Key = None,
    key_file: KeyFile = _DEFAULT_KEY_FILE,
) -> None:
    async with client_for(target, key, key_file) as client:
        _show(
            await client.triggers.GetTrigger(
                triggers_pb2.GetTriggerRequest(name=_named("triggers", name))
            )
        )


@triggers_app.command("delete")
@async_command
async def triggers_delete(
    name: str,
    target: Target = "127.0.0.1:50051",
    key: Key = None,
    key_file: KeyFile = _DEFAULT_KEY_FILE,
) -> None:
    async with client_for(target, key, key_file) as client:
        await client.triggers.DeleteTrigger(
            triggers_pb2.DeleteTriggerRequest(name=_named("triggers", name))
        )
    out.print(f"{_named('triggers', name)} deleted")
