"""One run's life in a runner process: start, stream, pause for approvals, end.

Every run goes through the SDK's streamed runner, whichever RPC started it, so
there is one path from a model's deltas to the run's events (a run no caller
streams asks its models for whole replies, which come as one delta a message:
see models.WholeReplies). Events are kept in memory while the run is live (for
watchers here) and written as it goes (for watchers anywhere; see event_log.py);
the rest are written with the run's state when it pauses or ends, in the same
transaction as its outbox events, its conversation items (session.py) and the
release of its conversation to the next run waiting for it.

A run is this replica's while its lease holds (see dispatch.py): every write of
its state and history is conditional on that, so a replica that lost a run
(another took it over) writes nothing more of it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import openai
from agents import (
    AgentsException,
    InputGuardrailTripwireTriggered,
    ItemHelpers,
    MaxTurnsExceeded,
    ModelBehaviorError,
    MultiProvider,
    OutputGuardrailTripwireTriggered,
    RunConfig,
    RunHooks,
    Runner,
    RunState,
)
from agents.items import ModelResponse
from google.protobuf import json_format
from google.rpc import status_pb2

from agentmesh.api import timestamp
from agentmesh.errors import FailedPrecondition, ServiceError, Unavailable, internal_status
from agentmesh.gen.common.v1 import common_pb2
from agentmesh.gen.guardrails.v1 import guardrails_pb2
from agentmesh.gen.runner.v1 import events_pb2, runner_pb2
from agentmesh.ids import new_id, utc_now
from agentmesh.names import ResourceName
from agentmesh.outbound import OutboundError
from services.runner import records
from services.runner.build import AgentBuilder
from services.runner.compact import Compactor
from services.runner.credits import Credits, Hold, cost
from services.runner.definitions import AgentDefinitions
from services.runner.event_log import EventWriter, Execution
from services.runner.guarding import OutputGate, Tripped
from services.runner.session import ConversationSession
from services.runner.store import RunLost, RunnerStore
from services.runner.tracing import trace_metadata

log = logging.getLogger("agentmesh.runner")

State = runner_pb2.Run.State
Approval = runner_pb2.Approval
RUN = ResourceName.of(runner_pb2.Run)
APPROVAL = ResourceName.of(runner_pb2.Approval)
ENDED = {State.STATE_SUCCEEDED, State.STATE_FAILED, State.STATE_CANCELLED, State.STATE_BLOCKED}
# RunConfig's default model provider, built once: every agent the runner builds carries
# its Model, and building the default per run (it reads the environment) cost a run
# about 2% of the runner's time.
_MODEL_PROVIDER = MultiProvider()
# Deltas are sent in pieces of at least this much text, or after this long.
_DELTA_CHARS = 256
_DELTA_SECONDS = 0.02


def add_usage(total: dict[str, int], more: dict[str, int]) -> dict[str, int]:
    return {key: total.get(key, 0) + more.get(key, 0) for key in {*total, *more}}


def usage_dict(usage: Any) -> dict[str, int]:
    """The SDK's Usage as the contract's Usage fields."""
    return {
        "requests": usage.requests,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "cached_input_tokens": getattr(usage.input_tokens_details, "cached_tokens", 0) or 0,
        "reasoning_tokens": getattr(usage.output_tokens_details, "reasoning_tokens", 0) or 0,
    }


def run_proto(run: records.Run) -> runner_pb2.Run:
    message = runner_pb2.Run(
        name=RUN.format(run.id),
        agent=f"agents/{run.agent_id}",
        last_agent=f"agents/{run.last_agent_id}" if run.last_agent_id else "",
        conversation=f"conversations/{run.conversation_id}",
        state=State.ValueType(run.state),
        input=run.input,
        final_output=run.final_output,
        items=[json_format.ParseDict(item, runner_pb2.RunItem()) for item in run.items],
        usage=common_pb2.Usage(**run.usage),
        credits=run.credits,
        trace=f"traces/{run.trace_id}" if run.trace_id else "",
        create_time=timestamp(run.create_time),
        agent_revision=run.agent_revision,
        max_credits=run.max_credits,
        guardrail_results=[
            json_format.ParseDict(result, guardrails_pb2.GuardrailResult())
            for result in run.guardrail_results
        ],
        workflow_run=f"workflowRuns/{run.workflow_run_id}" if run.workflow_run_id else "",
    )
    if run.structured_output is not None:
        json_format.ParseDict(run.structured_output, message.structured_output)
    if run.error:
        message.error.ParseFromString(run.error)
    if run.end_time:
        message.end_time.CopyFrom(timestamp(run.end_time))
    return message


def approval_proto(approval: records.Approval) -> runner_pb2.Approval:
    message = runner_pb2.Approval(
        name=APPROVAL.format(approval.run_id, approval.id),
        agent=f"agents/{approval.agent_id}",
        tool_name=approval.tool_name,
        arguments=approval.arguments,
        state=Approval.State.ValueType(approval.state),
        reason=approval.reason,
        create_time=timestamp(approval.create_time),
        decided_by=approval.decided_by,
        expire_time=timestamp(approval.expire_time),
        call_id=approval.call_id,
    )
    if approval.decide_time:
        message.decide_time.CopyFrom(timestamp(approval.decide_time))
    return message


def failure(error: BaseException) -> status_pb2.Status:
    """Why a run failed, as the google.rpc.Status an RPC error would carry.

    Messages are ours: a provider's own error text may quote the key it rejected.
    """
    if isinstance(error, ServiceError):
        return error.to_status()
    if isinstance(error, MaxTurnsExceeded):
        return FailedPrecondition(
            "the run took more turns than max_turns allows", reason="MAX_TURNS_EXCEEDED"
        ).to_status()
    if isinstance(error, ModelBehaviorError):
        return FailedPrecondition(str(error)[:1000], reason="MODEL_BEHAVIOR").to_status()
    if isinstance(error, openai.AuthenticationError | openai.PermissionDeniedError):
        return FailedPrecondition(
            f"the model provider refused its API key (HTTP {error.status_code}); "
            "update the provider's key",
            reason="PROVIDER_UNAUTHENTICATED",
        ).to_status()
    if isinstance(error, openai.RateLimitError):
        return Unavailable(
            "the model provider is rate limiting (HTTP 429)",
            retry_after_seconds=10,
            reason="PROVIDER_RATE_LIMITED",
        ).to_status()
    if isinstance(error, openai.APIStatusError):
        return Unavailable(
            f"the model provider answered HTTP {error.status_code}", reason="PROVIDER_ERROR"
        ).to_status()
    if isinstance(error, openai.APITimeoutError):
        return Unavailable(
            "the model provider did not answer in time", reason="PROVIDER_TIMEOUT"
        ).to_status()
    if isinstance(error, openai.APIConnectionError):
        # The guard's refusals (an internal address, a reply too large) say why,
        # without quoting the server.
        cause = error.__cause__
        why = f": {cause}" if isinstance(cause, OutboundError) else ""
        return Unavailable(
            f"the model provider cannot be reached{why}", reason="PROVIDER_UNREACHABLE"
        ).to_status()
    if isinstance(error, AgentsException):
        return FailedPrecondition(str(error)[:1000], reason="RUN_FAILED").to_status()
    reference = new_id()[:12]
    log.error("run failed: reference=%s", reference, exc_info=error)
    return internal_status(reference)


@dataclass
class Start:
    """A new run: its input is the run's, its context the merged context values.
    `streamed`: its caller reads its text as it comes (StreamRun; a run that may be
    watched). Otherwise its models are asked for whole replies: each message's text
    is one delta. `new_conversation`: the run's start made its conversation, so
    there is no history to read."""

    context: dict[str, Any]
    streamed: bool = True
    new_conversation: bool = False


@dataclass
class Resume:
    """A paused run going on: its SDK state, and each call's decision by call id."""

    state: str
    decisions: dict[str, tuple[bool, str]]


