# ruff: noqa: F811 - the runner's fixtures, imported, are redefined as test parameters
"""Traces of runs through the mesh: the span tree a run makes, what never reaches
storage (keys, tokens, megabytes), whose traces a caller sees, the filters and pages
of ListTraces, the OTLP export to a collector the test starts, and the CLI's tree.

Every run goes through the real runner on a scripted model server; its spans go
through the SDK's batch processor, JetStream and the traces service's consumer
into SQLite or Postgres (the mesh runs once per backend).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from aiohttp import web
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from support import Users, database_url, expect_rpc_error, mesh_settings, use_model
from test_runner import KEY, Tenant, endpoint, http_tool  # noqa: F401 - fixture
from typer.testing import CliRunner

from agentmesh.cli import app
from agentmesh.client import Client
from agentmesh.gen.guardrails.v1 import guardrails_pb2 as g
from agentmesh.gen.registry.v1 import account_pb2 as a
from agentmesh.gen.registry.v1 import registry_pb2 as r
from agentmesh.gen.runner.v1 import runner_pb2 as rn
from agentmesh.gen.traces.v1 import traces_pb2 as t
from agentmesh.gen.traces.v1 import traces_pb2_grpc
from agentmesh.mesh import Mesh
from agentmesh.model_server import ModelServer, Reply, ToolCall
from services import plugins_named

State = rn.Run.State
Status = t.Trace.Status
SK = "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"
# What runs and traces need, and no more (no files service, no Milvus).
RUNS_AND_TRACES = plugins_named("registry", "providers", "runner", "guardrails", "traces")


@dataclass
class Collector:
    """An OTLP/HTTP receiver: what a Jaeger or Tempo would be sent."""

    url: str = ""
    requests: list[trace_service_pb2.ExportTraceServiceRequest] = field(default_factory=list)

    def spans(self) -> list:
        return [
            span
            for request in self.requests
            for resource in request.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        ]


@pytest.fixture(scope="module")
async def collector() -> AsyncIterator[Collector]:
    found = Collector()

    async def receive(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        found.requests.append(
            trace_service_pb2.ExportTraceServiceRequest.FromString(await request.read())
        )
        return web.Response(
            body=trace_service_pb2.ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    app = web.Application()
    app.router.add_post("/v1/traces", receive)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    found.url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/traces"
    yield found
    await runner.cleanup()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
async def traces_mesh(request, tmp_path_factory, collector) -> AsyncIterator[Mesh]:
    data_dir = tmp_path_factory.mktemp(f"traces-{request.param}")
    pg = request.getfixturevalue("postgres") if request.param == "postgres" else None
    settings = mesh_settings(
        data_dir,
        database_url=database_url(request.param, pg, data_dir),
        outbound_allow=["127.0.0.1"],
        trace_flush_seconds=0.2,
        otlp_endpoint=collector.url,
    )
    async with Mesh(settings, RUNS_AND_TRACES) as mesh:
        yield mesh


@pytest.fixture
async def users(traces_mesh) -> AsyncIterator[Users]:
    factory = Users(traces_mesh)
    yield factory
    await factory.close()


@pytest.fixture
async def tenant(users) -> AsyncIterator[Tenant]:
    async with ModelServer(api_key=KEY) as model:
        client, user = await users.new(credits=1000)
        await use_model(client, model)
        yield Tenant(client, user, model)


def traces(client: Client) -> traces_pb2_grpc.TraceServiceStub:
    return traces_pb2_grpc.TraceServiceStub(client.channel)


async def stored(client: Client, name: str, within: float = 15.0) -> t.Trace:
    """The trace once its root span (the run's task, which ends last) is stored."""
    async with asyncio.timeout(within):
        while True:
            try:
                trace = await traces(client).GetTrace(t.GetTraceRequest(name=name))
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.NOT_FOUND, error
            else:
                if any(not span.parent_id and span.HasField("end_time") for span in trace.spans):
                    return trace
            await asyncio.sleep(0.1)


async def collected(collector: Collector, trace: str, count: int) -> list:
    """The spans of a trace the collector received, once it has `count` of them."""
    trace_hex = trace.removeprefix("traces/trace_")
    async with asyncio.timeout(15):
        while len(found := [s for s in collector.spans() if s.trace_id.hex() == trace_hex]) < count:  # noqa: ASYNC110, E501 - the collector's list
            await asyncio.sleep(0.1)
    return found


def ancestors(trace: t.Trace, span: t.Span) -> list[t.Span]:
    by_id = {s.span_id: s for s in trace.spans}
    chain = []
    while span.parent_id:
        span = by_id[span.parent_id]
        chain.append(span)
    return chain


def data(span: t.Span) -> dict:
    return json_format.MessageToDict(span.data)


def secrets_guardrail() -> g.Guardrail:
    return g.Guardrail(name="no-secrets", builtin=g.BuiltinCheck(secrets=g.SecretsDetector()))


async def test_a_run_with_a_guardrail_a_tool_and_a_handoff_makes_its_span_tree(tenant, endpoint):
    base, _ = endpoint
    billing = await tenant.agent("billing", handoff_description="invoices")
    triage = await tenant.agent(
        "triage",
        tools=[http_tool("lookup", f"{base}/echo")],
        handoffs=[billing.name],
        input_guardrails=[secrets_guardrail()],
    )
    tenant.model.enqueue(
        Reply(tool_calls=[ToolCall("lookup", {"invoice": "A-1"})]),
        Reply(tool_calls=[ToolCall("transfer_to_billing", {})]),
        Reply(text="billing here"),
    )
    run = await tenant.run(triage.name, "where is my invoice?")
    assert run.state == State.STATE_SUCCEEDED, run.error
    trace = await stored(tenant.client, run.trace)

    assert (trace.name, trace.agent, trace.run) == (run.trace, triage.name, run.name)
    assert trace.status == Status.STATUS_OK and not trace.error
    assert trace.span_count == len(trace.spans) and trace.end_time.seconds
    # Every span's parent is in the trace; one root.
    ids = {span.span_id for span in trace.spans}
    assert all(span.parent_id in ids for span in trace.spans if span.parent_id)
    assert [span.type for span in trace.spans if not span.parent_id] == ["custom"]
    assert len(ids) == len(trace.spans)

    def one(kind: str, name: str) -> t.Span:
        (found,) = [s for s in trace.spans if s.type == kind and s.name == name]
        return found

    triage_span, billing_span = one("agent", "triage"), one("agent", "billing")
    assert data(triage_span)["handoffs"] == ["billing"] and "lookup" in data(triage_span)["tools"]
    lookup = one("function", "lookup")
    assert triage_span in ancestors(trace, lookup)
    assert json.loads(data(lookup)["input"]) == {"invoice": "A-1"}
    assert json.loads(data(lookup)["output"]) == {"echo": {"invoice": "A-1"}}
    handoff = one("handoff", "triage -> billing")
    assert data(handoff) | {} == data(handoff) and data(handoff)["to_agent"] == "billing"
    assert triage_span in ancestors(trace, handoff)
    guardrail = one("guardrail", "no-secrets")
    assert data(guardrail)["triggered"] is False
    generations = [s for s in trace.spans if s.type == "generation"]
    assert len(generations) == 3
    assert all(data(s)["usage"]["input_tokens"] > 0 for s in generations)
    assert [triage_span in ancestors(trace, s) for s in generations] == [True, True, False]
    assert billing_span in ancestors(trace, generations[-1])
    assert all(s.end_time.ToNanoseconds() >= s.start_time.ToNanoseconds() for s in trace.spans)

    # Listed under its agent and its run; the list holds no spans.
    for request in (t.ListTracesRequest(agent=triage.name), t.ListTracesRequest(run=run.name)):
        listed = (await traces(tenant.client).ListTraces(request)).traces
        assert [found.name for found in listed] == [run.trace]
        assert listed[0].span_count == len(trace.spans) and not listed[0].spans


async def test_keys_tokens_and_megabytes_never_reach_storage(tenant, endpoint, collector):
    base, received = endpoint
    agent = await tenant.agent("leaky", tools=[http_tool("lookup", f"{base}/echo")])
    arguments = {"note": f"my key is {KEY}", "token": SK, "blob": "x" * 50_000}
    tenant.model.enqueue(Reply(tool_calls=[ToolCall("lookup", arguments)]), Reply(text="ok"))
    run = await tenant.run(agent.name, f"use {SK} please")
    assert run.state == State.STATE_SUCCEEDED, run.error
    assert received[-1] == arguments  # the tool itself got them
    trace = await stored(tenant.client, run.trace)
    text = json.dumps(json_format.MessageToDict(trace))
    assert KEY not in text and SK not in text and SK[:16] not in text
    (lookup,) = [s for s in trace.spans if s.type == "function"]
    stored_arguments = data(lookup)["input"]
    assert "[redacted]" in stored_arguments and "[truncated" in stored_arguments
    assert len(stored_arguments) < 10_000
    # What went to the collector was the redacted data too.
    exported = await collected(collector, run.trace, len(trace.spans))
    assert all(KEY not in str(s) and SK not in str(s) for s in exported)


async def test_another_users_traces_are_invisible(tenant, users):
    agent = await tenant.agent("helper")
    tenant.model.enqueue(Reply(text="hi"))
    run = await tenant.run(agent.name)
    await stored(tenant.client, run.trace)
    other, _ = await users.new()
    # The other user has an agent of the same id: still none of the first one's traces.
    await other.registry.CreateAgent(
        r.CreateAgentRequest(agent=r.Agent(display_name="helper"), agent_id="helper")
    )
    error = await expect_rpc_error(
        traces(other).GetTrace(t.GetTraceRequest(name=run.trace)), grpc.StatusCode.NOT_FOUND
    )
    missing = await expect_rpc_error(
        traces(other).GetTrace(t.GetTraceRequest(name="traces/trace_" + "0" * 32)),
        grpc.StatusCode.NOT_FOUND,
    )
    assert error.details().replace(run.trace, "X") == missing.details().replace(
        "traces/trace_" + "0" * 32, "X"
    )
    for request in (
        t.ListTracesRequest(),
        t.ListTracesRequest(agent=agent.name),
        t.ListTracesRequest(run=run.name),
    ):
        assert not (await traces(other).ListTraces(request)).traces


async def test_list_filters_and_pages(tenant):
    agent = await tenant.agent("pager")
    broken = await tenant.agent("broken")
    runs = []
    for text in ("one", "two", "three"):
        tenant.model.enqueue(Reply(text=text))
        runs.append(await tenant.run(agent.name, text))
    # A call to a tool the agent does not have fails the run: its trace has an error.
    tenant.model.enqueue(Reply(tool_calls=[ToolCall("nope", {})]))
    failed = await tenant.run(broken.name)
    assert failed.state == State.STATE_FAILED
    for run in [*runs, failed]:
        await stored(tenant.client, run.trace)
    stub = traces(tenant.client)

    first = await stub.ListTraces(t.ListTracesRequest(agent=agent.name, page_size=2))
    assert len(first.traces) == 2 and first.next_page_token
    rest = await stub.ListTraces(
        t.ListTracesRequest(agent=agent.name, page_size=2, page_token=first.next_page_token)
    )
    assert not rest.next_page_token
    # Newest first.
    assert [x.run for x in [*first.traces, *rest.traces]] == [run.name for run in runs[::-1]]

    errors = (await stub.ListTraces(t.ListTracesRequest(status=Status.STATUS_ERROR))).traces
    assert [x.name for x in errors] == [failed.trace]
    assert errors[0].error == "Tool not found"
    ok = (await stub.ListTraces(t.ListTracesRequest(status=Status.STATUS_OK))).traces
    assert {x.name for x in ok} == {run.trace for run in runs}

    now = datetime.now(UTC)
    later = t.ListTracesRequest()
    later.start_time_after.FromDatetime(now + timedelta(hours=1))
    assert not (await stub.ListTraces(later)).traces
    earlier = t.ListTracesRequest()
    earlier.start_time_before.FromDatetime(now + timedelta(hours=1))
    earlier.start_time_after.FromDatetime(now - timedelta(hours=1))
    assert len((await stub.ListTraces(earlier)).traces) == 4

    error = await expect_rpc_error(
        stub.ListTraces(t.ListTracesRequest(page_token="forged")), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "page_token" in error.details()


async def test_spans_reach_the_otlp_collector_with_genai_attributes(tenant, collector):
    agent = await tenant.agent("otel", tools=[http_tool("spin", "http://127.0.0.1:9/x")])
    tenant.model.enqueue(Reply(tool_calls=[ToolCall("spin", {})]), Reply(text="done"))
    run = await tenant.run(agent.name)
    trace = await stored(tenant.client, run.trace)
    mine = await collected(collector, run.trace, len(trace.spans))
    assert len(mine) == len(trace.spans)

    def attributes(span) -> dict:
        return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in span.attributes}

    by_operation: dict[str, list] = {}
    for span in mine:
        by_operation.setdefault(attributes(span).get("gen_ai.operation.name", ""), []).append(span)
    (invoke,) = by_operation["invoke_agent"]
    assert attributes(invoke)["gen_ai.agent.name"] == "otel"
    chats = by_operation["chat"]
    assert len(chats) == 2 and all(attributes(c)["gen_ai.usage.input_tokens"] > 0 for c in chats)
    assert all(attributes(c)["gen_ai.request.model"] for c in chats)
    (tool,) = by_operation["execute_tool"]
    assert attributes(tool)["gen_ai.tool.name"] == "spin" and tool.name == "execute_tool spin"
    assert all(attributes(s)["gen_ai.agent.id"] == agent.name for s in mine)
    assert all(attributes(s)["agentmesh.run"] == run.name for s in mine)
    # Parent links survive: every parent is a span of the same trace.
    ids = {s.span_id for s in mine}
    assert sum(1 for s in mine if not s.parent_span_id) == 1
    assert all(s.parent_span_id in ids for s in mine if s.parent_span_id)


async def test_the_cli_lists_and_draws_a_trace(tenant, users, traces_mesh):
    agent = await tenant.agent("drawn", tools=[http_tool("spin", "http://127.0.0.1:9/x")])
    tenant.model.enqueue(Reply(tool_calls=[ToolCall("spin", {})]), Reply(text="drawn"))
    run = await tenant.run(agent.name)
    await stored(tenant.client, run.trace)
    key = await users.admin.accounts.CreateApiKey(a.CreateApiKeyRequest(parent=tenant.user.name))
    common = ["--target", traces_mesh.address, "--key", key.secret]

    def cli(*args: str):
        return CliRunner().invoke(app, [*args, *common], env={"COLUMNS": "200"})

    listed = await asyncio.to_thread(cli, "traces", "list", "--agent", "drawn")
    assert listed.exit_code == 0, listed.output
    assert run.trace in listed.output and run.name in listed.output
    shown = await asyncio.to_thread(cli, "traces", "show", run.name)
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert run.trace in lines[0]
    (agent_line,) = [line for line in lines if "agent drawn" in line]
    (tool_line,) = [line for line in lines if "function spin" in line]
    # The tool is drawn deeper than its agent, with a duration; model calls show tokens.
    assert tool_line.index("function") > agent_line.index("agent")
    assert " ms" in tool_line or " s" in tool_line
    assert sum("tokens" in line and " in / " in line for line in lines) == 2
    missing = await asyncio.to_thread(cli, "traces", "show", "traces/trace_" + "0" * 32)
    assert missing.exit_code == 1 and "NOT_FOUND" in missing.output


@pytest.fixture
async def judge() -> AsyncIterator[str]:
    """An endpoint guardrail's server that lets everything through."""

    async def decide(request: web.Request) -> web.Response:
        await request.json()
        return web.json_response({"tripwire_triggered": False, "message": "fine"})

    app = web.Application()
    app.router.add_post("/judge", decide)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/judge"
    await runner.cleanup()


async def test_the_calls_a_run_makes_to_other_services_are_spans_of_its_trace(
    tenant, judge, caplog
):
    """The endpoint guardrail is decided by the guardrails service over gRPC: that call is
    a span of the run's trace, and the call carried the trace's W3C context, which the
    guardrails service's log line for it names."""
    guarded = await tenant.agent(
        "guarded",
        input_guardrails=[g.Guardrail(name="judge", endpoint=g.EndpointCheck(url=judge))],
    )
    tenant.model.enqueue(Reply(text="hello"))
    with caplog.at_level(logging.INFO, logger="agentmesh.rpc"):
        run = await tenant.run(guarded.name, "hi")
    assert run.state == State.STATE_SUCCEEDED, run.error
    trace = await stored(tenant.client, run.trace)

    method = "/agentmesh.guardrails.v1.GuardrailService/EvaluateGuardrails"
    (call,) = [s for s in trace.spans if s.type == "custom" and s.name == f"grpc {method}"]
    assert data(call)["data"]["rpc.grpc.status_code"] == "OK" and not call.error
    assert "guardrail" in [span.type for span in ancestors(trace, call)]
    trace_hex = run.trace.removeprefix("traces/trace_")
    logged = [m for m in caplog.messages if m.startswith(f"{method} OK")]
    assert logged and all(m.endswith(f"trace={trace_hex}") for m in logged), logged
