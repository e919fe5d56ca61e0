"""The OpenAI-compatible API: each of the caller's agents is a model.

`POST /v1/chat/completions` and `POST /v1/responses`, plain or streamed, run the
agent `model` names (`agentmesh/agents/{id}`, `agents/{id}`, its id or its display
name) through `RunnerService` as the caller, so the run is a run like any other:
its credits, guardrails, trace and conversation are the runner's. `GET /v1/models`
lists the caller's agents as models; `GET /v1/responses/{id}` reads a response back.

The agent's definition decides what a model request would elsewhere: system and
developer messages and `instructions` are ignored (the agent's instructions rule),
so are sampling parameters (its model settings rule), and a request with `tools`
is refused (the agent's own tools run inside the run; none can be handed back).

Input: the last message must be the user's, and is the run's input. Messages
before it (a chat client sends the whole history every time) are put before it as
a transcript. A response continues a conversation by `previous_response_id` (that
run's conversation) or `conversation` (`conv_{id}` or `conversations/{id}`); a
chat completion always starts a new one.

Ids: a response is a run, `resp_{id}` and `chatcmpl-{id}` name `runs/{id}`, and a
response names its conversation as `conv_{id}`.

How a run ends, as each API says it:
- SUCCEEDED: `completed`; finish_reason `stop`.
- BLOCKED by a guardrail: `incomplete` (reason `content_filter`); finish_reason
  `content_filter`; the guardrail's message is the text.
- Paused for a tool approval: a response is `incomplete` (reason
  `approval_required`): decide the approvals of `runs/{id}`, and
  `GET /v1/responses/resp_{id}` then has the answer. A chat completion cannot be
  incomplete: it answers 409 `approval_required`, saying the same.
- FAILED or CANCELLED: the OpenAI error shape, with the run's status as the HTTP
  status and its ErrorInfo reason, lowercased, as `code`. A stream has sent its
  status line already: chat sends `data: {"error": ...}` (the openai client raises
  it as APIError), responses an `error` event and `response.failed`.
Errors tell the openai client whether to retry (`x-should-retry`): only those the
mesh marks retryable (RetryInfo), so a run is never repeated for nothing.

A client that hangs up on a stream cancels its run: the StreamRun call is
cancelled with it, which the runner takes as the caller leaving.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, Literal, Protocol, TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from agentmesh.errors import InvalidArgument, NotFound, ServiceError, internal_status, quoted
from agentmesh.gen.common.v1 import common_pb2
from agentmesh.gen.registry.v1 import registry_pb2
from agentmesh.gen.runner.v1 import runner_pb2
from agentmesh.http import BodyTooLarge, read_body
from agentmesh.ids import new_id
from services.reach.calls import AGENT_PREFIX, Reach, http_status, status_of

log = logging.getLogger("agentmesh.reach")

State = runner_pb2.Run.State
MESSAGE = runner_pb2.RunItem.TYPE_MESSAGE

# A run's input is at most 1 MiB of text; its JSON, escaped, a few times that.
MAX_BODY_BYTES = 4 * 1024 * 1024

_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    429: "insufficient_quota",
}
_RESPONSE_ID = re.compile(r"resp_([A-Za-z0-9_-]{1,64})")
_CONVERSATION = re.compile(r"(?:conv_|conversations/)([A-Za-z0-9_-]{1,64})")

_RESPONSE_STATUS = {
    State.STATE_QUEUED: "queued",
    State.STATE_RUNNING: "in_progress",
    State.STATE_AWAITING_APPROVAL: "incomplete",
    State.STATE_SUCCEEDED: "completed",
    State.STATE_FAILED: "failed",
    State.STATE_CANCELLED: "cancelled",
    State.STATE_BLOCKED: "incomplete",
}
_INCOMPLETE_REASON = {
    State.STATE_AWAITING_APPROVAL: "approval_required",
    State.STATE_BLOCKED: "content_filter",
}


# ---- errors -----------------------------------------------------------------------------


class ApiError(Exception):
    """An answer in the OpenAI error shape; also what a failing stream sends."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after: int | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.retry_after = retry_after

    @classmethod
    def of(cls, status: status_pb2.Status) -> ApiError:
        """A google.rpc.Status (an RPC's error, or why a run failed) as OpenAI says it:
        ErrorInfo's reason is the code, BadRequest's first field the param."""
        code = param = None
        retry_after = None
        for detail in status.details:
            info, bad, retry = (
                error_details_pb2.ErrorInfo(),
                error_details_pb2.BadRequest(),
                error_details_pb2.RetryInfo(),
            )
            if detail.Unpack(info):
                code = info.reason.lower()
            elif detail.Unpack(bad) and bad.field_violations:
                param = bad.field_violations[0].field
            elif detail.Unpack(retry):
                retry_after = max(1, retry.retry_delay.seconds)
        grpc_code = _GRPC_CODES.get(status.code, grpc.StatusCode.UNKNOWN)
        return cls(
            http_status(grpc_code), status.message, code=code, param=param, retry_after=retry_after
        )

    @classmethod
    def from_exception(cls, error: Exception) -> ApiError:
        if isinstance(error, ServiceError):
            return cls.of(error.to_status())
        if isinstance(error, grpc.aio.AioRpcError):
            status = rpc_status.from_call(error)
            if status is not None:
                return cls.of(status)
        code, message = status_of(error)
        return cls.of(status_pb2.Status(code=code.value[0], message=message))

    def body(self) -> dict[str, Any]:
        kind = _ERROR_TYPES.get(self.status)
        return {
            "error": {
                "message": self.message,
                "type": kind or ("server_error" if self.status >= 500 else "invalid_request_error"),
                "code": self.code,
                "param": self.param,
            }
        }

    def response(self) -> JSONResponse:
        headers = {"x-should-retry": "true" if self.retry_after else "false"}
        if self.retry_after:
            headers["retry-after"] = str(self.retry_after)
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def _run_error(run: runner_pb2.Run) -> ApiError:
    """Why a run gave no answer (it failed, was cancelled or waits for approval)."""
    if run.state == State.STATE_AWAITING_APPROVAL:
        return ApiError(
            409,
            f"{run.name} waits for a tool call's approval: decide its approvals, then "
            f"GET /v1/responses/resp_{_run_id(run)} has the answer",
            code="approval_required",
        )
    if run.error.code:
        return ApiError.of(run.error)
    cancelled = grpc.StatusCode.CANCELLED.value[0]
    return ApiError.of(status_pb2.Status(code=cancelled, message=f"{run.name} was cancelled"))


