"""A STAND-IN for a real model: a local, OpenAI-compatible HTTP server with canned answers.

Nothing here is a language model. The server speaks the OpenAI wire protocol (``/v1/models``,
``/v1/chat/completions`` and ``/v1/responses``, plain JSON and SSE streaming) so that the real
``openai`` client and the Agents SDK's ``OpenAIChatCompletionsModel`` / ``OpenAIResponsesModel``
are exercised end to end over HTTP, in tests and in the platform's offline embedded default.

What it answers, in order of precedence:

1. **Script.** ``server.script`` is a list of :class:`Reply` consumed front to back, one per
   completion request (either endpoint). Append to it at any time (``server.enqueue(...)``).
2. **Rules**, used when the script is empty. All deterministic:

   a. The conversation ends with tool results → a text answer quoting them:
      ``"stand-in reply: <tool name> returned <output>"`` (``"; "``-joined when several), so a
      tool round-trip completes.
   b. The request offers function tools, ``tool_choice`` is not ``"none"`` and the last message is
      from the user → a call to one tool: the tool forced by ``tool_choice``; else the first
      offered tool whose name appears as a whole word in the user's text; else, when
      ``tool_choice`` is ``"required"``, the first offered tool. Its arguments are the JSON object
      written right after the tool's name in the user text if there is one
      (``"call get_weather {"city": "Paris"}"``), otherwise placeholders built from the tool's
      parameter schema (strings get the user text, numbers 0, booleans false, arrays empty).
   c. Otherwise text: ``"stand-in reply to: <last user text>"`` (``"stand-in reply"`` if there is
      no user text). When the request asks for JSON-schema structured output, that text is put
      into a placeholder JSON document built from the schema instead.

``/v1/embeddings`` answers every input with a deterministic vector of ``embedding_dimensions``
numbers: the input's words hashed into buckets, normalized. Texts sharing words are near,
others far; nothing is understood.

Usage counts one token per whitespace-separated word: prompt tokens over all message texts,
completion tokens over the reply text and each tool call's name and JSON arguments.

The server is stateless between requests: it does not store responses, so ``previous_response_id``
and ``conversation`` are ignored. Any model name is accepted and echoed back; ``/v1/models`` lists
the configured ids. Every request is recorded in ``server.requests``.

Run standalone with ``python -m agentmesh.model_server --port 8089``; it prints its base
URL and serves until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import re
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

__all__ = ["DEFAULT_MODEL", "ModelServer", "RecordedRequest", "Reply", "ToolCall"]

DEFAULT_MODEL = "stand-in-model"

JSON = dict[str, Any]

# Where the auth middleware leaves the parsed body for the handlers.
_BODY = web.RequestKey("body", dict)


@dataclass(frozen=True)
class ToolCall:
    """A function call the stand-in should make. ``call_id`` is generated when omitted."""

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    call_id: str | None = None


@dataclass(frozen=True)
class Reply:
    """One scripted model turn: text, tool calls, or both (text is emitted first); or,
    with ``error_status``, an API error of that HTTP status instead (a provider's 500).

    ``delay_s`` is added to the server's ``delay_s`` before this reply is sent.
    """

    text: str | None = None
    tool_calls: Sequence[ToolCall] = ()
    delay_s: float = 0.0
    error_status: int | None = None

    def __post_init__(self) -> None:
        if self.text is None and not self.tool_calls and self.error_status is None:
            raise ValueError("a Reply needs text, tool_calls, or both")


@dataclass(frozen=True)
class RecordedRequest:
    """A request as the server received it. ``headers`` is case-insensitive;
    ``peer`` is the client's (host, port): one connection's requests share it."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: JSON | None
    peer: tuple[str, int] | None = None


# --- the request, reduced to what the rules need (same shape for both APIs) -----------------


@dataclass(frozen=True)
class _Message:
    role: str  # "system" | "user" | "assistant" | "tool"
    text: str
    tool_name: str | None = None  # for tool results: the name of the tool that produced it


@dataclass(frozen=True)
class _Prompt:
    messages: list[_Message]
    tools: dict[str, JSON]  # function name -> JSON schema of its parameters, in request order
    tool_choice: str | None  # "auto" | "none" | "required" | None; a forced tool is below
    forced_tool: str | None
    output_schema: JSON | None


def _text_of(content: Any) -> str:
    """Plain text of a message's content: a string or a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        ]
        return " ".join(texts)
    return ""


def _tool_choice(choice: Any) -> tuple[str | None, str | None]:
    """(mode, forced tool name) from either API's tool_choice."""
    if isinstance(choice, str):
        return choice, None
    if isinstance(choice, dict) and choice.get("type") == "function":
        # Chat nests the name under "function"; Responses puts it at the top level.
        return "required", choice.get("name") or (choice.get("function") or {}).get("name")
    return None, None


def _chat_prompt(body: JSON) -> _Prompt:
    names_by_call_id: dict[str, str] = {}
    messages: list[_Message] = []
    for message in body.get("messages") or []:
        for call in message.get("tool_calls") or []:
            names_by_call_id[call.get("id", "")] = (call.get("function") or {}).get("name", "")
        role = "system" if message.get("role") == "developer" else message.get("role", "user")
        tool_name = names_by_call_id.get(message.get("tool_call_id", ""))
        messages.append(_Message(role, _text_of(message.get("content")), tool_name))
    tools = {
        t["function"]["name"]: t["function"].get("parameters") or {}
        for t in body.get("tools") or []
        if t.get("type") == "function"
    }
    mode, forced = _tool_choice(body.get("tool_choice"))
    fmt = body.get("response_format") or {}
    schema = (
        (fmt.get("json_schema") or {}).get("schema") if fmt.get("type") == "json_schema" else None
    )
    return _Prompt(messages, tools, mode, forced, schema)


def _responses_prompt(body: JSON) -> _Prompt:
    messages: list[_Message] = []
    if instructions := body.get("instructions"):
        messages.append(_Message("system", _text_of(instructions)))
    items = body.get("input") or []
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    names_by_call_id: dict[str, str] = {}
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            role = "system" if item.get("role") == "developer" else item.get("role", "user")
            messages.append(_Message(role, _text_of(item.get("content"))))
        elif kind == "function_call":
            names_by_call_id[item.get("call_id", "")] = item.get("name", "")
            messages.append(_Message("assistant", ""))
        elif kind == "function_call_output":
            name = names_by_call_id.get(item.get("call_id", ""))
            messages.append(_Message("tool", _text_of(item.get("output")), name))
        # Other item kinds (reasoning, hosted tools) carry nothing the rules use.
    tools = {
        t["name"]: t.get("parameters") or {}
        for t in body.get("tools") or []
        if t.get("type") == "function"
    }
    mode, forced = _tool_choice(body.get("tool_choice"))
    fmt = (body.get("text") or {}).get("format") or {}
    schema = fmt.get("schema") if fmt.get("type") == "json_schema" else None
    return _Prompt(messages, tools, mode, forced, schema)


# --- the default rules ------------------------------------------------------------------------


def _placeholder(schema: JSON, text: str, root: JSON) -> Any:
    """A value that satisfies a (simple) JSON schema; strings become ``text``."""
    if ref := schema.get("$ref"):
        defs = root.get("$defs") or root.get("definitions") or {}
        return _placeholder(defs.get(ref.rsplit("/", 1)[-1], {}), text, root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        options = [o for o in schema.get(combinator) or [] if o.get("type") != "null"]
        if options:
            return _placeholder(options[0], text, root)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind == "object" or "properties" in schema:
        required = set(schema.get("required") or [])
        properties = schema.get("properties") or {}
        return {k: _placeholder(v, text, root) for k, v in properties.items() if k in required}
    defaults: dict[str | None, Any] = {"string": text, "integer": 0, "number": 0, "boolean": False}
    return [] if kind == "array" else defaults.get(kind)


def _tool_arguments(name: str, schema: JSON, user_text: str) -> JSON:
    # A JSON object written right after the tool's name wins; it lets a person steer the
    # stand-in from a prompt without a script.
    match = re.search(rf"\b{re.escape(name)}\b\s*", user_text)
    if match and user_text[match.end() :].startswith("{"):
        try:
            value, _ = json.JSONDecoder().raw_decode(user_text[match.end() :])
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            return value
    args = _placeholder(schema, user_text, schema)
    return args if isinstance(args, dict) else {}


def _default_reply(prompt: _Prompt) -> Reply:
    """The rules of the module docstring, applied to a request."""
    results: list[_Message] = []
    for message in reversed(prompt.messages):
        if message.role != "tool":
            break
        results.insert(0, message)
    if results:
        quoted = "; ".join(f"{m.tool_name or 'tool'} returned {m.text}" for m in results)
        return Reply(text=f"stand-in reply: {quoted}")

    user_text = next((m.text for m in reversed(prompt.messages) if m.role == "user"), "")
    last_is_user = bool(prompt.messages) and prompt.messages[-1].role == "user"
    if prompt.tools and prompt.tool_choice != "none" and last_is_user:
        name = prompt.forced_tool or next(
            (n for n in prompt.tools if re.search(rf"\b{re.escape(n)}\b", user_text)), None
        )
        if name is None and prompt.tool_choice == "required":
            name = next(iter(prompt.tools))
        if name in prompt.tools:
            args = _tool_arguments(name, prompt.tools[name], user_text)
            return Reply(tool_calls=[ToolCall(name, args)])

    text = f"stand-in reply to: {user_text}" if user_text else "stand-in reply"
    if prompt.output_schema is not None:
        text = json.dumps(_placeholder(prompt.output_schema, text, prompt.output_schema))
    return Reply(text=text)


# --- wire helpers -----------------------------------------------------------------------------


def _count_tokens(text: str) -> int:
    return len(text.split())


def _text_pieces(text: str) -> list[str]:
    # Word-sized deltas whose concatenation is exactly the text.
    return re.findall(r"\S+\s*|\s+", text)


def _argument_pieces(arguments: str, size: int = 8) -> list[str]:
    # Split arguments across several deltas so clients must accumulate them, as with real models.
    return [arguments[i : i + size] for i in range(0, len(arguments), size)] or [""]


def _hashed_vector(text: str, dimensions: int) -> list[float]:
    """Each word adds +-1 to a bucket picked by its hash: a stable bag-of-words vector."""
    vector = [0.0] * dimensions
    for word in re.findall(r"\w+", text.lower()):
        digest = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest())
        vector[digest % dimensions] += 1.0 if digest >> 63 else -1.0
    norm = sum(value * value for value in vector) ** 0.5 or 1.0
    return [value / norm for value in vector]


def _error(status: int, message: str, type_: str, code: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return web.json_response(body, status=status)


async def _send_sse(resp: web.StreamResponse, data: JSON | str, event: str | None = None) -> None:
    payload = data if isinstance(data, str) else json.dumps(data)
    prefix = f"event: {event}\n" if event else ""
    await resp.write(f"{prefix}data: {payload}\n\n".encode())


async def _start_sse(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    return resp


@dataclass(frozen=True)
class _Call:
    """A tool call with its id and serialized arguments fixed for the whole response."""

    call_id: str
    name: str
    arguments: str


# --- the server -------------------------------------------------------------------------------


class ModelServer:
    """OpenAI-compatible STAND-IN model server (see the module docstring for its rules).

    ``async with ModelServer(script=[Reply(text="hi")]) as server:`` then point a client at
    ``server.base_url``.
    """

    def __init__(
        self,
        *,
        script: Iterable[Reply] = (),
        api_key: str | None = None,
        models: Sequence[str] = (DEFAULT_MODEL,),
        host: str = "127.0.0.1",
        port: int = 0,
        delay_s: float = 0.0,
        embedding_dimensions: int = 64,
    ) -> None:
        self.script: list[Reply] = list(script)
        self.embedding_dimensions = embedding_dimensions
        self.api_key = api_key
        self.models = list(models)
        self.host = host
        self.port = port
        self.delay_s = delay_s
        self.requests: list[RecordedRequest] = []
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None

    # lifecycle

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("ModelServer already started")
        # A short shutdown timeout: stop() must not hang on a client that left a stream open.
        runner = web.AppRunner(self._build_app(), shutdown_timeout=1.0, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self.port = runner.addresses[0][1]  # the real port when 0 was asked for
        self._runner = runner

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ModelServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        if self._runner is None:
            raise RuntimeError("ModelServer is not started")
        return f"http://{self.host}:{self.port}/v1"

    # script

    def enqueue(self, *replies: Reply) -> None:
        """Append replies to the script."""
        self.script.extend(replies)

    def reset(self) -> None:
        """Forget the script and the recorded requests."""
        self.script.clear()
        self.requests.clear()

    # HTTP

    def _build_app(self) -> web.Application:
        @web.middleware
        async def record_and_authorize(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            body: JSON | None = None
            if request.can_read_body:
                try:
                    body = await request.json()
                except json.JSONDecodeError:
                    body = None
                if not isinstance(body, dict):
                    return _error(400, "Body must be a JSON object.", "invalid_request_error")
            # Recorded before the key check so tests can see what a rejected client sent.
            self.requests.append(
                RecordedRequest(
                    request.method,
                    request.path,
                    request.headers.copy(),
                    body,
                    request.transport.get_extra_info("peername") if request.transport else None,
                )
            )
            if self.api_key is not None:
                auth = request.headers.get("Authorization", "")
                if auth != f"Bearer {self.api_key}":
                    message = (
                        "Incorrect API key provided." if auth else "Missing bearer authentication."
                    )
                    return _error(401, message, "invalid_request_error", "invalid_api_key")
            request[_BODY] = body or {}
            return await handler(request)

        app = web.Application(middlewares=[record_and_authorize])
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_post("/v1/embeddings", self._embeddings)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "stand-in"} for m in self.models
        ]
        return web.json_response({"object": "list", "data": data})

    async def _embeddings(self, request: web.Request) -> web.Response:
        body: JSON = request[_BODY]
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return _error(
                400, "input must be a string or a list of strings", "invalid_request_error"
            )
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": _hashed_vector(t, self.embedding_dimensions),
            }
            for i, t in enumerate(texts)
        ]
        tokens = sum(_count_tokens(t) for t in texts)
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": body.get("model") or DEFAULT_MODEL,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def _next_reply(self, prompt: _Prompt) -> tuple[Reply, list[_Call]]:
        reply = self.script.pop(0) if self.script else _default_reply(prompt)
        calls = [
            _Call(
                c.call_id or f"call_standin_{next(self._ids)}",
                c.name,
                json.dumps(dict(c.arguments)),
            )
            for c in reply.tool_calls
        ]
        if delay := self.delay_s + reply.delay_s:
            await asyncio.sleep(delay)
        return reply, calls

    @staticmethod
    def _token_counts(prompt: _Prompt, reply: Reply, calls: list[_Call]) -> tuple[int, int]:
        prompt_tokens = sum(_count_tokens(m.text) for m in prompt.messages)
        completion_tokens = _count_tokens(reply.text or "") + sum(
            1 + _count_tokens(c.arguments) for c in calls
        )
        return prompt_tokens, completion_tokens

    # /v1/chat/completions

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        body: JSON = request[_BODY]
        prompt = _chat_prompt(body)
        reply, calls = await self._next_reply(prompt)
        if reply.error_status is not None:
            return _error(reply.error_status, "scripted failure", "server_error")
        input_tokens, output_tokens = self._token_counts(prompt, reply, calls)
        usage = {
            "prompt_tokens": input_tokens,
            "completion_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }
        finish_reason = "tool_calls" if calls else "stop"
        base = {
            "id": f"chatcmpl-standin-{next(self._ids)}",
            "created": int(time.time()),
            "model": body.get("model") or self.models[0],
            "system_fingerprint": None,
        }

        if not body.get("stream"):
            message: JSON = {"role": "assistant", "content": reply.text, "refusal": None}
            if calls:
                message["tool_calls"] = [
                    {
                        "id": c.call_id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments},
                    }
                    for c in calls
                ]
            choice = {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish_reason,
            }
            return web.json_response(
                {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
            )

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        # With include_usage the real API sends "usage": null on every chunk but the last.
        chunk_base = {**base, "object": "chat.completion.chunk"}
        if include_usage:
            chunk_base["usage"] = None

        def chunk(delta: JSON, finish: str | None = None) -> JSON:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**chunk_base, "choices": [choice]}

        resp = await _start_sse(request)
        # Like the real API: the first delta carries the role; content "" opens a text answer,
        # null announces a tool-call-only answer.
        first_content = "" if reply.text is not None else None
        await _send_sse(
            resp, chunk({"role": "assistant", "content": first_content, "refusal": None})
        )
        for piece in _text_pieces(reply.text or ""):
            await _send_sse(resp, chunk({"content": piece}))
        for index, call in enumerate(calls):
            # The first delta of a call names it (id, type, name); later ones only add arguments.
            header = {
                "index": index,
                "id": call.call_id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            await _send_sse(resp, chunk({"tool_calls": [header]}))
            for piece in _argument_pieces(call.arguments):
                delta = {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
                await _send_sse(resp, chunk(delta))
        await _send_sse(resp, chunk({}, finish_reason))
        if include_usage:
            await _send_sse(resp, {**chunk_base, "choices": [], "usage": usage})
        await _send_sse(resp, "[DONE]")
        await resp.write_eof()
        return resp

    # /v1/responses

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        body: JSON = request[_BODY]
        prompt = _responses_prompt(body)
        reply, calls = await self._next_reply(prompt)
        if reply.error_status is not None:
            return _error(reply.error_status, "scripted failure", "server_error")
        input_tokens, output_tokens = self._token_counts(prompt, reply, calls)
        usage = {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        }

        # Completed output items; streaming announces each one in its in-progress form first.
        output: list[JSON] = []
        if reply.text is not None:
            part = {"type": "output_text", "text": reply.text, "annotations": [], "logprobs": []}
            output.append(
                {
                    "id": f"msg_standin_{next(self._ids)}",
                    "type": "message",
                    "role": "assistant",
                    "status": "completed",
                    "content": [part],
                }
            )
        for call in calls:
            output.append(
                {
                    "id": f"fc_standin_{next(self._ids)}",
                    "type": "function_call",
                    "call_id": call.call_id,
                    "name": call.name,
                    "arguments": call.arguments,
                    "status": "completed",
                }
            )

        created_at = int(time.time())
        response: JSON = {
            "id": f"resp_standin_{next(self._ids)}",
            "object": "response",
            "created_at": created_at,
            "completed_at": created_at,
            "model": body.get("model") or self.models[0],
            "status": "completed",
            "output": output,
            "usage": usage,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "metadata": body.get("metadata") or {},
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "temperature": body.get("temperature"),
            "top_p": body.get("top_p"),
            "tool_choice": body.get("tool_choice") or "auto",
            "tools": body.get("tools") or [],
            "text": body.get("text") or {"format": {"type": "text"}},
            "previous_response_id": None,
        }
        if not body.get("stream"):
            return web.json_response(response)

        resp = await _start_sse(request)
        sequence = itertools.count()

        async def emit(type_: str, **fields: Any) -> None:
            # The real API names each event twice: in the SSE "event:" line and in "type".
            await _send_sse(
                resp, {"type": type_, "sequence_number": next(sequence), **fields}, type_
            )

        pending = {
            **response,
            "status": "in_progress",
            "output": [],
            "usage": None,
            "completed_at": None,
        }
        await emit("response.created", response=pending)
        await emit("response.in_progress", response=pending)
        for output_index, item in enumerate(output):
            where = {"item_id": item["id"], "output_index": output_index}
            if item["type"] == "message":
                part = item["content"][0]
                await emit(
                    "response.output_item.added",
                    output_index=output_index,
                    item={**item, "status": "in_progress", "content": []},
                )
                empty_part = {**part, "text": ""}
                await emit("response.content_part.added", **where, content_index=0, part=empty_part)
                for piece in _text_pieces(part["text"]):
                    await emit(
                        "response.output_text.delta",
                        **where,
                        content_index=0,
                        delta=piece,
                        logprobs=[],
                    )
                await emit(
                    "response.output_text.done",
                    **where,
                    content_index=0,
                    text=part["text"],
                    logprobs=[],
                )
                await emit("response.content_part.done", **where, content_index=0, part=part)
            else:
                await emit(
                    "response.output_item.added",
                    output_index=output_index,
                    item={**item, "status": "in_progress", "arguments": ""},
                )
                for piece in _argument_pieces(item["arguments"]):
                    await emit("response.function_call_arguments.delta", **where, delta=piece)
                await emit(
                    "response.function_call_arguments.done", **where, arguments=item["arguments"]
                )
            await emit("response.output_item.done", output_index=output_index, item=item)
        await emit("response.completed", response=response)
        await resp.write_eof()
        return resp


# --- python -m agentmesh.model_server -------------------------------------------------


async def _serve(args: argparse.Namespace) -> None:
    server = ModelServer(
        api_key=args.api_key,
        models=args.model or [DEFAULT_MODEL],
        host=args.host,
        port=args.port,
        delay_s=args.delay_s,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        # Printed so a parent process can learn the port when 0 was asked for.
        print(f"stand-in model server (not a model) listening on {server.base_url}", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="OpenAI-compatible STAND-IN model server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--api-key", default=None, help="require this bearer key")
    parser.add_argument("--model", action="append", help="model id to list (repeatable)")
    parser.add_argument("--delay-s", type=float, default=0.0, help="latency added per request")
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
