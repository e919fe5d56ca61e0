"""The providers service: model provider configs, their API keys only in a secret store."""

from agentmesh.mesh import ServicePlugin
from services.providers.plugin import MIGRATIONS, create
from services.providers.store import Base

plugin = ServicePlugin("providers", create, MIGRATIONS, Base.metadata)
