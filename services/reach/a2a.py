"""A2A: each of the caller's agents as an A2A agent, its tasks mapped onto runs.

The A2A project's SDK speaks the protocol: its JSON-RPC dispatcher parses calls
(1.0's `SendMessage`, ... and, through its compat layer, 0.3's `message/send`,
...), hands them to a `RequestHandler` and writes results, SSE streams and errors
in the protocol's shape. The SDK's own handler is not used: it keeps tasks in a
task store and streams them from an in-process registry, a second copy of what
the runner already keeps durably for every replica. Here a task is a run:

- the task id is the run's id, the context id its conversation's, so a message
  with a contextId continues that conversation;
- a message submits a run (SubmitRun) and follows it (WatchRun): the task outlives
  a client that hangs up, as A2A wants of a task, and SubscribeToTask follows it
  again; its text streams as chunks of the "answer" artifact;
- a run paused for tool approvals is an input-required task; a message to that
  task answering approve or reject resolves them (ResolveApproval) and the run
  goes on, in the same task.

Per agent of the caller (another user's agent answers 404, as a missing one does):
  GET  /a2a/agents/{agent}/.well-known/agent-card.json    its agent card
  POST /a2a/agents/{agent}                                 its JSON-RPC endpoint
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import grpc
from a2a.helpers import get_message_text
from a2a.server.context import ServerCallContext
from a2a.server.events import Event
from a2a.server.request_handlers import RequestHandler, validate_request_params
from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from a2a.server.routes import DefaultServerCallContextBuilder
from a2a.server.routes.jsonrpc_dispatcher import JsonRpcDispatcher
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    Artifact,
    CancelTaskRequest,
    DeleteTaskPushNotificationConfigRequest,
    GetExtendedAgentCardRequest,
    GetTaskPushNotificationConfigRequest,
    GetTaskRequest,
    HTTPAuthSecurityScheme,
    ListTaskPushNotificationConfigsRequest,
    ListTaskPushNotificationConfigsResponse,
    ListTasksRequest,
    ListTasksResponse,
    Message,
    Part,
    Role,
    SecurityRequirement,
    SecurityScheme,
    SendMessageRequest,
    StringList,
    SubscribeToTaskRequest,
    Task,
    TaskArtifactUpdateEvent,
    TaskPushNotificationConfig,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)
from a2a.utils.errors import (
    A2AError,
    ContentTypeNotSupportedError,
    ExtendedAgentCardNotConfiguredError,
    InternalError,
    InvalidParamsError,
    PushNotificationNotSupportedError,
    TaskNotCancelableError,
    TaskNotFoundError,
    UnsupportedOperationError,
)
from a2a.utils.task import apply_history_length, validate_history_length
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from agentmesh.errors import DOMAIN, NotFound, ServiceError, quoted
from agentmesh.gen.registry.v1 import registry_pb2
from agentmesh.gen.runner.v1 import runner_pb2
from agentmesh.http import BodyTooLarge, read_body
from agentmesh.names import ID
from services.reach.calls import Reach, http_status, status_of

log = logging.getLogger("agentmesh.reach")

CARD_PATH = "/a2a/agents/{agent_id}/.well-known/agent-card.json"
RPC_PATH = "/a2a/agents/{agent_id}"
RPC_ROUTE = "a2a-rpc"

State = runner_pb2.Run.State
Decision = runner_pb2.ResolveApprovalRequest.Decision
TASK_STATES = {
    State.STATE_QUEUED: TaskState.TASK_STATE_SUBMITTED,
    State.STATE_RUNNING: TaskState.TASK_STATE_WORKING,
    State.STATE_AWAITING_APPROVAL: TaskState.TASK_STATE_INPUT_REQUIRED,
    State.STATE_SUCCEEDED: TaskState.TASK_STATE_COMPLETED,
    State.STATE_FAILED: TaskState.TASK_STATE_FAILED,
    State.STATE_CANCELLED: TaskState.TASK_STATE_CANCELED,
    # A guardrail stopped the run: the agent declines the task.
    State.STATE_BLOCKED: TaskState.TASK_STATE_REJECTED,
}
ENDED = (State.STATE_SUCCEEDED, State.STATE_FAILED, State.STATE_CANCELLED, State.STATE_BLOCKED)

ANSWER = "answer"  # the artifact a run's output is
DECISIONS = {
    **dict.fromkeys(("approve", "approved", "yes"), Decision.DECISION_APPROVE),
    **dict.fromkeys(("reject", "rejected", "no"), Decision.DECISION_REJECT),
}
HOW_TO_ANSWER = 'answer in this task: "approve", or "reject" and why'

# A runner refusal -> the A2A error saying the same; any other is internal.
A2A_ERRORS: dict[grpc.StatusCode, type[A2AError]] = {
    grpc.StatusCode.NOT_FOUND: TaskNotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidParamsError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidParamsError,
    grpc.StatusCode.FAILED_PRECONDITION: UnsupportedOperationError,
    grpc.StatusCode.ABORTED: UnsupportedOperationError,
}
# JSON-RPC's code for an implementation's own server error (A2A's start at -32001):
# a call refused before it is read (no key, no such agent).
REFUSED = -32000
PARSE_ERROR, INVALID_REQUEST = -32700, -32600
# A call's body: as the OpenAI API's (openai_api.py), and nested no deeper than this
# (the SDK's protobuf parsing fails past 100, with a traceback in the log).
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_NESTING = 64


class A2aAdapter:
    """The A2A routes. Keeps nothing: every task is a run."""

    def __init__(self, reach: Reach):
        self._reach = reach
        self._dispatcher = JsonRpcDispatcher(
            RunTasks(reach), context_builder=_AgentContext(), enable_v0_3_compat=True
        )
        self.routes: list[BaseRoute] = [
            Route(CARD_PATH, self._card, methods=["GET"]),
            Route(RPC_PATH, self._call, methods=["POST"], name=RPC_ROUTE),
        ]

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def _card(self, request: Request) -> Response:
        try:
            await self._reach.authenticate(request)
            agent = await self._agent(request)
        except Exception as error:
            return _refusal(error, rpc=False)
        # Absolute, from the host the caller reached: right behind the gateway too.
        url = str(request.url_for(RPC_ROUTE, agent_id=request.path_params["agent_id"]))
        return JSONResponse(agent_card_to_dict(agent_card(agent, url)))

    async def _call(self, request: Request) -> Response:
        try:
            # For the rest of this request's task: a streamed answer outlives a block.
            await self._reach.authenticate(request)
            request.state.agent = await self._agent(request)
            body = await read_body(request, MAX_BODY_BYTES)
        except BodyTooLarge as error:
            return _rpc_error(INVALID_REQUEST, str(error), status=413)
        except ClientDisconnect:  # no one is left to answer; not a failure of ours to log
            return _rpc_error(INVALID_REQUEST, "the request ended early", status=400)
        except Exception as error:
            return _refusal(error, rpc=True)
        try:
            nesting = _nesting(json.loads(body))
        except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested past Python
            return _rpc_error(PARSE_ERROR, "the request body is not JSON (UTF-8)")
        if nesting > MAX_NESTING:
            return _rpc_error(INVALID_REQUEST, f"the request nests deeper than {MAX_NESTING}")
        return await self._dispatcher.handle_requests(_replaying(request, body))

    async def _agent(self, request: Request) -> registry_pb2.Agent:
        name = f"agents/{request.path_params['agent_id']}"
        if not re.fullmatch(f"agents/{ID}", name):  # nor a pinned revision, agents/x@rev
            raise NotFound(f"agent {name[:80]!r}")
        return await self._reach.agent(name)


class _AgentContext(DefaultServerCallContextBuilder):
    """A call's context: the agent its URL names, and its headers less the API key."""

    def build(self, request: Request) -> ServerCallContext:
        context = super().build(request)
        context.state["headers"].pop("authorization", None)
        context.state["agent"] = request.state.agent
        return context


