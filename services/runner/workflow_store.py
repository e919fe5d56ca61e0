"""Workflow runs: their tables and queries.

A workflow run is one row: its pinned definition, where it is (the step it runs
next, how often each step ran), and every step run so far as JSON. Each change
is one conditional UPDATE, written together with the events it emitted, so a
step's result is stored before the next step starts, and a replica that lost
the run (its lease ran out, another took it over) writes nothing more of it.

The step runs' agent runs are ordinary runs (store.py), marked with the
workflow run they belong to. Speaks in plain records, never protos.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
    delete,
    false,
    insert,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import Mapped, mapped_column

from agentmesh.db import Page, UtcDateTime, fetch_page
from agentmesh.errors import NotFound
from agentmesh.ids import utc_now
from agentmesh.outbox import stage
from services.runner import records
from services.runner.store import OUTBOX, Base, LeasedRows, RunnerStore, RunRow


class WorkflowRunRow(Base):
    __tablename__ = "workflow_runs"
    __table_args__ = (
        Index(
            "one_workflow_run_per_request",
            "user_id",
            "request_id",
            unique=True,
            sqlite_where=text("request_id != ''"),
            postgresql_where=text("request_id != ''"),
        ),
        Index("workflow_runs_by_lease", "state", "lease_expire_time"),
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[str] = mapped_column(String(64), index=True)
    workflow_id: Mapped[str] = mapped_column(String(64))
    workflow_etag: Mapped[str] = mapped_column(String(64))
    # The Workflow message as JSON, as it was when the run started.
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[int] = mapped_column(Integer)
    input: Mapped[str] = mapped_column(Text)
    vars: Mapped[dict[str, Any]] = mapped_column(JSON)
    request_id: Mapped[str] = mapped_column(String(128))
    max_credits: Mapped[int] = mapped_column(BigInteger)
    trace_id: Mapped[str] = mapped_column(String(64))
    next_step: Mapped[str] = mapped_column(String(64))
    visits: Mapped[dict[str, int]] = mapped_column(JSON)
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    final_output: Mapped[str] = mapped_column(Text)
    structured_output: Mapped[Any] = mapped_column(JSON, nullable=True)
    usage: Mapped[dict[str, int]] = mapped_column(JSON)
    credits: Mapped[int] = mapped_column(BigInteger)
    error: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime)
    end_time: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expire_time: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer)
    last_sequence: Mapped[int] = mapped_column(BigInteger)
    cancel_requested: Mapped[bool] = mapped_column(Boolean)


class WorkflowRunEventRow(Base):
    __tablename__ = "workflow_run_events"
    workflow_run_id: Mapped[str] = mapped_column(
        ForeignKey("workflow_runs.id", ondelete="CASCADE"), primary_key=True
    )
    sequence: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    # A WorkflowEvent, serialized.
    payload: Mapped[bytes] = mapped_column(LargeBinary)


@dataclass
class WorkflowRun:
    id: str
    user_id: str
    workflow_id: str
    workflow_etag: str
    definition: dict[str, Any]
    state: int
    input: str
    create_time: datetime
    update_time: datetime
    vars: dict[str, Any] = field(default_factory=dict)
    request_id: str = ""
    max_credits: int = 0
    trace_id: str = ""
    # The step that runs next, or runs now; "end" once the last one finished.
    next_step: str = ""
    # How often each step (by id) has begun.
    visits: dict[str, int] = field(default_factory=dict)
    # Every StepRun so far, in the contract's JSON (field names as in the proto).
    steps: list[dict[str, Any]] = field(default_factory=list)
    final_output: str = ""
    structured_output: Any = None
    usage: dict[str, int] = field(default_factory=dict)
    credits: int = 0
    error: bytes | None = None
    end_time: datetime | None = None
    owner: str | None = None
    lease_expire_time: datetime | None = None
    # Runners that started it since it last started or resumed: bounds takeovers.
    attempts: int = 0
    # The sequence of its last event.
    last_sequence: int = 0
    cancel_requested: bool = False


_COLUMNS = [column.key for column in WorkflowRunRow.__table__.columns if column.key != "seq"]
# What changes as a workflow run goes (all but what it started with).
_CHANGING = (
    "state",
    "next_step",
    "visits",
    "steps",
    "final_output",
    "structured_output",
    "usage",
    "credits",
    "error",
    "update_time",
    "end_time",
    "owner",
    "lease_expire_time",
    "last_sequence",
)


def _record(row: Any) -> WorkflowRun:
    return WorkflowRun(**{name: getattr(row, name) for name in _COLUMNS})


def _values(run: WorkflowRun, names: Sequence[str]) -> dict[str, Any]:
    return {name: getattr(run, name) for name in names}


async def _insert_events(
    conn: AsyncConnection, run_id: str, events: Sequence[tuple[int, bytes]]
) -> None:
    if not events:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(WorkflowRunEventRow).on_conflict_do_nothing(
        index_elements=["workflow_run_id", "sequence"]
    )
    await conn.execute(
        statement, [{"workflow_run_id": run_id, "sequence": s, "payload": p} for s, p in events]
    )


@dataclass
class Started:
    run: WorkflowRun
    repeated: bool = False  # a retried request_id: the first run


class WorkflowStore(LeasedRows):
    """Shares the runner's database and outbox (RunnerStore)."""

    _row = WorkflowRunRow

    def __init__(self, runs: RunnerStore, queued_event: Callable[[str, str], Any]):
        self.engine = runs.engine
        # The RunQueued event for (workflow run id, user id).
        self._queued_event = queued_event

    async def start(self, run: WorkflowRun, events: Sequence[tuple[int, bytes]]) -> Started:
        """Inserts the run with its first events; a QUEUED one is announced on the
        work queue in the same transaction."""
        try:
            async with self.engine.begin() as conn:
                await conn.execute(insert(WorkflowRunRow).values(**_values(run, _COLUMNS)))
                await _insert_events(conn, run.id, events)
                if run.state == records.QUEUED:
                    await stage(conn, OUTBOX, self._queued_event(run.id, run.user_id))
        except IntegrityError:
            if run.request_id and (earlier := await self.by_request(run.user_id, run.request_id)):
                return Started(earlier, repeated=True)
            raise
        return Started(run)

    async def save(
        self,
        run: WorkflowRun,
        events: Sequence[tuple[int, bytes]] = (),
        outbox: Sequence[Any] = (),
        *,
        owner: str | None = None,
        expect_state: int | None = None,
    ) -> bool:
        """Writes what changed, the new events and outbox events in one transaction;
        with `owner`, only while the run is that replica's, with `expect_state` only
        while it is in that state. False (nothing written) otherwise."""
        conditions = [WorkflowRunRow.id == run.id]
        if owner is not None:
            conditions += [WorkflowRunRow.owner == owner, WorkflowRunRow.state == records.RUNNING]
        if expect_state is not None:
            conditions.append(WorkflowRunRow.state == expect_state)
        async with self.engine.begin() as conn:
            updated = await conn.execute(
                update(WorkflowRunRow).where(*conditions).values(**_values(run, _CHANGING))
            )
            if updated.rowcount == 0:
                return False
            await _insert_events(conn, run.id, events)
            await stage(conn, OUTBOX, *outbox)
        return True

    async def request_cancel(self, run_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(WorkflowRunRow)
                .where(WorkflowRunRow.id == run_id)
                .values(cancel_requested=true())
            )

    async def cancel_requested(self, run_id: str) -> bool:
        async with self.engine.connect() as conn:
            found = await conn.execute(
                select(WorkflowRunRow.cancel_requested).where(WorkflowRunRow.id == run_id)
            )
            return bool(found.scalar_one_or_none())

    # ---- who runs it: claims, leases, takeovers ------------------------------------

    async def claim(
        self, run_id: str, owner: str, lease: timedelta, *conditions: Any, fresh: bool = True
    ) -> WorkflowRun | None:
        """Makes the run RUNNING and `owner`'s if `conditions` hold; None otherwise.
        `fresh` (a start or a resume) counts its attempts from here."""
        now = utc_now()
        values: dict[str, Any] = {
            "state": records.RUNNING,
            "owner": owner,
            "lease_expire_time": now + lease,
            "attempts": 1 if fresh else WorkflowRunRow.attempts + 1,
            "update_time": now,
        }
        async with self.engine.begin() as conn:
            claimed = await conn.execute(
                update(WorkflowRunRow)
                .where(WorkflowRunRow.id == run_id, *conditions)
                .values(**values)
            )
            if claimed.rowcount == 0:
                return None
            row = (
                await conn.execute(select(WorkflowRunRow).where(WorkflowRunRow.id == run_id))
            ).one()
        return _record(row)

    async def claim_queued(self, run_id: str, owner: str, lease: timedelta) -> WorkflowRun | None:
        return await self.claim(run_id, owner, lease, WorkflowRunRow.state == records.QUEUED)

    async def claim_paused(self, run_id: str, owner: str, lease: timedelta) -> WorkflowRun | None:
        return await self.claim(
            run_id, owner, lease, WorkflowRunRow.state == records.AWAITING_APPROVAL
        )

    async def take_over(self, run_id: str, owner: str, lease: timedelta) -> WorkflowRun | None:
        return await self.claim(
            run_id,
            owner,
            lease,
            WorkflowRunRow.state == records.RUNNING,
            or_(
                WorkflowRunRow.lease_expire_time.is_(None),
                WorkflowRunRow.lease_expire_time < utc_now(),
            ),
            fresh=False,
        )

    async def in_state(
        self, state: int, updated_before: datetime | None = None, limit: int = 100
    ) -> list[WorkflowRun]:
        """Runs in `state` (oldest change first), for the sweep."""
        query = select(WorkflowRunRow).where(
            WorkflowRunRow.state == state, WorkflowRunRow.cancel_requested == false()
        )
        if updated_before is not None:
            query = query.where(WorkflowRunRow.update_time < updated_before)
        async with self.engine.connect() as conn:
            rows = await conn.execute(query.order_by(WorkflowRunRow.update_time).limit(limit))
            return [_record(row) for row in rows]

    async def resumable(self, limit: int = 100) -> list[str]:
        """Paused workflow runs none of whose step runs still waits for a decision: an
        approval was decided (or expired) somewhere, and no replica went on with it."""
        waiting = (
            select(RunRow.id)
            .where(
                RunRow.workflow_run_id == WorkflowRunRow.id,
                RunRow.state == records.AWAITING_APPROVAL,
            )
            .exists()
        )
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(WorkflowRunRow.id)
                .where(WorkflowRunRow.state == records.AWAITING_APPROVAL, ~waiting)
                .limit(limit)
            )
            return [row.id for row in rows]

    # ---- reading -----------------------------------------------------------------------

    async def forget_ended_runs(self, before: datetime, limit: int) -> int:
        """Drops the event logs of up to `limit` workflow runs that ended before
        `before`; the runs themselves (their steps, what they cost) stay."""
        async with self.engine.begin() as conn:
            ended = [
                row.id
                for row in await conn.execute(
                    select(WorkflowRunRow.id)
                    .where(
                        WorkflowRunRow.end_time < before,
                        select(WorkflowRunEventRow.workflow_run_id)
                        .where(WorkflowRunEventRow.workflow_run_id == WorkflowRunRow.id)
                        .exists(),
                    )
                    .limit(limit)
                )
            ]
            if ended:
                await conn.execute(
                    delete(WorkflowRunEventRow).where(
                        WorkflowRunEventRow.workflow_run_id.in_(ended)
                    )
                )
        return len(ended)

    async def get(self, user_id: str, run_id: str) -> WorkflowRun:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(WorkflowRunRow).where(
                        WorkflowRunRow.id == run_id, WorkflowRunRow.user_id == user_id
                    )
                )
            ).first()
        if row is None:
            raise NotFound(f"workflowRuns/{run_id}")
        return _record(row)

    async def by_id(self, run_id: str) -> WorkflowRun | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(WorkflowRunRow).where(WorkflowRunRow.id == run_id))
            ).first()
        return None if row is None else _record(row)

    async def by_request(self, user_id: str, request_id: str) -> WorkflowRun | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(WorkflowRunRow).where(
                        WorkflowRunRow.user_id == user_id,
                        WorkflowRunRow.request_id == request_id,
                    )
                )
            ).first()
        return None if row is None else _record(row)

    async def list_runs(self, user_id: str, workflow_id: str, after_seq: int, limit: int) -> Page:
        query = select(WorkflowRunRow).where(WorkflowRunRow.user_id == user_id)
        if workflow_id:
            query = query.where(WorkflowRunRow.workflow_id == workflow_id)
        async with self.engine.connect() as conn:
            rows, last_seq = await fetch_page(conn, query, WorkflowRunRow.seq, after_seq, limit)
        return Page([_record(row) for row in rows], last_seq)

    async def events_after(self, run_id: str, after: int) -> list[bytes]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(WorkflowRunEventRow.payload)
                .where(
                    WorkflowRunEventRow.workflow_run_id == run_id,
                    WorkflowRunEventRow.sequence > after,
                )
                .order_by(WorkflowRunEventRow.sequence)
            )
            return [row.payload for row in rows]
