"""The OpenAI-compatible API (services/reach/openai_api.py), through the official
`openai` client against a running mesh.

Each user's agents run on that user's own scripted model server, so a test says
what the model answers and reads what the agent sent it; the agent's HTTP tool is
a local aiohttp endpoint.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import openai
import pytest
from aiohttp import web
from support import Users, create_agent, running_mesh, use_model

from agentmesh.client import Client
from agentmesh.gen.guardrails.v1 import guardrails_pb2 as g
from agentmesh.gen.registry.v1 import account_pb2 as a
from agentmesh.gen.registry.v1 import registry_pb2 as r
from agentmesh.gen.runner.v1 import runner_pb2 as rn
from agentmesh.mesh import Mesh
from agentmesh.model_server import ModelServer, Reply, ToolCall

State = rn.Run.State
MODEL_KEY = "sk-reach-openai-test-" + "k" * 24


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory) -> AsyncIterator[Mesh]:
    async with running_mesh(
        tmp_path_factory.mktemp("reach-openai"), outbound_allow=["127.0.0.1"]
    ) as mesh:
        yield mesh


@pytest.fixture
async def users(mesh) -> AsyncIterator[Users]:
    factory = Users(mesh)
    yield factory
    await factory.close()


@dataclass
class Tenant:
    grpc: Client
    user: a.User
    key: str
    model: ModelServer
    openai: openai.AsyncOpenAI

    async def agent(self, agent_id: str, **fields) -> r.Agent:
        return await create_agent(self.grpc, agent_id, display_name=f"The {agent_id}", **fields)

    async def run(self, response_or_completion_id: str) -> rn.Run:
        run_id = response_or_completion_id.removeprefix("resp_").removeprefix("chatcmpl-")
        return await self.grpc.runner.GetRun(rn.GetRunRequest(name=f"runs/{run_id}"))

    def sent(self, request: int = -1) -> list[tuple[str, str]]:
        """What the agent sent its model: (role, content) of each chat message."""
        body = self.model.requests[request].body or {}
        return [(message["role"], message.get("content")) for message in body["messages"]]


async def new_tenant(mesh: Mesh, users: Users, model: ModelServer, credits: int) -> Tenant:
    client, user = await users.new(credits=credits)
    key = await users.admin.accounts.CreateApiKey(a.CreateApiKeyRequest(parent=user.name))
    await use_model(client, model)
    # No retries: a test sees each answer as the server gave it.
    api = openai.AsyncOpenAI(base_url=f"{mesh.http_url}/v1", api_key=key.secret, max_retries=0)
    return Tenant(client, user, key.secret, model, api)


@pytest.fixture
async def tenant(mesh, users) -> AsyncIterator[Tenant]:
    """A user with credits whose default provider is their own scripted model server."""
    async with ModelServer(api_key=MODEL_KEY) as model:
        tenant = await new_tenant(mesh, users, model, credits=1000)
        yield tenant
        await tenant.openai.close()


@pytest.fixture
async def other(mesh, users) -> AsyncIterator[Tenant]:
    """A second user, for tenancy."""
    async with ModelServer(api_key=MODEL_KEY) as model:
        tenant = await new_tenant(mesh, users, model, credits=1000)
        yield tenant
        await tenant.openai.close()


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[str, list]]:
    """An HTTP tool: it records what it is posted and answers an invoice's status."""
    received: list = []

    async def status(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({"status": "paid"})

    app = web.Application()
    app.router.add_post("/status", status)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/status", received
    await runner.cleanup()


async def clerk(tenant: Tenant, url: str, **fields) -> r.Agent:
    """An agent with an HTTP tool; its model looks the invoice up, then answers."""
    tool = r.Tool(name="invoice_status", function=r.FunctionTool(http=r.HttpFunction(url=url)))
    agent = await tenant.agent("clerk", instructions="You are the billing clerk.", tools=[tool])
    tenant.model.enqueue(
        Reply(tool_calls=[ToolCall("invoice_status", {"invoice": "A-1"})]),
        Reply(text="Invoice A-1 is paid in full."),
    )
    return agent


# The talker's model says something, looks the invoice up, then answers.
TALK = (
    Reply(text="Let me look.", tool_calls=[ToolCall("invoice_status", {"invoice": "B-2"})]),
    Reply(text="B-2 is paid."),
)


async def talker(tenant: Tenant, url: str) -> None:
    tool = r.Tool(name="invoice_status", function=r.FunctionTool(http=r.HttpFunction(url=url)))
    await tenant.agent("talker", tools=[tool])
    tenant.model.enqueue(*TALK)


async def eventually(check, within: float = 10.0):
    async with asyncio.timeout(within):
        while not (result := await check()):  # noqa: ASYNC110 - the state is the server's
            await asyncio.sleep(0.05)
    return result


# ---- chat completions -----------------------------------------------------------------------


async def test_a_chat_completion_runs_the_agent_and_its_tool(tenant, endpoint):
    url, received = endpoint
    agent = await clerk(tenant, url)
    completion = await tenant.openai.chat.completions.create(
        model="agentmesh/agents/clerk",
        messages=[
            {"role": "system", "content": "Answer in French."},  # the agent's instructions rule
            {"role": "user", "content": "Is A-1 paid?"},
        ],
    )
    [choice] = completion.choices
    assert (choice.message.content, choice.finish_reason) == (
        "Invoice A-1 is paid in full.",
        "stop",
    )
    assert received == [{"invoice": "A-1"}]
    # The model got the agent's instructions and the user's message, nothing else.
    assert tenant.sent(0) == [("system", "You are the billing clerk."), ("user", "Is A-1 paid?")]

    run = await tenant.run(completion.id)
    assert (run.state, run.agent, run.final_output) == (
        State.STATE_SUCCEEDED,
        agent.name,
        "Invoice A-1 is paid in full.",
    )
    assert completion.model == "agentmesh/agents/clerk"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        run.usage.input_tokens,
        run.usage.output_tokens,
    )
    assert run.usage.requests == 2 and completion.usage.total_tokens > 0