Endpoint = Callable[[Request], Awaitable[Response]]


def _openai_errors(endpoint: Endpoint) -> Endpoint:
    """Every failure of `endpoint` answered in the OpenAI error shape; a bug's text
    stays in the log, under a reference the caller gets."""

    @functools.wraps(endpoint)
    async def answer(request: Request) -> Response:
        try:
            return await endpoint(request)
        except ApiError as error:
            return error.response()
        except (ServiceError, grpc.aio.AioRpcError) as error:
            return ApiError.from_exception(error).response()
        except Exception:
            reference = new_id()[:12]
            # The path is the client's, percent-decoded: quoted, it forges no log line.
            log.exception(
                "%s %s failed: reference=%s", request.method, quoted(request.url.path), reference
            )
            return ApiError.of(internal_status(reference)).response()

    return answer


# ---- requests -----------------------------------------------------------------------------


class _Body(BaseModel):
    # What this API does not act on (sampling, metadata, store, ...) is accepted and
    # ignored: the agent's definition decides it. What it reads has its JSON type:
    # "stream": "yes" is refused, not taken for true.
    model_config = ConfigDict(extra="ignore", strict=True)


class _Text(_Body):
    type: Literal["text", "input_text", "output_text"]
    text: str


def _as_parts(content: Any) -> Any:
    # Content may be a plain string: one text part. (Not a union: its errors would
    # name the union's members rather than the field.)
    return [{"type": "text", "text": content}] if isinstance(content, str) else content or []


def _as_messages(value: Any) -> Any:
    return [{"role": "user", "content": value}] if isinstance(value, str) else value


