# ruff: noqa: F811 - the runner's fixtures, imported, are redefined as test parameters
"""Guardrails in runs: an input that trips stops the run before any model call (and
any bill); an output that trips is replaced by the guardrail's override."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from agents.tracing import TracingProcessor, add_trace_processor
from aiohttp import web
from google.protobuf import json_format, struct_pb2
from test_runner import Tenant, runner_mesh, tenant, users  # noqa: F401 - fixtures

from agentmesh.gen.guardrails.v1 import guardrails_pb2 as g
from agentmesh.gen.runner.v1 import runner_pb2 as rn
from agentmesh.model_server import Reply

State = rn.Run.State


def secrets_guardrail() -> g.Guardrail:
    return g.Guardrail(
        name="no-secrets",
        override_message="Please do not paste keys into the chat.",
        builtin=g.BuiltinCheck(secrets=g.SecretsDetector()),
    )


async def test_an_input_that_trips_ends_the_run_blocked_before_any_model_call(tenant: Tenant):
    agent = await tenant.agent("guarded", input_guardrails=[secrets_guardrail()])
    balance = (await tenant.balance()).balance
    run = await tenant.run(agent.name, "my key is sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z")
    assert run.state == State.STATE_BLOCKED
    assert run.final_output == "Please do not paste keys into the chat."
    assert tenant.model.requests == []
    assert run.credits == 0 and (await tenant.balance()).balance == balance
    # An input without a secret runs as usual.
    tenant.model.enqueue(Reply(text="fine"))
    assert (await tenant.run(agent.name, "hello")).state == State.STATE_SUCCEEDED


async def test_an_output_that_trips_is_replaced_by_the_override(tenant: Tenant):
    card = g.Guardrail(
        name="no-cards",
        override_message="[withheld: it held a card number]",
        builtin=g.BuiltinCheck(pii=g.PiiDetector(kinds=[g.PiiDetector.KIND_PAYMENT_CARD])),
    )
    agent = await tenant.agent("careful", output_guardrails=[card])
    tenant.model.enqueue(Reply(text="your card is 4111 1111 1111 1111"))
    run = await tenant.run(agent.name)
    assert run.state == State.STATE_BLOCKED
    assert run.final_output == "[withheld: it held a card number]"
    tenant.model.enqueue(Reply(text="no card here, just 2026-11-27"))
    assert (await tenant.run(agent.name)).state == State.STATE_SUCCEEDED


@pytest.fixture
async def endpoint_hits() -> AsyncIterator[tuple[str, list]]:
    hits: list = []

    async def schema(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"type": "integer"})

    app = web.Application()
    app.router.add_get("/schema.json", schema)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/schema.json", hits
    await runner.cleanup()


async def test_an_output_schema_never_fetches_a_remote_ref(tenant: Tenant, endpoint_hits):
    url, hits = endpoint_hits
    schema = {"type": "object", "properties": {"x": {"$ref": url}}, "required": ["x"]}
    agent = await tenant.agent(
        "reffy", output_type=json_format.ParseDict(schema, struct_pb2.Struct())
    )
    tenant.model.enqueue(Reply(text=json.dumps({"x": 1})))
    run = await tenant.run(agent.name)
    assert hits == []  # the service process fetched nothing
    assert run.state == State.STATE_FAILED
    assert "outside" in run.error.message


# ---- every kind in runs, results on the run and its trace ---------------------------


def recorded(run: rn.Run) -> list[tuple[str, bool, str]]:
    return [(r.name, r.tripwire_triggered, r.info["stage"]) for r in run.guardrail_results]


async def test_every_result_is_recorded_on_the_run(tenant: Tenant):
    no_cards = g.Guardrail(
        name="no-cards",
        builtin=g.BuiltinCheck(pii=g.PiiDetector(kinds=[g.PiiDetector.KIND_PAYMENT_CARD])),
    )
    agent = await tenant.agent(
        "recorded", input_guardrails=[secrets_guardrail()], output_guardrails=[no_cards]
    )
    tenant.model.enqueue(Reply(text="all fine"))
    run = await tenant.run(agent.name, "hello")
    assert run.state == State.STATE_SUCCEEDED
    assert recorded(run) == [("no-secrets", False, "input"), ("no-cards", False, "output")]
    assert run.guardrail_results[0].message == "no secrets found"
    assert await tenant.client.runner.GetRun(rn.GetRunRequest(name=run.name)) == run
    blocked = await tenant.run(agent.name, "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z")
    assert recorded(blocked) == [("no-secrets", True, "input")]
    assert "OpenAI API key" in blocked.guardrail_results[0].message
    assert "Ab3dEf6h" not in blocked.guardrail_results[0].message  # at most its ending


def judge_schema() -> struct_pb2.Struct:
    return json_format.ParseDict(
        {
            "type": "object",
            "properties": {
                "tripwire_triggered": {"type": "boolean"},
                "message": {"type": "string"},
            },
            "required": ["tripwire_triggered", "message"],
            "additionalProperties": False,
        },
        struct_pb2.Struct(),
    )


async def test_an_agent_guardrail_judges_the_input_before_the_model_is_called(tenant: Tenant):
    judge = await tenant.agent(
        "tone-judge", instructions="Is this rude?", output_type=judge_schema()
    )
    agent = await tenant.agent(
        "polite",
        instructions="Answer politely.",
        input_guardrails=[
            g.Guardrail(
                name="tone",
                override_message="Let us keep it friendly.",
                agent=g.AgentCheck(agent=judge.name),
            )
        ],
    )
    tenant.model.enqueue(Reply(text=json.dumps({"tripwire_triggered": True, "message": "rude"})))
    run = await tenant.run(agent.name, "you are useless")
    assert run.state == State.STATE_BLOCKED
    assert run.final_output == "Let us keep it friendly."
    # One model call: the judge's. The guarded agent's model was never called.
    [call] = tenant.model.requests
    assert call.body["messages"][0]["content"] == "Is this rude?"
    [result] = run.guardrail_results
    assert (result.name, result.tripwire_triggered, result.message) == ("tone", True, "rude")
    assert result.info["run"].startswith("runs/") and result.info["stage"] == "input"
    # The judge's own run is the user's to see.
    judged = await tenant.client.runner.GetRun(rn.GetRunRequest(name=result.info["run"]))
    assert judged.agent == judge.name and judged.input == "you are useless"
    tenant.model.enqueue(
        Reply(text=json.dumps({"tripwire_triggered": False, "message": "fine"})),
        Reply(text="Happy to help."),
    )
    run = await tenant.run(agent.name, "please help")
    assert (run.state, run.final_output) == (State.STATE_SUCCEEDED, "Happy to help.")


async def test_a_code_guardrail_runs_in_the_sandbox_and_overrides_the_output(tenant: Tenant):
    agent = await tenant.agent(
        "sandboxed",
        output_guardrails=[
            g.Guardrail(
                name="no-internal",
                override_message="[withheld]",
                code=g.CodeCheck(
                    source="import os\n"
                    "def check(text):\n"
                    "    return {'tripwire_triggered': 'internal' in text,\n"
                    "            'message': 'env: ' + ','.join(sorted(os.environ))}\n"
                ),
            )
        ],
    )
    tenant.model.enqueue(Reply(text="the internal hostname is db7"))
    run = await tenant.run(agent.name)
    assert (run.state, run.final_output) == (State.STATE_BLOCKED, "[withheld]")
    [result] = run.guardrail_results
    # It ran in the sandbox: its environment is the sandbox's, not the service's.
    names = set(result.message.removeprefix("env: ").split(","))
    assert names <= {"HOME", "LANG", "PATH", "PWD", "TMPDIR"}, names
    assert not any(item.type == rn.RunItem.TYPE_MESSAGE for item in run.items)


@pytest.fixture
async def checker() -> AsyncIterator[tuple[str, list]]:
    seen: list = []

    async def check(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        return web.json_response(
            {"tripwire_triggered": "refund" in body["text"], "message": "refunds go to billing"}
        )

    app = web.Application()
    app.router.add_post("/check", check)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/check", seen
    await runner.cleanup()


async def test_an_endpoint_guardrail_decides_the_input(tenant: Tenant, checker):
    url, seen = checker
    agent = await tenant.agent(
        "front-desk",
        input_guardrails=[g.Guardrail(name="routing", endpoint=g.EndpointCheck(url=url))],
    )
    run = await tenant.run(agent.name, "I want a refund")
    assert (run.state, run.final_output) == (
        State.STATE_BLOCKED,
        "blocked by the guardrail 'routing'",
    )
    assert seen == [{"text": "I want a refund", "stage": "input", "agent": agent.name}]
    assert tenant.model.requests == []
    assert run.guardrail_results[0].message == "refunds go to billing"


# ---- streaming: tripped text never reaches the client -------------------------------


async def stream(tenant: Tenant, agent: str, text: str = "go") -> list[rn.RunEvent]:
    return [
        event
        async for event in tenant.client.runner.StreamRun(
            rn.RunAgentRequest(agent=agent, input=text)
        )
    ]


def streamed_text(events: list[rn.RunEvent]) -> str:
    return "".join(e.text_delta.delta for e in events if e.HasField("text_delta"))


CARD = "4111 1111 1111 1111"


async def test_a_streamed_card_number_never_reaches_the_client(tenant: Tenant):
    agent = await tenant.agent(
        "streamed-pii",
        output_guardrails=[
            g.Guardrail(
                name="no-cards",
                override_message="[a card number was withheld]",
                builtin=g.BuiltinCheck(pii=g.PiiDetector(kinds=[g.PiiDetector.KIND_PAYMENT_CARD])),
            )
        ],
    )
    preface = "Here is what you asked for, as it is on file today. " * 3
    tenant.model.enqueue(Reply(text=preface + f"Card: {CARD} expiring soon. " + "More. " * 30))
    spans = SpanCollector()
    add_trace_processor(spans)
    try:
        events = await stream(tenant, agent.name)
    finally:
        spans.active = False
    sent = streamed_text(events)
    assert "1111" not in sent and "4111" not in sent
    # The text before it went out as it streamed; then the override.
    assert sent.startswith("Here is what you asked for")
    assert sent.endswith("[a card number was withheld]")
    finished = events[-1].run_finished
    assert (finished.state, finished.final_output) == (
        State.STATE_BLOCKED,
        "[a card number was withheld]",
    )
    [result] = finished.guardrail_results
    assert result.tripwire_triggered and result.info["streamed"] is True
    assert "4111" not in json.dumps(json_format.MessageToDict(finished))  # its ending only
    run = await tenant.client.runner.GetRun(rn.GetRunRequest(name=finished.name))
    assert "4111" not in json.dumps(json_format.MessageToDict(run))
    # The trip is on the run's trace like any guardrail's, with its result under it.
    mine = [s for s in spans.spans if s.trace_id == run.trace.removeprefix("traces/")]
    [guard] = [s for s in mine if s.span_data.type == "guardrail"]
    assert (guard.span_data.name, guard.span_data.triggered) == ("no-cards", True)
    [under] = [s for s in mine if s.parent_id == guard.span_id]
    assert under.span_data.data["info"]["streamed"] is True


async def test_a_streamed_answer_that_passes_arrives_whole_and_in_pieces(tenant: Tenant):
    agent = await tenant.agent(
        "streamed-clean",
        output_guardrails=[
            g.Guardrail(name="no-pii", builtin=g.BuiltinCheck(pii=g.PiiDetector())),
            g.Guardrail(
                name="no-leaks",
                regex=g.RegexCheck(pattern=r"secret\d{4}", action=g.RegexCheck.ACTION_BLOCK),
            ),
        ],
    )
    words = " ".join(f"word{i}" for i in range(300))
    tenant.model.enqueue(Reply(text=words))
    events = await stream(tenant, agent.name)
    assert streamed_text(events) == words
    assert len([e for e in events if e.HasField("text_delta")]) > 1
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds.index("item") > max(i for i, kind in enumerate(kinds) if kind == "text_delta")
    assert events[-1].run_finished.state == State.STATE_SUCCEEDED


async def test_a_guardrail_on_the_whole_output_holds_the_stream_to_the_end(tenant: Tenant):
    limit = g.Guardrail(name="short", builtin=g.BuiltinCheck(max_length=g.MaxLength(max_chars=120)))
    agent = await tenant.agent("streamed-short", output_guardrails=[limit])
    tenant.model.enqueue(Reply(text="blah " * 40))
    events = await stream(tenant, agent.name)
    assert streamed_text(events) == "blocked by the guardrail 'short'"
    assert not [e for e in events if e.HasField("item")]  # nor the message as an item
    assert events[-1].run_finished.state == State.STATE_BLOCKED
    tenant.model.enqueue(Reply(text="short and sweet"))
    events = await stream(tenant, agent.name)
    assert streamed_text(events) == "short and sweet"
    assert [e.item.text for e in events if e.HasField("item")] == ["short and sweet"]
    assert events[-1].run_finished.state == State.STATE_SUCCEEDED


async def test_guardrail_spans_carry_their_results(tenant: Tenant):
    spans = SpanCollector()
    add_trace_processor(spans)
    try:
        agent = await tenant.agent("traced-guard", input_guardrails=[secrets_guardrail()])
        run = await tenant.run(agent.name, "my key is sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z")
    finally:
        spans.active = False
    assert run.state == State.STATE_BLOCKED
    trace_id = run.trace.removeprefix("traces/")
    mine = [s for s in spans.spans if s.trace_id == trace_id]
    guardrail = next(s for s in mine if s.span_data.type == "guardrail")
    assert guardrail.export()["span_data"] == {
        "type": "guardrail",
        "name": "no-secrets",
        "triggered": True,
    }
    result = next(s for s in mine if s.parent_id == guardrail.span_id)
    data = result.export()["span_data"]["data"]
    assert data["tripwireTriggered"] is True and data["info"]["stage"] == "input"
    assert "OpenAI API key" in data["message"] and "sk-proj" not in json.dumps(data)


class SpanCollector(TracingProcessor):
    """Keeps the spans that end while it is active (it stays registered: the SDK's
    provider has no way to take one processor out)."""

    def __init__(self) -> None:
        self.active = True
        self.spans: list = []

    def on_trace_start(self, trace) -> None:  # noqa: ANN001
        pass

    def on_trace_end(self, trace) -> None:  # noqa: ANN001
        pass

    def on_span_start(self, span) -> None:  # noqa: ANN001
        pass

    def on_span_end(self, span) -> None:  # noqa: ANN001
        if self.active:
            self.spans.append(span)

    def shutdown(self) -> None:
        pass

    def force_flush(self) -> None:
        pass
