"""A conversation as the Agents SDK's Session: its history in the runner's database.

Plugging into the SDK's seam rather than wrapping the runner: the SDK reads the
history before a run and appends each new item as it goes. Every item records the
run that added it, so a run's items can be told apart (and rolled back).
"""

from __future__ import annotations

from typing import Any

from agents.memory.session import SessionABC

from services.runner.store import RunnerStore


class ConversationSession(SessionABC):
    def __init__(self, store: RunnerStore, conversation_id: str, run_id: str):
        self.session_id = conversation_id
        self.session_settings = None
        self._store = store
        self._run_id = run_id

    async def get_items(self, limit: int | None = None) -> list[Any]:
        return await self._store.session_items(self.session_id, limit)

    async def add_items(self, items: list[Any]) -> None:
        await self._store.add_session_items(self.session_id, self._run_id, list(items))

    async def pop_item(self) -> Any | None:
        return await self._store.pop_session_item(self.session_id)

    async def clear_session(self) -> None:
        await self._store.clear_session(self.session_id)
