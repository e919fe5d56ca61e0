# ruff: noqa: F811 - the runner's fixtures, imported, are redefined as test parameters
"""EvaluateGuardrails over gRPC: every kind on one text, concurrently; definitions that
cannot be decided are the caller's error, named by field; checks that fail trip; a
judging agent is the caller's own, or NOT_FOUND."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest
from aiohttp import web
from google.protobuf import json_format, struct_pb2
from rpc_helpers import error_info, field_violations
from support import expect_rpc_error
from test_runner import Tenant, runner_mesh, tenant, users  # noqa: F401 - fixtures

from agentmesh import outbound
from agentmesh.errors import InvalidArgument
from agentmesh.gen.guardrails.v1 import guardrails_pb2 as g
from agentmesh.gen.registry.v1 import registry_pb2 as r
from agentmesh.model_server import Reply
from agentmesh.outbound import OutboundPolicy
from services.guardrails.evaluate import Evaluator

INPUT, OUTPUT = g.GUARDRAIL_STAGE_INPUT, g.GUARDRAIL_STAGE_OUTPUT
VERDICT_SCHEMA = {
    "type": "object",
    "properties": {"tripwire_triggered": {"type": "boolean"}, "message": {"type": "string"}},
    "required": ["tripwire_triggered", "message"],
    "additionalProperties": False,
}


def struct(value: dict) -> struct_pb2.Struct:
    return json_format.ParseDict(value, struct_pb2.Struct())


async def evaluate(tenant: Tenant, *guardrails: g.Guardrail, text: str, stage=OUTPUT, agent=""):
    return await tenant.client.guardrails.EvaluateGuardrails(
        g.EvaluateGuardrailsRequest(guardrails=guardrails, text=text, stage=stage, agent=agent)
    )


def endpoint(name: str, url: str, seconds: float = 0) -> g.Guardrail:
    check = g.EndpointCheck(url=url)
    if seconds:
        check.timeout.FromMilliseconds(int(seconds * 1000))
    return g.Guardrail(name=name, endpoint=check)


def code(name: str, source: str) -> g.Guardrail:
    return g.Guardrail(name=name, code=g.CodeCheck(source=source))


@dataclass
class Judge:
    """An HTTP guardrail the test runs: it trips on "forbidden", after `delay` seconds."""

    url: str = ""
    delay: float = 0.0
    reply: object = None
    status: int = 200
    seen: list[dict] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)  # each call's client port


@pytest.fixture
async def judge() -> AsyncIterator[Judge]:
    state = Judge()

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        state.seen.append(body)
        state.ports.append(request.transport.get_extra_info("peername")[1])
        await asyncio.sleep(state.delay)
        if state.status != 200:
            return web.Response(status=state.status, text="down")
        reply = state.reply or {
            "tripwire_triggered": "forbidden" in body["text"],
            "message": "the endpoint found a forbidden word",
        }
        return web.json_response(reply)

    app = web.Application()
    app.router.add_post("/check", handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    state.url = f"http://127.0.0.1:{runner.addresses[0][1]}/check"
    yield state
    await runner.cleanup()


async def judge_agent(tenant: Tenant, agent_id: str = "judge", **fields):
    return await tenant.agent(
        agent_id, instructions="Judge the text.", output_type=struct(VERDICT_SCHEMA), **fields
    )


async def test_every_kind_is_decided_on_one_text(tenant: Tenant, judge: Judge):
    judging = await judge_agent(tenant)
    tenant.model.enqueue(
        Reply(text=json.dumps({"tripwire_triggered": True, "message": "it is rude"}))
    )
    text = "a forbidden word, and my mail is ann@example.com"
    response = await evaluate(
        tenant,
        g.Guardrail(
            name="re",
            regex=g.RegexCheck(pattern=r"forbid+en", action=g.RegexCheck.ACTION_BLOCK),
        ),
        g.Guardrail(
            name="cards",
            builtin=g.BuiltinCheck(pii=g.PiiDetector(kinds=[g.PiiDetector.KIND_PAYMENT_CARD])),
        ),
        code(
            "py",
            "def check(text):\n"
            "    return {'tripwire_triggered': 'mail' in text, 'message': 'mentions mail'}\n",
        ),
        endpoint("http", judge.url),
        g.Guardrail(name="judge", agent=g.AgentCheck(agent=judging.name)),
        text=text,
        agent="agents/guarded",
    )
    by_name = {result.name: result for result in response.results}
    assert [result.name for result in response.results] == ["re", "cards", "py", "http", "judge"]
    assert by_name["re"].tripwire_triggered and "characters 2-11" in by_name["re"].message
    assert not by_name["cards"].tripwire_triggered
    assert by_name["py"].tripwire_triggered and by_name["py"].message == "mentions mail"
    assert by_name["http"].tripwire_triggered
    assert judge.seen == [{"text": text, "stage": "output", "agent": "agents/guarded"}]
    assert by_name["judge"].tripwire_triggered and by_name["judge"].message == "it is rude"
    run_name = by_name["judge"].info["run"]
    assert run_name.startswith("runs/")
    # The judge ran as the caller's own run, on the caller's model, with the text as input.
    assert tenant.model.requests[-1].body["messages"][-1] == {"role": "user", "content": text}
    assert response.tripwire_triggered
    # A text nothing objects to passes every local check.
    tenant.model.enqueue(Reply(text=json.dumps({"tripwire_triggered": False, "message": "ok"})))
    clean = await evaluate(
        tenant,
        g.Guardrail(name="judge", agent=g.AgentCheck(agent=judging.name)),
        endpoint("http", judge.url),
        text="hello",
    )
    assert [r.tripwire_triggered for r in clean.results] == [False, False]
    assert not clean.tripwire_triggered


async def test_guardrails_are_decided_concurrently(tenant: Tenant, judge: Judge):
    judge.delay = 0.6
    started = time.perf_counter()
    response = await evaluate(
        tenant, *(endpoint(f"slow{i}", judge.url) for i in range(4)), text="fine"
    )
    assert len(response.results) == 4 and len(judge.seen) == 4
    assert time.perf_counter() - started < 1.8  # one delay, not four


async def test_a_check_that_cannot_decide_trips_and_says_why(tenant: Tenant, judge: Judge):
    crashing = code("crash", "def check(text):\n    raise ValueError('nope')\n")
    endless = g.Guardrail(
        name="slow", code=g.CodeCheck(source="def check(text):\n    while True: pass\n")
    )
    endless.code.timeout.FromMilliseconds(500)
    shapeless = code("shape", "def check(text):\n    return 'fine'\n")
    response = await evaluate(tenant, crashing, endless, shapeless, text="x")
    crash, slow, shape = response.results
    assert crash.tripwire_triggered and "ValueError" in crash.message
    assert slow.tripwire_triggered and "timeout" in slow.message
    assert shape.tripwire_triggered and "tripwire_triggered" in shape.message
    assert all(result.info["failed"] for result in response.results)

    judge.status = 500
    down = (await evaluate(tenant, endpoint("down", judge.url), text="x")).results[0]
    assert down.tripwire_triggered and "HTTP 500" in down.message
    assert judge.url.split("/check")[0] in down.message and "/check" not in down.message
    judge.status, judge.delay = 200, 2.0
    late = (await evaluate(tenant, endpoint("late", judge.url, seconds=0.3), text="x")).results[0]
    assert late.tripwire_triggered and "did not answer within" in late.message
    judge.delay, judge.reply = 0, {"verdict": "ok"}
    odd = (await evaluate(tenant, endpoint("odd", judge.url), text="x")).results[0]
    assert odd.tripwire_triggered and "not an object" in odd.message


@pytest.mark.parametrize(
    "url, resolves_to",
    [
        ("http://10.0.0.7/check", None),
        ("http://169.254.169.254/latest/meta-data", None),
        ("http://[::1]:9/check", None),
        ("http://localhost:9/check", None),
        ("http://judge.corp.test/check", "10.20.30.40"),
        ("http://metadata.corp.test/", "169.254.169.254"),
        ("http://six.corp.test/", "::1"),
    ],
)
async def test_endpoints_at_internal_addresses_are_refused(
    tenant: Tenant, url: str, resolves_to: str | None, monkeypatch: pytest.MonkeyPatch
):
    asked: list[str] = []

    async def lookup(host: str, port: int) -> list:
        asked.append(host)  # the one place names resolve (agentmesh/outbound.py)
        return [ipaddress.ip_address(resolves_to or "192.0.2.1")]

    monkeypatch.setattr(outbound, "lookup", lookup)
    fine = g.Guardrail(name="ok", builtin=g.BuiltinCheck(secrets=g.SecretsDetector()))
    error = await expect_rpc_error(
        evaluate(tenant, fine, endpoint("inner", url), text="x"),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert field_violations(error) == ["guardrails[1].endpoint.url"]
    assert "internal address" in error.details()
    assert asked == ([url.split("/")[2]] if resolves_to else [])


async def test_loopback_is_refused_unless_the_settings_allow_it(judge: Judge):
    guardrail = endpoint("local", judge.url)
    async with grpc.aio.insecure_channel("127.0.0.1:9") as unused:  # no agent guardrails here
        refused = Evaluator(OutboundPolicy(), unused, unused)
        with pytest.raises(InvalidArgument) as caught:
            await refused.evaluate_all("users/u", [guardrail], "forbidden", OUTPUT)
        assert [field for field, _ in caught.value.violations] == ["guardrails[0].endpoint.url"]
        assert judge.seen == []
        await refused.aclose()
        allowed = Evaluator(OutboundPolicy(["127.0.0.1"]), unused, unused)
        [result] = await allowed.evaluate_all("users/u", [guardrail], "forbidden", OUTPUT)
        [again] = await allowed.evaluate_all("users/v", [guardrail], "fine", OUTPUT)
        await allowed.aclose()
    assert result.tripwire_triggered and not again.tripwire_triggered and len(judge.seen) == 2
    assert judge.ports[0] == judge.ports[1]  # one connection, kept alive between checks


async def test_a_definition_that_cannot_be_decided_names_its_field(tenant: Tenant):
    bad = g.Guardrail(name="bad", regex=g.RegexCheck(pattern="(", action=g.RegexCheck.ACTION_BLOCK))
    error = await expect_rpc_error(
        evaluate(tenant, g.Guardrail(name="ok", builtin=g.BuiltinCheck(secrets={})), bad, text="x"),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert field_violations(error) == ["guardrails[1].regex.pattern"]
    error = await expect_rpc_error(
        evaluate(tenant, g.Guardrail(name="none"), text="x"), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert field_violations(error) == ["guardrails[0].check"]


async def test_an_agent_guardrail_runs_only_the_callers_own_agents(tenant: Tenant, users):
    other_client, _ = await users.new(credits=100)
    theirs = await other_client.registry.CreateAgent(
        r.CreateAgentRequest(agent=r.Agent(display_name="theirs"), agent_id="their-judge")
    )
    errors = []
    for name in (theirs.name, "agents/no-such-judge"):
        guardrail = g.Guardrail(name="judge", agent=g.AgentCheck(agent=name))
        error = await expect_rpc_error(
            evaluate(tenant, guardrail, text="x"), grpc.StatusCode.NOT_FOUND
        )
        error_info(error, "NOT_FOUND")
        errors.append(error.details().replace(name, "NAME"))
    assert errors[0] == errors[1]  # another user's agent is indistinguishable from none
    assert tenant.model.requests == []


async def test_a_judge_with_agent_guardrails_of_its_own_is_refused(tenant: Tenant):
    inner = await judge_agent(tenant, "inner-judge")
    outer = await judge_agent(
        tenant,
        "outer-judge",
        input_guardrails=[g.Guardrail(name="j", agent=g.AgentCheck(agent=inner.name))],
    )
    guardrail = g.Guardrail(name="judge", agent=g.AgentCheck(agent=outer.name))
    error = await expect_rpc_error(
        evaluate(tenant, guardrail, text="x"), grpc.StatusCode.FAILED_PRECONDITION
    )
    error_info(error, "GUARDRAIL_AGENT_GUARDED")
    assert tenant.model.requests == []


async def test_a_judge_that_does_not_answer_a_verdict_trips(tenant: Tenant):
    plain = await tenant.agent("plain-judge")
    tenant.model.enqueue(Reply(text="looks fine to me"))
    guardrail = g.Guardrail(name="judge", agent=g.AgentCheck(agent=plain.name))
    [result] = (await evaluate(tenant, guardrail, text="x")).results
    assert result.tripwire_triggered and "not an object" in result.message
