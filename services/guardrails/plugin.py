"""The guardrails service as a mesh service: stateless, it keeps no data."""

from __future__ import annotations

from agentmesh.mesh import MeshContext, MeshService
from agentmesh.outbound import OutboundPolicy
from services.guardrails.evaluate import Evaluator
from services.guardrails.servicer import GuardrailServicer


class _Guardrails(MeshService):
    def __init__(self, evaluator: Evaluator):
        super().__init__(GuardrailServicer(evaluator))
        self._evaluator = evaluator

    async def stop(self) -> None:
        await self._evaluator.aclose()


async def create(context: MeshContext) -> MeshService:
    evaluator = Evaluator(
        OutboundPolicy(context.settings.outbound_allow),
        context.peer("registry"),
        context.peer("runner"),
    )
    return _Guardrails(evaluator)
