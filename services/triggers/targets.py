"""What schedules and triggers start: a run of an agent or a workflow, as its owner.

Runs start through the runner's own SubmitRun and SubmitWorkflow, acting for the
owner (the service token and the owner's name, as every peer call carries), so
a run started here has the owner's tenancy, credits and guardrails, and a
request id makes a retried start return the first run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc
from google.rpc import status_pb2
from grpc_status import rpc_status

from agentmesh.auth import Principal, set_principal
from agentmesh.errors import InvalidArgument, PeerError
from agentmesh.gen.registry.v1 import (
    registry_pb2,
    registry_pb2_grpc,
    workflows_pb2,
    workflows_pb2_grpc,
)
from agentmesh.gen.runner.v1 import runner_pb2, runner_pb2_grpc

_CALL_SECONDS = 10.0
# Codes a later try may not get again: the runner or the database was away.
TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)


class StartFailed(Exception):
    """The runner refused the run, or could not be reached (`transient`)."""

    def __init__(self, status: status_pb2.Status, transient: bool):
        super().__init__(status.message)
        self.status = status
        self.transient = transient


@contextlib.contextmanager
def acting_for(user_id: str) -> Iterator[None]:
    """Peer calls inside act for this user, with the service's own credentials."""
    token = set_principal(Principal(user=f"users/{user_id}", service=True))
    try:
        yield
    finally:
        token.var.reset(token)


class Targets:
    def __init__(self, runner: grpc.aio.Channel, registry: grpc.aio.Channel):
        self._runner = runner_pb2_grpc.RunnerServiceStub(runner)
        self._agents = registry_pb2_grpc.RegistryServiceStub(registry)
        self._workflows = workflows_pb2_grpc.WorkflowServiceStub(registry)

    async def check(self, target: str, field: str) -> None:
        """Inside an RPC: INVALID_ARGUMENT at `field` unless the target is the
        caller's (another user's answers exactly like a missing one)."""
        try:
            if target.startswith("agents/"):
                await self._agents.GetAgent(
                    registry_pb2.GetAgentRequest(name=target), timeout=_CALL_SECONDS
                )
            else:
                await self._workflows.GetWorkflow(
                    workflows_pb2.GetWorkflowRequest(name=target), timeout=_CALL_SECONDS
                )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise InvalidArgument(
                    [(field, f"{target} not found")], reason="TARGET_NOT_FOUND"
                ) from None
            raise PeerError.of(error) from None

    async def start(self, user_id: str, target: str, text: str, request_id: str) -> str:
        """Submits a run of the target for its owner; its name (runs/... or
        workflowRuns/...). Raises StartFailed."""
        try:
            with acting_for(user_id):
                if target.startswith("agents/"):
                    run = await self._runner.SubmitRun(
                        runner_pb2.RunAgentRequest(agent=target, input=text, request_id=request_id),
                        timeout=_CALL_SECONDS,
                    )
                    return run.name
                workflow_run = await self._runner.SubmitWorkflow(
                    runner_pb2.RunWorkflowRequest(
                        workflow=target, input=text, request_id=request_id
                    ),
                    timeout=_CALL_SECONDS,
                )
                return workflow_run.name
        except grpc.aio.AioRpcError as error:
            status = rpc_status.from_call(error) or status_pb2.Status(
                code=error.code().value[0], message=error.details() or ""
            )
            raise StartFailed(status, error.code() in TRANSIENT) from None
