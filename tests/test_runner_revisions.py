# ruff: noqa: F811 - the runner's fixtures, imported, are redefined as test parameters
"""A run may ask for a named revision of its agent, and keeps it."""

from __future__ import annotations

import grpc
from google.protobuf import field_mask_pb2
from support import expect_rpc_error
from test_runner import Tenant, runner_mesh, tenant, users  # noqa: F401 - fixtures

from agentmesh.gen.registry.v1 import registry_pb2 as r
from agentmesh.gen.runner.v1 import runner_pb2 as rn
from agentmesh.model_server import Reply


async def test_a_run_of_a_named_revision_uses_that_revision(tenant: Tenant):
    first = await tenant.agent("versioned", instructions="Version one.")
    await tenant.client.registry.UpdateAgent(
        r.UpdateAgentRequest(
            agent=r.Agent(name=first.name, instructions="Version two."),
            update_mask=field_mask_pb2.FieldMask(paths=["instructions"]),
        )
    )
    tenant.model.enqueue(Reply(text="old"), Reply(text="new"))
    old = await tenant.run(f"{first.name}@{first.revision_id}")
    assert old.agent_revision == first.revision_id and old.agent == first.name
    assert tenant.model.requests[-1].body["messages"][0]["content"] == "Version one."
    new = await tenant.run(first.name)
    assert new.agent_revision != first.revision_id
    assert tenant.model.requests[-1].body["messages"][0]["content"] == "Version two."
    await expect_rpc_error(tenant.run(f"{first.name}@nosuchrevision"), grpc.StatusCode.NOT_FOUND)
    assert len(tenant.model.requests) == 2  # the missing revision called no model
    listed = await tenant.client.runner.ListRuns(rn.ListRunsRequest(agent=first.name))
    assert {run.agent_revision for run in listed.runs} == {first.revision_id, new.agent_revision}
