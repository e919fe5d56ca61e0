from agentmesh.mesh import ServicePlugin
from services.reach.plugin import create

# Keeps no data of its own: every call is a RunnerService call for the caller.
plugin = ServicePlugin("reach", create)
