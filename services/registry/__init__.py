"""The registry: users, API keys, credits, agents, contexts and workflow definitions."""

from agentmesh.mesh import ServicePlugin
from services.registry.plugin import MIGRATIONS, create
from services.registry.tables import Base

plugin = ServicePlugin("registry", create, MIGRATIONS, Base.metadata)
