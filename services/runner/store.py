"""The runner's tables and queries: runs, their approvals and events, conversations.

Speaks in plain records (services.runner.records), never protos. States are the
contract's enum numbers, which the store only compares.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    bindparam,
    case,
    delete,
    false,
    func,
    insert,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
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
        # Every replica's sweep for running runs whose lease ran out.
        Index("runs_by_lease", "state", "lease_expire_time"),
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
    end_time: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True, index=True)
    start_context: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    busy_policy: Mapped[int] = mapped_column(Integer, server_default="0")
    waiting: Mapped[bool] = mapped_column(Boolean, server_default=false())
    interrupts: Mapped[str | None] = mapped_column(String(64), nullable=True)
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expire_time: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    replayable: Mapped[bool] = mapped_column(Boolean, server_default=false())
    checkpoint_item_seq: Mapped[int] = mapped_column(BigInteger, server_default="0")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    reservations: Mapped[list[str]] = mapped_column(JSON, server_default="[]")
    # GuardrailResults as JSON, in the order they were decided.
    guardrail_results: Mapped[list[dict[str, Any]]] = mapped_column(JSON, server_default="[]")
    # The workflow run (its id) this run is a step of, if any.
    workflow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)


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
    # Retention deletes conversations by how long ago they were last used.
    update_time: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    compact_time: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


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
        start_context=row.start_context,
        busy_policy=row.busy_policy,
        waiting=row.waiting,
        interrupts=row.interrupts,
        owner=row.owner,
        lease_expire_time=row.lease_expire_time,
        replayable=row.replayable,
        checkpoint_item_seq=row.checkpoint_item_seq,
        attempts=row.attempts,
        reservations=list(row.reservations or []),
        guardrail_results=list(row.guardrail_results or []),
        workflow_run_id=row.workflow_run_id or "",
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
    """What changes as a run goes: written at its pause and its end."""
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
        "waiting": run.waiting,
        "lease_expire_time": run.lease_expire_time,
        "reservations": run.reservations,
        "guardrail_results": run.guardrail_results,
    }


def _new_run_values(run: records.Run) -> dict[str, Any]:
    return {
        **_run_values(run),
        "id": run.id,
        "user_id": run.user_id,
        "agent_id": run.agent_id,
        "revisions": run.revisions,
        "conversation_id": run.conversation_id,
        "input": run.input,
        "request_id": run.request_id,
        "max_credits": run.max_credits,
        "max_turns": run.max_turns,
        "trace_id": run.trace_id,
        "create_time": run.create_time,
        "start_context": run.start_context,
        "busy_policy": run.busy_policy,
        "interrupts": run.interrupts,
        "owner": run.owner,
        "replayable": run.replayable,
        "attempts": run.attempts,
        "workflow_run_id": run.workflow_run_id or None,
        "b_conversation": run.conversation_id,  # the run's safe point: its last item
    }


def _last_item_seq(conversation_id: Any = None) -> Any:
    """The conversation's last item, as a run's safe point: of the given conversation,
    or (in an UPDATE of runs) of the row's own."""
    conversation = RunRow.conversation_id if conversation_id is None else conversation_id
    return (
        select(func.coalesce(func.max(ConversationItemRow.seq), 0))
        .where(ConversationItemRow.conversation_id == conversation)
        .scalar_subquery()
    )


def _holds_its_conversation() -> Any:
    return (
        select(ConversationRow.id)
        .where(
            ConversationRow.id == RunRow.conversation_id,
            ConversationRow.active_run == RunRow.id,
        )
        .exists()
    )


