"""The guardrails service as a mesh service: stateless, it keeps no data."""

from __future__ import annotations

from agentmesh.mesh import MeshContext, MeshService
from agentmesh.outbound import OutboundPolicy
from services.guardrails.evaluate import Evaluator
from services.guardrails.servicer import GuardrailServicer


async def create(context: MeshContext) -> MeshService:
    evaluator = Evaluator(
        OutboundPolicy(context.settings.outbound_allow),
        context.peer("registry"),
        context.peer("runner"),
    )
    return MeshService(GuardrailServicer(evaluator))
