# ruff: noqa: F811 - the runner's fixtures, imported, are redefined as test parameters
"""Web search is the provider's hosted tool, run by OpenAI's Responses API only: the
registry refuses to save it for an agent that does not name an OpenAI provider (at
the tool's field, saying why), so no run fails on it later; an OpenAI provider's
agent sends the SDK's WebSearchTool to the Responses API."""

from __future__ import annotations

import grpc
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from rpc_helpers import details_of, field_violations
from support import expect_rpc_error
from test_runner import KEY, Tenant, runner_mesh, tenant, users  # noqa: F401 - fixtures

from agentmesh.gen.providers.v1 import providers_pb2 as p
from agentmesh.gen.registry.v1 import registry_pb2 as r
from agentmesh.gen.runner.v1 import runner_pb2 as rn
from agentmesh.model_server import Reply

State = rn.Run.State
SEARCH = r.Tool(
    name="search",
    web_search=r.WebSearchTool(
        search_context_size=r.WebSearchTool.CONTEXT_SIZE_HIGH,
        user_location=r.WebSearchTool.UserLocation(country="DE", city="Berlin"),
    ),
)


async def provider(tenant: Tenant, kind: int) -> p.Provider:
    return await tenant.client.providers.CreateProvider(
        p.CreateProviderRequest(
            provider=p.Provider(
                display_name="named", type=kind, base_url=tenant.model.base_url, api_key=KEY
            )
        )
    )


def on(provider_name: str) -> r.ModelSettings:
    return r.ModelSettings(provider=provider_name)


async def refused(call) -> tuple[list[str], str]:
    """The fields an INVALID_ARGUMENT names, and what it says about them."""
    error = await expect_rpc_error(call, grpc.StatusCode.INVALID_ARGUMENT)
    (bad_request,) = details_of(error, error_details_pb2.BadRequest)
    texts = " ".join(v.description for v in bad_request.field_violations)
    return field_violations(error), texts


async def test_web_search_is_refused_on_save_unless_the_agent_names_an_openai_provider(
    tenant: Tenant,
):
    custom = await provider(tenant, p.PROVIDER_TYPE_CUSTOM)
    anthropic = await provider(tenant, p.PROVIDER_TYPE_ANTHROPIC)
    for settings, kind in ((on(custom.name), "CUSTOM"), (on(anthropic.name), "ANTHROPIC")):
        fields, text = await refused(
            tenant.agent("searcher", tools=[SEARCH], model_settings=settings)
        )
        assert fields == ["agent.tools[0].web_search"]
        assert "Responses API" in text and f"a {kind} provider" in text
    # The default provider is chosen at run time: it cannot vouch for the tool.
    fields, text = await refused(tenant.agent("searcher", tools=[SEARCH]))
    assert fields == ["agent.tools[0].web_search"] and "model_settings.provider" in text
    assert tenant.model.requests == []


async def test_an_update_cannot_move_a_searching_agent_off_openai(tenant: Tenant):
    openai = await provider(tenant, p.PROVIDER_TYPE_OPENAI)
    custom = await provider(tenant, p.PROVIDER_TYPE_CUSTOM)
    agent = await tenant.agent("searcher", tools=[SEARCH], model_settings=on(openai.name))
    moved = r.Agent(name=agent.name, model_settings=on(custom.name))
    fields, _ = await refused(
        tenant.client.registry.UpdateAgent(
            r.UpdateAgentRequest(
                agent=moved, update_mask=field_mask_pb2.FieldMask(paths=["model_settings"])
            )
        )
    )
    assert fields == ["agent.tools[0].web_search"]
    # Nor can web search be added to an agent on another provider.
    plain = await tenant.agent("plain", model_settings=on(custom.name))
    fields, _ = await refused(
        tenant.client.registry.UpdateAgent(
            r.UpdateAgentRequest(
                agent=r.Agent(name=plain.name, tools=[SEARCH]),
                update_mask=field_mask_pb2.FieldMask(paths=["tools"]),
            )
        )
    )
    assert fields == ["agent.tools[0].web_search"]
    unchanged = await tenant.client.registry.GetAgent(r.GetAgentRequest(name=agent.name))
    assert unchanged.model_settings.provider == openai.name


async def test_another_users_openai_provider_is_not_found(tenant: Tenant, users):
    other_client, _ = await users.new()
    theirs = await other_client.providers.CreateProvider(
        p.CreateProviderRequest(
            provider=p.Provider(display_name="theirs", type=p.PROVIDER_TYPE_OPENAI, api_key=KEY)
        )
    )
    missing = theirs.name.rsplit("/", 1)[0] + "/nosuchprovider"
    answers = []
    for name in (theirs.name, missing):
        fields, text = await refused(
            tenant.agent("searcher", tools=[SEARCH], model_settings=on(name))
        )
        assert fields == ["agent.model_settings.provider"]
        answers.append(text.replace(name, "<name>"))
    assert answers[0] == answers[1]  # indistinguishable from a provider that does not exist


async def test_an_openai_providers_agent_sends_the_hosted_web_search_tool(tenant: Tenant):
    openai = await provider(tenant, p.PROVIDER_TYPE_OPENAI)
    agent = await tenant.agent("searcher", tools=[SEARCH], model_settings=on(openai.name))
    tenant.model.enqueue(Reply(text="found it"))
    run = await tenant.run(agent.name, "what is new in Berlin?")
    assert (run.state, run.final_output) == (State.STATE_SUCCEEDED, "found it"), run.error
    request = tenant.model.requests[-1]
    assert request.path == "/v1/responses"
    (tool,) = request.body["tools"]
    assert tool["type"] == "web_search" and tool["search_context_size"] == "high"
    assert tool["user_location"] == {"type": "approximate", "country": "DE", "city": "Berlin"}
