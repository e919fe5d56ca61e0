"""Guardrails of every kind decided on one text, all at once.

regex and builtin are decided in-process (agentmesh/guardrail_checks.py); code
runs in the sandbox, never here; endpoint is a POST through the outbound guard;
agent runs another of the caller's agents through the runner and reads its
structured output.

A check that cannot be decided because the caller's definition is wrong (a bad
pattern, a refused URL, a missing agent) is the caller's error, named by field.
A check that fails while deciding (the sandboxed code crashed, the endpoint timed
out, the judging agent failed) trips: a guardrail that cannot say the text is
fine does not let it through, and its message says what went wrong.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import json_format

from agentmesh.auth import USER_HEADER
from agentmesh.errors import FailedPrecondition, InvalidArgument, NotFound, PeerError, ServiceError
from agentmesh.gen.guardrails.v1 import guardrails_pb2 as g
from agentmesh.gen.registry.v1 import registry_pb2, registry_pb2_grpc
from agentmesh.gen.runner.v1 import runner_pb2, runner_pb2_grpc
from agentmesh.guardrail_checks import InvalidGuardrail, Verdict, evaluate, is_local, result_of
from agentmesh.outbound import (
    BlockedDestination,
    OutboundError,
    OutboundPolicy,
    post_json,
    post_json_client,
)
from agentmesh.sandbox import SandboxError, SandboxUnavailable, run_code

_DEFAULT_SECONDS = 5.0
_CODE_MEMORY_MB = 256
# Texts longer than this are checked off the event loop.
_IN_THREAD_CHARS = 64 * 1024
# A judging agent runs a whole model turn (or several).
_AGENT_SECONDS = 120.0
_EXPECTED = 'an object {"tripwire_triggered": bool, "message": str}'
STAGES = {g.GUARDRAIL_STAGE_INPUT: "input", g.GUARDRAIL_STAGE_OUTPUT: "output"}


class Evaluator:
    def __init__(
        self, policy: OutboundPolicy, registry: grpc.aio.Channel, runner: grpc.aio.Channel
    ):
        self._policy = policy
        # Endpoint checks' calls, on connections kept alive.
        self._http = post_json_client(policy, timeout=_DEFAULT_SECONDS)
        self._registry = registry_pb2_grpc.RegistryServiceStub(registry)
        self._runner = runner_pb2_grpc.RunnerServiceStub(runner)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def evaluate_all(
        self,
        user: str,
        guardrails: Sequence[g.Guardrail],
        text: str,
        stage: g.GuardrailStage,
        agent: str = "",
        field: str = "guardrails",
    ) -> list[g.GuardrailResult]:
        """Each guardrail's result, in order, decided concurrently. The first caller's
        error (ServiceError) cancels the rest and is raised."""
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(
                        self.evaluate(user, guardrail, text, stage, agent, f"{field}[{i}]")
                    )
                    for i, guardrail in enumerate(guardrails)
                ]
        except ExceptionGroup as errors:
            raise _first(errors) from None
        return [task.result() for task in tasks]

    async def evaluate(
        self,
        user: str,
        guardrail: g.Guardrail,
        text: str,
        stage: g.GuardrailStage,
        agent: str,
        field: str,
    ) -> g.GuardrailResult:
        """One guardrail's result; `field` names it in the caller's request for errors."""
        try:
            verdict = await self._verdict(user, guardrail, text, stage, agent, field)
        except InvalidGuardrail as invalid:
            raise InvalidArgument([(f"{field}.{invalid.field}", invalid.reason)]) from None
        return result_of(guardrail.name, verdict)

    async def _verdict(
        self,
        user: str,
        guardrail: g.Guardrail,
        text: str,
        stage: g.GuardrailStage,
        agent: str,
        field: str,
    ) -> Verdict:
        if is_local(guardrail):
            if len(text) > _IN_THREAD_CHARS:
                return await asyncio.to_thread(evaluate, guardrail, text)
            return evaluate(guardrail, text)
        kind = guardrail.WhichOneof("check")
        if kind == "code":
            return await self._code(guardrail.code, text)
        if kind == "endpoint":
            return await self._endpoint(guardrail.endpoint, text, stage, agent, f"{field}.endpoint")
        if kind == "agent":
            return await self._agent(user, guardrail.agent, text, f"{field}.agent.agent")
        raise InvalidGuardrail("check", "a guardrail needs a check")

    async def _code(self, check: g.CodeCheck, text: str) -> Verdict:
        timeout = check.timeout.ToTimedelta().total_seconds() or _DEFAULT_SECONDS
        try:
            reply = await run_code(
                check.source, "check", text, timeout=timeout, memory_mb=_CODE_MEMORY_MB
            )
        except SandboxUnavailable as error:
            raise FailedPrecondition(
                f"code guardrails need the sandbox: {error}", reason="SANDBOX_UNAVAILABLE"
            ) from None
        except SandboxError as error:  # its message is safe for the code's author
            return _failed("code", f"the guardrail's code failed: {error}")
        return _reply("code", "the guardrail's check()", reply)

    async def _endpoint(
        self,
        check: g.EndpointCheck,
        text: str,
        stage: g.GuardrailStage,
        agent: str,
        field: str,
    ) -> Verdict:
        timeout = check.timeout.ToTimedelta().total_seconds() or _DEFAULT_SECONDS
        payload = {"text": text, "stage": STAGES.get(stage, ""), "agent": agent}
        try:
            reply = await post_json(
                check.url, payload, policy=self._policy, timeout=timeout, client=self._http
            )
        except BlockedDestination as refused:
            raise InvalidArgument([(f"{field}.url", str(refused))]) from None
        except OutboundError as error:  # names scheme://host:port only
            return _failed("endpoint", f"the guardrail's endpoint failed: {error}")
        return _reply("endpoint", "the guardrail's endpoint", reply)

    async def _agent(self, user: str, check: g.AgentCheck, text: str, field: str) -> Verdict:
        metadata = ((USER_HEADER, user),)
        try:
            judge = await self._registry.GetAgent(
                registry_pb2.GetAgentRequest(name=check.agent), metadata=metadata, timeout=10
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(check.agent) from None  # another user's is missing too
            raise PeerError.of(error) from None
        if any(
            guardrail.WhichOneof("check") == "agent"
            for guardrail in (*judge.input_guardrails, *judge.output_guardrails)
        ):
            # Judges judging judges could run agents in a circle, each run billed.
            raise FailedPrecondition(
                f"{check.agent} has agent guardrails of its own, so it cannot judge "
                f"another agent's text ({field})",
                reason="GUARDRAIL_AGENT_GUARDED",
            )
        try:
            run = await self._runner.RunAgent(
                runner_pb2.RunAgentRequest(agent=check.agent, input=text or " "),
                metadata=metadata,
                timeout=_AGENT_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(check.agent) from None
            raise PeerError.of(error) from None
        info: dict[str, Any] = {"check": "agent", "agent": check.agent, "run": run.name}
        if run.state != runner_pb2.Run.STATE_SUCCEEDED:
            state = runner_pb2.Run.State.Name(run.state).removeprefix("STATE_").lower()
            why = f": {run.error.message}" if run.error.message else ""
            return _failed("agent", f"the guardrail agent {check.agent} ended {state}{why}", **info)
        output = (
            json_format.MessageToDict(run.structured_output)
            if run.HasField("structured_output")
            else None
        )
        return _reply("agent", f"the guardrail agent {check.agent}", output, **info)


def _reply(kind: str, who: str, reply: Any, **info: Any) -> Verdict:
    """The verdict a check answered, if it answered the contract's shape."""
    if not isinstance(reply, dict) or not isinstance(reply.get("tripwire_triggered"), bool):
        shown = json.dumps(reply)[:120] if reply is not None else "nothing"
        return _failed(kind, f"{who} answered {shown}, not {_EXPECTED}", **info)
    message = reply.get("message")
    tripped = reply["tripwire_triggered"]
    if not isinstance(message, str) or not message:
        message = "the check tripped" if tripped else "the check passed"
    return Verdict(tripped, message[:4096], {"check": kind, **info})


def _failed(kind: str, message: str, **info: Any) -> Verdict:
    """A check that could not decide trips: it cannot vouch for the text."""
    return Verdict(True, message, {"check": kind, "failed": True, **info})


def _first(errors: BaseExceptionGroup) -> BaseException:
    """The error to answer with: a caller's error before anything else."""
    flat: list[BaseException] = []
    pending: list[BaseException] = [errors]
    while pending:
        error = pending.pop(0)
        if isinstance(error, BaseExceptionGroup):
            pending.extend(error.exceptions)
        else:
            flat.append(error)
    for error in flat:
        if isinstance(error, ServiceError):
            return error
    return flat[0]
