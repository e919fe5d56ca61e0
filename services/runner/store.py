"""The runner's tables and queries: runs, their approvals and events, conversations.

Speaks in plain records (services.runner.records), never protos. States are the
contract's enum numbers, which the store only compares.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from agentmesh.db import Page, UtcDateTime, fetch_page
from agentmesh.errors import Aborted, FailedPrecondition, NotFound
from agentmesh.ids import utc_now
from agentmesh.outbox import outbox_table, stage
from services.runner import records


class Base(DeclarativeBase):
    pass


OUTBOX = outbox_table(Base.metadata)


class RunRow(Base):
    __tablename__ = "runs"
    __table_args__ = (
        # A retried request (same request_id) finds the first run; the database
        # keeps two racing retries from both starting one.
        Index(
            "one_run_per_request",
            "user_id",
            "request_id",
            unique=True,
            sqlite_where=text("request_id != ''"),
            postgresql_where=text("request_id != ''"),
        ),
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[str] = mapped_column(String(64), index=True)
    agent_id: Mapped[str] = mapped_column(String(64))
    revisions: Mapped[dict[str, str]] = mapped_column(JSON)
    conversation_id: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[int] = mapped_column(Integer)
    input: Mapped[str] = mapped_column(Text)
    request_id: Mapped[str] = mapped_column(String(128))
    max_credits: Mapped[int] = mapped_column(BigInteger)
    max_turns: Mapped[int] = mapped_column(Integer)
    trace_id: Mapped[str] = mapped_column(String(64))
    last_agent_id: Mapped[str] = mapped_column(String(64))
    final_output: Mapped[str] = mapped_column(Text)
    structured_output: Mapped[Any] = mapped_column(JSON, nullable=True)
    items: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    usage: Mapped[dict[str, int]] = mapped_column(JSON)
    credits: Mapped[int] = mapped_column(BigInteger)
    error: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    paused_state: Mapped[str | None] = mapped_column(Text, nullable=True)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime)
    end_time: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class RunEventRow(Base):
    __tablename__ = "run_events"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    sequence: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    # A RunEvent, serialized.
    payload: Mapped[bytes] = mapped_column(LargeBinary)


class ApprovalRow(Base):
    __tablename__ = "approvals"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str] = mapped_column(String(64))
    call_id: Mapped[str] = mapped_column(String(128))
    agent_id: Mapped[str] = mapped_column(String(64))
    tool_name: Mapped[str] = mapped_column(String(128))
    arguments: Mapped[str] = mapped_column(Text)
    state: Mapped[int] = mapped_column(Integer, index=True)
    reason: Mapped[str] = mapped_column(Text)
    decided_by: Mapped[str] = mapped_column(String(128))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    expire_time: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    decide_time: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class ConversationRow(Base):
    __tablename__ = "conversations"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[str] = mapped_column(String(64), index=True)
    agent_id: Mapped[str] = mapped_column(String(64))
    # The run that holds the conversation (running or paused); at most one.
    active_run: Mapped[str | None] = mapped_column(String(64), nullable=True)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime)


class ConversationItemRow(Base):
    __tablename__ = "conversation_items"
    __table_args__ = {"sqlite_autoincrement": True}
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    run_id: Mapped[str] = mapped_column(String(64))
    # One item in the Responses API's input shape, as JSON text.
    item: Mapped[str] = mapped_column(Text)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)


def _run(row: Any) -> records.Run:
    return records.Run(
        id=row.id,
        user_id=row.user_id,
        agent_id=row.agent_id,
        revisions=dict(row.revisions),
        conversation_id=row.conversation_id,
        state=row.state,
        input=row.input,
        create_time=row.create_time,
        update_time=row.update_time,
        max_credits=row.max_credits,
        max_turns=row.max_turns,
        request_id=row.request_id,
        trace_id=row.trace_id,
        last_agent_id=row.last_agent_id,
        final_output=row.final_output,
        structured_output=row.structured_output,
        items=list(row.items),
        usage=dict(row.usage),
        credits=row.credits,
        error=row.error,
        paused_state=row.paused_state,
        end_time=row.end_time,
    )


def _approval(row: Any) -> records.Approval:
    return records.Approval(
        id=row.id,
        run_id=row.run_id,
        user_id=row.user_id,
        call_id=row.call_id,
        agent_id=row.agent_id,
        tool_name=row.tool_name,
        arguments=row.arguments,
        state=row.state,
        create_time=row.create_time,
        expire_time=row.expire_time,
        reason=row.reason,
        decided_by=row.decided_by,
        decide_time=row.decide_time,
    )


def _run_values(run: records.Run) -> dict[str, Any]:
    return {
        "state": run.state,
        "last_agent_id": run.last_agent_id,
        "final_output": run.final_output,
        "structured_output": run.structured_output,
        "items": run.items,
        "usage": run.usage,
        "credits": run.credits,
        "error": run.error,
        "paused_state": run.paused_state,
        "update_time": run.update_time,
        "end_time": run.end_time,
    }


class ConversationBusy(Aborted):
    reason = "CONVERSATION_BUSY"


class RunnerStore:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    # ---- starting and ending runs -------------------------------------------

    async def start_run(self, run: records.Run, new_conversation: bool) -> records.Run:
        """Inserts the run and makes it the conversation's one active run.

        Raises ConversationBusy when another run holds the conversation, and
        returns the earlier run when run.request_id was used before.
        """
        try:
            async with self.engine.begin() as conn:
                if new_conversation:
                    await conn.execute(
                        insert(ConversationRow).values(
                            id=run.conversation_id,
                            user_id=run.user_id,
                            agent_id=run.agent_id,
                            active_run=run.id,
                            create_time=run.create_time,
                            update_time=run.create_time,
                        )
                    )
                else:
                    await self._claim_conversation(conn, run)
                await conn.execute(
                    insert(RunRow).values(
                        id=run.id,
                        user_id=run.user_id,
                        agent_id=run.agent_id,
                        revisions=run.revisions,
                        conversation_id=run.conversation_id,
                        input=run.input,
                        request_id=run.request_id,
                        max_credits=run.max_credits,
                        max_turns=run.max_turns,
                        trace_id=run.trace_id,
                        create_time=run.create_time,
                        **_run_values(run),
                    )
                )
        except IntegrityError:
            if run.request_id and (
                earlier := await self.run_by_request(run.user_id, run.request_id)
            ):
                return earlier
            raise
        return run

    async def _claim_conversation(self, conn: AsyncConnection, run: records.Run) -> None:
        claimed = await conn.execute(
            update(ConversationRow)
            .where(
                ConversationRow.id == run.conversation_id,
                ConversationRow.user_id == run.user_id,
                ConversationRow.active_run.is_(None),
            )
            .values(active_run=run.id, update_time=run.create_time)
        )
        if claimed.rowcount == 0:
            found = await self._conversation(conn, run.user_id, run.conversation_id)
            raise ConversationBusy(
                f"conversations/{found.id} has a run in progress (runs/{found.active_run}); "
                "wait for it, or pass a busy_policy",
                run=f"runs/{found.active_run}",
            )

    async def save_run(
        self,
        run: records.Run,
        events: Sequence[tuple[int, bytes]] = (),
        outbox: Sequence[Any] = (),
        release_conversation: bool = False,
    ) -> None:
        """Writes the run's state, its new events and outbox events in one transaction;
        a run that ended lets go of its conversation."""
        async with self.engine.begin() as conn:
            await conn.execute(update(RunRow).where(RunRow.id == run.id).values(**_run_values(run)))
            if events:
                await conn.execute(
                    insert(RunEventRow),
                    [{"run_id": run.id, "sequence": s, "payload": p} for s, p in events],
                )
            for event in outbox:
                await stage(conn, OUTBOX, event)
            if release_conversation:
                await conn.execute(
                    update(ConversationRow)
                    .where(
                        ConversationRow.id == run.conversation_id,
                        ConversationRow.active_run == run.id,
                    )
                    .values(active_run=None, update_time=utc_now())
                )

    async def pause_run(
        self,
        run: records.Run,
        approvals: list[records.Approval],
        events: Sequence[tuple[int, bytes]],
        outbox: Sequence[Any],
    ) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(RunRow).where(RunRow.id == run.id).values(**_run_values(run)))
            await conn.execute(insert(ApprovalRow), [_approval_values(a) for a in approvals])
            if events:
                await conn.execute(
                    insert(RunEventRow),
                    [{"run_id": run.id, "sequence": s, "payload": p} for s, p in events],
                )
            for event in outbox:
                await stage(conn, OUTBOX, event)

    async def claim_run(self, run_id: str, from_state: int, to_state: int) -> bool:
        """Moves a run between states if it is still in from_state: exactly one
        caller wins (a resume, a cancel of a paused run)."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(RunRow)
                .where(RunRow.id == run_id, RunRow.state == from_state)
                .values(state=to_state, update_time=utc_now())
            )
        return result.rowcount == 1

    # ---- reading runs ---------------------------------------------------------

    async def get_run(self, user_id: str, run_id: str) -> records.Run:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(RunRow).where(RunRow.id == run_id, RunRow.user_id == user_id)
                )
            ).first()
        if row is None:
            raise NotFound(f"runs/{run_id}")
        return _run(row)

    async def run_by_request(self, user_id: str, request_id: str) -> records.Run | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(RunRow).where(RunRow.user_id == user_id, RunRow.request_id == request_id)
                )
            ).first()
        return None if row is None else _run(row)

    async def list_runs(self, user_id: str, agent_id: str, after_seq: int, limit: int) -> Page:
        query = select(RunRow).where(RunRow.user_id == user_id)
        if agent_id:
            query = query.where(RunRow.agent_id == agent_id)
        async with self.engine.connect() as conn:
            rows, last_seq = await fetch_page(conn, query, RunRow.seq, after_seq, limit)
        return Page([_run(row) for row in rows], last_seq)

    async def events_after(self, run_id: str, after: int) -> list[bytes]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(RunEventRow.payload)
                .where(RunEventRow.run_id == run_id, RunEventRow.sequence > after)
                .order_by(RunEventRow.sequence)
            )
            return [row.payload for row in rows]

    # ---- approvals -----------------------------------------------------------

    async def list_approvals(self, user_id: str, run_id: str, after_seq: int, limit: int) -> Page:
        await self.get_run(user_id, run_id)
        query = select(ApprovalRow).where(ApprovalRow.run_id == run_id)
        async with self.engine.connect() as conn:
            rows, last_seq = await fetch_page(conn, query, ApprovalRow.seq, after_seq, limit)
        return Page([_approval(row) for row in rows], last_seq)

    async def approvals_of(self, run_id: str) -> list[records.Approval]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(ApprovalRow).where(ApprovalRow.run_id == run_id).order_by(ApprovalRow.seq)
            )
            return [_approval(row) for row in rows]

    async def get_approval(self, user_id: str, run_id: str, approval_id: str) -> records.Approval:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(ApprovalRow).where(
                        ApprovalRow.id == approval_id,
                        ApprovalRow.run_id == run_id,
                        ApprovalRow.user_id == user_id,
                    )
                )
            ).first()
        if row is None:
            raise NotFound(f"runs/{run_id}/approvals/{approval_id}")
        return _approval(row)

    async def decide_approval(
        self, approval: records.Approval, state: int, pending: int, reason: str, decided_by: str
    ) -> bool:
        """Records a decision if the approval is still pending; False if another won."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(ApprovalRow)
                .where(ApprovalRow.id == approval.id, ApprovalRow.state == pending)
                .values(state=state, reason=reason, decided_by=decided_by, decide_time=utc_now())
            )
        return result.rowcount == 1

    async def expired_approvals(self, pending: int, now: datetime) -> list[records.Approval]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(ApprovalRow)
                .where(ApprovalRow.state == pending, ApprovalRow.expire_time <= now)
                .limit(500)
            )
            return [_approval(row) for row in rows]

    # ---- conversations --------------------------------------------------------

    async def _conversation(
        self, conn: AsyncConnection, user_id: str, conversation_id: str
    ) -> records.Conversation:
        row = (
            await conn.execute(
                select(ConversationRow).where(
                    ConversationRow.id == conversation_id, ConversationRow.user_id == user_id
                )
            )
        ).first()
        if row is None:
            raise NotFound(f"conversations/{conversation_id}")
        count = (
            await conn.execute(
                select(func.count())
                .select_from(ConversationItemRow)
                .where(ConversationItemRow.conversation_id == conversation_id)
            )
        ).scalar_one()
        return records.Conversation(
            row.id,
            row.user_id,
            row.agent_id,
            row.create_time,
            row.update_time,
            row.active_run,
            count,
        )

    async def get_conversation(self, user_id: str, conversation_id: str) -> records.Conversation:
        async with self.engine.connect() as conn:
            return await self._conversation(conn, user_id, conversation_id)

    async def list_conversations(
        self, user_id: str, agent_id: str, after_seq: int, limit: int
    ) -> Page:
        query = select(ConversationRow).where(ConversationRow.user_id == user_id)
        if agent_id:
            query = query.where(ConversationRow.agent_id == agent_id)
        async with self.engine.connect() as conn:
            rows, last_seq = await fetch_page(conn, query, ConversationRow.seq, after_seq, limit)
            conversations = [await self._conversation(conn, user_id, row.id) for row in rows]
        return Page(conversations, last_seq)

    async def delete_conversation(self, user_id: str, conversation_id: str) -> None:
        async with self.engine.begin() as conn:
            found = await self._conversation(conn, user_id, conversation_id)
            if found.active_run:
                raise FailedPrecondition(
                    f"conversations/{conversation_id} has a run in progress "
                    f"(runs/{found.active_run}); cancel it first",
                    reason="CONVERSATION_BUSY",
                )
            await conn.execute(
                delete(ConversationItemRow).where(
                    ConversationItemRow.conversation_id == conversation_id
                )
            )
            await conn.execute(delete(ConversationRow).where(ConversationRow.id == conversation_id))

    async def list_items(
        self, user_id: str, conversation_id: str, after_seq: int, limit: int
    ) -> Page:
        await self.get_conversation(user_id, conversation_id)
        query = select(ConversationItemRow).where(
            ConversationItemRow.conversation_id == conversation_id
        )
        async with self.engine.connect() as conn:
            rows, last_seq = await fetch_page(
                conn, query, ConversationItemRow.seq, after_seq, limit
            )
        items = [
            records.ConversationItem(
                row.seq, row.conversation_id, row.run_id, json.loads(row.item), row.create_time
            )
            for row in rows
        ]
        return Page(items, last_seq)

    # ---- the SDK session's storage (services.runner.session) ------------------

    async def session_items(self, conversation_id: str, limit: int | None) -> list[dict]:
        query = select(ConversationItemRow.item).where(
            ConversationItemRow.conversation_id == conversation_id
        )
        async with self.engine.connect() as conn:
            if limit is None:
                rows = await conn.execute(query.order_by(ConversationItemRow.seq))
                return [json.loads(row.item) for row in rows]
            rows = await conn.execute(query.order_by(ConversationItemRow.seq.desc()).limit(limit))
            return [json.loads(row.item) for row in reversed(rows.all())]

    async def add_session_items(self, conversation_id: str, run_id: str, items: list) -> None:
        if not items:
            return
        now = utc_now()
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(ConversationItemRow),
                [
                    {
                        "conversation_id": conversation_id,
                        "run_id": run_id,
                        "item": json.dumps(item, separators=(",", ":")),
                        "create_time": now,
                    }
                    for item in items
                ],
            )

    async def pop_session_item(self, conversation_id: str) -> dict | None:
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(ConversationItemRow)
                    .where(ConversationItemRow.conversation_id == conversation_id)
                    .order_by(ConversationItemRow.seq.desc())
                    .limit(1)
                )
            ).first()
            if row is None:
                return None
            await conn.execute(
                delete(ConversationItemRow).where(ConversationItemRow.seq == row.seq)
            )
        return json.loads(row.item)

    async def clear_session(self, conversation_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                delete(ConversationItemRow).where(
                    ConversationItemRow.conversation_id == conversation_id
                )
            )


def _approval_values(approval: records.Approval) -> dict[str, Any]:
    return {
        "id": approval.id,
        "run_id": approval.run_id,
        "user_id": approval.user_id,
        "call_id": approval.call_id,
        "agent_id": approval.agent_id,
        "tool_name": approval.tool_name,
        "arguments": approval.arguments,
        "state": approval.state,
        "reason": approval.reason,
        "decided_by": approval.decided_by,
        "create_time": approval.create_time,
        "expire_time": approval.expire_time,
        "decide_time": approval.decide_time,
    }