def _as_id(value: Any) -> Any:
    # {"id": ...}; an object without one stays an object, and is refused as one.
    return value["id"] if isinstance(value, dict) and "id" in value else value


Content = Annotated[list[_Text], BeforeValidator(_as_parts)]
Role = Literal["system", "developer", "user", "assistant"]


class _Message(_Body):
    type: Literal["message"] = "message"
    role: Role
    content: Content = []


class _StreamOptions(_Body):
    include_usage: bool = False


class _ModelRequest(_Body):
    model: str = Field(min_length=1, max_length=300)
    stream: bool = False
    tools: list[Any] | None = None

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, tools: list[Any] | None) -> list[Any] | None:
        if tools:
            raise ValueError("the agent's own tools run inside the run; a request adds none")
        return tools


class _ChatRequest(_ModelRequest):
    messages: list[_Message] = Field(min_length=1)
    stream_options: _StreamOptions | None = None


class _ResponsesRequest(_ModelRequest):
    # A string is one user message.
    input: Annotated[list[_Message], BeforeValidator(_as_messages)]
    previous_response_id: str | None = None
    # conv_{id}, conversations/{id}, or {"id": ...}.
    conversation: Annotated[str | None, BeforeValidator(_as_id)] = None


Shape = TypeVar("Shape", bound=BaseModel)


async def _read(request: Request, shape: type[Shape]) -> Shape:
    """The request's JSON body as `shape`; 400 naming the field when it is not one."""
    try:
        body = await read_body(request, MAX_BODY_BYTES)
    except BodyTooLarge as error:
        raise ApiError(413, str(error)) from None
    except ClientDisconnect:  # no one is left to answer; not a failure of ours to log
        raise ApiError(400, "the request ended early") from None
    try:
        return shape.model_validate_json(body)
    except ValidationError as error:
        violations = [
            (_param(problem["loc"]) or "body", problem["msg"])
            for problem in error.errors(include_url=False, include_input=False)
        ]
        raise InvalidArgument(violations) from None


def _param(location: tuple[int | str, ...]) -> str:
    """A pydantic error location as a request parameter: messages[0].content."""
    param = ""
    for part in location:
        param += f"[{part}]" if isinstance(part, int) else f".{part}" if param else str(part)
    return param


def _run_input(messages: list[_Message], param: str) -> str:
    """The run's input: the last message, which must be the user's, after a
    transcript of the user's and assistant's messages before it."""
    said = [
        (message.role, "\n".join(part.text for part in message.content))
        for message in messages
        if message.role in ("user", "assistant")
    ]
    if not said or said[-1][0] != "user" or not said[-1][1].strip():
        raise InvalidArgument([(param, "the last message must be the user's, with text")])
    *earlier, (_, last) = said
    transcript = "\n".join(f"{role}: {text}" for role, text in earlier if text)
    return f"The conversation so far:\n{transcript}\n\n{last}" if transcript else last


# ---- answers ------------------------------------------------------------------------------


def _run_id(run: runner_pb2.Run) -> str:
    return run.name.removeprefix("runs/")


def _model_id(agent: str) -> str:
    return AGENT_PREFIX + agent


def _model(agent: registry_pb2.Agent) -> dict[str, Any]:
    created = agent.create_time.seconds
    return {
        "id": _model_id(agent.name),
        "object": "model",
        "created": created,
        "owned_by": "agentmesh",
    }


def _texts(run: runner_pb2.Run) -> list[str]:
    """What the run said, message by message; a blocked run ends with its
    guardrail's message (which is what its stream sent too)."""
    texts = [item.text for item in run.items if item.type == MESSAGE and item.text]
    if run.state == State.STATE_BLOCKED or (not texts and run.final_output):
        texts.append(run.final_output)
    return texts


