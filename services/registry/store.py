"""The registry's storage: one store per aggregate, all on the service's database.

Stores speak in plain records (records.py), never protos.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from services.registry.accounts_store import AccountStore
from services.registry.agents_store import AgentStore
from services.registry.contexts_store import ContextStore
from services.registry.credits_store import CreditStore
from services.registry.tables import Base
from services.registry.workflows_store import WorkflowStore

__all__ = ["Base", "RegistryStore"]


class RegistryStore:
    def __init__(self, engine: AsyncEngine):
        self.accounts = AccountStore(engine)
        self.credits = CreditStore(engine)
        self.agents = AgentStore(engine)
        self.contexts = ContextStore(engine)
        self.workflows = WorkflowStore(engine)
