"""The traces service: every run's spans, collected from NATS, stored and queried."""

from agentmesh.mesh import ServicePlugin
from services.traces.plugin import MIGRATIONS, create
from services.traces.store import Base

plugin = ServicePlugin("traces", create, MIGRATIONS, Base.metadata)