# The hot path's statements, built once: building one and its cache key cost more than
# running it on SQLite. Values come as execution parameters (an UPDATE sets the columns
# they name); WHERE parameters are named b_*, as a parameter named for a column sets it.
_INSERT_CONVERSATION = insert(ConversationRow)
_INSERT_RUN = insert(RunRow).values(checkpoint_item_seq=_last_item_seq(bindparam("b_conversation")))
_INSERT_ITEMS = insert(ConversationItemRow)
_RUN_BY_ID = RunRow.id == bindparam("b_id")
_UPDATE_RUN = {
    (by_owner, by_state): update(RunRow).where(
        _RUN_BY_ID,
        *([RunRow.owner == bindparam("b_owner")] if by_owner else []),
        *([RunRow.state == bindparam("b_state")] if by_state else []),
    )
    for by_owner in (False, True)
    for by_state in (False, True)
}
_RUNNING_ON = update(RunRow).where(
    _RUN_BY_ID, RunRow.owner == bindparam("b_owner"), RunRow.state == records.RUNNING
)
_RELEASE_CONVERSATION = update(ConversationRow).where(
    ConversationRow.id == bindparam("b_id"), ConversationRow.active_run == bindparam("b_run")
)
_FIRST_WAITING = (
    select(RunRow.id, RunRow.user_id, RunRow.busy_policy, RunRow.interrupts)
    .where(
        RunRow.conversation_id == bindparam("b_conversation"),
        RunRow.state == records.QUEUED,
        RunRow.waiting == true(),
    )
    .order_by(case((RunRow.busy_policy.in_(records.INTERRUPTING), 0), else_=1), RunRow.seq)
    .limit(1)
)
_SESSION_ITEMS = (
    select(ConversationItemRow.item)
    .where(ConversationItemRow.conversation_id == bindparam("b_conversation"))
    .order_by(ConversationItemRow.seq)
)
_INSERT_EVENTS = {
    name: dialect.insert(RunEventRow).on_conflict_do_nothing(index_elements=["run_id", "sequence"])
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}


async def _insert_events(
    conn: AsyncConnection, run_events: Sequence[tuple[str, int, bytes]]
) -> None:
    """Inserts events, skipping any already written: the live writer and a run's final
    save may both carry the same ones."""
    if not run_events:
        return
    await conn.execute(
        _INSERT_EVENTS[conn.dialect.name],
        [{"run_id": r, "sequence": s, "payload": p} for r, s, p in run_events],
    )


class ConversationBusy(Aborted):
    reason = "CONVERSATION_BUSY"


class RunLost(Exception):
    """The run is no longer this replica's: its lease ran out and another took it."""


class _Unchanged(Exception):
    """A conditional write found the run changed: the transaction is rolled back."""


@dataclass
class Started:
    """A run as start_run stored it: RUNNING here, or QUEUED (announced on the work
    queue, or waiting for its conversation); or, for a repeated request_id, the
    first run."""

    run: records.Run
    repeated: bool = False


# Closes a call whose run ended before it returned: a history with a call and no
# output is refused by model APIs, and would break the conversation's next run.
_UNANSWERED = "The run ended before this tool call returned."


class LeasedRows:
    """Runs and workflow runs are held alike: by the replica that owns them, under a
    lease it renews; a lease that runs out lets another replica take the row over."""

    # The table's ORM class (id, owner, state, lease_expire_time), and the store's.
    _row: Any
    engine: AsyncEngine

    def _held(self, owner: str, ids: Sequence[str]) -> tuple[Any, ...]:
        row = self._row
        return (row.id.in_(ids), row.owner == owner, row.state == records.RUNNING)

    async def renew_leases(self, owner: str, run_ids: Sequence[str], lease: timedelta) -> set[str]:
        """Extends the leases of the rows `owner` holds, in one UPDATE; returns those it
        still holds (a live one missing from them was taken over)."""
        if not run_ids:
            return set()
        async with self.engine.begin() as conn:
            rows = await conn.execute(
                update(self._row)
                .where(*self._held(owner, run_ids))
                .values(lease_expire_time=utc_now() + lease)
                .returning(self._row.id)
            )
            return {row.id for row in rows}

    async def expire_leases(self, owner: str, run_ids: Sequence[str]) -> None:
        """Gives rows up at once (a replica stopping): another replica's sweep takes
        them over without waiting for the lease to run out."""
        if not run_ids:
            return
        async with self.engine.begin() as conn:
            await conn.execute(
                update(self._row)
                .where(*self._held(owner, run_ids))
                .values(lease_expire_time=utc_now() - timedelta(seconds=1))
            )

    async def expired_leases(self, now: datetime, limit: int = 100) -> list[str]:
        """Running rows whose lease ran out (or that never had one)."""
        row = self._row
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(row.id)
                .where(
                    row.state == records.RUNNING,
                    or_(row.lease_expire_time.is_(None), row.lease_expire_time < now),
                )
                .limit(limit)
            )
            return [found.id for found in rows]


