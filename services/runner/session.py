"""A conversation as the Agents SDK's Session: its history in the runner's database.

Plugging into the SDK's seam rather than wrapping the runner: the SDK reads the
history before a run and appends each new item as it goes. Every item records the
run that added it, so a run's items can be told apart (and rolled back).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from agents.memory.session import SessionABC

from services.runner.store import RunnerStore

# Given the whole history as (seq, run id, item), the history the run starts from
# (compacted if it is over budget; see compact.py).
Compact = Callable[[list[tuple[int, str, dict]]], Awaitable[list[dict]]]


class ConversationSession(SessionABC):
    def __init__(
        self,
        store: RunnerStore,
        conversation_id: str,
        run_id: str,
        owner: str,
        compact: Compact | None = None,
    ):
        self.session_id = conversation_id
        self.session_settings = None
        self._store = store
        self._run_id = run_id
        self._owner = owner  # writes only while the run is still this replica's
        self._compact = compact  # for the SDK's first read of the history, at the start

    async def get_items(self, limit: int | None = None) -> list[Any]:
        if self._compact is not None and limit is None:
            compact, self._compact = self._compact, None
            return await compact(await self._store.session_items_with_seq(self.session_id))
        return await self._store.session_items(self.session_id, limit)

    async def add_items(self, items: list[Any]) -> None:
        await self._store.add_session_items(self.session_id, self._run_id, list(items), self._owner)

    async def pop_item(self) -> Any | None:
        return await self._store.pop_session_item(self.session_id)

    async def clear_session(self) -> None:
        await self._store.clear_session(self.session_id)
