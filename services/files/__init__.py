"""The files service: uploads, text extraction, embeddings and vector search."""

from agentmesh.mesh import ServicePlugin
from services.files.plugin import MIGRATIONS, create
from services.files.store import Base

plugin = ServicePlugin("files", create, MIGRATIONS, Base.metadata)
