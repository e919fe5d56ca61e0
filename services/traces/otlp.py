"""Stored spans, also sent over OTLP/HTTP to an OpenTelemetry collector (Jaeger,
Tempo, ...), with the GenAI semantic conventions' attributes.

The OpenTelemetry SDK's own OTLP exporter sends them, behind its batch processor
(a queue and a thread: never on the intake's path). SDK ids become OTel ids:
`trace_<32 hex>` is the 128-bit trace id, `span_<24 hex>` gives the 64-bit span
id from its first 16 hex digits. What is sent was redacted before it was
published, as what is stored.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from google.protobuf import json_format
from opentelemetry import trace as otel
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from agentmesh.gen.traces.v1 import events_pb2, traces_pb2
from agentmesh.telemetry import otel_span_id, otel_trace_id

log = logging.getLogger("agentmesh.traces")

_SCOPE = InstrumentationScope("agentmesh.traces", "1")
_SAMPLED = otel.TraceFlags(otel.TraceFlags.SAMPLED)
# The GenAI conventions' operation for each SDK span type.
_OPERATIONS = {
    "generation": "chat",
    "response": "chat",
    "agent": "invoke_agent",
    "function": "execute_tool",
    "mcp_tools": "execute_tool",
}
_MAX_ATTRIBUTE = 4096
# A model call is a call out of the process; the rest happens inside it.
_CLIENT, _INTERNAL = otel.SpanKind.CLIENT, otel.SpanKind.INTERNAL


def _nanos(stamp: Any) -> int | None:
    if not stamp.seconds and not stamp.nanos:
        return None
    return stamp.seconds * 1_000_000_000 + stamp.nanos


def _json(value: Any) -> str:
    return json.dumps(value, default=str)[:_MAX_ATTRIBUTE]


def genai_attributes(span: traces_pb2.Span, data: dict[str, Any]) -> dict[str, Any]:
    """The GenAI semantic conventions' attributes of one SDK span, plus agentmesh's
    own (agentmesh.*) for what the conventions do not name."""
    kind = span.type
    attributes: dict[str, Any] = {"agentmesh.span.type": kind}
    if operation := _OPERATIONS.get(kind):
        attributes["gen_ai.operation.name"] = operation
        attributes["gen_ai.provider.name"] = "openai"
    if kind == "agent":
        attributes["gen_ai.agent.name"] = span.name
        if tools := data.get("tools"):
            attributes["agentmesh.agent.tools"] = [str(t) for t in tools]
        if handoffs := data.get("handoffs"):
            attributes["agentmesh.agent.handoffs"] = [str(h) for h in handoffs]
    elif kind in ("generation", "response"):
        if model := data.get("model"):
            attributes["gen_ai.request.model"] = str(model)
            attributes["gen_ai.response.model"] = str(model)
        if response_id := data.get("response_id"):
            attributes["gen_ai.response.id"] = str(response_id)
        usage = data.get("usage") or {}
        if "input_tokens" in usage:
            attributes["gen_ai.usage.input_tokens"] = int(usage["input_tokens"])
        if "output_tokens" in usage:
            attributes["gen_ai.usage.output_tokens"] = int(usage["output_tokens"])
        if data.get("input") is not None:
            attributes["gen_ai.input.messages"] = _json(data["input"])
        if data.get("output") is not None:
            attributes["gen_ai.output.messages"] = _json(data["output"])
    elif kind == "function":
        attributes["gen_ai.tool.name"] = span.name
        attributes["gen_ai.tool.type"] = "function"
        if data.get("input") is not None:
            attributes["gen_ai.tool.call.arguments"] = _json(data["input"])
        if data.get("output") is not None:
            attributes["gen_ai.tool.call.result"] = _json(data["output"])
    elif kind == "handoff":
        attributes["agentmesh.handoff.from_agent"] = str(data.get("from_agent") or "")
        attributes["agentmesh.handoff.to_agent"] = str(data.get("to_agent") or "")
    elif kind == "guardrail":
        attributes["agentmesh.guardrail.name"] = span.name
        attributes["agentmesh.guardrail.triggered"] = bool(data.get("triggered"))
    return attributes


def _span_name(span: traces_pb2.Span, attributes: dict[str, Any]) -> str:
    operation = attributes.get("gen_ai.operation.name")
    return f"{operation} {span.name}" if operation else f"{span.type} {span.name}"


class OtlpExport:
    """Sends stored span batches to an OTLP/HTTP endpoint."""

    def __init__(self, endpoint: str, *, schedule_delay_millis: int = 1000):
        self._processor = BatchSpanProcessor(
            OTLPSpanExporter(endpoint=endpoint), schedule_delay_millis=schedule_delay_millis
        )
        self._resource = Resource.create({"service.name": "agentmesh"})
        # The trace records seen, for the attributes every span of a trace gets.
        self._traces: dict[str, dict[str, str]] = {}

    def send(self, batches: list[events_pb2.SpanBatch]) -> None:
        for batch in batches:
            for trace in batch.traces:
                trace_id = trace.name.removeprefix("traces/")
                self._traces[trace_id] = {
                    key: value
                    for key, value in (
                        ("agentmesh.user", batch.user),
                        ("gen_ai.agent.id", trace.agent),
                        ("agentmesh.run", trace.run),
                        ("agentmesh.workflow_run", trace.workflow_run),
                        ("agentmesh.workflow_name", trace.workflow_name),
                    )
                    if value
                }
                if len(self._traces) > 10_000:  # a bounded memory of recent traces
                    self._traces.pop(next(iter(self._traces)))
            for span in batch.spans:
                self._processor.on_end(self._readable(batch.user, span))

    def _readable(self, user: str, span: traces_pb2.Span) -> ReadableSpan:
        data = json_format.MessageToDict(span.data)
        attributes = {
            "agentmesh.user": user,
            **self._traces.get(span.trace_id, {}),
            **genai_attributes(span, data),
        }
        trace_id = otel_trace_id(span.trace_id)
        parent = None
        if span.parent_id:
            parent = otel.SpanContext(trace_id, otel_span_id(span.parent_id), False, _SAMPLED)
        status = otel.Status(otel.StatusCode.OK)
        if span.error:
            status = otel.Status(otel.StatusCode.ERROR, span.error)
            attributes["error.type"] = "agent_error"
        return ReadableSpan(
            name=_span_name(span, attributes),
            context=otel.SpanContext(trace_id, otel_span_id(span.span_id), False, _SAMPLED),
            parent=parent,
            resource=self._resource,
            attributes=attributes,
            kind=otel.SpanKind.CLIENT
            if "gen_ai.request.model" in attributes
            else otel.SpanKind.INTERNAL,
            status=status,
            start_time=_nanos(span.start_time),
            end_time=_nanos(span.end_time) or _nanos(span.start_time),
            instrumentation_scope=_SCOPE,
        )

    def close(self) -> None:
        self._processor.shutdown()
