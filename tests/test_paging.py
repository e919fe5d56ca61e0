"""Page tokens are opaque and good only for the list, filter and caller they came from."""

from __future__ import annotations

import base64

import grpc
import pytest
from rpc_helpers import field_violations
from support import expect_rpc_error

from agentmesh.auth import Principal, set_principal
from agentmesh.errors import InvalidArgument
from agentmesh.gen.registry.v1 import registry_pb2 as r
from agentmesh.paging import Pages


async def _agents(client, count: int) -> list[str]:
    names = []
    for index in range(count):
        created = await client.registry.CreateAgent(
            r.CreateAgentRequest(agent=r.Agent(display_name=f"paged {index}"))
        )
        names.append(created.name)
    return names


async def test_a_token_pages_its_own_list_to_the_end(new_user):
    client, _ = await new_user()
    names = await _agents(client, 5)
    first = await client.registry.ListAgents(r.ListAgentsRequest(page_size=2))
    again = await client.registry.ListAgents(r.ListAgentsRequest(page_size=2))
    # Sealed with a fresh nonce each time: equal positions give unequal tokens.
    assert first.next_page_token and first.next_page_token != again.next_page_token
    seen, token = [a.name for a in first.agents], first.next_page_token
    while token:  # the page size may change between pages (AIP-158)
        page = await client.registry.ListAgents(r.ListAgentsRequest(page_size=3, page_token=token))
        seen += [a.name for a in page.agents]
        token = page.next_page_token
    assert sorted(seen) == sorted(names)


async def test_a_token_is_refused_by_another_caller_list_or_filter(new_user):
    client, _ = await new_user()
    other, _ = await new_user()
    await _agents(other, 1)
    first, second = await _agents(client, 2)
    for _ in range(2):
        await client.registry.UpdateAgent(
            r.UpdateAgentRequest(
                agent=r.Agent(name=first, instructions=f"again {_}"),
                update_mask={"paths": ["instructions"]},
            )
        )
    token = (await client.registry.ListAgents(r.ListAgentsRequest(page_size=1))).next_page_token
    revisions = await client.registry.ListAgentRevisions(
        r.ListAgentRevisionsRequest(name=first, page_size=1)
    )
    assert token and revisions.next_page_token

    refused = [
        other.registry.ListAgents(r.ListAgentsRequest(page_token=token)),  # another user
        client.registry.ListAgentRevisions(  # another list
            r.ListAgentRevisionsRequest(name=first, page_token=token)
        ),
        client.registry.ListAgentRevisions(  # the same list of another agent
            r.ListAgentRevisionsRequest(name=second, page_token=revisions.next_page_token)
        ),
    ]
    tampered = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    tampered[-1] ^= 1
    bad = base64.urlsafe_b64encode(bytes(tampered)).decode().rstrip("=")
    refused.append(client.registry.ListAgents(r.ListAgentsRequest(page_token=bad)))
    for call in refused:
        error = await expect_rpc_error(call, grpc.StatusCode.INVALID_ARGUMENT)
        assert field_violations(error) == ["page_token"]


@pytest.fixture
def caller():
    set_principal(Principal(user="users/a"))


def test_a_token_opens_only_under_the_secret_that_sealed_it(caller):
    request = r.ListAgentsRequest(page_size=1)
    cursor = Pages("secret one").open(request)
    token = cursor.next_token(12345)
    assert "12345" not in base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode(
        errors="replace"
    )
    assert Pages("secret one").open(r.ListAgentsRequest(page_token=token)).after == 12345
    with pytest.raises(InvalidArgument):
        Pages("secret two").open(r.ListAgentsRequest(page_token=token))
    assert cursor.next_token(0) == ""  # no next page