def _chat_usage(usage: common_pb2.Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens or usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def _responses_usage(usage: common_pb2.Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens or usage.input_tokens + usage.output_tokens,
    }


def _finish_reason(run: runner_pb2.Run) -> str:
    """A chat completion's finish_reason; raises ApiError for a run with no answer."""
    if run.state == State.STATE_SUCCEEDED:
        return "stop"
    if run.state == State.STATE_BLOCKED:
        return "content_filter"
    raise _run_error(run)


def _chat_completion(run: runner_pb2.Run) -> dict[str, Any]:
    message = {"role": "assistant", "content": "\n\n".join(_texts(run)), "refusal": None}
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": _finish_reason(run),
    }
    return {
        "id": f"chatcmpl-{_run_id(run)}",
        "object": "chat.completion",
        "created": run.create_time.seconds,
        "model": _model_id(run.agent),
        "choices": [choice],
        "usage": _chat_usage(run.usage),
        "system_fingerprint": None,
    }


def _message(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": content,
    }


def _response(
    run: runner_pb2.Run, output: list[dict[str, Any]], previous_response_id: str | None = None
) -> dict[str, Any]:
    """The run as a Responses API response object with `output` as its output."""
    ended = run.state not in (State.STATE_QUEUED, State.STATE_RUNNING)
    error = None
    if run.state in (State.STATE_FAILED, State.STATE_CANCELLED):
        failure = _run_error(run)
        error = {"code": failure.code or "server_error", "message": failure.message}
    reason = _INCOMPLETE_REASON.get(run.state)
    return {
        "id": f"resp_{_run_id(run)}",
        "object": "response",
        "created_at": run.create_time.seconds,
        "completed_at": run.end_time.seconds if run.HasField("end_time") else None,
        "model": _model_id(run.agent),
        "status": _RESPONSE_STATUS.get(run.state, "in_progress"),
        "output": output,
        "usage": _responses_usage(run.usage) if ended else None,
        "error": error,
        "incomplete_details": {"reason": reason} if reason else None,
        "conversation": {"id": "conv_" + run.conversation.removeprefix("conversations/")},
        "previous_response_id": previous_response_id,
        "instructions": None,
        "metadata": {},
        "parallel_tool_calls": True,
        "temperature": None,
        "top_p": None,
        "tool_choice": "auto",
        "tools": [],
        "text": {"format": {"type": "text"}},
    }


def _stored_response(run: runner_pb2.Run, previous_response_id: str | None = None) -> dict:
    messages = [_message(f"msg_{_run_id(run)}_{i}", text) for i, text in enumerate(_texts(run))]
    return _response(run, messages, previous_response_id)


# ---- streams ------------------------------------------------------------------------------


def _data(payload: dict[str, Any] | str, event: str | None = None) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return (f"event: {event}\n" if event else "") + f"data: {data}\n\n"


class _Translation(Protocol):
    """A run's events as one API streams them (server-sent events, as text)."""

    def on(self, event: runner_pb2.RunEvent) -> list[str]: ...

    def failed(self, error: ApiError) -> list[str]: ...


class _ChatChunks:
    """A run's events as chat.completion.chunk events: text deltas as content; a
    message after another (past a tool call, a handoff) begins on a new paragraph."""

    def __init__(self, include_usage: bool):
        self._include_usage = include_usage
        self._base: dict[str, Any] = {}
        self._said = self._paragraph = False

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _data({**self._base, "choices": [choice]})

    def on(self, event: runner_pb2.RunEvent) -> list[str]:
        kind = event.WhichOneof("event")
        if kind == "run_started":
            run = event.run_started
            self._base = {
                "id": f"chatcmpl-{_run_id(run)}",
                "object": "chat.completion.chunk",
                "created": run.create_time.seconds,
                "model": _model_id(run.agent),
                "system_fingerprint": None,
            }
            if self._include_usage:  # as OpenAI does: null on every chunk but the last
                self._base["usage"] = None
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "text_delta":
            text = event.text_delta.delta
            if self._said and self._paragraph:
                text = "\n\n" + text
            self._said, self._paragraph = True, False
            return [self._chunk({"content": text})]
        if kind == "run_finished":
            run = event.run_finished
            try:
                chunks = [self._chunk({}, _finish_reason(run))]
            except ApiError as error:
                return self.failed(error)
            if self._include_usage:
                chunks.append(_data({**self._base, "choices": [], "usage": _chat_usage(run.usage)}))
            return [*chunks, _data("[DONE]")]
        self._paragraph = True
        return []

    def failed(self, error: ApiError) -> list[str]:
        return [_data(error.body())]


