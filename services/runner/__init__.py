"""The runner: runs registry agents with the Agents SDK; conversations, approvals, credits."""

from agentmesh.mesh import ServicePlugin
from services.runner.plugin import MIGRATIONS, create
from services.runner.store import Base

plugin = ServicePlugin("runner", create, MIGRATIONS, Base.metadata)
