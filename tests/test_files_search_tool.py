"""An agent answers from a file: the runner's file_search tool searches the files
service's vector stores, over a chat-completions provider (the local model server),
and cites file and position; another user's store is not searched.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from files_support import READY, index_file, new_store
from support import Users, expect_rpc_error, running_mesh, use_model

from agentmesh.gen.files.v1 import files_pb2 as f
from agentmesh.gen.providers.v1 import providers_pb2 as p
from agentmesh.gen.registry.v1 import registry_pb2 as r
from agentmesh.gen.runner.v1 import runner_pb2 as rn
from agentmesh.mesh import Mesh
from agentmesh.model_server import ModelServer, Reply, ToolCall

KEY = "sk-files-tool-test-" + "k" * 24
MANUAL = (
    "Zephyr-9 heat pump manual. The outdoor unit runs a defrost cycle every 45 minutes "
    "when the air is below 3 degrees. Clean the intake filter each spring."
)


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory) -> AsyncIterator[Mesh]:
    async with running_mesh(
        tmp_path_factory.mktemp("files-tool"), outbound_allow=["127.0.0.1"]
    ) as mesh:
        yield mesh


@pytest.fixture
async def users(mesh) -> AsyncIterator[Users]:
    factory = Users(mesh)
    yield factory
    await factory.close()


async def tenant(users: Users, model: ModelServer):
    client, user = await users.new(credits=1000)
    await use_model(client, model)
    return client, user


def search_tool(*stores: str) -> r.Tool:
    return r.Tool(name="search_docs", file_search=r.FileSearchTool(vector_stores=list(stores)))


def tool_outputs(model: ModelServer) -> list[str]:
    return [m["content"] for m in model.requests[-1].body["messages"] if m["role"] == "tool"]


async def test_an_agent_answers_from_a_file_and_cites_it(users):
    async with ModelServer(api_key=KEY) as model:
        client, _ = await tenant(users, model)
        store = await new_store(client)
        manual = await index_file(client, store, "zephyr.md", MANUAL.encode())
        assert manual.state == READY
        agent = await client.registry.CreateAgent(
            r.CreateAgentRequest(
                agent=r.Agent(display_name="helpdesk", tools=[search_tool(store.name)]),
                agent_id="helpdesk",
            )
        )
        model.enqueue(
            Reply(tool_calls=[ToolCall("search_docs", {"query": "how often does it defrost?"})]),
            Reply(text="Every 45 minutes below 3 degrees [zephyr.md]."),
        )
        run = await client.runner.RunAgent(
            rn.RunAgentRequest(agent=agent.name, input="How often does my heat pump defrost?")
        )
        assert run.state == rn.Run.STATE_SUCCEEDED, run.error
        assert run.final_output.startswith("Every 45 minutes")
        # The tool was offered to the model as a plain function, and its answer cites.
        offered = model.requests[0].body["tools"]
        assert [t["function"]["name"] for t in offered] == ["search_docs"]
        (output,) = tool_outputs(model)
        assert output.startswith(f"[1] zephyr.md ({manual.name}, chunk 0, score ")
        assert "defrost cycle every 45 minutes" in output


async def test_file_search_does_not_reach_another_users_store(users):
    async with ModelServer(api_key=KEY) as model:
        alice, _ = await tenant(users, model)
        alice_store = await new_store(alice)
        await index_file(alice, alice_store, "zephyr.md", MANUAL.encode())
        bob, _ = await tenant(users, model)
        agent = await bob.registry.CreateAgent(
            r.CreateAgentRequest(
                agent=r.Agent(display_name="snoop", tools=[search_tool(alice_store.name)]),
                agent_id="snoop",
            )
        )
        model.enqueue(
            Reply(tool_calls=[ToolCall("search_docs", {"query": "defrost"})]),
            Reply(text="nothing"),
        )
        run = await bob.runner.RunAgent(rn.RunAgentRequest(agent=agent.name, input="defrost?"))
        assert run.state == rn.Run.STATE_SUCCEEDED, run.error
        (output,) = tool_outputs(model)
        assert "No passage" in output and f"{alice_store.name} was not found" in output
        assert "45 minutes" not in output


async def test_a_store_can_embed_through_a_users_provider(users):
    """The provider's /v1/embeddings (the model server's bag-of-words stand-in) makes a
    store of its own dimension; the key is resolved by the providers service."""
    async with ModelServer(api_key=KEY, embedding_dimensions=96) as model:
        client, _ = await tenant(users, model)
        (provider,) = (await client.providers.ListProviders(p.ListProvidersRequest())).providers
        store = await client.files.CreateVectorStore(
            f.CreateVectorStoreRequest(
                vector_store=f.VectorStore(
                    display_name="remote",
                    embedding_provider=provider.name,
                    embedding_model="stand-in-embed",
                )
            )
        )
        assert (store.dimensions, store.embedding_model) == (96, "stand-in-embed")
        manual = await index_file(client, store, "zephyr.md", MANUAL.encode())
        other = await index_file(client, store, "other.md", b"Bicycle tyres need air.")
        assert manual.state == other.state == READY
        hits = (
            await client.files.SearchVectorStore(
                f.SearchVectorStoreRequest(vector_store=store.name, query="defrost cycle minutes")
            )
        ).results
        assert hits[0].file == manual.name
        calls = [r for r in model.requests if r.path == "/v1/embeddings"]
        assert calls and all(r.headers["Authorization"] == f"Bearer {KEY}" for r in calls)
        assert {r.body["model"] for r in calls} == {"stand-in-embed"}
        # The second file's chunks and the query went on one connection, kept alive
        # between them (the probe's had gone idle while the store's collection was made).
        assert calls[-1].body["input"] == ["defrost cycle minutes"]
        assert calls[-2].peer == calls[-1].peer, [r.peer for r in calls]
        # Another user cannot name this provider; no model name is refused.
        bob, _ = await users.new()
        await expect_rpc_error(
            bob.files.CreateVectorStore(
                f.CreateVectorStoreRequest(
                    vector_store=f.VectorStore(
                        display_name="x", embedding_provider=provider.name, embedding_model="m"
                    )
                )
            ),
            grpc.StatusCode.NOT_FOUND,
        )
        await expect_rpc_error(
            client.files.CreateVectorStore(
                f.CreateVectorStoreRequest(
                    vector_store=f.VectorStore(display_name="x", embedding_provider=provider.name)
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