class _Deltas:
    """Coalesces text deltas: a client gets words, not one message per token.

    Text passes the run's output gate first (guarding.py): what could still trip an
    output guardrail is held back until it cannot, and text that trips is never
    sent. Message items of agents whose text is held to the end wait with it.
    """

    def __init__(self, execution: Execution):
        self._execution = execution
        self._agent = ""
        self._text: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self.gate: OutputGate | None = None
        self.held_items: list[runner_pb2.RunItem] = []

    def add(self, agent: str, delta: str) -> None:
        if self.gate is not None:
            delta = self.gate.feed(agent, delta)  # raises Tripped
            if not delta:
                return
        if agent != self._agent:
            self.flush()
            self._agent = agent
        self._text.append(delta)
        if sum(map(len, self._text)) >= _DELTA_CHARS:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(_DELTA_SECONDS, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._text:
            text, self._text = "".join(self._text), []
            self._execution.emit(
                text_delta=runner_pb2.RunEvent.TextDelta(agent=f"agents/{self._agent}", delta=text)
            )

    def end_message(self) -> None:
        """The text so far is a whole message: what the gate held back of it goes out
        if it passes (raises Tripped if not)."""
        if self.gate is not None and (rest := self.gate.end_message()):
            self._text.append(rest)
        self.flush()

    def end_run(self) -> None:
        """The run's output passed its guardrails: what waited for that goes out."""
        self.end_message()
        if self.gate is not None and (held := self.gate.end_run()):
            self._text.append(held)
        self.flush()
        for item in self.held_items:
            self._execution.run.items.append(json_format.MessageToDict(item))
            self._execution.emit(item=item)
        self.held_items = []

    def blocked(self, agent: str, override: str) -> None:
        """The run was blocked: what was held is dropped, and the override is sent."""
        self.gate, self.held_items = None, []
        self.flush()
        self._agent = agent
        self._text.append(override)
        self.flush()


class _Metering(RunHooks[Any]):
    """Prices each model call as it ends and keeps the run's hold ahead of it; marks
    the run unsafe to replay before any tool begins."""

    def __init__(
        self, execution: Execution, executor: Executor, hold: Hold, session: ConversationSession
    ):
        self._execution = execution
        self._executor = executor
        self._hold = hold
        self._session = session
        self.usage_events: list[events_pb2.UsageRecorded] = []
        self.credits = 0  # what this leg of the run has cost so far
        # Model calls the SDK does not count (compaction): added to the run's usage.
        self.other_usage: dict[str, int] = {}

    async def on_llm_end(self, context: Any, agent: Any, response: ModelResponse) -> None:
        await self.record(agent, response)

    async def record(self, agent: Any, response: ModelResponse, counted: bool = True) -> None:
        model = getattr(agent.model, "model", "") or ""
        usage = usage_dict(response.usage)
        if not counted:
            self.other_usage = add_usage(self.other_usage, usage)
        credits_ = self._executor.credits
        price = credits_.price(str(model))
        credits = cost(usage, price)
        self.credits += credits
        run = self._execution.run
        self.usage_events.append(
            events_pb2.UsageRecorded(
                run=RUN.format(run.id),
                user=f"users/{run.user_id}",
                agent=f"agents/{agent.name}",
                model=str(model),
                usage=common_pb2.Usage(**usage),
                time=timestamp(utc_now()),
                credits=credits,
            )
        )
        held = len(self._hold.reservations)
        # Raises QuotaExceeded when the hold cannot grow: the run stops here.
        await credits_.cover(self._hold, self.credits)
        if len(self._hold.reservations) != held:
            await self._executor.hold_changed(self._execution, self._hold)

    async def on_tool_start(self, context: Any, agent: Any, tool: Any) -> None:
        execution = self._execution
        if execution.replayable:
            # Written before the tool runs: a replica that takes the run over must
            # not run a tool twice. The run's history so far goes with it.
            execution.replayable = False
            executor, run = self._executor, execution.run
            if not await executor.store.unreplayable(
                run, executor.owner, self._session.unwritten()
            ):
                raise RunLost(f"runs/{run.id}")


class Executor:
    """Runs in this process, by id, and what they need to run."""

    def __init__(
        self,
        store: RunnerStore,
        definitions: AgentDefinitions,
        builder: AgentBuilder,
        credits: Credits,
        approval_ttl: timedelta,
        *,
        owner: str,
        compactor: Compactor | None = None,
        on_saved: Any = None,
        tracing: bool = True,
    ):
        self.store = store
        self.credits = credits
        self.owner = owner  # this replica, as runs' owner
        self._definitions = definitions
        self._builder = builder
        self._approval_ttl = approval_ttl
        self._compactor = compactor
        self._on_saved = on_saved or (lambda: None)
        self._tracing = tracing  # off: the SDK builds no spans (benchmarks)
        self._writer = EventWriter(store)
        self.active: dict[str, Execution] = {}
        # Set whenever a run leaves: a replica at capacity waits for room.
        self.room = asyncio.Event()
        self.stopping = False

    def start(self) -> None:
        self._writer.start()

    def launch(
        self, run: records.Run, start: Start | Resume, hold: Hold, base: int = 0
    ) -> Execution:
        """Executes a run this replica owns; `base` is the last sequence of the events its
        earlier legs wrote."""
        execution = Execution(run, base=base, replayable=run.replayable, on_emit=self._writer.note)
        execution.emit(run_started=run_proto(run))
        self.active[run.id] = execution
        execution.task = asyncio.create_task(
            self._execute(execution, start, hold), name=f"run-{run.id}"
        )
        return execution

    def cancel(self, run_id: str) -> bool:
        execution = self.active.get(run_id)
        if execution is None or execution.task is None or execution.finishing:
            return False
        execution.task.cancel()
        return True

    def lose(self, run_id: str) -> None:
        """The run is another replica's now: stop it here, and write nothing of it."""
        execution = self.active.get(run_id)
        if execution is not None and not execution.finishing:
            execution.lost = True
            if execution.task is not None:
                execution.task.cancel()

    async def stop(self) -> None:
        """Ends every live run here (the process is going away). A run that can be
        replayed is given up for another replica (or this one, restarted) to take
        over; the others end FAILED (RUNNER_STOPPED)."""
        self.stopping = True
        handed = [e for e in self.active.values() if e.replayable and not e.finishing]
        for execution in handed:
            execution.lost = True
        tasks = [e.task for e in self.active.values() if e.task]
        for execution in self.active.values():
            if execution.task and not execution.finishing:
                execution.task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._writer.stop()
        await self._builder.aclose()
        try:
            await self.store.expire_leases(self.owner, [e.run.id for e in handed])
        except Exception:  # noqa: BLE001 - their leases run out by themselves
            log.warning("giving up %d runs failed", len(handed), exc_info=True)

    async def hold_changed(self, execution: Execution, hold: Hold) -> None:
        """Its reservations are written with the run: a replica that finds the run lost
        releases them."""
        execution.run.reservations = [r.name for r in hold.reservations]
        await self.store.set_reservations(execution.run.id, self.owner, execution.run.reservations)

    async def _execute(self, execution: Execution, start: Start | Resume, hold: Hold) -> None:
        run = execution.run
        session = ConversationSession(
            self.store, run.conversation_id, new=isinstance(start, Start) and start.new_conversation
        )
        metering = _Metering(execution, self, hold, session)
        deltas = _Deltas(execution)
        result = None
        # The leg's computer workspace and MCP connections, closed in this task.
        tools = self._builder.run_tools()
        try:
            graph = await self._definitions.graph(
                f"users/{run.user_id}", run.agent_id, run.revisions
            )
            starting = await self._builder.build(
                f"users/{run.user_id}",
                graph,
                run.agent_id,
                tools,
                guards=self._builder.guards(f"users/{run.user_id}", run.guardrail_results),
                whole_replies=isinstance(start, Start) and not start.streamed,
            )
            gate = OutputGate(graph)
            deltas.gate = gate if gate.active else None
            source: Any = run.input
            context = start.context if isinstance(start, Start) else None
            if isinstance(start, Resume):  # its state, with the approvals' decisions applied
                source = await RunState.from_string(starting, start.state)
                _apply_decisions(source, start.decisions)
            elif self._compactor is not None:  # a resumed run does not read the history
                session.compact = functools.partial(
                    self._compactor.compact, run, starting, metering.record
                )
            result = Runner.run_streamed(
                starting,
                source,
                max_turns=run.max_turns,
                hooks=metering,
                session=session,
                run_config=RunConfig(
                    workflow_name=f"agents/{run.agent_id}",
                    trace_id=run.trace_id,
                    group_id=run.conversation_id,
                    # Routes the spans to this replica's sink, filed under the user's run.
                    trace_metadata=trace_metadata(self.owner, run),
                    tracing_disabled=not self._tracing,
                    model_provider=_MODEL_PROVIDER,
                ),
                context=context,
            )
            async for event in result.stream_events():
                self._translate(execution, deltas, event)
            run.last_agent_id = result.last_agent.name
            if result.interruptions:
                deltas.end_message()  # what waits for the final output waits on
                await self._pause(execution, result, metering, hold, session)
                return
            deltas.end_run()  # the output guardrails passed
            self._succeed(run, result.final_output)
        except asyncio.CancelledError:
            if result is not None:
                result.cancel()
            if execution.lost:
                await self._let_go(execution, hold)
                return
            run.state = State.STATE_FAILED if self.stopping else State.STATE_CANCELLED
            if self.stopping:
                run.error = (
                    Unavailable("the runner stopped during the run", reason="RUNNER_STOPPED")
                    .to_status()
                    .SerializeToString()
                )
        except RunLost:
            await self._let_go(execution, hold)
            return
        except (InputGuardrailTripwireTriggered, OutputGuardrailTripwireTriggered) as tripped:
            run.state = State.STATE_BLOCKED
            info = tripped.guardrail_result.output.output_info or {}
            run.final_output = info.get("message") or (
                f"blocked by the guardrail {info.get('name', '')!r}"
            )
            deltas.blocked(run.last_agent_id or run.agent_id, run.final_output)
        except Tripped as tripped:  # streamed text tripped an output guardrail; none of it went
            if result is not None:
                tripped.trace(result.trace, run.last_agent_id or run.agent_id)
                result.cancel()
            run.state = State.STATE_BLOCKED
            run.final_output = tripped.override
            run.guardrail_results.append(json_format.MessageToDict(tripped.result))
            deltas.blocked(run.last_agent_id or run.agent_id, run.final_output)
        except BaseException as error:  # noqa: BLE001 - every failure ends the run with a status
            if execution.lost:  # the SDK wrapped our cancel or our RunLost
                await self._let_go(execution, hold)
                return
            run.state = State.STATE_FAILED
            run.error = failure(error).SerializeToString()
        finally:
            deltas.flush()
            await tools.aclose()
        await self._end(execution, result, metering, hold, session)

    def _succeed(self, run: records.Run, output: Any) -> None:
        run.state = State.STATE_SUCCEEDED
        if isinstance(output, str):
            run.final_output = output
        else:
            run.structured_output = output
            run.final_output = json.dumps(output)

    def _translate(self, execution: Execution, deltas: _Deltas, event: Any) -> None:
        if event.type == "raw_response_event":
            if getattr(event.data, "type", "") == "response.output_text.delta":
                deltas.add(execution.run.last_agent_id or execution.run.agent_id, event.data.delta)
            return
        deltas.end_message()
        if event.type == "agent_updated_stream_event":
            execution.run.last_agent_id = event.new_agent.name
            execution.emit(agent_updated=f"agents/{event.new_agent.name}")
            return
        item = _run_item(event)
        if item is not None and item.type == runner_pb2.RunItem.TYPE_MESSAGE:
            if deltas.gate is not None and deltas.gate.holds(event.item.agent.name):
                deltas.held_items.append(item)  # its text is held to the end too
                return
        if item is not None:
            execution.run.items.append(json_format.MessageToDict(item))
            execution.emit(item=item)

    async def _pause(
        self,
        execution: Execution,
        result: Any,
        metering: _Metering,
        hold: Hold,
        session: ConversationSession,
    ) -> None:
        run = execution.run
        now = utc_now()
        approvals = [
            records.Approval(
                id=new_id(),
                run_id=run.id,
                user_id=run.user_id,
                call_id=str(item.call_id or ""),
                agent_id=item.agent.name,
                tool_name=str(item.name or item.tool_name or ""),
                arguments=str(item.arguments or "{}"),
                state=Approval.STATE_PENDING,
                create_time=now,
                expire_time=now + self._approval_ttl,
            )
            for item in result.interruptions
        ]
        run.state = State.STATE_AWAITING_APPROVAL
        run.paused_state = result.to_state().to_string()
        execution.finishing = True
        await self._charge(run, result, metering, hold)
        run.update_time = utc_now()
        run.lease_expire_time, run.reservations = None, []
        execution.hold()
        for approval in approvals:
            execution.emit(approval_required=approval_proto(approval))
        execution.emit(run_finished=run_proto(run))
        saved = await self.store.pause_run(
            run,
            approvals,
            execution.unsaved(),
            [*metering.usage_events, changed_event(run)],
            items=session.unwritten(),
            owner=self.owner,
        )
        self._finish(execution, saved)

    async def _end(
        self,
        execution: Execution,
        result: Any,
        metering: _Metering,
        hold: Hold,
        session: ConversationSession,
    ) -> None:
        run = execution.run
        execution.finishing = True
        run.paused_state = None
        try:
            await self._charge(run, result, metering, hold)
        except Exception:  # noqa: BLE001 - the run ends all the same; its holds expire
            log.warning("settling credits of runs/%s failed", run.id, exc_info=True)
        run.end_time = run.update_time = utc_now()
        run.lease_expire_time, run.reservations = None, []
        execution.hold()
        execution.emit(run_finished=run_proto(run))
        saved = await self.store.save_run(
            run,
            execution.unsaved(),
            [*metering.usage_events, changed_event(run)],
            release_conversation=True,
            items=session.unwritten(),
            owner=self.owner,
        )
        self._finish(execution, saved)

    async def _let_go(self, execution: Execution, hold: Hold) -> None:
        """Another replica has the run: what this one held for it goes back."""
        log.warning("runs/%s is run elsewhere now; stopped here", execution.run.id)
        execution.lost = True
        try:
            await self.credits.settle(hold, 0)
        except Exception:  # noqa: BLE001, S110 - released by the replica that took it, or expired
            pass
        self._finish(execution, saved=False)

    async def _charge(self, run: records.Run, result: Any, metering: _Metering, hold: Hold) -> None:
        if result is not None:
            # A resumed RunState carries the usage from before its pause.
            run.usage = add_usage(usage_dict(result.context_wrapper.usage), metering.other_usage)
        elif metering.other_usage:
            run.usage = add_usage(run.usage, metering.other_usage)
        run.credits += await self.credits.settle(hold, metering.credits)

    def _finish(self, execution: Execution, saved: bool) -> None:
        if not saved:
            execution.lost = True
        execution.done.set()
        execution.changed.set()
        self.active.pop(execution.run.id, None)
        self.room.set()
        if saved:
            self._on_saved()


def _apply_decisions(state: RunState, decisions: dict[str, tuple[bool, str]]) -> None:
    for interruption in state.get_interruptions():
        approved, reason = decisions.get(str(interruption.call_id), (False, "no decision"))
        if approved:
            state.approve(interruption)
        else:
            state.reject(interruption, rejection_message=reason or "the call was not approved")


def changed_event(run: records.Run) -> events_pb2.RunChanged:
    return events_pb2.RunChanged(
        run=RUN.format(run.id),
        user=f"users/{run.user_id}",
        agent=f"agents/{run.agent_id}",
        state=State.ValueType(run.state),
        time=timestamp(utc_now()),
        workflow_run=f"workflowRuns/{run.workflow_run_id}" if run.workflow_run_id else "",
    )


def _run_item(event: Any) -> runner_pb2.RunItem | None:
    if event.type != "run_item_stream_event":
        return None
    item, agent = event.item, f"agents/{event.item.agent.name}"
    Type = runner_pb2.RunItem.Type
    if event.name == "message_output_created":
        return runner_pb2.RunItem(
            type=Type.TYPE_MESSAGE, agent=agent, text=ItemHelpers.text_message_output(item)
        )
    if event.name == "tool_called":
        raw = item.raw_item
        name = raw.get("name") if isinstance(raw, dict) else getattr(raw, "name", "")
        arguments = raw.get("arguments") if isinstance(raw, dict) else getattr(raw, "arguments", "")
        return runner_pb2.RunItem(
            type=Type.TYPE_TOOL_CALL,
            agent=agent,
            tool_name=str(name or ""),
            call_id=str(item.call_id or ""),
            data=str(arguments or ""),
        )
    if event.name == "tool_output":
        output = (
            item.output if isinstance(item.output, str) else json.dumps(item.output, default=str)
        )
        return runner_pb2.RunItem(
            type=Type.TYPE_TOOL_OUTPUT, agent=agent, call_id=str(item.call_id or ""), data=output
        )
    if event.name == "handoff_occured":
        return runner_pb2.RunItem(
            type=Type.TYPE_HANDOFF, agent=agent, text=f"agents/{item.target_agent.name}"
        )
    if event.name == "reasoning_item_created":
        return runner_pb2.RunItem(type=Type.TYPE_REASONING, agent=agent)
    return None