class RunnerStore(LeasedRows):
    _row = RunRow

    def __init__(self, engine: AsyncEngine, queued_event: Callable[[str, str], Any]):
        self.engine = engine
        # The RunQueued event for (run id, user id), staged when a run is queued.
        self._queued_event = queued_event

    # ---- starting runs -------------------------------------------------------

    async def start_run(self, run: records.Run, new_conversation: bool) -> Started:
        """Inserts the run; it gets its conversation if no other run holds it.

        A run that gets the conversation keeps the state it came with: RUNNING,
        owned by the caller, or QUEUED and announced on the work queue in the same
        transaction. Otherwise it waits QUEUED behind the conversation's active run
        when its busy policy says so (`run.interrupts` names that run for INTERRUPT
        and ROLLBACK), or ConversationBusy is raised.
        """
        try:
            async with self.engine.begin() as conn:
                if new_conversation:
                    await conn.execute(
                        _INSERT_CONVERSATION,
                        {
                            "id": run.conversation_id,
                            "user_id": run.user_id,
                            "agent_id": run.agent_id,
                            "active_run": run.id,
                            "create_time": run.create_time,
                            "update_time": run.create_time,
                        },
                    )
                else:
                    holder = await self._lock_conversation(conn, run.user_id, run.conversation_id)
                    if holder is None:
                        await conn.execute(
                            update(ConversationRow)
                            .where(ConversationRow.id == run.conversation_id)
                            .values(active_run=run.id)
                        )
                    elif run.busy_policy in records.WAITING:
                        run.state, run.waiting, run.replayable = records.QUEUED, True, False
                        run.owner = run.lease_expire_time = None
                        if run.busy_policy in records.INTERRUPTING:
                            run.interrupts = holder
                    else:
                        raise ConversationBusy(
                            f"conversations/{run.conversation_id} has a run in progress "
                            f"(runs/{holder}); wait for it, or pass a busy_policy",
                            run=f"runs/{holder}",
                        )
                await conn.execute(_INSERT_RUN, _new_run_values(run))
                if run.state == records.QUEUED and not run.waiting:
                    await stage(conn, OUTBOX, self._queued_event(run.id, run.user_id))
        except IntegrityError:
            if run.request_id and (
                earlier := await self.run_by_request(run.user_id, run.request_id)
            ):
                return Started(earlier, repeated=True)
            raise
        return Started(run)

    async def _lock_conversation(
        self, conn: AsyncConnection, user_id: str, conversation_id: str
    ) -> str | None:
        """Takes the conversation's row (the first write: it orders racing starts and
        ends) and returns its active run; NotFound when it is not the user's."""
        locked = await conn.execute(
            update(ConversationRow)
            .where(ConversationRow.id == conversation_id, ConversationRow.user_id == user_id)
            .values(update_time=utc_now())
        )
        if locked.rowcount == 0:
            raise NotFound(f"conversations/{conversation_id}")
        return (
            await conn.execute(
                select(ConversationRow.active_run).where(ConversationRow.id == conversation_id)
            )
        ).scalar_one()

    async def claim_queued(self, run_id: str, owner: str, lease: timedelta) -> records.Run | None:
        """QUEUED -> RUNNING, owned by `owner`, if the run still waits and holds its
        conversation: exactly one replica wins a run; None for the others."""
        return await self._claim(
            run_id,
            owner,
            lease,
            True,
            RunRow.state == records.QUEUED,
            RunRow.waiting == false(),
            _holds_its_conversation(),
        )

    async def claim_paused(self, run_id: str, owner: str, lease: timedelta) -> records.Run | None:
        """AWAITING_APPROVAL -> RUNNING (its last decision came), owned by `owner`."""
        return await self._claim(
            run_id, owner, lease, True, RunRow.state == records.AWAITING_APPROVAL
        )

    async def take_over(self, run_id: str, owner: str, lease: timedelta) -> records.Run | None:
        """A RUNNING run whose lease ran out becomes `owner`'s; None if its owner renewed
        it meanwhile or another replica took it first."""
        now = utc_now()
        return await self._claim(
            run_id,
            owner,
            lease,
            False,
            RunRow.state == records.RUNNING,
            or_(RunRow.lease_expire_time.is_(None), RunRow.lease_expire_time < now),
        )

    async def _claim(
        self, run_id: str, owner: str, lease: timedelta, safe_point: bool, *conditions: Any
    ) -> records.Run | None:
        """Makes the run RUNNING and `owner`'s if `conditions` hold; at a safe point
        (a start, a resume) it becomes replayable from there."""
        now = utc_now()
        async with self.engine.begin() as conn:
            values: dict[str, Any] = {
                "state": records.RUNNING,
                "owner": owner,
                "lease_expire_time": now + lease,
                "attempts": RunRow.attempts + 1,
                "update_time": now,
            }
            if safe_point:  # counted from here: a run may pause and resume any number of times
                values.update(replayable=True, checkpoint_item_seq=_last_item_seq(), attempts=1)
            claimed = await conn.execute(
                update(RunRow).where(RunRow.id == run_id, *conditions).values(**values)
            )
            if claimed.rowcount == 0:
                return None
            row = (await conn.execute(select(RunRow).where(RunRow.id == run_id))).one()
        return _run(row)

    # ---- a run's life: its events, its lease, its safe point ------------------

    async def append_events(self, run_events: Sequence[tuple[str, int, bytes]]) -> None:
        """Events of live runs, (run id, sequence, RunEvent), many runs' in one INSERT."""
        async with self.engine.begin() as conn:
            await _insert_events(conn, run_events)

    async def unreplayable(self, run: records.Run, owner: str, items: Sequence[Any] = ()) -> bool:
        """A tool is about to run: from now on the run must not be replayed, and what
        it added to its conversation so far is kept. False (nothing written) when the
        run is no longer `owner`'s."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                _RUNNING_ON, {"b_id": run.id, "b_owner": owner, "replayable": False}
            )
            if result.rowcount != 1:
                return False
            await self._add_items(conn, run.conversation_id, run.id, items)
        return True

    async def set_reservations(self, run_id: str, owner: str, reservations: list[str]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(RunRow)
                .where(RunRow.id == run_id, RunRow.owner == owner)
                .values(reservations=reservations)
            )

    async def discard_replayed_items(self, run: records.Run) -> None:
        """What a lost run added to its conversation after its safe point: a replay
        adds it again."""
        async with self.engine.begin() as conn:
            await conn.execute(
                delete(ConversationItemRow).where(
                    ConversationItemRow.conversation_id == run.conversation_id,
                    ConversationItemRow.run_id == run.id,
                    ConversationItemRow.seq > run.checkpoint_item_seq,
                )
            )

    # ---- pausing and ending runs ------------------------------------------------

    async def save_run(
        self,
        run: records.Run,
        events: Sequence[tuple[int, bytes]] = (),
        outbox: Sequence[Any] = (),
        release_conversation: bool = False,
        *,
        items: Sequence[Any] = (),
        owner: str | None = None,
        expect_state: int | None = None,
    ) -> bool:
        """Writes the run's state, its new events, the items it added to its
        conversation and outbox events in one transaction; a run that ended lets go
        of its conversation, to the next run waiting for it.

        With `owner`, only while the run is still that replica's; with
        `expect_state`, only while it is in that state. False (nothing written)
        when it is not.
        """
        try:
            async with self.engine.begin() as conn:
                await self._update_run(conn, run, owner, expect_state)
                await _insert_events(conn, [(run.id, s, p) for s, p in events])
                await self._add_items(conn, run.conversation_id, run.id, items)
                await stage(conn, OUTBOX, *outbox)
                if release_conversation:
                    await self._release(conn, run)
        except _Unchanged:
            return False
        return True

    async def pause_run(
        self,
        run: records.Run,
        approvals: list[records.Approval],
        events: Sequence[tuple[int, bytes]],
        outbox: Sequence[Any],
        *,
        items: Sequence[Any] = (),
        owner: str | None = None,
    ) -> bool:
        try:
            async with self.engine.begin() as conn:
                await self._update_run(conn, run, owner, None)
                await conn.execute(insert(ApprovalRow), [_approval_values(a) for a in approvals])
                await _insert_events(conn, [(run.id, s, p) for s, p in events])
                await self._add_items(conn, run.conversation_id, run.id, items)
                await stage(conn, OUTBOX, *outbox)
        except _Unchanged:
            return False
        return True

    async def _update_run(
        self, conn: AsyncConnection, run: records.Run, owner: str | None, state: int | None
    ) -> None:
        updated = await conn.execute(
            _UPDATE_RUN[owner is not None, state is not None],
            {**_run_values(run), "b_id": run.id, "b_owner": owner, "b_state": state},
        )
        if updated.rowcount == 0:
            raise _Unchanged

    async def _release(self, conn: AsyncConnection, run: records.Run) -> None:
        released = await conn.execute(
            _RELEASE_CONVERSATION,
            {
                "b_id": run.conversation_id,
                "b_run": run.id,
                "active_run": None,
                "update_time": utc_now(),
            },
        )
        if released.rowcount == 0:
            return
        if run.state != records.SUCCEEDED:
            await self._answer_open_calls(conn, run)
        await self._hand_over(conn, run.conversation_id)

    async def _answer_open_calls(self, conn: AsyncConnection, run: records.Run) -> None:
        rows = await conn.execute(
            select(ConversationItemRow.item).where(
                ConversationItemRow.conversation_id == run.conversation_id,
                ConversationItemRow.run_id == run.id,
            )
        )
        calls: list[str] = []
        answered: set[str] = set()
        for row in rows:
            item = json.loads(row.item)
            if item.get("type") == "function_call":
                calls.append(str(item.get("call_id")))
            elif item.get("type") == "function_call_output":
                answered.add(str(item.get("call_id")))
        open_calls = [call for call in calls if call not in answered]
        if open_calls:
            await self._add_items(
                conn,
                run.conversation_id,
                run.id,
                [
                    {"type": "function_call_output", "call_id": call, "output": _UNANSWERED}
                    for call in open_calls
                ],
            )

    async def _hand_over(self, conn: AsyncConnection, conversation_id: str) -> str | None:
        """Gives a free conversation to the first run waiting for it (runs that
        interrupt first, then in the order they came) and queues that run."""
        waiter = (await conn.execute(_FIRST_WAITING, {"b_conversation": conversation_id})).first()
        if waiter is None:
            return None
        if waiter.busy_policy == records.ROLLBACK and waiter.interrupts:
            await conn.execute(
                delete(ConversationItemRow).where(
                    ConversationItemRow.conversation_id == conversation_id,
                    ConversationItemRow.run_id == waiter.interrupts,
                )
            )
        now = utc_now()
        await conn.execute(
            update(ConversationRow)
            .where(ConversationRow.id == conversation_id)
            .values(active_run=waiter.id, update_time=now)
        )
        await conn.execute(
            update(RunRow).where(RunRow.id == waiter.id).values(waiting=False, update_time=now)
        )
        await stage(conn, OUTBOX, self._queued_event(waiter.id, waiter.user_id))
        return str(waiter.id)

    # ---- what a lost message or a lost replica leaves behind --------------------

    async def requeue_stalled(self, before: datetime, limit: int = 100) -> int:
        """Announces again queued runs no replica claimed since `before` (their
        message was lost: claims are conditional, so a second one is harmless)."""
        async with self.engine.begin() as conn:
            stalled = await conn.execute(
                update(RunRow)
                .where(
                    RunRow.id.in_(
                        select(RunRow.id)
                        .where(
                            RunRow.state == records.QUEUED,
                            RunRow.waiting == false(),
                            RunRow.update_time < before,
                        )
                        .limit(limit)
                        .scalar_subquery()
                    )
                )
                .values(update_time=utc_now())
                .returning(RunRow.id, RunRow.user_id)
            )
            rows = stalled.all()
            for row in rows:
                await stage(conn, OUTBOX, self._queued_event(row.id, row.user_id))
        return len(rows)

    async def hand_over_free_conversations(self, limit: int = 100) -> int:
        """Runs waiting for a conversation no run holds get it."""
        async with self.engine.connect() as conn:
            free = (
                await conn.execute(
                    select(RunRow.conversation_id)
                    .where(
                        RunRow.state == records.QUEUED,
                        RunRow.waiting == true(),
                        select(ConversationRow.id)
                        .where(
                            ConversationRow.id == RunRow.conversation_id,
                            ConversationRow.active_run.is_(None),
                        )
                        .exists(),
                    )
                    .distinct()
                    .limit(limit)
                )
            ).all()
        handed = 0
        for (conversation_id,) in free:
            async with self.engine.begin() as conn:
                locked = await conn.execute(
                    update(ConversationRow)
                    .where(
                        ConversationRow.id == conversation_id, ConversationRow.active_run.is_(None)
                    )
                    .values(update_time=utc_now())
                )
                if locked.rowcount and await self._hand_over(conn, conversation_id):
                    handed += 1
        return handed

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

    async def run_by_id(self, run_id: str) -> records.Run | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(RunRow).where(RunRow.id == run_id))).first()
        return None if row is None else _run(row)

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

    async def events_after(
        self, run_id: str, after: int, through: int | None = None
    ) -> list[bytes]:
        query = select(RunEventRow.payload).where(
            RunEventRow.run_id == run_id, RunEventRow.sequence > after
        )
        if through is not None:
            query = query.where(RunEventRow.sequence <= through)
        async with self.engine.connect() as conn:
            rows = await conn.execute(query.order_by(RunEventRow.sequence))
            return [row.payload for row in rows]

    async def last_sequence(self, run_id: str) -> int:
        async with self.engine.connect() as conn:
            return (
                await conn.execute(
                    select(func.coalesce(func.max(RunEventRow.sequence), 0)).where(
                        RunEventRow.run_id == run_id
                    )
                )
            ).scalar_one()

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
            row.compact_time,
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
        async with self.engine.connect() as conn:
            if limit is None:
                rows = await conn.execute(_SESSION_ITEMS, {"b_conversation": conversation_id})
                return [json.loads(row.item) for row in rows]
            query = select(ConversationItemRow.item).where(
                ConversationItemRow.conversation_id == conversation_id
            )
            rows = await conn.execute(query.order_by(ConversationItemRow.seq.desc()).limit(limit))
            return [json.loads(row.item) for row in reversed(rows.all())]

    async def _add_items(
        self, conn: AsyncConnection, conversation_id: str, run_id: str, items: Sequence[Any]
    ) -> None:
        if not items:
            return
        now = utc_now()
        await conn.execute(
            _INSERT_ITEMS,
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

    async def session_items_with_seq(self, conversation_id: str) -> list[tuple[int, str, dict]]:
        """The whole history as (seq, run id, item), oldest first."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(
                    ConversationItemRow.seq, ConversationItemRow.run_id, ConversationItemRow.item
                )
                .where(ConversationItemRow.conversation_id == conversation_id)
                .order_by(ConversationItemRow.seq)
            )
            return [(row.seq, row.run_id, json.loads(row.item)) for row in rows]

    async def compact(
        self, conversation_id: str, through_seq: int, summary: dict, summary_run: str
    ) -> None:
        """Replaces the items up to `through_seq` with one summary item, in their place.

        The summary is tagged with the run whose turns it ends with, not the run that
        asked for it: rolling that run back (BUSY_POLICY_ROLLBACK) or replaying it
        must not take the summarised history with it.
        """
        now = utc_now()
        async with self.engine.begin() as conn:
            first = (
                await conn.execute(
                    delete(ConversationItemRow)
                    .where(
                        ConversationItemRow.conversation_id == conversation_id,
                        ConversationItemRow.seq <= through_seq,
                    )
                    .returning(ConversationItemRow.seq)
                )
            ).all()
            if not first:
                return
            await conn.execute(
                insert(ConversationItemRow).values(
                    seq=min(row.seq for row in first),
                    conversation_id=conversation_id,
                    run_id=summary_run,
                    item=json.dumps(summary, separators=(",", ":")),
                    create_time=now,
                )
            )
            await conn.execute(
                update(ConversationRow)
                .where(ConversationRow.id == conversation_id)
                .values(compact_time=now, update_time=now)
            )

    # ---- retention ----------------------------------------------------------------

    async def delete_idle_conversations(self, before: datetime, limit: int) -> int:
        """Deletes up to `limit` conversations unused since `before` (with their items)
        that no run holds."""
        async with self.engine.begin() as conn:
            idle = [
                row.id
                for row in await conn.execute(
                    select(ConversationRow.id)
                    .where(
                        ConversationRow.update_time < before, ConversationRow.active_run.is_(None)
                    )
                    .limit(limit)
                )
            ]
            if not idle:
                return 0
            # The conditions again: a run may have taken one since it was read.
            deleted = (
                await conn.execute(
                    delete(ConversationRow)
                    .where(
                        ConversationRow.id.in_(idle),
                        ConversationRow.update_time < before,
                        ConversationRow.active_run.is_(None),
                    )
                    .returning(ConversationRow.id)
                )
            ).all()
            gone = [row.id for row in deleted]
            if gone:
                await conn.execute(
                    delete(ConversationItemRow).where(ConversationItemRow.conversation_id.in_(gone))
                )
        return len(gone)

    async def forget_ended_runs(self, before: datetime, limit: int) -> int:
        """Drops the event logs and saved SDK state of up to `limit` runs that ended
        before `before`; the runs themselves (what they cost, how they ended) stay."""
        async with self.engine.begin() as conn:
            ended = [
                row.id
                for row in await conn.execute(
                    select(RunRow.id)
                    .where(
                        RunRow.end_time < before,
                        or_(
                            RunRow.paused_state.is_not(None),
                            select(RunEventRow.run_id)
                            .where(RunEventRow.run_id == RunRow.id)
                            .exists(),
                        ),
                    )
                    .limit(limit)
                )
            ]
            if ended:
                await conn.execute(delete(RunEventRow).where(RunEventRow.run_id.in_(ended)))
                await conn.execute(
                    update(RunRow).where(RunRow.id.in_(ended)).values(paused_state=None)
                )
        return len(ended)


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
