"""How a run decides its agents' guardrails, and gates what it streams.

Deciding: regex and builtin guardrails are decided in this process (microseconds,
no hop); code, endpoint and agent guardrails go to the guardrails service as the
run's user, which runs code in the sandbox, calls endpoints through the outbound
guard and runs judging agents through the runner. Every result is recorded on the
run (Run.guardrail_results) and on its trace, as a `guardrail_result` span under
the SDK's own guardrail span.

Gating: the SDK's output guardrails see only the final output, after every delta
has gone out. The OutputGate stands between the model's deltas and the client:
text is sent only once each output guardrail of the agent writing it has seen
it with enough text after it to decide (its `stream_window`: a card number or a
key that is still being written is held back, the text before it is not). An
agent with a guardrail that needs the whole output (ACTION_ALLOW, a length, a
JSON Schema, an unbounded pattern) or is decided elsewhere (code, endpoint,
agent) has its text held until the run's output is final and passed. Text that
trips is never sent: the run ends BLOCKED and the client gets the override.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from agents import GuardrailFunctionOutput
from agents.tracing import custom_span, guardrail_span
from google.protobuf import json_format

from agentmesh.auth import USER_HEADER
from agentmesh.errors import FailedPrecondition, PeerError
from agentmesh.gen.guardrails.v1 import guardrails_pb2 as g
from agentmesh.gen.guardrails.v1 import guardrails_pb2_grpc
from agentmesh.gen.registry.v1 import registry_pb2
from agentmesh.guardrail_checks import (
    InvalidGuardrail,
    Verdict,
    evaluate,
    is_local,
    result_of,
    stream_hold,
    stream_window,
)

INPUT, OUTPUT = g.GUARDRAIL_STAGE_INPUT, g.GUARDRAIL_STAGE_OUTPUT
_STAGE_NAMES = {INPUT: "input", OUTPUT: "output"}
# Texts longer than this are checked off the event loop.
_IN_THREAD_CHARS = 64 * 1024
# What EvaluateGuardrails takes at most.
_MAX_REMOTE_CHARS = 1_048_576
# Code runs in a sandbox and agents run models: minutes at most.
_REMOTE_SECONDS = 180.0
# An unbroken run of text (a key, a token, an email) is held back whole up to this
# length; past it, its start is released like any other text.
_MAX_HELD_RUN = 1024
# Characters a finding needs after it before a check's verdict on it is final
# (a card number may go on with more digits).
_SETTLE = 4


def override_message(guardrail: g.Guardrail) -> str:
    """What a person sees instead of what the guardrail blocked."""
    return guardrail.override_message or f"blocked by the guardrail {guardrail.name!r}"


class Guarding:
    """Decides guardrails for runs; one per runner process."""

    def __init__(self, guardrails: grpc.aio.Channel | None = None):
        self._service = guardrails_pb2_grpc.GuardrailServiceStub(guardrails) if guardrails else None

    @property
    def remote(self) -> bool:
        """Whether code, endpoint and agent guardrails can be decided."""
        return self._service is not None

    async def evaluate(
        self,
        user: str,
        agent_id: str,
        guardrail: g.Guardrail,
        text: str,
        stage: g.GuardrailStage,
    ) -> g.GuardrailResult:
        """The guardrail's result on `text`, with its stage in `info`."""
        if is_local(guardrail):
            try:
                if len(text) > _IN_THREAD_CHARS:
                    verdict = await asyncio.to_thread(evaluate, guardrail, text)
                else:
                    verdict = evaluate(guardrail, text)
            except InvalidGuardrail as invalid:  # the registry refuses these at save time
                raise FailedPrecondition(
                    f"agents/{agent_id}: guardrail {guardrail.name!r}: {invalid}",
                    reason="GUARDRAIL_INVALID",
                ) from None
            result = result_of(guardrail.name, verdict)
        else:
            result = await self._remote(user, agent_id, guardrail, text, stage)
        result.info["stage"] = _STAGE_NAMES[stage]
        return result

    async def _remote(
        self,
        user: str,
        agent_id: str,
        guardrail: g.Guardrail,
        text: str,
        stage: g.GuardrailStage,
    ) -> g.GuardrailResult:
        if self._service is None:
            raise FailedPrecondition(
                f"agents/{agent_id}: {guardrail.WhichOneof('check')} guardrails need the "
                "guardrails service",
                reason="UNSUPPORTED_TOOL",
            )
        if len(text) > _MAX_REMOTE_CHARS:
            return result_of(
                guardrail.name,
                Verdict(
                    True,
                    f"the text is longer than the {_MAX_REMOTE_CHARS:,} characters this "
                    "guardrail can check",
                    {"check": guardrail.WhichOneof("check"), "length": len(text)},
                ),
            )
        try:
            response = await self._service.EvaluateGuardrails(
                g.EvaluateGuardrailsRequest(
                    guardrails=[guardrail], text=text, stage=stage, agent=f"agents/{agent_id}"
                ),
                metadata=((USER_HEADER, user),),
                timeout=_REMOTE_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            raise PeerError.of(error) from None
        return response.results[0]


@dataclass
class RunGuards:
    """One run's guardrail decisions: the SDK's guardrail functions call `decide`,
    and each result is added to `results` (the run's record) as it comes."""

    guarding: Guarding
    user: str
    results: list[dict[str, Any]] = field(default_factory=list)

    async def decide(
        self, agent_id: str, guardrail: g.Guardrail, text: str, stage: g.GuardrailStage
    ) -> GuardrailFunctionOutput:
        result = await self.guarding.evaluate(self.user, agent_id, guardrail, text, stage)
        recorded = json_format.MessageToDict(result)
        self.results.append(recorded)
        # Under the SDK's guardrail span, which says only its name and whether it tripped.
        with custom_span("guardrail_result", {"agent": f"agents/{agent_id}", **recorded}):
            pass
        return GuardrailFunctionOutput(
            output_info={
                "name": guardrail.name,
                "message": override_message(guardrail),
                "reason": result.message,
            },
            tripwire_triggered=result.tripwire_triggered,
        )


class Tripped(Exception):
    """Streamed text tripped an output guardrail before it was sent."""

    def __init__(self, guardrail: g.Guardrail, result: g.GuardrailResult):
        super().__init__(guardrail.name)
        self.guardrail = guardrail
        self.result = result

    @property
    def override(self) -> str:
        return override_message(self.guardrail)

    def trace(self, trace: Any, agent_id: str) -> None:
        """Records the trip on the run's trace as the SDK records its own guardrails: a
        guardrail span, with the result under it."""
        if trace is None:
            return
        with guardrail_span(self.guardrail.name, triggered=True, parent=trace) as span:
            recorded = json_format.MessageToDict(self.result)
            with custom_span(
                "guardrail_result", {"agent": f"agents/{agent_id}", **recorded}, parent=span
            ):
                pass


@dataclass(frozen=True)
class _Plan:
    """How one agent's text is gated."""

    checks: tuple[tuple[g.Guardrail, int], ...]  # decided as it streams, with their windows
    window: int  # the most any of them holds back
    hold_to_end: bool  # some guardrail needs the final output


def _plan(guardrails: Any) -> _Plan | None:
    if not guardrails:
        return None
    checks, hold = [], False
    for guardrail in guardrails:
        window = stream_window(guardrail)
        if window is None:
            hold = True
        else:
            checks.append((guardrail, window))
    return _Plan(tuple(checks), max((w for _, w in checks), default=0), hold)


class OutputGate:
    """What of a run's streamed text may reach the client yet.

    `feed` takes each delta and returns the text that may be sent now; `end_message`
    says a message is complete (its held-back tail is checked and released);
    `end_run` releases what agents holding to the end wrote, once the run's final
    output has passed. `feed` and `end_message` raise Tripped instead of returning
    text that trips.
    """

    def __init__(self, graph: Mapping[str, registry_pb2.Agent]):
        self._plans = {
            agent_id: plan
            for agent_id, definition in graph.items()
            if (plan := _plan(definition.output_guardrails)) is not None
        }
        self._agent = ""
        self._text = ""  # the current message so far
        self._cut = 0  # how much of it is decided (sent, or held to the end)
        self._pending = 0  # where the first finding that may still trip starts
        self._held: list[str] = []

    @property
    def active(self) -> bool:
        return bool(self._plans)

    def holds(self, agent: str) -> bool:
        """Whether the agent's text waits for the run's final output to pass."""
        plan = self._plans.get(agent)
        return plan is not None and plan.hold_to_end

    def feed(self, agent: str, delta: str) -> str:
        out = ""
        if agent != self._agent:
            out = self.end_message()
            self._agent = agent
        plan = self._plans.get(agent)
        if plan is None:
            return out + delta
        self._text += delta
        self._pending = self._check(plan, final=False)
        return out + self._decide(plan, self._next_cut(plan))

    def end_message(self) -> str:
        plan = self._plans.get(self._agent)
        if plan is None or not self._text:
            self._text, self._cut = "", 0
            return ""
        self._check(plan, final=True)
        out = self._decide(plan, len(self._text))
        self._text, self._cut = "", 0
        return out

    def end_run(self) -> str:
        held, self._held = "".join(self._held), []
        return held

    def _decide(self, plan: _Plan, cut: int) -> str:
        piece = self._text[self._cut : cut]
        self._cut = max(self._cut, cut)
        if plan.hold_to_end:
            self._held.append(piece)
            return ""
        return piece

    def _next_cut(self, plan: _Plan) -> int:
        text = self._text
        size = len(text)
        tail = text[max(0, size - plan.window) :] if plan.window else ""
        hold = max(
            (
                stream_hold(guardrail, window, tail[max(0, len(tail) - window) :])
                for guardrail, window in plan.checks
            ),
            default=0,
        )
        # Never into the trailing unbroken run: a key or an email is held whole.
        low = max(0, size - _MAX_HELD_RUN)
        space = max(text.rfind(" ", low), text.rfind("\n", low), text.rfind("\t", low))
        run_start = space + 1 if space >= 0 else low
        return max(self._cut, min(size - hold, run_start, self._pending))

    def _check(self, plan: _Plan, *, final: bool) -> int:
        """Raises Tripped if a check trips on the message so far; else where the first
        finding starts that may still trip once more text comes (its length if none)."""
        text = self._text
        # Anything before this was decided with its whole window after it.
        start = 0 if final else max(0, self._cut - plan.window - 64)
        region = text[start:]
        pending = len(text)
        for guardrail, _ in plan.checks:
            verdict = evaluate(guardrail, region)
            if not verdict.tripwire_triggered:
                continue
            unsettled = None if final else _unsettled(verdict, len(region))
            if unsettled is not None:
                # What touches the end may read otherwise once more comes: not sent yet.
                pending = min(pending, start + unsettled)
                continue
            if start:
                verdict = evaluate(guardrail, text)  # positions in the whole message
            result = result_of(guardrail.name, verdict)
            result.info["stage"] = "output"
            result.info["streamed"] = True
            raise Tripped(guardrail, result)
        return pending


def _unsettled(verdict: Verdict, length: int) -> int | None:
    """For a tripped verdict on a text still streaming: None when it stands whatever
    follows (some finding ends far enough from the end), else where the earliest
    finding starts."""
    info = verdict.info
    findings = info.get("findings")
    if isinstance(findings, list) and findings:
        if info.get("count", 0) > len(findings):
            return None
        if any(finding["end"] <= length - _SETTLE for finding in findings):
            return None
        return min(int(finding["start"]) for finding in findings)
    if "end" in info:  # a regex match
        return None if int(info["end"]) <= length - _SETTLE else int(info["start"])
    return None