class _ResponseEvents:
    """A run's events as the Responses API's stream: the response created, each
    message as an output item whose text comes as deltas (anything else the run
    does ends the message), and the response as the run ended."""

    def __init__(self, previous_response_id: str | None):
        self._previous = previous_response_id
        self._sequence = itertools.count()
        self._run_id = ""
        self._output: list[dict[str, Any]] = []
        self._text: list[str] | None = None  # the message being streamed

    def _event(self, kind: str, **fields: Any) -> str:
        return _data({"type": kind, "sequence_number": next(self._sequence), **fields}, kind)

    def _where(self) -> dict[str, Any]:
        index = len(self._output)
        return {"item_id": f"msg_{self._run_id}_{index}", "output_index": index, "content_index": 0}

    def on(self, event: runner_pb2.RunEvent) -> list[str]:
        kind = event.WhichOneof("event")
        if kind == "run_started":
            self._run_id = _run_id(event.run_started)
            started = _response(event.run_started, [], self._previous)
            return [
                self._event("response.created", response=started),
                self._event("response.in_progress", response=started),
            ]
        if kind == "text_delta":
            events = [] if self._text is not None else self._open()
            self._text = [*(self._text or []), event.text_delta.delta]
            return [
                *events,
                self._event(
                    "response.output_text.delta",
                    **self._where(),
                    delta=event.text_delta.delta,
                    logprobs=[],
                ),
            ]
        events = self._close()
        if kind == "run_finished":
            run = event.run_finished
            response = _response(run, self._output, self._previous)
            if run.state == State.STATE_SUCCEEDED:
                events.append(self._event("response.completed", response=response))
            elif run.state in _INCOMPLETE_REASON:
                events.append(self._event("response.incomplete", response=response))
            else:
                events += self.failed(_run_error(run))
                events.append(self._event("response.failed", response=response))
        return events

    def _open(self) -> list[str]:
        where = self._where()
        item = _message(where["item_id"], "", "in_progress") | {"content": []}
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [
            self._event(
                "response.output_item.added", output_index=where["output_index"], item=item
            ),
            self._event("response.content_part.added", **where, part=part),
        ]

    def _close(self) -> list[str]:
        if self._text is None:
            return []
        where, text = self._where(), "".join(self._text)
        item = _message(where["item_id"], text)
        self._output.append(item)
        self._text = None
        return [
            self._event("response.output_text.done", **where, text=text, logprobs=[]),
            self._event("response.content_part.done", **where, part=item["content"][0]),
            self._event("response.output_item.done", output_index=where["output_index"], item=item),
        ]

    def failed(self, error: ApiError) -> list[str]:
        fields = error.body()["error"]
        return [self._event("error", **{key: fields[key] for key in ("code", "message", "param")})]


def _sse(
    call: grpc.aio.UnaryStreamCall, first: runner_pb2.RunEvent, translation: _Translation
) -> StreamingResponse:
    async def events() -> AsyncIterator[str]:
        event: Any = first
        finished = False
        try:
            while event is not grpc.aio.EOF:
                for chunk in translation.on(event):
                    yield chunk
                finished = finished or event.HasField("run_finished")
                # Read on to the end after run_finished too: a call dropped before
                # it ended would be cancelled, and a paused run with it.
                event = await call.read()
            if not finished:
                for chunk in translation.failed(ApiError(502, "the run's events ended early")):
                    yield chunk
        except grpc.aio.AioRpcError as error:
            if not finished:
                for chunk in translation.failed(ApiError.from_exception(error)):
                    yield chunk
        finally:
            if not finished:  # the client hung up (or the runner went): the run ends
                call.cancel()

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"cache-control": "no-cache"}
    )


# ---- the adapter --------------------------------------------------------------------------


