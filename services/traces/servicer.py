"""gRPC servicer of the traces service: protos in, store calls, protos out."""

from __future__ import annotations

from datetime import UTC

import grpc
from google.protobuf import struct_pb2

from agentmesh.api import timestamp
from agentmesh.auth import current_user
from agentmesh.gen.traces.v1 import traces_pb2, traces_pb2_grpc
from agentmesh.paging import Pages
from services.traces.store import Filters, Span, Trace, TraceStore

# What GetTrace answers at most, below the 4 MiB gRPC clients accept by default.
RESPONSE_BUDGET = 3 * 1024 * 1024


def _struct(values: dict) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


def span_proto(span: Span) -> traces_pb2.Span:
    message = traces_pb2.Span(
        span_id=span.id,
        trace_id=span.trace_id,
        parent_id=span.parent_id,
        type=span.type,
        name=span.name,
        data=_struct(span.data),
        error=span.error,
    )
    if span.start_time:
        message.start_time.CopyFrom(timestamp(span.start_time))
    if span.end_time:
        message.end_time.CopyFrom(timestamp(span.end_time))
    return message


def trace_proto(trace: Trace) -> traces_pb2.Trace:
    message = traces_pb2.Trace(
        name=f"traces/{trace.id}",
        workflow_name=trace.workflow_name,
        agent=f"agents/{trace.agent_id}" if trace.agent_id else "",
        run=f"runs/{trace.run_id}" if trace.run_id else "",
        workflow_run=f"workflowRuns/{trace.workflow_run_id}" if trace.workflow_run_id else "",
        start_time=timestamp(trace.start_time),
        span_count=trace.span_count,
        metadata=_struct(trace.attributes),
        spans=[span_proto(span) for span in trace.spans],
        status=traces_pb2.Trace.Status.ValueType(trace.status),
        error=trace.error,
    )
    if trace.end_time:
        message.end_time.CopyFrom(timestamp(trace.end_time))
    return message


class TraceServicer(traces_pb2_grpc.TraceServiceServicer):
    def __init__(self, store: TraceStore, pages: Pages):
        self._store = store
        self._pages = pages

    async def ListTraces(
        self, request: traces_pb2.ListTracesRequest, context: grpc.aio.ServicerContext
    ) -> traces_pb2.ListTracesResponse:
        filters = Filters(
            agent_id=request.agent.removeprefix("agents/"),
            run_id=request.run.removeprefix("runs/"),
            workflow_run_id=request.workflow_run.removeprefix("workflowRuns/"),
            status=request.status,
        )
        if request.HasField("start_time_after"):
            filters.start_after = request.start_time_after.ToDatetime(tzinfo=UTC)
        if request.HasField("start_time_before"):
            filters.start_before = request.start_time_before.ToDatetime(tzinfo=UTC)
        cursor = self._pages.open(request)
        page = await self._store.list(current_user().user_id, filters, cursor.after, cursor.size)
        return traces_pb2.ListTracesResponse(
            traces=[trace_proto(trace) for trace in page.items],
            next_page_token=cursor.next_token(page.last_seq),
        )

    async def GetTrace(
        self, request: traces_pb2.GetTraceRequest, context: grpc.aio.ServicerContext
    ) -> traces_pb2.Trace:
        trace = await self._store.get(current_user().user_id, request.name.removeprefix("traces/"))
        return within_budget(trace_proto(trace))


def within_budget(trace: traces_pb2.Trace, budget: int = RESPONSE_BUDGET) -> traces_pb2.Trace:
    """A trace a client can receive (gRPC clients take 4 MiB by default): past the
    budget, the largest spans' data is left out, with a marker, until it fits; every
    span stays, with its times, names and errors."""
    size = trace.ByteSize()
    if size <= budget:
        return trace
    for span in sorted(trace.spans, key=lambda s: s.data.ByteSize(), reverse=True):
        size -= span.data.ByteSize()
        span.data.Clear()
        span.data.update({"type": span.type, "truncated": "left out: the trace is too big"})
        size += span.data.ByteSize()
        if size <= budget:
            break
    return trace