async def test_a_streamed_chat_completion_sends_the_answer_as_it_comes(tenant, endpoint):
    url, received = endpoint
    await talker(tenant, url)
    stream = await tenant.openai.chat.completions.create(
        model="The talker",  # its display name
        messages=[{"role": "user", "content": "Is B-2 paid?"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    # The message before the tool call and the one after it, a paragraph apart.
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Let me look.\n\nB-2 is paid." and received == [{"invoice": "B-2"}]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    # Usage comes last, on a chunk of its own, and is the run's.
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert len({chunk.id for chunk in chunks}) == 1
    run = await tenant.run(chunks[0].id)
    assert (run.state, run.final_output) == (State.STATE_SUCCEEDED, "B-2 is paid.")
    assert chunks[-1].usage.prompt_tokens == run.usage.input_tokens
    # Not streamed, the same run says the same.
    tenant.model.enqueue(*TALK)
    completion = await tenant.openai.chat.completions.create(
        model="talker", messages=[{"role": "user", "content": "Is B-2 paid?"}]
    )
    assert completion.choices[0].message.content == text


async def test_earlier_chat_messages_reach_the_agent_as_a_transcript(tenant):
    await tenant.agent("helper")
    tenant.model.enqueue(Reply(text="You are Ada."))
    completion = await tenant.openai.chat.completions.create(
        model="agents/helper",
        messages=[
            {"role": "user", "content": "I am Ada."},
            {"role": "assistant", "content": [{"type": "text", "text": "Hello, Ada."}]},
            {"role": "user", "content": "Who am I?"},
        ],
    )
    assert completion.choices[0].message.content == "You are Ada."
    transcript = "The conversation so far:\nuser: I am Ada.\nassistant: Hello, Ada.\n\nWho am I?"
    assert tenant.sent()[-1] == ("user", transcript)


# ---- responses ------------------------------------------------------------------------------


async def test_a_response_runs_the_agent_and_previous_response_id_continues_it(tenant, endpoint):
    url, received = endpoint
    await clerk(tenant, url)
    first = await tenant.openai.responses.create(model="clerk", input="Is A-1 paid?")
    assert (first.status, first.output_text) == ("completed", "Invoice A-1 is paid in full.")
    assert first.id.startswith("resp_") and received == [{"invoice": "A-1"}]
    run = await tenant.run(first.id)
    assert first.usage is not None
    assert (first.usage.input_tokens, first.usage.output_tokens) == (
        run.usage.input_tokens,
        run.usage.output_tokens,
    )
    assert first.conversation is not None
    assert first.conversation.id == "conv_" + run.conversation.removeprefix("conversations/")

    tenant.model.enqueue(Reply(text="You asked about A-1."))
    second = await tenant.openai.responses.create(
        model="agentmesh/agents/clerk",
        input=[{"role": "user", "content": "What did I ask?"}],
        previous_response_id=first.id,
        instructions="Ignored: the agent's own instructions rule.",
    )
    assert second.output_text == "You asked about A-1."
    assert second.previous_response_id == first.id
    assert (await tenant.run(second.id)).conversation == run.conversation
    sent = tenant.sent()
    assert sent[0] == ("system", "You are the billing clerk.")
    assert ("user", "Is A-1 paid?") in sent and sent[-1] == ("user", "What did I ask?")

    # The Conversations API's id continues it too; and a response reads back.
    tenant.model.enqueue(Reply(text="Still A-1."))
    third = await tenant.openai.responses.create(
        model="clerk", input="And now?", conversation=first.conversation.id
    )
    assert (await tenant.run(third.id)).conversation == run.conversation
    assert ("user", "What did I ask?") in tenant.sent()
    again = await tenant.openai.responses.retrieve(first.id)
    assert (again.id, again.status, again.output_text) == (first.id, "completed", first.output_text)


async def test_a_streamed_response_sends_each_message_as_it_comes(tenant, endpoint):
    url, received = endpoint
    await talker(tenant, url)
    async with tenant.openai.responses.stream(model="talker", input="Is B-2 paid?") as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    message = [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    done = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert kinds[2:5] == message and kinds[-4:-1] == done
    # Two messages, one before the tool call and one after it.
    texts = [event.text for event in events if event.type == "response.output_text.done"]
    assert texts == ["Let me look.", "B-2 is paid."] and received == [{"invoice": "B-2"}]
    assert [item.content[0].text for item in final.output] == texts
    assert final.status == "completed" and final.usage is not None
    # Read back, the response is the one streamed.
    stored = await tenant.openai.responses.retrieve(final.id)
    assert [(item.id, item.content[0].text) for item in stored.output] == [
        (item.id, item.content[0].text) for item in final.output
    ]
    assert stored.usage == final.usage and stored.output_text == "Let me look.B-2 is paid."


# ---- models ---------------------------------------------------------------------------------


async def test_models_are_the_callers_agents(tenant, other):
    await tenant.agent("alpha")
    await tenant.agent("beta")
    await other.agent("gamma")
    listed = [model.id async for model in tenant.openai.models.list()]
    assert sorted(listed) == ["agentmesh/agents/alpha", "agentmesh/agents/beta"]
    model = await tenant.openai.models.retrieve("agentmesh/agents/alpha")
    assert (model.id, model.object) == ("agentmesh/agents/alpha", "model")
    with pytest.raises(openai.NotFoundError):
        await tenant.openai.models.retrieve("agentmesh/agents/gamma")


# ---- tenancy and errors ---------------------------------------------------------------------


async def test_another_users_agent_and_responses_are_not_found(tenant, other):
    await other.agent("secret")
    other.model.enqueue(Reply(text="mine"))
    theirs = await other.openai.responses.create(model="secret", input="hi")

    async def refused(call) -> openai.NotFoundError:
        with pytest.raises(openai.NotFoundError) as caught:
            await call
        return caught.value

    messages = [{"role": "user", "content": "hi"}]
    missing = await refused(
        tenant.openai.chat.completions.create(model="agentmesh/agents/nobody", messages=messages)
    )
    for model in ("agentmesh/agents/secret", "agents/secret", "The secret"):
        error = await refused(tenant.openai.chat.completions.create(model=model, messages=messages))
        assert (
            (error.code, error.param)
            == (missing.code, missing.param)
            == ("model_not_found", "model")
        )
        assert error.message == missing.message.replace("agentmesh/agents/nobody", model)

    gone = await refused(tenant.openai.responses.retrieve("resp_" + "0" * 32))
    hidden = await refused(tenant.openai.responses.retrieve(theirs.id))
    assert hidden.message == gone.message.replace("resp_" + "0" * 32, theirs.id)
    await tenant.agent("mine")
    followed = await refused(
        tenant.openai.responses.create(model="mine", input="hi", previous_response_id=theirs.id)
    )
    assert followed.param == "previous_response_id"
    conversation = theirs.conversation.id
    await refused(
        tenant.openai.responses.create(model="mine", input="hi", conversation=conversation)
    )
    assert tenant.model.requests == [] and len(other.model.requests) == 1


async def test_a_bad_key_is_401_in_the_openai_shape(mesh, tenant):
    await tenant.agent("helper")
    api = openai.AsyncOpenAI(base_url=f"{mesh.http_url}/v1", api_key="sk-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        await api.chat.completions.create(
            model="helper", messages=[{"role": "user", "content": "hi"}]
        )
    await api.close()
    assert caught.value.type == "authentication_error" and "sk-not-a-key" not in str(caught.value)
    async with httpx.AsyncClient(base_url=mesh.http_url) as http:
        answer = await http.get("/v1/models")
    assert answer.status_code == 401 and set(answer.json()["error"]) == {
        "message",
        "type",
        "code",
        "param",
    }
    assert tenant.model.requests == []


async def test_no_credits_is_429_and_the_client_is_told_not_to_retry(mesh, users):
    async with ModelServer(api_key=MODEL_KEY) as model:
        poor = await new_tenant(mesh, users, model, credits=0)
        await poor.agent("helper")
        # The client's default retries: the server's x-should-retry: false stops them.
        api = openai.AsyncOpenAI(base_url=f"{mesh.http_url}/v1", api_key=poor.key)
        for stream in (False, True):
            with pytest.raises(openai.RateLimitError) as caught:
                await api.chat.completions.create(
                    model="helper", messages=[{"role": "user", "content": "hi"}], stream=stream
                )
            assert caught.value.code == "insufficient_credits"
            assert caught.value.response.headers["x-should-retry"] == "false"
        await api.close()
        await poor.openai.close()
        assert model.requests == []


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", b"{not json", "body"),
        ("/v1/chat/completions", b"[]", "body"),
        ("/v1/chat/completions", {"model": "helper"}, "messages"),
        ("/v1/chat/completions", {"model": "helper", "messages": []}, "messages"),
        (
            "/v1/chat/completions",
            {"model": "helper", "messages": [{"role": "tool", "content": "x"}]},
            "messages[0].role",
        ),
        (
            "/v1/chat/completions",
            {"model": "helper", "messages": [{"role": "assistant", "content": "x"}]},
            "messages",
        ),
        (
            "/v1/chat/completions",
            {
                "model": "helper",
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f"}}],
            },
            "tools",
        ),
        ("/v1/responses", {"model": "helper", "input": ""}, "input"),
        (
            "/v1/responses",
            {"model": "helper", "input": [{"type": "function_call_output", "output": "x"}]},
            "input[0].type",
        ),
        (
            "/v1/responses",
            {"model": "helper", "input": "x", "previous_response_id": "r1"},
            "previous_response_id",
        ),
        ("/v1/responses", {"model": "helper", "input": "x", "conversation": "c/1"}, "conversation"),
        ("/v1/responses", {"model": "", "input": "x"}, "model"),
        # Types as JSON has them: a string is no boolean, an object with no id no conversation.
        (
            "/v1/chat/completions",
            {"model": "helper", "messages": [{"role": "user", "content": "x"}], "stream": "yes"},
            "stream",
        ),
        ("/v1/responses", {"model": "helper", "input": "x", "conversation": {}}, "conversation"),
        (
            "/v1/responses",
            {
                "model": "helper",
                "input": "x",
                "conversation": "conv_1",
                "previous_response_id": "resp_1",
            },
            "conversation",
        ),
    ],
)
async def test_a_malformed_request_is_400_naming_what_is_wrong(mesh, tenant, path, body, param):
    await tenant.agent("helper")
    async with httpx.AsyncClient(
        base_url=mesh.http_url, headers={"authorization": f"Bearer {tenant.key}"}
    ) as http:
        if isinstance(body, bytes):
            answer = await http.post(path, content=body)
        else:
            answer = await http.post(path, json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param, error
    # Nothing ran.
    runs = await tenant.grpc.runner.ListRuns(rn.ListRunsRequest())
    assert list(runs.runs) == [] and tenant.model.requests == []


async def test_a_body_too_big_is_413_before_it_is_read_whole(mesh, tenant):
    async with httpx.AsyncClient(
        base_url=mesh.http_url, headers={"authorization": f"Bearer {tenant.key}"}
    ) as http:
        answer = await http.post("/v1/responses", content=b" " * (5 * 1024 * 1024))
    assert answer.status_code == 413 and "request body" in answer.json()["error"]["message"]


async def test_a_failed_run_answers_its_error_plain_and_midstream(tenant):
    await tenant.agent("fragile")
    tenant.model.enqueue(*[Reply(error_status=500)] * 4)
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.InternalServerError) as caught:
        await tenant.openai.chat.completions.create(model="fragile", messages=messages)
    assert caught.value.status_code == 503 and caught.value.code == "provider_error"
    assert MODEL_KEY not in caught.value.message

    # Streamed, the status line has gone: the client raises the error chunk.
    stream = await tenant.openai.chat.completions.create(
        model="fragile", messages=messages, stream=True
    )
    with pytest.raises(openai.APIError) as raised:
        async for _ in stream:
            pass
    assert raised.value.code == "provider_error"

    with pytest.raises(openai.InternalServerError):
        await tenant.openai.responses.create(model="fragile", input="hi")
    stream = await tenant.openai.responses.create(model="fragile", input="hi", stream=True)
    events = [event async for event in stream]
    assert [event.type for event in events][-2:] == ["error", "response.failed"]
    assert events[-2].code == "provider_error"
    failed = events[-1].response
    assert failed.status == "failed" and failed.error.code == "provider_error"
    assert (await tenant.openai.responses.retrieve(failed.id)).status == "failed"


async def test_a_client_that_hangs_up_mid_stream_cancels_the_run(tenant):
    await tenant.agent("slow")
    tenant.model.enqueue(Reply(text="too late", delay_s=30))
    stream = await tenant.openai.chat.completions.create(
        model="slow", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    first = await anext(aiter(stream))
    await stream.close()

    async def cancelled() -> bool:
        return (await tenant.run(first.id)).state == State.STATE_CANCELLED

    await eventually(cancelled)


async def test_a_blocked_run_is_a_content_filter_ending(tenant):
    secrets = g.Guardrail(
        name="no-secrets",
        override_message="Please do not paste keys.",
        builtin=g.BuiltinCheck(secrets=g.SecretsDetector()),
    )
    await tenant.agent("guarded", input_guardrails=[secrets])
    leak = "my key is sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"
    completion = await tenant.openai.chat.completions.create(
        model="guarded", messages=[{"role": "user", "content": leak}]
    )
    [choice] = completion.choices
    assert (choice.finish_reason, choice.message.content) == (
        "content_filter",
        "Please do not paste keys.",
    )
    response = await tenant.openai.responses.create(model="guarded", input=leak, stream=True)
    events = [event async for event in response]
    assert events[-1].type == "response.incomplete"
    blocked = events[-1].response
    assert blocked.incomplete_details.reason == "content_filter"
    assert blocked.output_text == "Please do not paste keys."
    assert tenant.model.requests == []


async def test_a_run_paused_for_approval_is_incomplete_until_decided(tenant, endpoint):
    url, received = endpoint
    tool = r.Tool(
        name="refund",
        function=r.FunctionTool(http=r.HttpFunction(url=url)),
        require_approval=True,
    )
    await tenant.agent("payer", tools=[tool])
    tenant.model.enqueue(Reply(tool_calls=[ToolCall("refund", {"invoice": "C-3"})]))
    paused = await tenant.openai.responses.create(model="payer", input="Refund C-3")
    assert paused.status == "incomplete"
    assert paused.incomplete_details.reason == "approval_required"
    run = await tenant.run(paused.id)
    assert run.state == State.STATE_AWAITING_APPROVAL and received == []

    [approval] = (
        await tenant.grpc.runner.ListApprovals(rn.ListApprovalsRequest(parent=run.name))
    ).approvals
    tenant.model.enqueue(Reply(text="Refunded."))
    await tenant.grpc.runner.ResolveApproval(
        rn.ResolveApprovalRequest(
            name=approval.name, decision=rn.ResolveApprovalRequest.DECISION_APPROVE
        )
    )

    async def answered():
        response = await tenant.openai.responses.retrieve(paused.id)
        return response if response.status == "completed" else None

    assert (await eventually(answered)).output_text == "Refunded."
    assert received == [{"invoice": "C-3"}]

    # A chat completion cannot be incomplete: it says the run waits, and where.
    tenant.model.enqueue(Reply(tool_calls=[ToolCall("refund", {"invoice": "D-4"})]))
    with pytest.raises(openai.ConflictError) as caught:
        await tenant.openai.chat.completions.create(
            model="payer", messages=[{"role": "user", "content": "Refund D-4"}]
        )
    assert caught.value.code == "approval_required"
    assert "GET /v1/responses/resp_" in caught.value.message
