"""The triggers service's storage: one store per resource, all on its own database.

Stores speak in plain records (records.py), never protos.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from services.triggers.schedules_store import ScheduleStore
from services.triggers.tables import Base
from services.triggers.triggers_store import TriggerStore
from services.triggers.webhooks_store import WebhookStore

__all__ = ["Base", "TriggersStore"]


class TriggersStore:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        self.schedules = ScheduleStore(engine)
        self.webhooks = WebhookStore(engine)
        self.triggers = TriggerStore(engine)
