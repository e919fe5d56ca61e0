"""The triggers service: schedules, outbound webhooks (subscriptions to run events)
and inbound webhooks (a signed URL that starts a run)."""

from agentmesh.mesh import ServicePlugin
from services.triggers.plugin import MIGRATIONS, create
from services.triggers.store import Base

plugin = ServicePlugin("triggers", create, MIGRATIONS, Base.metadata)
