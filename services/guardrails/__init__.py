"""The guardrails service: evaluates regex, builtin, code, endpoint and agent guardrails."""

from agentmesh.mesh import ServicePlugin
from services.guardrails.plugin import create

plugin = ServicePlugin("guardrails", create)
