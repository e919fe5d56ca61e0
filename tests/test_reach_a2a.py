"""A2A through the reach service: the A2A SDK's own client against the mesh's HTTP
port, each agent a registry agent running on the user's scripted model server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from a2a.client import A2ACardResolver, A2AClientError, ClientConfig, create_client
from a2a.client import Client as A2aClient
from a2a.client.errors import AgentCardResolutionError
from a2a.helpers import get_artifact_text, get_message_text
from a2a.types import (
    CancelTaskRequest,
    GetTaskRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    StreamResponse,
    SubscribeToTaskRequest,
    Task,
    TaskState,
)
from a2a.utils.errors import (
    InternalError,
    InvalidParamsError,
    TaskNotCancelableError,
    TaskNotFoundError,
    UnsupportedOperationError,
)
from aiohttp import web
from google.protobuf import json_format, struct_pb2
from support import Users, create_agent, running_mesh, use_model

from agentmesh.client import Client
from agentmesh.gen.guardrails.v1 import guardrails_pb2 as g
from agentmesh.gen.registry.v1 import account_pb2 as a
from agentmesh.gen.registry.v1 import registry_pb2 as r
from agentmesh.gen.runner.v1 import runner_pb2 as rn
from agentmesh.mesh import Mesh
from agentmesh.model_server import ModelServer, Reply, ToolCall
from services.reach.a2a import MAX_BODY_BYTES, MAX_NESTING

KEY = "sk-a2a-test-" + "k" * 24


@pytest.fixture(scope="module")
async def a2a_mesh(tmp_path_factory) -> AsyncIterator[Mesh]:
    async with running_mesh(tmp_path_factory.mktemp("a2a"), outbound_allow=["127.0.0.1"]) as mesh:
        yield mesh


@pytest.fixture
async def users(a2a_mesh) -> AsyncIterator[Users]:
    factory = Users(a2a_mesh)
    yield factory
    await factory.close()


@dataclass
class Tenant:
    mesh: Mesh
    client: Client
    key: str
    model: ModelServer

    async def agent(self, agent_id: str, **fields) -> r.Agent:
        return await create_agent(self.client, agent_id, **fields)

    def url(self, agent_id: str) -> str:
        return f"{self.mesh.http_url}/a2a/agents/{agent_id}"

    @contextlib.asynccontextmanager
    async def a2a(self, agent_id: str, streaming: bool = False) -> AsyncIterator[A2aClient]:
        """The A2A SDK's client for one agent, from its card, with this tenant's key."""
        async with _http(self.key) as http:
            card = await A2ACardResolver(http, self.url(agent_id)).get_agent_card()
            config = ClientConfig(httpx_client=http, streaming=streaming)
            async with await create_client(card, client_config=config) as client:
                yield client


def _http(key: str | None) -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(headers=headers, timeout=30)


async def _tenant(users: Users, model: ModelServer, credits: int = 1000) -> Tenant:
    client, user = await users.new(credits=credits)
    key = await users.admin.accounts.CreateApiKey(a.CreateApiKeyRequest(parent=user.name))
    await use_model(client, model)
    return Tenant(users.mesh, client, key.secret, model)


@pytest.fixture
async def tenant(users) -> AsyncIterator[Tenant]:
    """A user with credits and a key, whose default provider is its own scripted model."""
    async with ModelServer(api_key=KEY) as model:
        yield await _tenant(users, model)


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[str, list]]:
    """An HTTP tool server: /echo answers what it was sent."""
    received: list = []

    async def echo(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({"echo": received[-1]})

    app = web.Application()
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", received
    await runner.cleanup()


def message(text: str = "", *, parts: list[Part] | None = None, **fields) -> SendMessageRequest:
    return SendMessageRequest(
        message=Message(
            role=Role.ROLE_USER,
            message_id=uuid.uuid4().hex,
            parts=parts or [Part(text=text)],
            **fields,
        )
    )


async def send(client: A2aClient, request: SendMessageRequest) -> Task:
    """The task a non-streaming send answers."""
    (response,) = [event async for event in client.send_message(request)]
    assert response.HasField("task"), response
    return response.task


async def stream(client: A2aClient, request: SendMessageRequest) -> list[StreamResponse]:
    return [event async for event in client.send_message(request)]


def _tool_outputs(tenant: Tenant) -> list[str]:
    """What the model was last told the tools answered."""
    body = tenant.model.requests[-1].body
    assert body is not None
    return [m["content"] for m in body["messages"] if m["role"] == "tool"]


def answer(task: Task) -> str:
    (artifact,) = task.artifacts
    return get_artifact_text(artifact)


# ---- the card ------------------------------------------------------------------------------


async def test_the_card_names_the_agent_its_endpoint_skills_and_bearer_key(tenant):
    agent = await tenant.agent(
        "carded",
        instructions="Answers questions about invoices.\n\nNever mention the weather.",
        tools=[
            r.Tool(
                name="lookup",
                function=r.FunctionTool(http=r.HttpFunction(url="http://127.0.0.1:9/x")),
            )
        ],
    )
    async with _http(tenant.key) as http:
        card = await A2ACardResolver(http, tenant.url("carded")).get_agent_card()
        # Behind a gateway the endpoint is where the caller reached the mesh.
        behind = await http.get(
            f"{tenant.url('carded')}/.well-known/agent-card.json",
            headers={"host": "agents.example.com:8443", "x-forwarded-proto": "https"},
        )
    assert (card.name, card.version) == ("carded", agent.revision_id)
    assert card.description == "Answers questions about invoices."
    assert [(i.url, i.protocol_binding, i.protocol_version) for i in card.supported_interfaces] == [
        (tenant.url("carded"), "JSONRPC", "1.0"),
        (tenant.url("carded"), "JSONRPC", "0.3"),
    ]
    assert card.capabilities.streaming and not card.capabilities.push_notifications
    scheme = card.security_schemes["apiKey"].http_auth_security_scheme
    assert scheme.scheme == "Bearer" and "apiKey" in card.security_requirements[0].schemes
    (skill,) = card.skills
    assert (skill.id, skill.name, list(skill.tags)) == ("carded", "carded", ["lookup"])
    assert behind.json()["supportedInterfaces"][0]["url"] == (
        "https://agents.example.com:8443/a2a/agents/carded"
    )


# ---- sending and streaming -----------------------------------------------------------------


async def test_a_sent_message_completes_with_the_answer_as_a_run(tenant):
    await tenant.agent("helper", instructions="Be brief.")
    tenant.model.enqueue(Reply(text="hi there"))
    request = message("hello")
    async with tenant.a2a("helper") as client:
        task = await send(client, request)
    assert task.status.state == TaskState.TASK_STATE_COMPLETED
    assert answer(task) == "hi there"
    assert get_message_text(task.history[0]) == "hello"
    # The task is the run: its id, its conversation, its result.
    run = await tenant.client.runner.GetRun(rn.GetRunRequest(name=f"runs/{task.id}"))
    assert (run.state, run.final_output) == (rn.Run.STATE_SUCCEEDED, "hi there")
    assert run.conversation == f"conversations/{task.context_id}"
    assert tenant.model.requests[-1].body["messages"][-1] == {"role": "user", "content": "hello"}
    # Sent again (the same messageId, as a retry does), it is the same task.
    async with tenant.a2a("helper") as client:
        again = await send(client, request)
    assert again.id == task.id and len(tenant.model.requests) == 1


async def test_a_streamed_task_comes_in_order_its_text_in_chunks(tenant):
    await tenant.agent("streamer")
    words = " ".join(f"word{i}" for i in range(200))
    tenant.model.enqueue(Reply(text=words))
    async with tenant.a2a("streamer", streaming=True) as client:
        events = await stream(client, message("talk"))
    kinds = [event.WhichOneof("payload") for event in events]
    assert kinds[0] == "task" and events[0].task.status.state == TaskState.TASK_STATE_SUBMITTED
    assert events[1].status_update.status.state == TaskState.TASK_STATE_WORKING
    chunks = [e.artifact_update for e in events if e.HasField("artifact_update")]
    *deltas, whole = chunks
    assert len(deltas) > 1 and "".join(get_artifact_text(c.artifact) for c in deltas) == words
    assert [c.append for c in deltas] == [False] + [True] * (len(deltas) - 1)
    assert whole.last_chunk and not whole.append and get_artifact_text(whole.artifact) == words
    assert kinds[-1] == "status_update"
    assert events[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
    task_id = events[0].task.id
    assert all(getattr(e, k).task_id == task_id for e, k in zip(events[1:], kinds[1:], strict=True))


async def test_a_follow_up_in_the_same_context_continues_the_conversation(tenant):
    await tenant.agent("chatty")
    tenant.model.enqueue(Reply(text="nice to meet you, Ada"), Reply(text="you are Ada"))
    async with tenant.a2a("chatty") as client:
        first = await send(client, message("I am Ada"))
        second = await send(client, message("who am I?", context_id=first.context_id))
        assert second.context_id == first.context_id and second.id != first.id
        assert answer(second) == "you are Ada"
        sent = [m["content"] for m in tenant.model.requests[-1].body["messages"]]
        assert sent == ["I am Ada", "nice to meet you, Ada", "who am I?"]
        # A context the server never gave is refused, not silently replaced.
        with pytest.raises(InvalidParamsError, match="contextId"):
            await send(client, message("hi", context_id="made-up"))
    assert len(tenant.model.requests) == 2


async def test_failed_blocked_and_structured_runs_as_tasks(tenant):
    await tenant.agent("fragile")
    await tenant.agent(
        "guarded",
        input_guardrails=[
            g.Guardrail(
                name="no-secrets",
                override_message="Please do not paste keys.",
                builtin=g.BuiltinCheck(secrets=g.SecretsDetector()),
            )
        ],
    )
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    await tenant.agent("weather", output_type=json_format.ParseDict(schema, struct_pb2.Struct()))
    tenant.model.enqueue(Reply(error_status=401), Reply(text='{"city": "Oslo"}'))
    async with tenant.a2a("fragile") as client:
        failed = await send(client, message("hello"))
    assert failed.status.state == TaskState.TASK_STATE_FAILED
    assert get_message_text(failed.status.message) and not failed.artifacts
    assert failed.status.message.metadata["reason"] == "PROVIDER_UNAUTHENTICATED"
    assert KEY not in json_format.MessageToJson(failed)
    async with tenant.a2a("guarded") as client:
        blocked = await send(client, message("my key is sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"))
    assert blocked.status.state == TaskState.TASK_STATE_REJECTED
    assert get_message_text(blocked.status.message) == "Please do not paste keys."
    async with tenant.a2a("weather") as client:
        forecast = await send(client, message("weather in Oslo?"))
    (part,) = forecast.artifacts[0].parts
    assert json_format.MessageToDict(part.data) == {"city": "Oslo"}


async def test_a_user_without_credits_is_refused_and_nothing_runs(users):
    async with ModelServer(api_key=KEY) as model:
        broke = await _tenant(users, model, credits=0)
        await broke.agent("pricey")
        async with broke.a2a("pricey") as client:
            with pytest.raises(InternalError) as refused:
                await send(client, message("hello"))
        assert refused.value.data == {
            "status": "RESOURCE_EXHAUSTED",
            "reason": "INSUFFICIENT_CREDITS",
        }
        assert model.requests == []


# ---- approvals -----------------------------------------------------------------------------


async def _payer(tenant: Tenant, url: str) -> None:
    await tenant.agent(
        "payer",
        tools=[
            r.Tool(
                name="pay",
                function=r.FunctionTool(http=r.HttpFunction(url=url)),
                require_approval=True,
            )
        ],
    )


async def test_an_approval_is_input_required_and_approving_completes_the_task(tenant, endpoint):
    base, received = endpoint
    await _payer(tenant, f"{base}/echo")
    tenant.model.enqueue(Reply(tool_calls=[ToolCall("pay", {"amount": 5})]), Reply(text="paid"))
    async with tenant.a2a("payer") as client:
        waiting = await send(client, message("pay it"))
        assert waiting.status.state == TaskState.TASK_STATE_INPUT_REQUIRED and received == []
        asked = waiting.status.message
        assert 'pay({"amount": 5})' in get_message_text(asked) and '"approve"' in get_message_text(
            asked
        )
        (call,) = json_format.MessageToDict(asked.parts[1].data)["approvals"]
        assert (call["tool"], json.loads(call["arguments"])) == ("pay", {"amount": 5})
        # Neither an unclear answer nor one in another context changes anything.
        with pytest.raises(InvalidParamsError, match="approve"):
            await send(client, message("maybe later", task_id=waiting.id))
        with pytest.raises(InvalidParamsError, match="contextId"):
            await send(client, message("approve", task_id=waiting.id, context_id="other"))
        still = await client.get_task(GetTaskRequest(id=waiting.id))
        assert still.status.state == TaskState.TASK_STATE_INPUT_REQUIRED and received == []

        decision = json_format.ParseDict({"decision": "approve"}, struct_pb2.Value())
        done = await send(client, message(parts=[Part(data=decision)], task_id=waiting.id))
        assert (done.id, done.status.state) == (waiting.id, TaskState.TASK_STATE_COMPLETED)
        assert answer(done) == "paid" and received == [{"amount": 5}]
        # The tool's result reached the model.
        tool_messages = [
            m for m in tenant.model.requests[-1].body["messages"] if m["role"] == "tool"
        ]
        assert json.loads(tool_messages[0]["content"]) == {"echo": {"amount": 5}}
        # A finished task takes no more messages.
        with pytest.raises(UnsupportedOperationError, match="contextId"):
            await send(client, message("approve", task_id=waiting.id))


async def test_a_streamed_approval_rejected_with_a_reason(tenant, endpoint):
    base, received = endpoint
    await _payer(tenant, f"{base}/echo")
    tenant.model.enqueue(
        Reply(tool_calls=[ToolCall("pay", {"amount": 900})]), Reply(text="ok, not paying")
    )
    async with tenant.a2a("payer", streaming=True) as client:
        first = await stream(client, message("pay it"))
        paused = first[-1].status_update
        assert paused.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
        resumed = await stream(client, message("reject: over budget", task_id=paused.task_id))
    assert resumed[0].task.id == paused.task_id
    assert resumed[0].task.status.state != TaskState.TASK_STATE_INPUT_REQUIRED
    assert get_artifact_text(resumed[-2].artifact_update.artifact) == "ok, not paying"
    assert resumed[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
    assert received == []
    assert "over budget" in _tool_outputs(tenant)[0]


# ---- get, cancel, subscribe --------------------------------------------------------------


async def test_get_subscribe_and_cancel_a_task(tenant):
    await tenant.agent("slow")
    tenant.model.enqueue(Reply(text="too late", delay_s=30))
    async with tenant.a2a("slow") as client:
        request = message("take your time")
        request.configuration.return_immediately = True
        started = await send(client, request)
    assert started.status.state == TaskState.TASK_STATE_SUBMITTED
    async with tenant.a2a("slow", streaming=True) as client:
        # A subscriber follows the task; hanging up on it leaves the task running.
        async with contextlib.aclosing(
            client.subscribe(SubscribeToTaskRequest(id=started.id))
        ) as events:
            kinds = [(await anext(events)).WhichOneof("payload") for _ in range(2)]
        assert kinds == ["task", "status_update"]
        got = await client.get_task(GetTaskRequest(id=started.id))
        assert (got.id, got.status.state) == (started.id, TaskState.TASK_STATE_WORKING)

        cancelled = await client.cancel_task(CancelTaskRequest(id=started.id))
        assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
        got = await client.get_task(GetTaskRequest(id=started.id))
        assert got.status.state == TaskState.TASK_STATE_CANCELED and not got.artifacts
        with pytest.raises(TaskNotCancelableError):
            await client.cancel_task(CancelTaskRequest(id=started.id))
        with pytest.raises(UnsupportedOperationError):
            async for _ in client.subscribe(SubscribeToTaskRequest(id=started.id)):
                pass
        for missing in ("no-such-task", "../runs", "x" * 300):
            with pytest.raises(TaskNotFoundError):
                await client.get_task(GetTaskRequest(id=missing))


# ---- tenancy, keys, bad input ---------------------------------------------------------------


async def test_another_users_agent_and_tasks_are_not_found(tenant, users):
    await tenant.agent("private")
    await tenant.agent("sibling")
    tenant.model.enqueue(Reply(text="secret answer"))
    async with tenant.a2a("private") as client:
        task = await send(client, message("hello"))
    async with ModelServer(api_key=KEY) as model:
        stranger = await _tenant(users, model)
        await stranger.agent("mine")
        with pytest.raises(AgentCardResolutionError) as caught:
            async with stranger.a2a("private"):
                pass
        assert caught.value.status_code == 404
        async with _http(stranger.key) as http:
            theirs = await http.post(tenant.url("private"), json=_rpc("GetTask", {"id": task.id}))
            missing = await http.post(stranger.url("nobody"), json=_rpc("GetTask", {"id": task.id}))
        assert theirs.status_code == missing.status_code == 404
        assert theirs.json()["error"]["data"][0]["reason"] == "NOT_FOUND"
        async with stranger.a2a("mine") as client:
            with pytest.raises(TaskNotFoundError):
                await client.get_task(GetTaskRequest(id=task.id))
            with pytest.raises(TaskNotFoundError):
                await client.cancel_task(CancelTaskRequest(id=task.id))
            with pytest.raises(TaskNotFoundError):
                await send(client, message("approve", task_id=task.id))
            with pytest.raises(InvalidParamsError):
                await send(client, message("who?", context_id=task.context_id))
    # A task is its agent's: the owner's other agent does not know it either.
    async with tenant.a2a("sibling") as client:
        with pytest.raises(TaskNotFoundError):
            await client.get_task(GetTaskRequest(id=task.id))


async def test_no_or_a_bad_key_is_refused_with_401(tenant):
    await tenant.agent("guarded")
    card_url = f"{tenant.url('guarded')}/.well-known/agent-card.json"
    for key in (None, "sk-not-a-key"):
        async with _http(key) as http:
            card = await http.get(card_url)
            call = await http.post(tenant.url("guarded"), json=_rpc("GetTask", {"id": "x"}))
        assert card.status_code == call.status_code == 401
        assert card.headers["www-authenticate"] == call.headers["www-authenticate"] == "Bearer"
        assert card.json()["error"]["status"] == "UNAUTHENTICATED"
        assert call.json()["error"]["code"] == -32000 and call.json()["id"] is None
    async with _http(tenant.key) as http:
        card = await A2ACardResolver(http, tenant.url("guarded")).get_agent_card()
    async with _http("sk-not-a-key") as http:
        client = await create_client(card, client_config=ClientConfig(httpx_client=http))
        with pytest.raises(A2AClientError, match="401"):
            await client.get_task(GetTaskRequest(id="x"))


async def test_bad_calls_get_json_rpc_errors_and_start_nothing(tenant):
    await tenant.agent("strict")
    url = tenant.url("strict")
    v1 = {"a2a-version": "1.0"}
    no_parts = {"message": {"role": "ROLE_USER", "messageId": "m1"}}
    a_file = {
        "message": {"role": "ROLE_USER", "messageId": "m2", "parts": [{"url": "https://x/a.pdf"}]}
    }
    async with _http(tenant.key) as http:
        answers = [
            await http.post(url, content=b"{not json", headers=v1),
            await http.post(url, json=_rpc("Teleport", {}), headers=v1),
            await http.post(url, json=_rpc("SendMessage", no_parts), headers=v1),
            await http.post(url, json=_rpc("SendMessage", a_file), headers=v1),
            await http.post(url, json=_rpc("SendMessage", no_parts)),  # no version: 0.3
        ]
    codes = [answer.json()["error"]["code"] for answer in answers]
    # Unparsable, no such method, no parts, a part no agent reads, a 1.0 call as 0.3.
    assert codes == [-32700, -32601, -32602, -32005, -32009]
    runs = await tenant.client.runner.ListRuns(rn.ListRunsRequest(agent="agents/strict"))
    assert list(runs.runs) == []


async def test_oversized_undecodable_and_deep_calls_are_refused_before_the_sdk(tenant, caplog):
    """Read under a cap and parsed first: none reaches the SDK's parsing, whose
    failures were internal errors (-32603) and pages of traceback in the log."""
    await tenant.agent("wary")
    url, v1 = tenant.url("wary"), {"a2a-version": "1.0"}

    def send_data(data: object) -> dict:
        parts = [{"data": data}]
        return _rpc(
            "SendMessage", {"message": {"role": "ROLE_USER", "messageId": "m", "parts": parts}}
        )

    deep: object = "bottom"
    for _ in range(MAX_NESTING):
        deep = [deep]
    big = send_data("x" * MAX_BODY_BYTES)
    caplog.set_level(logging.WARNING)
    async with _http(tenant.key) as http:
        over = await http.post(url, json=big, headers=v1)
        answers = [
            await http.post(url, content=b'{"id": 1, "method": "\xff"}', headers=v1),
            await http.post(url, content=b"[" * 100_000 + b"]" * 100_000, headers=v1),
            await http.post(url, json=send_data(deep), headers=v1),
        ]
    assert over.status_code == 413
    assert over.json()["error"] == {
        "code": -32600,
        "message": f"the request body is over {MAX_BODY_BYTES} bytes",
    }
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    codes = [answer.json()["error"]["code"] for answer in answers]
    assert codes == [-32700, -32700, -32600]
    assert "nests deeper than 64" in answers[-1].json()["error"]["message"]
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    runs = await tenant.client.runner.ListRuns(rn.ListRunsRequest(agent="agents/wary"))
    assert list(runs.runs) == []


async def test_a_caller_that_hangs_up_mid_body_is_no_error_of_ours(tenant, caplog):
    await tenant.agent("hung")
    host, port = tenant.mesh.http_address.split(":")
    caplog.set_level(logging.WARNING)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /a2a/agents/hung HTTP/1.1\r\nhost: x\r\n"
        + f"authorization: Bearer {tenant.key}\r\n".encode()
        + b"a2a-version: 1.0\r\ncontent-length: 1000\r\n\r\n{"
    )
    await writer.drain()
    await asyncio.sleep(0.3)  # the call is past its key and reading the body
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.5)
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


async def test_a2a_0_3_clients_use_the_same_endpoint(tenant):
    await tenant.agent("classic")
    tenant.model.enqueue(Reply(text="old protocol"), Reply(text="old stream"))

    def call(method: str, text: str) -> dict:
        parts = [{"kind": "text", "text": text}]
        return _rpc(method, {"message": {"role": "user", "messageId": text, "parts": parts}})

    url = tenant.url("classic")
    async with _http(tenant.key) as http:
        sent = (await http.post(url, json=call("message/send", "hi"))).json()
        async with http.stream("POST", url, json=call("message/stream", "go")) as streamed:
            events = [
                json.loads(line.removeprefix("data:"))["result"]
                async for line in streamed.aiter_lines()
                if line.startswith("data:")
            ]
    task = sent["result"]
    assert (task["kind"], task["status"]["state"]) == ("task", "completed")
    assert task["artifacts"][0]["parts"][0]["text"] == "old protocol"
    assert [events[0]["kind"], events[-1]["kind"]] == ["task", "status-update"]
    assert events[-1]["status"]["state"] == "completed" and events[-1]["final"]
    assert events[-2]["artifact"]["parts"][0]["text"] == "old stream"


def _rpc(method: str, params: dict) -> dict:
    return {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