class OpenAiAdapter:
    def __init__(self, reach: Reach):
        self._reach = reach
        self.routes: list[BaseRoute] = [
            Route("/v1/models", _openai_errors(self._models), methods=["GET"]),
            Route("/v1/models/{model:path}", _openai_errors(self._get_model), methods=["GET"]),
            Route("/v1/chat/completions", _openai_errors(self._chat), methods=["POST"]),
            Route("/v1/responses", _openai_errors(self._respond), methods=["POST"]),
            Route("/v1/responses/{id}", _openai_errors(self._get_response), methods=["GET"]),
        ]

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def _models(self, request: Request) -> Response:
        await self._reach.authenticate(request)
        agents = await self._reach.agents()
        return JSONResponse({"object": "list", "data": [_model(agent) for agent in agents]})

    async def _get_model(self, request: Request) -> Response:
        await self._reach.authenticate(request)
        return JSONResponse(_model(await self._agent(request.path_params["model"])))

    async def _chat(self, request: Request) -> Response:
        await self._reach.authenticate(request)
        body = await _read(request, _ChatRequest)
        agent = await self._agent(body.model)
        run_request = runner_pb2.RunAgentRequest(
            agent=agent.name, input=_run_input(body.messages, "messages")
        )
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            return await self._stream(run_request, _ChatChunks(include_usage))
        run = await self._reach.runner.RunAgent(run_request)
        return JSONResponse(_chat_completion(run))

    async def _respond(self, request: Request) -> Response:
        await self._reach.authenticate(request)
        body = await _read(request, _ResponsesRequest)
        agent = await self._agent(body.model)
        run_request = runner_pb2.RunAgentRequest(
            agent=agent.name,
            input=_run_input(body.input, "input"),
            conversation=await self._conversation(body),
        )
        if body.stream:
            return await self._stream(run_request, _ResponseEvents(body.previous_response_id))
        run = await self._reach.runner.RunAgent(run_request)
        if run.state in (State.STATE_FAILED, State.STATE_CANCELLED):
            raise _run_error(run)
        return JSONResponse(_stored_response(run, body.previous_response_id))

    async def _get_response(self, request: Request) -> Response:
        await self._reach.authenticate(request)
        run = await self._run(request.path_params["id"], "id")
        return JSONResponse(_stored_response(run))

    async def _stream(
        self, run_request: runner_pb2.RunAgentRequest, translation: _Translation
    ) -> Response:
        call = self._reach.runner.StreamRun(run_request)
        try:
            # What fails before the run starts (credits, a busy conversation) still
            # has its own HTTP status.
            first = await call.read()
        except BaseException:
            call.cancel()
            raise
        if first is grpc.aio.EOF:
            raise ApiError(502, "the run's events ended before it started")
        return _sse(call, first, translation)

    async def _agent(self, model: str) -> registry_pb2.Agent:
        try:
            return await self._reach.agent(model)
        except NotFound:
            raise ApiError(
                404,
                f"The model {quoted(model)} does not exist or you do not have access to it.",
                code="model_not_found",
                param="model",
            ) from None

    async def _run(self, response_id: str, param: str) -> runner_pb2.Run:
        """The run a response id names: 404 for one that is not the caller's."""
        match = _RESPONSE_ID.fullmatch(response_id)
        if match is None:
            raise ApiError(
                400, f"{quoted(response_id)} is not a response id (resp_...)", param=param
            )
        try:
            return await self._reach.runner.GetRun(
                runner_pb2.GetRunRequest(name=f"runs/{match.group(1)}"), timeout=10
            )
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
            raise ApiError(
                404, f"response {quoted(response_id)} not found", code="not_found", param=param
            ) from None

    async def _conversation(self, body: _ResponsesRequest) -> str:
        """The conversation a response continues (conversations/{id}), or "" for a new one."""
        if body.previous_response_id is not None and body.conversation is not None:
            raise InvalidArgument(
                [("conversation", "give previous_response_id or conversation, not both")]
            )
        if body.previous_response_id is not None:
            run = await self._run(body.previous_response_id, "previous_response_id")
            return run.conversation
        if body.conversation is None:
            return ""
        match = _CONVERSATION.fullmatch(body.conversation)
        if match is None:
            raise InvalidArgument([("conversation", "not a conversation id (conv_...)")])
        return f"conversations/{match.group(1)}"
