"""A conversation as the Agents SDK's Session: its history in the runner's database.

Plugging into the SDK's seam rather than wrapping the runner: the SDK reads the
history before a run and appends each new item as it goes. Every item records the
run that added it, so a run's items can be told apart (and rolled back).

What a run adds is kept here until the run next writes its own state, and is
written in that transaction (see execute.py): when a tool is about to run (the run
stops being replayable), and when it pauses or ends. A replica that takes a run
over finds its history as of one of those points, which is all it needs: a
replayable run is replayed from its safe point, which drops what it added after
it anyway, and any other run is ended there. No run writes its history turn by
turn, and a run's end commits with the rest of what it added.
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
    def __init__(self, store: RunnerStore, conversation_id: str, new: bool = False):
        self.session_id = conversation_id
        self.session_settings = None
        self._store = store
        # The run made the conversation: until it writes, nothing is stored to read
        # (another run waits while it is the conversation's active run).
        self._new = new
        # Set before the run starts: for the SDK's first read of the history.
        self.compact: Compact | None = None
        self._unwritten: list[Any] = []  # what the run added since its last write

    async def get_items(self, limit: int | None = None) -> list[Any]:
        if self._new:
            stored: list[Any] = []
        elif self.compact is not None and limit is None:
            compact, self.compact = self.compact, None
            stored = await compact(await self._store.session_items_with_seq(self.session_id))
        else:
            stored = await self._store.session_items(self.session_id, limit)
        items = [*stored, *self._unwritten]
        return items if limit is None else items[-limit:] if limit > 0 else []

    async def add_items(self, items: list[Any]) -> None:
        self._unwritten.extend(items)

    async def pop_item(self) -> Any | None:
        if self._unwritten:
            return self._unwritten.pop()
        return await self._store.pop_session_item(self.session_id)

    async def clear_session(self) -> None:
        self._unwritten.clear()
        await self._store.clear_session(self.session_id)

    def unwritten(self) -> list[Any]:
        """The items to write with the run's state now; forgotten here."""
        self._new = False
        items, self._unwritten = self._unwritten, []
        return items
