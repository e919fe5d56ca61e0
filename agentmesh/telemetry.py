"""agentmesh's own RPCs inside a run's trace, and W3C trace context across services.

A run is traced through the Agents SDK (services/runner/tracing.py). The calls a run
makes to other services while it is traced (a guardrail judged by the guardrails
service, a file search, a credit extension) become spans of that trace: a `custom`
span named after the method, with its status. Every such call also carries a
`traceparent` header naming that span, so the service that answers can put its own
work under it (its log line for the call names the trace), and an OpenTelemetry
collector sees one trace across services. The SDK's ids map to OpenTelemetry's as the
traces service exports them: `trace_<32 hex>` is the 128-bit trace id, `span_<24
hex>` gives the 64-bit span id from its first 16 hex digits.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Callable
from typing import Any

import grpc
from agents.tracing import Span, Trace, custom_span, get_current_span, get_current_trace

TRACEPARENT = "traceparent"
_incoming: contextvars.ContextVar[str | None] = contextvars.ContextVar("incoming_trace")
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")


def otel_trace_id(trace_id: str) -> int:
    digits = trace_id.removeprefix("trace_")[:32]
    try:
        return int(digits, 16) or 1
    except ValueError:
        return int.from_bytes(trace_id.encode()[:16].ljust(16, b"\0"), "big") or 1


def otel_span_id(span_id: str) -> int:
    digits = span_id.removeprefix("span_")[:16]
    try:
        return int(digits, 16) or 1
    except ValueError:
        return int.from_bytes(span_id.encode()[:8].ljust(8, b"\0"), "big") or 1


def traceparent(trace: Trace | None, span: Span[Any] | None) -> str | None:
    """The W3C `traceparent` for work under `span` (or the trace's root), if traced."""
    if trace is None or not trace.trace_id or trace.trace_id == "no-op":
        return None
    parent = span.span_id if span is not None and span.span_id != "no-op" else "0" * 16
    return f"00-{otel_trace_id(trace.trace_id):032x}-{otel_span_id(parent):016x}-01"


def set_incoming_trace(metadata: dict[str, str]) -> None:
    """Notes the trace an incoming call's `traceparent` names (if valid) for its log line."""
    match = _TRACEPARENT.fullmatch(metadata.get(TRACEPARENT, ""))
    _incoming.set(match.group(1) if match else None)


def trace_for_logs() -> str:
    """` trace=<32 hex>` for a call that came with a trace context, else nothing."""
    trace = _incoming.get(None)
    return f" trace={trace}" if trace else ""


def traced_unary(call: Any, method: str) -> Callable[..., Any]:
    """`call` (a unary multicallable) whose calls made inside a traced run are spans of
    the run's trace. Wrap it around the one that adds headers: its `traceparent` then
    names this span."""

    def invoke(request: Any, **kwargs: Any) -> Any:
        trace = get_current_trace()
        if trace is None or trace.trace_id == "no-op":
            return call(request, **kwargs)
        return _traced(call, method, request, kwargs)

    return invoke


async def _traced(call: Any, method: str, request: Any, kwargs: dict[str, Any]) -> Any:
    with custom_span(f"grpc {method}", {"rpc.system": "grpc", "rpc.method": method}) as span:
        pending = call(request, **kwargs)
        try:
            return await pending
        finally:
            code = await pending.code()  # the span ends when the call does
            span.span_data.data["rpc.grpc.status_code"] = code.name
            if code != grpc.StatusCode.OK:
                span.set_error({"message": f"{method} answered {code.name}", "data": None})


def add_traceparent(metadata: grpc.aio.Metadata) -> None:
    """Names the current span (or trace) of a traced run in an outgoing call's headers."""
    header = traceparent(get_current_trace(), get_current_span())
    if header and TRACEPARENT not in metadata:
        metadata.add(TRACEPARENT, header)
