"""What every protocol the reach service speaks shares: who calls, which agent a
name means, and the runner calls made for that caller.

Each adapter (OpenAI-compatible API, A2A, MCP) authenticates the request's bearer
API key, then calls `RunnerService` over the mesh's peer channel acting for that
user, so a run started here has the same tenancy, credits, guardrails and traces
as a gRPC one: the runner enforces them, not the adapter.
"""

from __future__ import annotations

import grpc
from google.rpc import status_pb2
from grpc_status import rpc_status
from starlette.requests import Request

from agentmesh.auth import Principal, set_principal
from agentmesh.errors import InvalidArgument, NotFound, ServiceError, Unavailable
from agentmesh.gen.registry.v1 import registry_pb2, registry_pb2_grpc
from agentmesh.gen.runner.v1 import runner_pb2_grpc
from agentmesh.http import bearer_principal
from agentmesh.mesh import MeshContext

AGENT_PREFIX = "agentmesh/"  # model names may be written agentmesh/agents/{id}

# gRPC status code -> the HTTP status an HTTP API answers for it.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def status_of(error: Exception) -> tuple[grpc.StatusCode, str]:
    """An error as the (code, message) a caller may see: a service's error or a
    peer's status as they are; anything else is internal and says nothing more."""
    if isinstance(error, ServiceError):
        return error.code, error.message
    if isinstance(error, grpc.aio.AioRpcError):
        status: status_pb2.Status | None = rpc_status.from_call(error)
        return error.code(), status.message if status else (error.details() or "")
    return grpc.StatusCode.INTERNAL, "internal error"


def http_status(code: grpc.StatusCode) -> int:
    return HTTP_STATUS.get(code, 500)


class Reach:
    """The mesh as one caller sees it: their agents and runs."""

    def __init__(self, context: MeshContext):
        self._authenticator = context.authenticator
        self.runner = runner_pb2_grpc.RunnerServiceStub(context.peer("runner"))
        self.registry = registry_pb2_grpc.RegistryServiceStub(context.peer("registry"))

    async def authenticate(self, request: Request) -> Principal:
        """Authenticates the request's API key and acts for its user from here on in
        this task (each HTTP request has its own, and a streamed answer outlives any
        block within it)."""
        principal = await bearer_principal(self._authenticator, request)
        set_principal(principal)
        return principal

    async def agents(self) -> list[registry_pb2.Agent]:
        """Every agent of the caller."""
        agents, token = [], ""
        while True:
            page = await self.registry.ListAgents(
                registry_pb2.ListAgentsRequest(page_size=1000, page_token=token), timeout=10
            )
            agents.extend(page.agents)
            token = page.next_page_token
            if not token:
                return agents

    async def agent(self, model: str, field: str = "model") -> registry_pb2.Agent:
        """The caller's agent a name means: `agents/{id}` (optionally `agentmesh/`
        before it), its bare id, or its display name. NotFound for anything else,
        another user's agent included."""
        name = model.removeprefix(AGENT_PREFIX).strip()
        if not name:
            raise InvalidArgument([(field, "name an agent: agents/{id} or its display name")])
        if name.startswith("agents/"):
            try:
                return await self.registry.GetAgent(
                    registry_pb2.GetAgentRequest(name=name), timeout=10
                )
            except grpc.aio.AioRpcError as error:
                if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                    raise NotFound(f"agent {name[:80]!r}") from None
                raise Unavailable("the registry is not answering") from None
        for agent in await self.agents():
            if name in (agent.name.removeprefix("agents/"), agent.display_name):
                return agent
        raise NotFound(f"agent {name[:80]!r}")
