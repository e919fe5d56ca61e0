# ruff: noqa: F811 - the runner's fixtures, imported, are redefined as test parameters
"""Guardrails in runs: an input that trips stops the run before any model call (and
any bill); an output that trips is replaced by the guardrail's override."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
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
