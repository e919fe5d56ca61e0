"""Contexts: named run values that belong to one agent, deleted with it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from agentmesh.db import Page, Reads, page_of
from agentmesh.errors import NotFound
from agentmesh.ids import new_id, utc_now
from services.registry.records import Context
from services.registry.tables import AgentRow, ContextRow

# Read on every run (its default context): built once, run on the driver (db.Reads).
_MINE = (ContextRow.user_id == bindparam("user_id"), ContextRow.agent_id == bindparam("agent_id"))
_AGENT = select(AgentRow.seq).where(
    AgentRow.user_id == bindparam("user_id"), AgentRow.id == bindparam("agent_id")
)
_CONTEXT = select(ContextRow).where(*_MINE, ContextRow.id == bindparam("context_id"))
_CONTEXTS_AFTER = (
    select(ContextRow)
    .where(*_MINE, ContextRow.seq > bindparam("after_seq"))
    .order_by(ContextRow.seq)
    .limit(bindparam("limit"))
)


def _context(row) -> Context:
    return Context(
        row.id, row.agent_id, row.display_name, row.values, row.is_default, row.create_time
    )


class ContextStore:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        self._reads = Reads(engine)

    async def create_context(
        self,
        user_id: str,
        agent_id: str,
        display_name: str,
        values: dict[str, Any],
        is_default: bool,
    ) -> Context:
        context = Context(new_id(), agent_id, display_name, values, is_default, utc_now())
        try:
            async with self.engine.begin() as conn:
                if is_default:
                    await conn.execute(
                        update(ContextRow)
                        .where(ContextRow.user_id == user_id, ContextRow.agent_id == agent_id)
                        .values(is_default=False)
                    )
                await conn.execute(
                    insert(ContextRow).values(
                        id=context.id,
                        user_id=user_id,
                        agent_id=agent_id,
                        display_name=display_name,
                        values=values,
                        is_default=is_default,
                        create_time=context.create_time,
                    )
                )
        except IntegrityError:
            # The foreign key (user_id, agent_id): no such agent of this user.
            raise NotFound(f"agents/{agent_id}") from None
        return context

    async def get_context(self, user_id: str, agent_id: str, context_id: str) -> Context:
        row = await self._reads.first(
            _CONTEXT, {"user_id": user_id, "agent_id": agent_id, "context_id": context_id}
        )
        if row is None:
            raise NotFound(f"agents/{agent_id}/contexts/{context_id}")
        return _context(row)

    async def list_contexts(self, user_id: str, agent_id: str, after_seq: int, limit: int) -> Page:
        agent = {"user_id": user_id, "agent_id": agent_id}
        if await self._reads.first(_AGENT, agent) is None:
            raise NotFound(f"agents/{agent_id}")
        rows = await self._reads.all(
            _CONTEXTS_AFTER, {**agent, "after_seq": after_seq, "limit": limit + 1}
        )
        rows, last_seq = page_of(rows, limit, "seq")
        return Page([_context(row) for row in rows], last_seq)

    async def delete_context(self, user_id: str, agent_id: str, context_id: str) -> None:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                delete(ContextRow).where(
                    ContextRow.user_id == user_id,
                    ContextRow.agent_id == agent_id,
                    ContextRow.id == context_id,
                )
            )
        if result.rowcount == 0:
            raise NotFound(f"agents/{agent_id}/contexts/{context_id}")
