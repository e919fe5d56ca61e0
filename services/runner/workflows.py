"""Workflow runs: a saved workflow's steps, run one after another, durably.

Each step IS an agent run, started through the same dispatcher as RunAgent, so
it has its own Run record, credits, approvals, usage, lease and takeover. This
module only decides what runs next and keeps the workflow run's own record:

- A step's input is its template over the workflow's input, its vars and the
  earlier steps' outputs (a structured output is addressable by field; a step
  that has not run renders empty; a missing field of one that ran fails).
- After a step, its transition picks the next step: a goto, or the first CEL
  case that is true (else the default). A condition that reads a field that is
  not there fails the workflow run, naming the condition; nothing is skipped.
- A parallel step starts every branch at once and joins them when all (or
  `wait_for`) succeeded; the rest are cancelled. Its output maps branch ids to
  outputs.
- A step's run id is stored before the run starts, and its result before the
  next step starts. A workflow run is its runner replica's by a lease; another
  replica takes it over when the lease runs out and goes on from there: a step
  that finished is never run again, and a step's run in flight is the
  dispatcher's to take over (it runs again from its safe point, or fails).
- A step run that pauses for an approval pauses the workflow run; once the
  run resumes (ResolveApproval, on any replica, after any restart), the
  workflow run is claimed again and goes on.
- Cancelling sets a flag the driver reads before each step and cancels the
  step runs in flight; their end ends the workflow run, wherever it runs.
- A workflow run's end or pause is announced (WorkflowRunChanged) through the
  runner's outbox, in the transaction that stores it: once, by whoever wrote it.

Conditions are CEL (common-expression-language): the registry compiled them and
checked their variables on save (services/registry/workflows.py); nothing of
the user's is evaluated any other way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import cel
import grpc
import re2
from google.protobuf import json_format
from google.rpc import status_pb2

from agentmesh.api import timestamp
from agentmesh.auth import USER_HEADER
from agentmesh.db import Page
from agentmesh.errors import (
    FailedPrecondition,
    NotFound,
    PeerError,
    QuotaExceeded,
    ServiceError,
    Unavailable,
)
from agentmesh.gen.common.v1 import common_pb2
from agentmesh.gen.registry.v1 import workflows_pb2, workflows_pb2_grpc
from agentmesh.gen.runner.v1 import events_pb2, runner_pb2
from agentmesh.ids import new_id, utc_now
from agentmesh.names import ResourceName
from agentmesh.templates import PLACEHOLDER, TemplateError, lookup
from services.runner import records
from services.runner.build import check_runnable
from services.runner.definitions import AgentDefinitions
from services.runner.dispatch import Dispatcher, Timing
from services.runner.execute import RUN, Executor, approval_proto, failure
from services.runner.store import RunnerStore
from services.runner.workflow_store import WorkflowRun, WorkflowStore

log = logging.getLogger("agentmesh.runner")

WORKFLOW = ResourceName.of(workflows_pb2.Workflow)
WORKFLOW_RUN = ResourceName.of(runner_pb2.WorkflowRun)
StepRun = runner_pb2.StepRun
WorkflowEvent = runner_pb2.WorkflowEvent
END = "end"
_STOPPED = (*records.ENDED, records.AWAITING_APPROVAL)
_LIVE = (records.QUEUED, records.RUNNING, records.AWAITING_APPROVAL)
_DEFAULT_MAX_TURNS = 10
# A workflow run whose runners kept dying ends FAILED after this many takeovers.
_MAX_ATTEMPTS = 5
_HANG_UP_SECONDS = 0.25
# The most work one condition may do; see evaluate().
_MOST_STEPS = 100_000
_MACRO = re2.compile(r"\.\s*(?:all|exists_one|exists|map|filter)\s*\(")


class StepFailed(Exception):
    """Ends the workflow run with `error` (a ServiceError, or a step run's status)."""

    def __init__(self, error: ServiceError | status_pb2.Status, state: int = records.FAILED):
        super().__init__(error.message)
        self.status = error.to_status() if isinstance(error, ServiceError) else error
        self.state = state


# ---- protos ---------------------------------------------------------------------------


def workflow_run_proto(run: WorkflowRun) -> runner_pb2.WorkflowRun:
    message = runner_pb2.WorkflowRun(
        name=WORKFLOW_RUN.format(run.id),
        workflow=WORKFLOW.format(run.workflow_id),
        workflow_etag=run.workflow_etag,
        state=runner_pb2.Run.State.ValueType(run.state),
        input=run.input,
        steps=[_step(step) for step in run.steps],
        final_output=run.final_output,
        usage=common_pb2.Usage(**run.usage),
        credits=run.credits,
        trace=f"traces/{run.trace_id}" if run.trace_id else "",
        create_time=timestamp(run.create_time),
    )
    if run.structured_output is not None:
        json_format.ParseDict(run.structured_output, message.structured_output)
    if run.error:
        message.error.ParseFromString(run.error)
    if run.end_time:
        message.end_time.CopyFrom(timestamp(run.end_time))
    return message


def _step(data: dict[str, Any]) -> StepRun:
    return json_format.ParseDict(data, StepRun())


def _data(step: StepRun) -> dict[str, Any]:
    return json_format.MessageToDict(step, preserving_proto_field_name=True)


def _queued_event(run_id: str, user_id: str) -> events_pb2.RunQueued:
    return events_pb2.RunQueued(
        run=WORKFLOW_RUN.format(run_id), user=f"users/{user_id}", time=timestamp(utc_now())
    )


def _changed_event(run: WorkflowRun) -> events_pb2.WorkflowRunChanged:
    return events_pb2.WorkflowRunChanged(
        workflow_run=WORKFLOW_RUN.format(run.id),
        user=f"users/{run.user_id}",
        workflow=WORKFLOW.format(run.workflow_id),
        state=runner_pb2.Run.State.ValueType(run.state),
        time=timestamp(utc_now()),
    )


# ---- what a step reads: templates and conditions ------------------------------------------


def render_input(template: str, variables: dict[str, Any], ran: set[str]) -> str:
    """The template with each placeholder replaced: strings as they are, other values
    as JSON; a step that has not run (yet, in a loop or a branch not taken) as empty."""

    def value_of(match: Any) -> str:
        path = match.group(1)
        parts = path.split(".")
        if parts[0] == "steps" and len(parts) > 1 and parts[1] not in ran:
            return ""
        value = lookup(variables, path)
        return value if isinstance(value, str) else json.dumps(value)

    return PLACEHOLDER.sub(value_of, template or "{{ input }}")


def _longest_list(value: Any) -> int:
    if isinstance(value, list):
        return max([len(value), *(_longest_list(item) for item in value)])
    if isinstance(value, dict):
        return max([0, *(_longest_list(item) for item in value.values())])
    return 0


def evaluate(condition: str, variables: dict[str, Any], field_path: str) -> bool:
    """A case's condition over the run's variables; StepFailed, naming the condition,
    when it reads something that is not there or is not a bool.

    CEL has no loops; its cost grows only with comprehension macros over lists, and
    the evaluator holds the GIL (no timeout can stop it). So a condition whose
    nested macros could take more than _MOST_STEPS steps over these outputs is
    refused before it runs."""
    macros = len(_MACRO.findall(condition))
    if macros and _longest_list(variables) ** macros > _MOST_STEPS:
        raise StepFailed(
            FailedPrecondition(
                f"{field_path} has {macros} nested list macros over lists of up to "
                f"{_longest_list(variables)} items: more than {_MOST_STEPS} steps",
                reason="CONDITION_TOO_COSTLY",
                field=field_path,
            )
        )
    try:
        result = cel.compile(condition).execute(variables)
    except KeyError as missing:
        raise StepFailed(
            FailedPrecondition(
                f"{field_path} reads {missing.args[0]!r}, which is not there: "
                "guard it with has(...) if it may be missing",
                reason="CONDITION_FAILED",
                field=field_path,
            )
        ) from None
    except (RuntimeError, TypeError, ValueError) as error:
        detail = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
        raise StepFailed(
            FailedPrecondition(
                f"{field_path} could not be evaluated: {detail}",
                reason="CONDITION_FAILED",
                field=field_path,
            )
        ) from None
    if not isinstance(result, bool):
        raise StepFailed(
            FailedPrecondition(
                f"{field_path} gave {type(result).__name__}, not a bool",
                reason="CONDITION_FAILED",
                field=field_path,
            )
        )
    return result


def _output(step: StepRun) -> Any:
    if step.HasField("structured_output"):
        return json_format.MessageToDict(step.structured_output)
    return step.output


def _variables(
    run: WorkflowRun, steps: list[StepRun], current: StepRun | None = None
) -> tuple[dict[str, Any], set[str]]:
    """(`input`, `vars` and `steps`: each finished step's latest output and visits),
    and the ids of the steps that finished. A step's result is the step run that
    chose the next step (a parallel step's join); `current` is one choosing now."""
    finished: dict[str, Any] = {}
    for step in [*steps, *([current] if current is not None else [])]:
        if step.state == records.SUCCEEDED and (step.next_step or step is current):
            finished[step.step] = {"output": _output(step), "visits": run.visits.get(step.step, 0)}
    return {"input": run.input, "vars": run.vars, "steps": finished}, set(finished)


def _next(definition: workflows_pb2.Workflow, index: int, variables: dict[str, Any]) -> str:
    step = definition.steps[index]
    which = step.next.WhichOneof("target")
    if which == "goto":
        return step.next.goto
    if which == "switch":
        for j, case in enumerate(step.next.switch.cases):
            if evaluate(
                case.condition, variables, f"steps[{index}].next.switch.cases[{j}].condition"
            ):
                return case.goto
        return step.next.switch.default
    return definition.steps[index + 1].id if index + 1 < len(definition.steps) else END


# ---- the engine ------------------------------------------------------------------------------


@dataclass
class _Live:
    """A workflow run this replica drives, and the events not yet written."""

    run: WorkflowRun
    definition: workflows_pb2.Workflow
    steps: list[StepRun]
    unsaved: list[WorkflowEvent] = field(default_factory=list)
    task: asyncio.Task | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def emit(self, **event: Any) -> None:
        self.run.last_sequence += 1
        self.unsaved.append(WorkflowEvent(sequence=self.run.last_sequence, **event))


class WorkflowEngine:
    def __init__(
        self,
        runs: RunnerStore,
        registry: grpc.aio.Channel,
        definitions: AgentDefinitions,
        dispatcher: Dispatcher,
        executor: Executor,
        timing: Timing,
        on_saved: Callable[[], None] | None = None,
    ):
        self._store = WorkflowStore(runs, _queued_event)
        self._runs = runs
        self._workflows = workflows_pb2_grpc.WorkflowServiceStub(registry)
        self._definitions = definitions
        self._dispatcher = dispatcher
        self._executor = executor
        self._timing = timing
        self._on_saved = on_saved or (lambda: None)
        self.active: dict[str, _Live] = {}
        self._changed: dict[str, set[asyncio.Event]] = {}
        self._background: set[asyncio.Task] = set()

    @property
    def owner(self) -> str:
        return self._executor.owner

    # ---- starting ---------------------------------------------------------------------

    async def start(
        self, user_id: str, request: runner_pb2.RunWorkflowRequest, queued: bool
    ) -> WorkflowRun:
        """Stores a new workflow run (or finds the first one of a retried request_id)
        and drives it here, or leaves it QUEUED for any replica."""
        if request.request_id:
            earlier = await self._store.by_request(user_id, request.request_id)
            if earlier is not None:
                return earlier
        workflow_id = WORKFLOW.id(request.workflow)
        definition = await self._workflow(user_id, request.workflow)
        now = utc_now()
        run = WorkflowRun(
            id=new_id(),
            user_id=user_id,
            workflow_id=workflow_id,
            workflow_etag=definition.etag,
            definition=json_format.MessageToDict(definition, preserving_proto_field_name=True),
            state=records.QUEUED if queued else records.RUNNING,
            input=request.input,
            vars=json_format.MessageToDict(request.vars),
            create_time=now,
            update_time=now,
            request_id=request.request_id,
            max_credits=request.max_credits,
            trace_id=f"trace_{new_id()}",
            next_step=definition.steps[0].id,
        )
        if not queued:
            run.owner, run.lease_expire_time = self.owner, now + self._timing.lease
            run.attempts = 1
        run.last_sequence = 1
        started_event = WorkflowEvent(sequence=1, workflow_started=workflow_run_proto(run))
        started = await self._store.start(run, [(1, started_event.SerializeToString())])
        if started.repeated:
            return started.run
        if queued:
            self._on_saved()  # its RunQueued event
            return run
        self._launch(run)
        return run

    async def _workflow(self, user_id: str, name: str) -> workflows_pb2.Workflow:
        try:
            return await self._workflows.GetWorkflow(
                workflows_pb2.GetWorkflowRequest(name=name),
                metadata=((USER_HEADER, f"users/{user_id}"),),
                timeout=10,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(name) from None
            raise PeerError.of(error) from None

    def _launch(self, run: WorkflowRun) -> _Live:
        definition = json_format.ParseDict(run.definition, workflows_pb2.Workflow())
        live = _Live(run, definition, [_step(step) for step in run.steps])
        self.active[run.id] = live
        live.task = asyncio.create_task(self._drive(live), name=f"workflow-run-{run.id}")
        return live

    async def claim(self, run_id: str) -> bool:
        """A queued workflow run from the work queue: driven here if this replica
        claims it first."""
        run = await self._store.claim_queued(run_id, self.owner, self._timing.lease)
        if run is None:
            return False
        self._launch(run)
        return True

    async def resume_after(self, run_id: str) -> None:
        """A step run may have resumed (its approvals were decided): its workflow run
        goes on, here, once none of its step runs waits for a decision."""
        step_run = await self._runs.run_by_id(run_id)
        if step_run is None or not step_run.workflow_run_id:
            return
        await self._resume(step_run.workflow_run_id)

    async def _resume(self, workflow_run_id: str) -> None:
        run = await self._store.by_id(workflow_run_id)
        if run is None or run.state != records.AWAITING_APPROVAL:
            return
        for step in run.steps:
            if step.get("run") and step.get("state") == "STATE_AWAITING_APPROVAL":
                current = await self._runs.run_by_id(RUN.id(step["run"]))
                if current is not None and current.state == records.AWAITING_APPROVAL:
                    return  # still waits; its last decision resumes the workflow run
        claimed = await self._store.claim_paused(workflow_run_id, self.owner, self._timing.lease)
        if claimed is not None:
            self._launch(claimed)

    # ---- driving -------------------------------------------------------------------------

    async def _drive(self, live: _Live) -> None:
        run = live.run
        try:
            while True:
                if await self._store.cancel_requested(run.id):
                    await self._cancel_live_steps(live)
                    await self._end(live, records.CANCELLED)
                    return
                if run.next_step == END:
                    await self._end(live, records.SUCCEEDED)
                    return
                index = [step.id for step in live.definition.steps].index(run.next_step)
                members = self._members(live)
                if members:  # taken over in the middle of the step
                    await self._start_members(live, index, members)
                else:
                    begun = await self._begin(live, index)
                    if begun is None:
                        return  # lost
                    members = begun
                    if await self._store.cancel_requested(run.id):
                        continue
                outcome = await self._join(live, index, members)
                if outcome is None:
                    return  # paused, or lost
        except asyncio.CancelledError:
            # This replica stops, or lost the run: the next owner goes on from the
            # last saved step. A user's cancel never comes this way.
            return
        except StepFailed as failed:
            # A workflow run its user cancelled ended as asked: that is no error.
            asked = failed.state == records.CANCELLED and await self._cancel_asked(run.id)
            await self._end_or_leave(live, failed.state, None if asked else failed.status)
        except Exception as error:  # noqa: BLE001 - every failure ends the run with a status
            await self._end_or_leave(live, records.FAILED, failure(error))
        finally:
            live.done.set()
            self.active.pop(run.id, None)

    def _members(self, live: _Live) -> list[StepRun]:
        """The step runs of the step now running (its latest visit), if it began and
        has not chosen the next step yet (else it is to begin again: a loop)."""
        run = live.run
        visit = run.visits.get(run.next_step, 0)
        current = [s for s in live.steps if s.step == run.next_step and s.visit == visit]
        if not visit or any(s.next_step for s in current):
            return []
        return [s for s in current if s.run]

    async def _begin(self, live: _Live, index: int) -> list[StepRun] | None:
        """Stores the step's runs (their ids, inputs) with its visit, then starts them."""
        run = live.run
        step = live.definition.steps[index]
        bound = max(step.max_visits, 1)
        if run.visits.get(step.id, 0) >= bound:
            raise StepFailed(
                FailedPrecondition(
                    f"steps[{index}] ({step.id!r}) would run more than its max_visits ({bound})",
                    reason="MAX_VISITS_EXCEEDED",
                    field=f"steps[{index}].max_visits",
                )
            )
        if run.max_credits and run.credits >= run.max_credits:
            raise StepFailed(
                QuotaExceeded(
                    f"{WORKFLOW_RUN.format(run.id)}/credits",
                    f"the workflow run spent its cap of {run.max_credits} credits",
                )
            )
        variables, ran = _variables(run, live.steps)
        visit = run.visits.get(step.id, 0) + 1
        members = []
        now = timestamp(utc_now())
        for branch, agent_step, path in _agent_steps(step, index):
            try:
                text = render_input(agent_step.input, variables, ran)
            except TemplateError as error:
                raise StepFailed(
                    FailedPrecondition(f"{path}: {error}", reason="TEMPLATE_FAILED", field=path)
                ) from None
            members.append(
                StepRun(
                    step=step.id,
                    branch=branch,
                    visit=visit,
                    state=records.RUNNING,
                    input=text,
                    run=RUN.format(new_id()),
                    start_time=now,
                )
            )
        run.visits = {**run.visits, step.id: visit}
        live.steps.extend(members)
        for member in members:
            live.emit(step_started=member)
        if not await self._save(live):
            return None
        await self._start_members(live, index, members)
        return members

    async def _start_members(self, live: _Live, index: int, members: list[StepRun]) -> None:
        """Starts each member's run that has not started (all of them, but for a
        takeover of a step that began): the workflow's cap is shared among them."""
        run = live.run
        agents = {
            branch: agent_step
            for branch, agent_step, _ in _agent_steps(live.definition.steps[index], index)
        }
        cap = 0
        if run.max_credits:
            cap = max((run.max_credits - run.credits) // len(members), 1)
        for member in members:
            if member.state == records.RUNNING:
                await self._start_step_run(live, member, agents[member.branch].agent, cap)

    async def _start_step_run(self, live: _Live, member: StepRun, agent: str, cap: int) -> None:
        """Starts the member's agent run here, unless it exists (a takeover)."""
        run = live.run
        run_id = RUN.id(member.run)
        if await self._runs.run_by_id(run_id) is not None:
            return
        agent_id = agent.removeprefix("agents/")
        try:
            graph = await self._definitions.graph(f"users/{run.user_id}", agent_id, {})
            check_runnable(graph)
            caps = [c for c in (cap, graph[agent_id].max_credits_per_run) if c]
            now = utc_now()
            step_run = records.Run(
                id=run_id,
                user_id=run.user_id,
                agent_id=agent_id,
                revisions={id_: a.revision_id for id_, a in graph.items()},
                conversation_id=new_id(),
                state=records.RUNNING,
                input=member.input,
                create_time=now,
                update_time=now,
                max_credits=min(caps) if caps else 0,
                max_turns=_DEFAULT_MAX_TURNS,
                trace_id=run.trace_id,
                last_agent_id=agent_id,
                workflow_run_id=run.id,
            )
            await self._dispatcher.start(step_run, _ready(dict(run.vars)), True, False)
        except NotFound:
            member.error.CopyFrom(
                FailedPrecondition(
                    f"{agent}, which this step runs, no longer exists", reason="AGENT_MISSING"
                ).to_status()
            )
            member.state = records.FAILED
        except ServiceError as error:
            member.error.CopyFrom(error.to_status())
            member.state = records.FAILED

    async def _join(self, live: _Live, index: int, members: list[StepRun]) -> bool | None:
        """Waits for the step's runs; on success stores its result and the next step
        (True). None when the workflow run paused or was lost."""
        step = live.definition.steps[index]
        parallel = step.WhichOneof("kind") == "parallel"
        need = (step.parallel.wait_for or len(members)) if parallel else 1
        waiting = {
            asyncio.create_task(self._wait(member)): member
            for member in members
            if member.state in _LIVE
        }
        try:
            while waiting and _count(members, records.SUCCEEDED) < need:
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    member = waiting.pop(task)
                    ended = task.result()
                    if ended is not None:
                        _finish_member(member, ended)
                    if parallel and member.state != records.AWAITING_APPROVAL:
                        live.emit(step_finished=member)
                if parallel and done and not await self._save(live):
                    return None
                failed = [m for m in members if m.state in records.ENDED - {records.SUCCEEDED}]
                if len(members) - len(failed) < need:
                    break
        finally:
            for task in waiting:
                task.cancel()
        succeeded = _count(members, records.SUCCEEDED)
        if succeeded < need:
            stuck = [m for m in members if m.state not in records.ENDED]
            paused = any(m.state == records.AWAITING_APPROVAL for m in stuck)
            if paused and succeeded + len(stuck) >= need:
                await self._pause(live, stuck)
                return None
            for member in stuck:
                self._dispatcher.cancel_soon(RUN.id(member.run))
            failed = [m for m in members if m.state in records.ENDED - {records.SUCCEEDED}]
            first = failed[0] if failed else members[0]
            raise StepFailed(_step_error(step.id, first), _workflow_state(first.state))
        for member in members:
            if member.state not in records.ENDED:  # the join has what it waits for
                # Waited for, so what the branch used until then counts in the totals.
                with contextlib.suppress(ServiceError):
                    _finish_member(
                        member, await self._dispatcher.cancel(live.run.user_id, RUN.id(member.run))
                    )
                if member.state not in records.ENDED:
                    member.state = records.CANCELLED
                    member.end_time.CopyFrom(timestamp(utc_now()))
                live.emit(step_finished=member)
        result = members[0]
        if parallel:
            outputs = {m.branch: _output(m) for m in members if m.state == records.SUCCEEDED}
            result = StepRun(
                step=step.id,
                visit=members[0].visit,
                state=records.SUCCEEDED,
                input=members[0].input,
                output=json.dumps(outputs),
                start_time=members[0].start_time,
                end_time=timestamp(utc_now()),
            )
            json_format.ParseDict(outputs, result.structured_output)
        run = live.run
        variables, _ = _variables(run, live.steps, current=result)
        next_step = _next(live.definition, index, variables)
        if parallel:
            live.steps.append(result)
        result.next_step = next_step
        run.next_step = result.next_step
        run.final_output = result.output
        run.structured_output = _output(result) if result.HasField("structured_output") else None
        live.emit(step_finished=result)
        return await self._save(live) or None

    async def _wait(self, member: StepRun) -> records.Run | None:
        """The member's run once it ends or pauses, wherever it runs."""
        run = await self._runs.run_by_id(RUN.id(member.run))
        if run is None:
            return None  # it never started: the member says why
        return await self._dispatcher.wait(run)

    async def _pause(self, live: _Live, stuck: list[StepRun]) -> None:
        run = live.run
        run.state = records.AWAITING_APPROVAL
        run.lease_expire_time = None
        for member in stuck:
            if member.state != records.AWAITING_APPROVAL:
                continue
            for approval in await self._runs.approvals_of(RUN.id(member.run)):
                if approval.state == runner_pb2.Approval.STATE_PENDING:
                    live.emit(approval_required=approval_proto(approval))
        self._sum(live)
        live.emit(workflow_finished=workflow_run_proto(self._snapshot(live)))
        await self._save(live, announce=True)

    async def _end(self, live: _Live, state: int, error: status_pb2.Status | None = None) -> None:
        run = live.run
        run.state = state
        if error is not None:
            run.error = error.SerializeToString()
        run.end_time = run.update_time = utc_now()
        run.lease_expire_time = None
        self._sum(live)
        live.emit(workflow_finished=workflow_run_proto(self._snapshot(live)))
        await self._save(live, announce=True)

    async def _cancel_asked(self, run_id: str) -> bool:
        try:
            return await self._store.cancel_requested(run_id)
        except Exception:  # noqa: BLE001 - then it says why it was cancelled
            return False

    async def _end_or_leave(self, live: _Live, state: int, error: status_pb2.Status | None) -> None:
        """Ends the run; should even that fail (the database is away), its lease runs
        out and a replica takes it over, which tries again."""
        try:
            await self._end(live, state, error)
        except Exception:  # noqa: BLE001 - left to the takeover
            log.warning("ending workflowRuns/%s failed", live.run.id, exc_info=True)

    def _sum(self, live: _Live) -> None:
        """The workflow run's usage and credits: its step runs' summed."""
        usage = common_pb2.Usage()
        credits = 0
        for step in live.steps:
            if step.run:
                for field_name in common_pb2.Usage.DESCRIPTOR.fields_by_name:
                    total = getattr(usage, field_name) + getattr(step.usage, field_name)
                    setattr(usage, field_name, total)
                credits += step.credits
        live.run.usage = {
            name: getattr(usage, name) for name in common_pb2.Usage.DESCRIPTOR.fields_by_name
        }
        live.run.credits = credits

    def _snapshot(self, live: _Live) -> WorkflowRun:
        live.run.steps = [_data(step) for step in live.steps]
        return live.run

    async def _save(self, live: _Live, announce: bool = False) -> bool:
        """Writes the run as it is now (RUNNING, or the pause or end just set) with its
        new events, only while the stored run is RUNNING and this replica's; with
        `announce`, its WorkflowRunChanged too."""
        self._sum(live)
        run = self._snapshot(live)
        run.update_time = utc_now()
        events = [(e.sequence, e.SerializeToString()) for e in live.unsaved]
        outbox = [_changed_event(run)] if announce else []
        saved = await self._store.save(run, events, outbox, owner=self.owner)
        live.unsaved.clear()
        if not saved:
            log.warning("workflowRuns/%s is driven elsewhere now; stopped here", run.id)
            return False
        self._wake(run.id)
        if announce:
            self._on_saved()
        return True

    async def _cancel_live_steps(self, live: _Live) -> None:
        for member in self._members(live):
            if member.state in _LIVE:
                with contextlib.suppress(ServiceError):
                    ended = await self._dispatcher.cancel(live.run.user_id, RUN.id(member.run))
                    _finish_member(member, ended)
                live.emit(step_finished=member)

    # ---- reading and following ------------------------------------------------------------

    async def get(self, user_id: str, run_id: str) -> WorkflowRun:
        return await self._store.get(user_id, run_id)

    async def forget_ended_runs(self, before: datetime, limit: int) -> int:
        return await self._store.forget_ended_runs(before, limit)

    async def list(self, user_id: str, workflow_id: str, after_seq: int, limit: int) -> Page:
        return await self._store.list_runs(user_id, workflow_id, after_seq, limit)

    def _wake(self, run_id: str) -> None:
        for event in self._changed.get(run_id, ()):
            event.set()

    async def wait(self, run: WorkflowRun) -> WorkflowRun:
        """The workflow run once it ends or pauses, wherever it runs."""
        while True:
            live = self.active.get(run.id)
            if live is not None:
                await live.done.wait()
            current = await self._store.by_id(run.id)
            assert current is not None
            if current.state in _STOPPED:
                return current
            await self._changed_or_poll(run.id)

    async def _changed_or_poll(self, run_id: str) -> None:
        """Returns when the run changed here, or after a poll interval (it may have
        changed in another replica)."""
        event = asyncio.Event()
        waiting = self._changed.setdefault(run_id, set())
        waiting.add(event)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), self._timing.watch_poll)
        finally:
            waiting.discard(event)
            if not waiting:
                self._changed.pop(run_id, None)

    async def _log(self, run_id: str, after: int) -> AsyncIterator[WorkflowEvent]:
        """The workflow run's own events after `after`, then each new one until it ends
        or pauses."""
        while True:
            payloads = await self._store.events_after(run_id, after)
            for payload in payloads:
                event = WorkflowEvent.FromString(payload)
                after = event.sequence
                yield event
            if payloads:
                continue
            current = await self._store.by_id(run_id)
            if current is None or current.state in _STOPPED:
                if not await self._store.events_after(run_id, after):
                    return
                continue
            await self._changed_or_poll(run_id)

    async def follow(self, run: WorkflowRun, after: int) -> AsyncIterator[WorkflowEvent]:
        """The workflow run's events, each step's run's events after its step_started,
        a step's run's events always before its step_finished."""
        out: asyncio.Queue[WorkflowEvent | BaseException | None] = asyncio.Queue()
        pumps: dict[str, tuple[asyncio.Task, asyncio.Event]] = {}

        async def pump_run(name: str, sequence: int, found: asyncio.Event) -> None:
            # Its id is stored before it starts: it exists a moment later.
            while (step_run := await self._runs.run_by_id(RUN.id(name))) is None:  # noqa: ASYNC110
                await asyncio.sleep(self._timing.watch_poll)
            found.set()
            async for event in self._dispatcher.follow(step_run, 0):
                await out.put(WorkflowEvent(sequence=sequence, run_event=event))

        async def settle(name: str) -> None:
            task, found = pumps.pop(name)
            # Its step finished: its run ended by now, or never started.
            if not found.is_set() and await self._runs.run_by_id(RUN.id(name)) is None:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        async def pump_log() -> None:
            try:
                async for event in self._log(run.id, after):
                    kind = event.WhichOneof("event")
                    if kind == "step_finished" and event.step_finished.run in pumps:
                        await settle(event.step_finished.run)
                    elif kind == "workflow_finished":
                        for name in list(pumps):
                            await settle(name)
                    await out.put(event)
                    if kind == "step_started" and event.step_started.run:
                        found = asyncio.Event()
                        task = asyncio.create_task(
                            pump_run(event.step_started.run, event.sequence, found)
                        )
                        pumps[event.step_started.run] = (task, found)
                for name in list(pumps):
                    await settle(name)
                await out.put(None)
            except BaseException as error:  # noqa: BLE001 - handed to the reader
                await out.put(error)

        reader = asyncio.create_task(pump_log())
        try:
            while (item := await out.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            reader.cancel()
            for task, _ in pumps.values():
                task.cancel()
            with contextlib.suppress(BaseException):
                await reader

    # ---- cancelling ------------------------------------------------------------------------

    async def cancel(self, user_id: str, run_id: str) -> WorkflowRun:
        """Cancels the workflow run wherever it is; returns it once it ended, or as it
        is after run_cancel_wait_seconds."""
        run = await self._store.get(user_id, run_id)  # NotFound for another user's
        if run.state in records.ENDED:
            return run
        await self._store.request_cancel(run_id)
        if run.state in (records.QUEUED, records.AWAITING_APPROVAL):
            await self._end_idle(run)
        else:
            for step in run.steps:
                if step.get("run") and step.get("state") in ("STATE_RUNNING", "STATE_QUEUED"):
                    # One not started yet is cancelled by its driver, which reads the flag.
                    if await self._runs.run_by_id(RUN.id(step["run"])) is not None:
                        self._dispatcher.cancel_soon(RUN.id(step["run"]), f"users/{user_id}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timing.cancel_wait
        while True:
            current = await self._store.by_id(run_id)
            assert current is not None
            if current.state in records.ENDED or loop.time() >= deadline:
                return current
            if current.state in (records.QUEUED, records.AWAITING_APPROVAL):
                await self._end_idle(current)
                continue
            await self._changed_or_poll(run_id)

    async def _end_idle(self, run: WorkflowRun) -> None:
        """Ends a workflow run no replica drives (queued or paused), if it still is."""
        was = run.state
        steps = [_step(step) for step in run.steps]
        for step in steps:
            if step.run and step.state in _LIVE:
                with contextlib.suppress(ServiceError):
                    _finish_member(
                        step, await self._dispatcher.cancel(run.user_id, RUN.id(step.run))
                    )
        definition = json_format.ParseDict(run.definition, workflows_pb2.Workflow())
        live = _Live(run, definition, steps)
        run.state = records.CANCELLED
        run.end_time = run.update_time = utc_now()
        run.lease_expire_time = None
        self._sum(live)
        live.emit(workflow_finished=workflow_run_proto(self._snapshot(live)))
        events = [(e.sequence, e.SerializeToString()) for e in live.unsaved]
        if await self._store.save(run, events, [_changed_event(run)], expect_state=was):
            self._wake(run.id)
            self._on_saved()

    def hung_up(self, run_id: str, user_id: str) -> None:
        """The caller that started the workflow run left: it ends with the call, unless
        this replica is stopping (the stop broke the call; the run is handed on)."""

        async def cancel() -> None:
            await asyncio.sleep(_HANG_UP_SECONDS)
            if not self._executor.stopping:
                await self.cancel(user_id, run_id)

        task = asyncio.get_running_loop().create_task(cancel())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- leases and takeovers --------------------------------------------------------------

    async def renew_leases(self) -> None:
        live = list(self.active)
        held = await self._store.renew_leases(self.owner, live, self._timing.lease)
        for run_id in live:
            if run_id not in held and (lost := self.active.get(run_id)) and lost.task:
                lost.task.cancel()

    async def sweep(self) -> None:
        """Takes over workflow runs whose replica was lost; goes on with paused ones
        whose step runs resumed (an approval decided or expired anywhere); claims
        queued ones whose message was lost."""
        for run_id in await self._store.expired_leases(utc_now()):
            if run_id in self.active:
                continue
            run = await self._store.take_over(run_id, self.owner, self._timing.lease)
            if run is None:
                continue
            if run.attempts > _MAX_ATTEMPTS:
                live = _Live(
                    run,
                    json_format.ParseDict(run.definition, workflows_pb2.Workflow()),
                    [_step(s) for s in run.steps],
                )
                self.active[run.id] = live
                try:
                    await self._end(
                        live,
                        records.FAILED,
                        Unavailable(
                            f"the workflow run's runner was lost {run.attempts - 1} times",
                            reason="RUNNER_LOST",
                        ).to_status(),
                    )
                finally:
                    self.active.pop(run.id, None)
                continue
            log.warning("workflowRuns/%s lost its runner; going on from its last step", run_id)
            self._launch(run)
        for paused_id in await self._store.resumable():
            await self._resume(paused_id)
        stalled = utc_now() - 4 * self._timing.lease
        for queued in await self._store.in_state(records.QUEUED, stalled):
            await self.claim(queued.id)

    async def stop(self) -> None:
        """Stops driving here; another replica (or this one, restarted) goes on."""
        handed = list(self.active)
        tasks = [live.task for live in self.active.values() if live.task]
        for task in [*tasks, *self._background]:
            task.cancel()
        await asyncio.gather(*tasks, *self._background, return_exceptions=True)
        try:
            await self._store.expire_leases(self.owner, handed)
        except Exception:  # noqa: BLE001 - their leases run out by themselves
            log.warning("giving up %d workflow runs failed", len(handed), exc_info=True)


def _agent_steps(
    step: workflows_pb2.WorkflowStep, index: int
) -> list[tuple[str, workflows_pb2.AgentStep, str]]:
    """(branch id, what it runs, its input's field path) of every agent run of a step:
    one, with no branch id, for an agent step."""
    if step.WhichOneof("kind") == "agent":
        return [("", step.agent, f"steps[{index}].agent.input")]
    return [
        (b.id, b.agent, f"steps[{index}].parallel.branches[{k}].agent.input")
        for k, b in enumerate(step.parallel.branches)
    ]


def _count(members: list[StepRun], state: int) -> int:
    return sum(member.state == state for member in members)


def _finish_member(member: StepRun, run: records.Run) -> None:
    """The member as its run ended (or paused)."""
    member.state = runner_pb2.Run.State.ValueType(run.state)
    member.output = run.final_output
    member.ClearField("structured_output")
    if run.structured_output is not None:
        json_format.ParseDict(run.structured_output, member.structured_output)
    member.usage.CopyFrom(common_pb2.Usage(**run.usage))
    member.credits = run.credits
    member.ClearField("error")
    if run.error:
        member.error.ParseFromString(run.error)
    if run.state in records.ENDED:
        member.end_time.CopyFrom(timestamp(run.end_time or utc_now()))


def _step_error(step_id: str, member: StepRun) -> ServiceError | status_pb2.Status:
    """Why the step failed: its run's own status (code and details kept), said to be
    the step's; or, for a run that ended without one, that it ended so."""
    what = f"the step {step_id!r}" + (f" (branch {member.branch!r})" if member.branch else "")
    if member.error.code:
        status = status_pb2.Status()
        status.CopyFrom(member.error)
        status.message = f"{what}: {member.error.message}"[:1000]
        return status
    state = runner_pb2.Run.State.Name(member.state).removeprefix("STATE_")
    return FailedPrecondition(f"{what} ended {state}", reason="STEP_FAILED", run=member.run)


def _workflow_state(step_state: int) -> int:
    """A step run's end as the workflow run's: cancelled and blocked carry over."""
    if step_state in (records.CANCELLED, records.BLOCKED):
        return step_state
    return records.FAILED


async def _ready(value: dict) -> dict:
    return value
