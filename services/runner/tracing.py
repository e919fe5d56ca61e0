"""The runner's spans, out of the process: the SDK's tracing seam to JetStream.

The SDK keeps one tracing provider per process, but one process may hold several
runner replicas (tests run several meshes, each with its own NATS). So the process
has one `SpanRouter` (the only processor the SDK knows), and each runner replica
registers a `SpanSink` under its replica id. A run names its replica and its user
in the trace's metadata (`trace_metadata`); every span carries its trace's
metadata, so each span goes to the sink of the replica that ran it, and into a
batch of its user's spans.

A sink is the SDK's own `BatchTraceProcessor` (a queue and a worker thread) in
front of a `JetStreamSpanExporter`: the run only puts ended spans on a queue. The
worker thread turns them into `SpanBatch` protobufs, with secrets redacted and
large values truncated (`Redactor`), and hands them to the event loop, which
publishes them with JetStream's async publish and retries until the stream has
them (a message id makes a retried publish count once). The SDK's default
exporter, which would send runs and the API key to OpenAI, is never installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

import nats.errors
from agents import set_trace_processors, set_tracing_disabled
from agents.tracing import Span, Trace, TracingProcessor
from agents.tracing.processor_interface import TracingExporter
from agents.tracing.processors import BatchTraceProcessor
from google.protobuf import json_format

from agentmesh.events import EventBus, event_spec
from agentmesh.gen.traces.v1 import events_pb2, traces_pb2

# The checks the builtin secrets guardrail runs: one detector for both.
from agentmesh.guardrail_checks import may_hold_secrets, secret_spans
from agentmesh.ids import new_id

log = logging.getLogger("agentmesh.runner.tracing")

# Trace metadata keys the runner sets: which replica's sink takes the spans, and
# what the traces service files the trace under.
RUNNER, USER, AGENT, RUN, WORKFLOW_RUN = "runner", "user", "agent", "run", "workflow_run"

MASK = "[redacted]"
# A string longer than this is cut, with a marker saying how much went.
MAX_TEXT = 8192
# Lists are cut to this many items, nesting to this depth.
MAX_ITEMS = 256
MAX_DEPTH = 24
# A key named so (or ending so: "x_api_key", "access_token") holds a secret whatever
# its value looks like ("max_tokens" does not).
_SECRET_KEYS = (
    "api_key", "apikey", "authorization", "password", "passwd", "secret", "token",
    "private_key", "credentials",
)  # fmt: skip
# JetStream's default max payload is 1 MiB: batches stay well under it, and a span
# bigger than MAX_SPAN_BYTES is cut to fields of _SHRUNK_FIELD characters.
_MAX_BATCH_BYTES = 512 * 1024
MAX_SPAN_BYTES = 128 * 1024
_SHRUNK_FIELD = 4096
# A megabyte is more than any span shows; searched beyond that is wasted.
_SEARCHED = MAX_TEXT * 128
# Known secrets shorter than this are not searched for (they would mask words).
_MIN_SECRET = 8
# Users whose keys the redactor keeps, the most recent.
_REMEMBERED_USERS = 10_000


def trace_metadata(owner: str, run: Any) -> dict[str, str]:
    """What a run (a records.Run) puts in its trace's metadata: the replica whose sink
    takes its spans, and the user, agent, run and workflow run the trace is filed under."""
    metadata = {
        RUNNER: owner,
        USER: f"users/{run.user_id}",
        AGENT: f"agents/{run.agent_id}",
        RUN: f"runs/{run.id}",
    }
    if workflow_run := getattr(run, "workflow_run_id", ""):
        metadata[WORKFLOW_RUN] = f"workflowRuns/{workflow_run}"
    return metadata


# ---- redaction ----------------------------------------------------------------------


def truncated(text: str, limit: int = MAX_TEXT) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[truncated {len(text) - limit} characters]"


class Redactor:
    """Takes secrets and what storage cannot keep out of span data.

    Masked: the user's secrets as the runner knows them (`known(user)`: provider keys
    and MCP tool authorizations), every token the builtin secrets detector finds
    (OpenAI/Anthropic/GitHub/Slack/... keys, bearer tokens, JWTs, private key blocks),
    and any value under a key named like a secret. Cut: long strings and lists, deep
    nesting. Fixed: NUL characters (Postgres refuses them), lone surrogates (protobuf
    refuses them), NaN and infinities.
    """

    def __init__(self, known: Callable[[str], Iterable[str]] = lambda user: ()):
        self._known = known
        # Keys seen per user, kept after the runner's cache forgets them (a provider
        # changed while its spans wait in the queue; an old key is masked too).
        self._remembered: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def remember(self, user: str) -> None:
        """Notes the keys the runner holds for `user` now (a run of theirs starts)."""
        try:
            keys = {key for key in self._known(user) if len(key) >= _MIN_SECRET}
        except Exception:  # noqa: BLE001 - the detector still runs
            log.warning("reading the known keys failed", exc_info=True)
            return
        with self._lock:
            self._remembered.setdefault(user, set()).update(keys)
            self._remembered[user] = self._remembered.pop(user)  # the most recent last
            while len(self._remembered) > _REMEMBERED_USERS:
                self._remembered.pop(next(iter(self._remembered)))

    def secrets_of(self, user: str) -> list[str]:
        self.remember(user)
        with self._lock:
            found = set(self._remembered.get(user, ()))
        # The longest first: a key that contains another is masked whole.
        return sorted(found, key=len, reverse=True)

    def text(self, value: str, secrets: Sequence[str] = (), detect: bool = True) -> str:
        """`value` with secrets masked and its size bounded; `detect`: the secrets
        detector searches it too (False: a search over all of it found nothing)."""
        value = _mask_known(value[:_SEARCHED], secrets)
        found = secret_spans(value) if detect else ()
        if found:
            parts, last = [], 0
            for start, end in found:
                parts.append(value[last:start])
                parts.append(MASK)
                last = end
            parts.append(value[last:])
            value = "".join(parts)
        value = truncated(value)
        if "\0" in value:
            value = value.replace("\0", "\ufffd")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                value = value.encode("utf-8", "replace").decode("utf-8")
        return value

    def value(self, value: Any, secrets: Sequence[str] = ()) -> Any:
        """A JSON value with secrets masked and sizes bounded.

        The detector searches all of the value's text at once, and each string only
        when that finds something: a search per string cost most of a span's export.
        """
        texts = (_mask_known(text, secrets) for text in _texts(value))
        return self._value(value, secrets, may_hold_secrets(texts), 0)

    def _value(self, value: Any, secrets: Sequence[str], detect: bool, depth: int) -> Any:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str):
            return self.text(value, secrets, detect)
        if isinstance(value, int | float):
            return value if math.isfinite(value) else None
        if depth >= MAX_DEPTH:
            return "[truncated: nested too deep]"
        if isinstance(value, dict):
            cleaned: dict[str, Any] = {}
            for index, (key, item) in enumerate(value.items()):
                if index == MAX_ITEMS:
                    cleaned["..."] = f"[truncated {len(value) - MAX_ITEMS} keys]"
                    break
                name = self.text(str(key), secrets, detect)[:256]
                if item and isinstance(item, str) and _names_secret(name):
                    cleaned[name] = MASK
                else:
                    cleaned[name] = self._value(item, secrets, detect, depth + 1)
            return cleaned
        if isinstance(value, list | tuple):
            items = [self._value(item, secrets, detect, depth + 1) for item in value[:MAX_ITEMS]]
            if len(value) > MAX_ITEMS:
                items.append(f"[truncated {len(value) - MAX_ITEMS} items]")
            return items
        return self.text(str(value), secrets, detect)


def _mask_known(value: str, secrets: Sequence[str]) -> str:
    """The known secrets masked first: a mask can make a word boundary the detector
    looks for ("...key]sk-proj-...")."""
    for secret in secrets:
        if secret in value:
            value = value.replace(secret, MASK)
    return value


def _texts(value: Any, depth: int = 0) -> Iterator[str]:
    """The strings `Redactor._value` searches in `value`, as far as it goes."""
    if value is None or isinstance(value, bool | int | float):
        return
    if isinstance(value, str):
        yield value[:_SEARCHED]
    elif depth >= MAX_DEPTH:
        return
    elif isinstance(value, dict):
        for key, item in itertools.islice(value.items(), MAX_ITEMS):
            yield str(key)[:_SEARCHED]
            yield from _texts(item, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value[:MAX_ITEMS]:
            yield from _texts(item, depth + 1)
    else:
        yield str(value)[:_SEARCHED]


def _names_secret(key: str) -> bool:
    return key.lower().replace("-", "_").endswith(_SECRET_KEYS)


# ---- SDK items as protobufs ---------------------------------------------------------


def _time(message: Any, iso: str | None) -> None:
    if iso:
        with contextlib.suppress(ValueError):
            message.FromDatetime(datetime.fromisoformat(iso))


def _span_name(data: dict[str, Any]) -> str:
    kind = data.get("type", "")
    if kind == "handoff":
        return f"{data.get('from_agent') or '?'} -> {data.get('to_agent') or '?'}"
    if kind == "generation":
        return str(data.get("model") or "generation")
    if kind == "response":
        return str(data.get("response_id") or "response")
    return str(data.get("name") or kind or "span")


def span_message(
    exported: dict[str, Any], redactor: Redactor, secrets: list[str]
) -> traces_pb2.Span:
    data = redactor.value(exported.get("span_data") or {}, secrets)
    if not isinstance(data, dict):
        data = {"value": data}
    message = traces_pb2.Span(
        span_id=str(exported.get("id") or ""),
        trace_id=str(exported.get("trace_id") or ""),
        parent_id=str(exported.get("parent_id") or ""),
        type=str(data.get("type") or "custom")[:64],
        name=_span_name(data)[:256],
    )
    _time(message.start_time, exported.get("started_at"))
    _time(message.end_time, exported.get("ended_at"))
    message.data.update(data)
    error = exported.get("error")
    if error:
        text = error.get("message") if isinstance(error, dict) else str(error)
        message.error = redactor.text(str(text or "error"), secrets)[:2000]
        details = error.get("data") if isinstance(error, dict) else None
        if details:
            message.data.update({"error_data": redactor.value(details, secrets)})
    if message.ByteSize() > MAX_SPAN_BYTES:
        _shrink(message)
    return message


def _shrink(message: traces_pb2.Span) -> None:
    """A span too big to send whole (a model call's whole conversation): each large
    field becomes the head of its JSON with a marker; all of it goes if that is not
    enough."""
    data = json_format.MessageToDict(message.data)
    for key, value in data.items():
        text = json.dumps(value)
        if len(text) > _SHRUNK_FIELD:
            data[key] = truncated(text, _SHRUNK_FIELD)
    message.data.Clear()
    message.data.update(data)
    if message.ByteSize() > MAX_SPAN_BYTES:
        message.data.Clear()
        message.data.update({"type": message.type, "truncated": "the span's data was too big"})


def trace_message(
    exported: dict[str, Any], redactor: Redactor, secrets: list[str]
) -> traces_pb2.Trace:
    metadata = dict(exported.get("metadata") or {})
    metadata.pop(RUNNER, None)  # which replica ran it is no business of the trace's reader
    metadata.pop(USER, None)
    message = traces_pb2.Trace(
        name=f"traces/{exported.get('id') or ''}",
        workflow_name=redactor.text(str(exported.get("workflow_name") or ""), secrets)[:256],
        agent=str(metadata.pop(AGENT, "") or "")[:128],
        run=str(metadata.pop(RUN, "") or "")[:128],
        workflow_run=str(metadata.pop(WORKFLOW_RUN, "") or "")[:128],
    )
    if exported.get("group_id"):
        metadata["group_id"] = exported["group_id"]
    cleaned = redactor.value(metadata, secrets)
    if cleaned:
        message.metadata.update(cleaned)
    return message


def _metadata_of(item: Trace | Span[Any]) -> dict[str, Any]:
    if isinstance(item, Span):
        return item.trace_metadata or {}
    exported = item.export() or {}
    return exported.get("metadata") or {}


# ---- publishing ---------------------------------------------------------------------


class SpanPublisher:
    """Publishes span batches on the mesh's event loop, from any thread; each is
    retried until JetStream acknowledges it (NATS may be restarting)."""

    def __init__(
        self,
        events: EventBus,
        loop: asyncio.AbstractEventLoop,
        *,
        ack_seconds: float = 5.0,
        max_pending: int = 10_000,
    ):
        self._events = events
        self._loop = loop
        self._ack_seconds = ack_seconds
        self._max_pending = max_pending
        self._pending = 0
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task] = set()
        self._spec = event_spec(events_pb2.SpanBatch)
        self.published = 0  # batches JetStream acknowledged (for tests and benchmarks)

    def submit(self, batch: events_pb2.SpanBatch) -> None:
        """Thread-safe; never blocks. Past max_pending unacknowledged batches (NATS away
        for long), new ones are dropped: spans must never stop a run."""
        with self._lock:
            if self._pending >= self._max_pending:
                log.warning("dropping a batch of %d spans: too many unpublished", len(batch.spans))
                return
            self._pending += 1
        try:
            self._loop.call_soon_threadsafe(self._start, batch.SerializeToString())
        except RuntimeError:  # the loop is closed: the process is going away
            with self._lock:
                self._pending -= 1

    def _start(self, data: bytes) -> None:
        task = self._loop.create_task(self._publish(data))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        with self._lock:
            self._pending -= 1

    async def _publish(self, data: bytes) -> None:
        message_id = new_id()
        delay = 0.1
        while True:
            try:
                acked = await self._events.jetstream.publish_async(
                    self._spec.subject,
                    data,
                    wait_stall=self._ack_seconds,
                    stream=self._spec.stream,
                    headers={"Nats-Msg-Id": message_id},
                )
                await asyncio.wait_for(acked, self._ack_seconds)
                self.published += 1
                return
            except nats.errors.MaxPayloadError:  # never publishable: not retried
                log.error("dropping a span batch bigger than NATS accepts")
                return
            except Exception:  # noqa: BLE001 - NATS away or restarting: tried again
                log.debug("publishing spans failed; retrying", exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    @property
    def pending(self) -> int:
        return self._pending

    async def drain(self, seconds: float) -> None:
        """Waits up to `seconds` for what was submitted to be acknowledged, then gives
        up on the rest."""
        await asyncio.sleep(0)  # batches handed over from other threads start first
        if not self._tasks:
            return
        _, late = await asyncio.wait(set(self._tasks), timeout=seconds)
        for task in late:
            task.cancel()
        if late:
            log.warning("gave up publishing %d span batches", len(late))
            await asyncio.gather(*late, return_exceptions=True)


class JetStreamSpanExporter(TracingExporter):
    """The SDK's exporter seam: runs in the batch processor's thread, never on a run's
    path. Items are grouped by user (a batch belongs to one tenant) and cut into
    messages JetStream accepts."""

    def __init__(self, publisher: SpanPublisher, redactor: Redactor):
        self._publisher = publisher
        self._redactor = redactor

    def export(self, items: list[Trace | Span[Any]]) -> None:
        batches: dict[str, list[traces_pb2.Trace | traces_pb2.Span]] = {}
        secrets: dict[str, list[str]] = {}
        for item in items:
            user = str(_metadata_of(item).get(USER) or "")
            exported = item.export()
            if not user or not exported:
                continue
            if user not in secrets:
                secrets[user] = self._redactor.secrets_of(user)
            if isinstance(item, Span):
                message: Any = span_message(exported, self._redactor, secrets[user])
            else:
                message = trace_message(exported, self._redactor, secrets[user])
            batches.setdefault(user, []).append(message)
        for user, messages in batches.items():
            for batch in _cut(user, messages):
                self._publisher.submit(batch)


def _cut(user: str, messages: list[Any]) -> Iterable[events_pb2.SpanBatch]:
    batch, size = events_pb2.SpanBatch(user=user), 0
    for message in messages:
        grows = message.ByteSize() + 8
        if size and size + grows > _MAX_BATCH_BYTES:
            yield batch
            batch, size = events_pb2.SpanBatch(user=user), 0
        if isinstance(message, traces_pb2.Span):
            batch.spans.append(message)
        else:
            batch.traces.append(message)
        size += grows
    if size:
        yield batch


# ---- routing ------------------------------------------------------------------------


class SpanSink:
    """One runner replica's way out for spans: a batch processor, its exporter and its
    publisher."""

    def __init__(
        self,
        events: EventBus,
        redactor: Redactor,
        flush_seconds: float = 1.0,
        *,
        max_queue_size: int = 32768,
        max_batch_size: int = 512,
    ):
        self.publisher = SpanPublisher(events, asyncio.get_running_loop())
        self._redactor = redactor
        self.processor = BatchTraceProcessor(
            JetStreamSpanExporter(self.publisher, redactor),
            max_queue_size=max_queue_size,
            max_batch_size=max_batch_size,
            schedule_delay=flush_seconds,
        )

    def on_trace_start(self, trace: Trace) -> None:
        # Credentials are resolved when the agent is built, before its trace starts.
        if user := _metadata_of(trace).get(USER):
            self._redactor.remember(str(user))
        self.processor.on_trace_start(trace)

    async def flush(self, seconds: float = 10.0) -> None:
        """Exports what is queued and waits for JetStream to have it."""
        await asyncio.to_thread(self.processor.force_flush)
        await self.publisher.drain(seconds)

    async def close(self, seconds: float = 5.0) -> None:
        await asyncio.to_thread(self.processor.shutdown, seconds)
        await self.publisher.drain(seconds)


class SpanRouter(TracingProcessor):
    """The process's one tracing processor: each trace and span goes to the sink of the
    replica its trace's metadata names; one no sink claims is dropped."""

    def __init__(self) -> None:
        self._sinks: dict[str, SpanSink] = {}

    def register(self, owner: str, sink: SpanSink) -> None:
        self._sinks[owner] = sink

    def unregister(self, owner: str) -> None:
        self._sinks.pop(owner, None)

    def _sink(self, metadata: dict[str, Any] | None) -> SpanSink | None:
        if not metadata:
            return None
        return self._sinks.get(metadata.get(RUNNER, ""))

    def on_trace_start(self, trace: Trace) -> None:
        if sink := self._sink(_metadata_of(trace)):
            sink.on_trace_start(trace)

    def on_trace_end(self, trace: Trace) -> None:
        if sink := self._sink(_metadata_of(trace)):
            sink.processor.on_trace_end(trace)

    def on_span_start(self, span: Span[Any]) -> None:
        pass  # spans are sent when they end, whole

    def on_span_end(self, span: Span[Any]) -> None:
        if sink := self._sink(span.trace_metadata):
            sink.processor.on_span_end(span)

    def shutdown(self) -> None:
        for sink in list(self._sinks.values()):
            sink.processor.shutdown()

    def force_flush(self) -> None:
        for sink in list(self._sinks.values()):
            sink.processor.force_flush()


ROUTER = SpanRouter()


def install_tracing() -> SpanRouter:
    """Makes the router the process's only tracing processor, and turns tracing on
    (a run with tracing off says so in its RunConfig)."""
    set_trace_processors([ROUTER])
    set_tracing_disabled(False)
    return ROUTER
