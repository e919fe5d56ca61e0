"""gRPC servicer of the guardrails service: a request's guardrails in, each result out."""

from __future__ import annotations

from agentmesh.auth import current_user
from agentmesh.gen.guardrails.v1 import guardrails_pb2, guardrails_pb2_grpc
from services.guardrails.evaluate import Evaluator


class GuardrailServicer(guardrails_pb2_grpc.GuardrailServiceServicer):
    def __init__(self, evaluator: Evaluator):
        self._evaluator = evaluator

    async def EvaluateGuardrails(
        self, request: guardrails_pb2.EvaluateGuardrailsRequest, context: object
    ) -> guardrails_pb2.EvaluateGuardrailsResponse:
        # Agent guardrails run the caller's own agents, as the caller.
        user = current_user().user
        results = await self._evaluator.evaluate_all(
            user, request.guardrails, request.text, request.stage, request.agent
        )
        return guardrails_pb2.EvaluateGuardrailsResponse(
            results=results, tripwire_triggered=any(r.tripwire_triggered for r in results)
        )