def _agent_of(context: ServerCallContext) -> registry_pb2.Agent:
    agent: registry_pb2.Agent = context.state["agent"]
    return agent


class RunTasks(RequestHandler):
    """One agent's A2A tasks, as RunnerService calls for the caller."""

    def __init__(self, reach: Reach):
        self._runner = reach.runner

    # ---- the operations ---------------------------------------------------------------

    @validate_request_params
    async def on_message_send(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> Task | Message:
        validate_history_length(params.configuration)
        with _a2a_errors():
            run, after = await self._start(_agent_of(context), params.message)
            if not params.configuration.return_immediately:
                run = await self._finished(run, after)
            return apply_history_length(await self._task(run), params.configuration)

    @validate_request_params
    async def on_message_send_stream(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> AsyncIterator[Event]:
        with _a2a_errors():
            run, after = await self._start(_agent_of(context), params.message)
            yield await self._task(run)
            async for event in self._updates(run, after):
                yield event

    @validate_request_params
    async def on_get_task(self, params: GetTaskRequest, context: ServerCallContext) -> Task:
        validate_history_length(params)
        with _a2a_errors():
            run = await self._run(_agent_of(context), params.id)
            return apply_history_length(await self._task(run), params)

    @validate_request_params
    async def on_cancel_task(self, params: CancelTaskRequest, context: ServerCallContext) -> Task:
        with _a2a_errors():
            run = await self._run(_agent_of(context), params.id)
            if run.state in ENDED:
                raise TaskNotCancelableError(f"task {params.id} has ended: {_state(run)}")
            run = await self._runner.CancelRun(
                runner_pb2.CancelRunRequest(name=run.name), timeout=60
            )
            return await self._task(run)

    @validate_request_params
    async def on_subscribe_to_task(
        self, params: SubscribeToTaskRequest, context: ServerCallContext
    ) -> AsyncIterator[Event]:
        with _a2a_errors():
            run = await self._run(_agent_of(context), params.id)
            if run.state in ENDED:
                raise UnsupportedOperationError(
                    f"task {params.id} has ended ({_state(run)}): GetTask returns it"
                )
            yield await self._task(run)
            async for event in self._updates(run, 0):
                yield event

    async def on_list_tasks(
        self, params: ListTasksRequest, context: ServerCallContext
    ) -> ListTasksResponse:
        # Its answer needs a count of every matching task, which runs are not kept for.
        raise UnsupportedOperationError("ListTasks is not supported: GetTask names a task")

    async def on_get_extended_agent_card(
        self, params: GetExtendedAgentCardRequest, context: ServerCallContext
    ) -> AgentCard:
        raise ExtendedAgentCardNotConfiguredError("the agent card is all there is")

    async def on_create_task_push_notification_config(
        self, params: TaskPushNotificationConfig, context: ServerCallContext
    ) -> TaskPushNotificationConfig:
        raise PushNotificationNotSupportedError

    async def on_get_task_push_notification_config(
        self, params: GetTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> TaskPushNotificationConfig:
        raise PushNotificationNotSupportedError

    async def on_list_task_push_notification_configs(
        self, params: ListTaskPushNotificationConfigsRequest, context: ServerCallContext
    ) -> ListTaskPushNotificationConfigsResponse:
        raise PushNotificationNotSupportedError

    async def on_delete_task_push_notification_config(
        self, params: DeleteTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> None:
        raise PushNotificationNotSupportedError

    # ---- runs -------------------------------------------------------------------------

    async def _start(
        self, agent: registry_pb2.Agent, message: Message
    ) -> tuple[runner_pb2.Run, int]:
        """The run a message starts, or the paused run it answers, resumed; and the
        sequence of the run's last event before this message."""
        if message.task_id:
            return await self._answer(agent, message)
        request = runner_pb2.RunAgentRequest(
            agent=agent.name,
            input=_input(message),
            # A message sent again (its messageId) is the same task, not a second run.
            request_id=_request_id(agent, message),
        )
        if message.context_id:
            if not re.fullmatch(ID, message.context_id):
                raise _unknown_context(message.context_id)
            request.conversation = f"conversations/{message.context_id}"
        try:
            return await self._runner.SubmitRun(request, timeout=60), 0
        except grpc.aio.AioRpcError as error:
            if message.context_id and error.code() == grpc.StatusCode.NOT_FOUND:
                raise _unknown_context(message.context_id) from None
            raise

    async def _answer(
        self, agent: registry_pb2.Agent, message: Message
    ) -> tuple[runner_pb2.Run, int]:
        """Decides every tool call the task's run waits for as the message says."""
        run = await self._run(agent, message.task_id)
        if message.context_id and message.context_id != _context_id(run):
            raise InvalidParamsError(
                f"message.contextId {quoted(message.context_id)} is not the context "
                f"of task {message.task_id}"
            )
        if run.state != State.STATE_AWAITING_APPROVAL:
            raise UnsupportedOperationError(
                f"task {message.task_id} is {_state(run)}, not waiting for input: to go on "
                "with its conversation, send a message with its contextId and no taskId"
            )
        decision, reason = _decision(message)
        after = 0
        async for event in self._runner.WatchRun(runner_pb2.WatchRunRequest(name=run.name)):
            after = event.sequence  # paused: the log ends here until it goes on
        for approval in await self._pending(run):
            await self._runner.ResolveApproval(
                runner_pb2.ResolveApprovalRequest(
                    name=approval.name, decision=decision, reason=reason
                ),
                timeout=60,
            )
        return await self._get(run.name), after

    async def _run(self, agent: registry_pb2.Agent, task_id: str) -> runner_pb2.Run:
        """The caller's run of this agent a task id names."""
        if re.fullmatch(ID, task_id):
            try:
                run = await self._get(f"runs/{task_id}")
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
            else:
                if run.agent == agent.name:
                    return run
        raise TaskNotFoundError(f"task {quoted(task_id, 80)} not found")

    async def _get(self, name: str) -> runner_pb2.Run:
        return await self._runner.GetRun(runner_pb2.GetRunRequest(name=name), timeout=10)

    async def _pending(self, run: runner_pb2.Run) -> list[runner_pb2.Approval]:
        page = await self._runner.ListApprovals(
            runner_pb2.ListApprovalsRequest(parent=run.name, page_size=1000), timeout=10
        )
        return [a for a in page.approvals if a.state == runner_pb2.Approval.STATE_PENDING]

    async def _finished(self, run: runner_pb2.Run, after: int) -> runner_pb2.Run:
        """The run once it ended or paused for approval."""
        finished = None
        watch = runner_pb2.WatchRunRequest(name=run.name, after_sequence=after)
        async for event in self._runner.WatchRun(watch):
            if event.HasField("run_finished"):
                finished = event.run_finished
        return finished or await self._get(run.name)

    async def _task(self, run: runner_pb2.Run) -> Task:
        pending = await self._pending(run) if run.state == State.STATE_AWAITING_APPROVAL else []
        return task_of(run, pending)

    async def _updates(self, run: runner_pb2.Run, after: int) -> AsyncIterator[Event]:
        """The run's events after `after` as task updates, until it ends or pauses:
        its text as chunks of the answer, then the whole answer and the last status."""
        task_id, context_id = _task_id(run), _context_id(run)
        first_chunk = True
        watch = runner_pb2.WatchRunRequest(name=run.name, after_sequence=after)
        async for event in self._runner.WatchRun(watch):
            kind = event.WhichOneof("event")
            if kind == "run_started":
                yield TaskStatusUpdateEvent(
                    task_id=task_id,
                    context_id=context_id,
                    status=TaskStatus(state=TaskState.TASK_STATE_WORKING),
                )
            elif kind == "text_delta":
                yield TaskArtifactUpdateEvent(
                    task_id=task_id,
                    context_id=context_id,
                    artifact=_answer(Part(text=event.text_delta.delta)),
                    append=not first_chunk,
                )
                first_chunk = False
            elif kind == "run_finished":
                task = await self._task(event.run_finished)
                for artifact in task.artifacts:
                    # Replaces the chunks: text the model wrote before a tool call
                    # was streamed but is not the answer.
                    yield TaskArtifactUpdateEvent(
                        task_id=task_id, context_id=context_id, artifact=artifact, last_chunk=True
                    )
                yield TaskStatusUpdateEvent(
                    task_id=task_id, context_id=context_id, status=task.status
                )


# ---- runs as tasks, agents as cards ------------------------------------------------------


def task_of(run: runner_pb2.Run, pending: Sequence[runner_pb2.Approval] = ()) -> Task:
    """A run as its task: its input the history, its output the answer artifact, why
    it failed or what it waits for the status message."""
    task_id, context_id = _task_id(run), _context_id(run)
    since = run.end_time if run.HasField("end_time") else run.create_time
    task = Task(
        id=task_id,
        context_id=context_id,
        status=TaskStatus(state=TASK_STATES[run.state], timestamp=since),
        history=[
            Message(
                message_id=f"{task_id}-input",
                role=Role.ROLE_USER,
                parts=[Part(text=run.input)],
                task_id=task_id,
                context_id=context_id,
            )
        ],
    )
    if run.state == State.STATE_SUCCEEDED:
        output = (
            Part(data=run.structured_output)
            if run.HasField("structured_output")
            else Part(text=run.final_output)
        )
        task.artifacts.append(_answer(output))
    parts: list[Part] = []
    metadata: dict[str, Any] = {}
    if run.state == State.STATE_FAILED:
        parts = [Part(text=run.error.message or "the run failed")]
        if reason := _reason_in(run.error):
            metadata["reason"] = reason
    elif run.state == State.STATE_BLOCKED:
        parts = [Part(text=run.final_output)]  # the guardrail's override
    elif run.state == State.STATE_AWAITING_APPROVAL and pending:
        parts = _approval_request(pending)
    if parts:
        task.status.message.CopyFrom(
            Message(
                message_id=f"{task_id}-{TaskState.Name(task.status.state).lower()}",
                role=Role.ROLE_AGENT,
                parts=parts,
                task_id=task_id,
                context_id=context_id,
            )
        )
        task.status.message.metadata.update(metadata)
    return task


def _approval_request(pending: Sequence[runner_pb2.Approval]) -> list[Part]:
    """What an input-required task asks: the tool calls waiting, in words and as data."""
    calls = "; ".join(f"{a.tool_name}({_cut(a.arguments, 200)})" for a in pending)
    approvals = [
        {"name": a.name, "tool": a.tool_name, "arguments": a.arguments, "callId": a.call_id}
        for a in pending
    ]
    return [
        Part(text=f"Waiting for approval of {calls}: {HOW_TO_ANSWER}."),
        Part(data=json_format.ParseDict({"approvals": approvals}, struct_pb2.Value())),
    ]


def agent_card(agent: registry_pb2.Agent, url: str) -> AgentCard:
    """The agent's card: JSON-RPC at `url` (A2A 1.0 and 0.3), streaming, bearer keys."""
    agent_id = agent.name.removeprefix("agents/")
    description = (
        agent.handoff_description
        or _cut(agent.instructions.strip().split("\n\n", 1)[0], 300)
        or f"The agentmesh agent {agent.display_name}."
    )
    return AgentCard(
        name=agent.display_name,
        description=description,
        version=agent.revision_id,
        supported_interfaces=[
            AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version=version)
            for version in ("1.0", "0.3")
        ],
        capabilities=AgentCapabilities(streaming=True, push_notifications=False),
        security_schemes={
            "apiKey": SecurityScheme(
                http_auth_security_scheme=HTTPAuthSecurityScheme(
                    scheme="Bearer", description="an agentmesh API key"
                )
            )
        },
        security_requirements=[SecurityRequirement(schemes={"apiKey": StringList()})],
        default_input_modes=["text/plain", "application/json"],
        default_output_modes=[
            "application/json" if agent.HasField("output_type") else "text/plain"
        ],
        skills=[
            AgentSkill(
                id=agent_id,
                name=agent.display_name,
                description=description,
                tags=[tool.name for tool in agent.tools] or ["agent"],
            )
        ],
    )


def _input(message: Message) -> str:
    """A run's input: the message's text parts, and its data parts as JSON."""
    texts = []
    for index, part in enumerate(message.parts):
        kind = part.WhichOneof("content")
        if kind == "text":
            texts.append(part.text)
        elif kind == "data":
            texts.append(json.dumps(json_format.MessageToDict(part.data)))
        else:
            raise ContentTypeNotSupportedError(
                f"message.parts[{index}]: an agent reads text and data parts, not {kind}"
            )
    text = "\n".join(texts)
    if not text.strip():
        raise InvalidParamsError("message.parts: the message has no text")
    return text


def _decision(message: Message) -> tuple[Decision, str]:
    """Approve or reject, and why: from a data part {"decision", "reason"}, else from
    the text ("approve", "reject: too expensive")."""
    for part in message.parts:
        data = json_format.MessageToDict(part.data) if part.HasField("data") else None
        if isinstance(data, dict) and "decision" in data:
            word, reason = str(data["decision"]), str(data.get("reason", ""))
            break
    else:
        found = re.fullmatch(r"\s*(\w+)\W*(.*)", get_message_text(message), re.DOTALL)
        word, reason = found.groups() if found else ("", "")
    decision = DECISIONS.get(word.strip().lower())
    if decision is None:
        raise InvalidParamsError(f"message: the task waits for tool approvals; {HOW_TO_ANSWER}")
    return decision, reason.strip()


def _request_id(agent: registry_pb2.Agent, message: Message) -> str:
    key = f"{agent.name} {message.message_id}".encode()
    return f"a2a-{hashlib.sha256(key).hexdigest()}"


def _answer(part: Part) -> Artifact:
    return Artifact(artifact_id=ANSWER, name=ANSWER, parts=[part])


def _task_id(run: runner_pb2.Run) -> str:
    return run.name.removeprefix("runs/")


def _context_id(run: runner_pb2.Run) -> str:
    return run.conversation.removeprefix("conversations/")


def _state(run: runner_pb2.Run) -> str:
    return TaskState.Name(TASK_STATES[run.state]).removeprefix("TASK_STATE_").lower()


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _unknown_context(context_id: str) -> A2AError:
    return InvalidParamsError(
        f"message.contextId {quoted(context_id, 80)} is not a context of yours: "
        "leave it out to start one"
    )


# ---- errors ------------------------------------------------------------------------------


@contextlib.contextmanager
def _a2a_errors() -> Iterator[None]:
    """A runner's refusal as the A2A error that says the same; A2A errors pass."""
    try:
        yield
    except A2AError:
        raise
    except Exception as error:
        code, message = status_of(error)
        if not isinstance(error, ServiceError | grpc.aio.AioRpcError):
            log.error("an A2A call failed", exc_info=error)
        data = {"status": code.name}
        if reason := _reason(error):
            data["reason"] = reason
        raise A2A_ERRORS.get(code, InternalError)(message, data=data) from None


def _reason(error: Exception) -> str:
    if isinstance(error, ServiceError):
        return error.reason
    if isinstance(error, grpc.aio.AioRpcError) and (status := rpc_status.from_call(error)):
        return _reason_in(status)
    return ""


def _reason_in(status: status_pb2.Status) -> str:
    """The ErrorInfo reason a google.rpc.Status carries, if it has one."""
    info = error_details_pb2.ErrorInfo()
    return next((info.reason for detail in status.details if detail.Unpack(info)), "")


def _nesting(value: Any) -> int:
    """How deep JSON `value` nests its arrays and objects."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            pending.extend((child, depth + 1) for child in item)
    return deepest


def _replaying(request: Request, body: bytes) -> Request:
    """The request again, its body (already read) given to whoever reads it next; then
    the connection's own messages (a streamed answer waits there for a disconnect)."""
    given = False

    async def receive() -> Any:
        nonlocal given
        if given:
            return await request.receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, receive)


def _rpc_error(code: int, message: str, status: int = 200) -> JSONResponse:
    """A JSON-RPC error for a call that could not be read (HTTP 200, as the SDK's)."""
    error = {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}
    return JSONResponse(error, status)


def _refusal(error: Exception, rpc: bool) -> JSONResponse:
    """A request refused before its call is read (no or a bad key, no such agent of
    the caller's): a JSON-RPC error at the endpoint, a google.rpc.Status for the card
    (as A2A's HTTP binding answers), with the HTTP status either way."""
    code, message = status_of(error)
    if not isinstance(error, ServiceError):
        log.error("an A2A request failed", exc_info=error)
    info = {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": _reason(error) or code.name,
        "domain": DOMAIN,
    }
    body: dict[str, Any] = (
        {
            "jsonrpc": "2.0",
            "id": None,
            "error": {"code": REFUSED, "message": message, "data": [info]},
        }
        if rpc
        else {
            "error": {
                "code": http_status(code),
                "status": code.name,
                "message": message,
                "details": [info],
            }
        }
    )
    status = http_status(code)
    headers = {"www-authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status, headers)
