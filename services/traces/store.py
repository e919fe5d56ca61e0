"""Traces and their spans, as the runners' span batches deliver them.

A span's id is its key: a batch delivered twice (JetStream redelivers what was
not acknowledged) inserts nothing the second time. A trace row is made by the
first of its spans or its trace record to arrive, whichever comes first (the
runner publishes them asynchronously, so either may), and its summary (span
count, times, status, first error) is computed again from its spans in the same
transaction as they are written: the summary is always that of the rows stored.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import (
    JSON,
    BigInteger,
    Index,
    Integer,
    String,
    Text,
    and_,
    case,
    delete,
    exists,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from agentmesh.db import Page, UtcDateTime, fetch_page
from agentmesh.errors import NotFound
from agentmesh.ids import utc_now

STATUS_OK, STATUS_ERROR = 1, 2
# Keys stay far below SQLite's and Postgres's limits on bound parameters.
_CHUNK = 500


class Base(DeclarativeBase):
    pass


class TraceRow(Base):
    __tablename__ = "traces"
    __table_args__ = (
        Index("ix_traces_user_seq", "user_id", "seq"),
        Index("ix_traces_start_time", "start_time"),
    )
    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    id: Mapped[str] = mapped_column(String(128), unique=True)
    user_id: Mapped[str] = mapped_column(String(64))
    workflow_name: Mapped[str] = mapped_column(String(256), default="")
    agent_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    run_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    workflow_run_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    # The trace's metadata but what is filed above, and the conversation (group_id).
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    start_time: Mapped[datetime] = mapped_column(UtcDateTime)
    end_time: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    span_count: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[int] = mapped_column(Integer, default=STATUS_OK)
    error: Mapped[str] = mapped_column(Text, default="")


class SpanRow(Base):
    __tablename__ = "spans"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    trace_id: Mapped[str] = mapped_column(String(128), index=True)
    user_id: Mapped[str] = mapped_column(String(64))
    parent_id: Mapped[str] = mapped_column(String(64), default="")
    type: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(256))
    start_time: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    end_time: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    error: Mapped[str] = mapped_column(Text, default="")


@dataclass
class Span:
    id: str
    trace_id: str
    parent_id: str
    type: str
    name: str
    start_time: datetime | None
    end_time: datetime | None
    data: dict[str, Any]
    error: str = ""


@dataclass
class TraceInfo:
    """What a trace record says of the trace (its spans say the rest)."""

    id: str
    workflow_name: str = ""
    agent_id: str = ""
    run_id: str = ""
    workflow_run_id: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Delivery:
    """One span batch: one user's trace records and spans."""

    user_id: str
    traces: list[TraceInfo] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)


@dataclass
class Trace:
    id: str
    user_id: str
    workflow_name: str
    agent_id: str
    run_id: str
    workflow_run_id: str
    attributes: dict[str, Any]
    start_time: datetime
    end_time: datetime | None
    span_count: int
    status: int
    error: str
    spans: list[Span] = field(default_factory=list)


@dataclass
class Filters:
    agent_id: str = ""
    run_id: str = ""
    workflow_run_id: str = ""
    status: int = 0
    start_after: datetime | None = None
    start_before: datetime | None = None


def _trace(row: Any) -> Trace:
    return Trace(
        row.id,
        row.user_id,
        row.workflow_name,
        row.agent_id,
        row.run_id,
        row.workflow_run_id,
        row.attributes or {},
        row.start_time,
        row.end_time,
        row.span_count,
        row.status,
        row.error,
    )


def _span(row: Any) -> Span:
    return Span(
        row.id,
        row.trace_id,
        row.parent_id,
        row.type,
        row.name,
        row.start_time,
        row.end_time,
        row.data or {},
        row.error,
    )


_RECORD_COLUMNS = ("workflow_name", "agent_id", "run_id", "workflow_run_id", "attributes")
_TRACE_ROWS = """ROWS FROM (json_to_recordset(CAST(:rows AS json)) AS (
    id varchar, user_id varchar, workflow_name varchar, agent_id varchar, run_id varchar,
    workflow_run_id varchar, attributes json, start_time timestamptz
)) WITH ORDINALITY AS row(id, user_id, workflow_name, agent_id, run_id, workflow_run_id,
    attributes, start_time, position)"""
_TRACE_INSERT = f"""INSERT INTO traces (id, user_id, workflow_name, agent_id, run_id,
    workflow_run_id, attributes, start_time, span_count, status, error)
SELECT id, user_id, workflow_name, agent_id, run_id, workflow_run_id, attributes, start_time,
    0, {STATUS_OK}, '' FROM {_TRACE_ROWS} ORDER BY position"""
_PG_UPSERT_TRACES = text(
    _TRACE_INSERT
    + """ ON CONFLICT (id) DO UPDATE SET workflow_name = excluded.workflow_name,
    agent_id = excluded.agent_id, run_id = excluded.run_id,
    workflow_run_id = excluded.workflow_run_id, attributes = excluded.attributes
    WHERE traces.user_id = excluded.user_id"""
)
_PG_INSERT_TRACES = text(_TRACE_INSERT + " ON CONFLICT (id) DO NOTHING")
_PG_INSERT_SPANS = text(
    """INSERT INTO spans (id, trace_id, user_id, parent_id, type, name, start_time, end_time,
    data, error)
SELECT * FROM json_to_recordset(CAST(:rows AS json)) AS row(
    id varchar, trace_id varchar, user_id varchar, parent_id varchar, type varchar,
    name varchar, start_time timestamptz, end_time timestamptz, data json, error text
) ON CONFLICT (id) DO NOTHING"""
)
_PG_COPY_SPANS = """COPY spans (id, trace_id, user_id, parent_id, type, name, start_time,
    end_time, data, error) FROM STDIN"""
# The summary of each trace touched, from its spans, in one pass over them.
_PG_SUMMARIZE = text(
    f"""UPDATE traces SET span_count = found.spans,
    start_time = coalesce(found.first_start, traces.start_time),
    end_time = found.last_end,
    status = CASE WHEN found.failed > 0 THEN {STATUS_ERROR} ELSE {STATUS_OK} END,
    error = coalesce(found.first_error, '')
FROM (
    SELECT trace_id, user_id, count(*) AS spans, min(start_time) AS first_start,
        max(end_time) AS last_end, count(*) FILTER (WHERE error <> '') AS failed,
        (array_agg(error ORDER BY start_time) FILTER (WHERE error <> ''))[1] AS first_error
    FROM spans WHERE trace_id = ANY(CAST(:ids AS varchar[])) GROUP BY trace_id, user_id
) AS found
WHERE traces.id = found.trace_id AND traces.user_id = found.user_id"""
)


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _chunks(items: list, size: int = _CHUNK) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class TraceStore:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        upsert = sqlite.insert(TraceRow)
        self._upsert_traces = upsert.on_conflict_do_update(
            index_elements=["id"],
            set_={name: getattr(upsert.excluded, name) for name in _RECORD_COLUMNS},
            # Another tenant's trace is never changed (ids are random: only a forged
            # batch could name one).
            where=TraceRow.user_id == upsert.excluded.user_id,
        )
        self._insert_traces = sqlite.insert(TraceRow).on_conflict_do_nothing(index_elements=["id"])
        self._insert_spans = sqlite.insert(SpanRow).on_conflict_do_nothing(index_elements=["id"])

    async def write(self, deliveries: list[Delivery]) -> None:
        """Writes batches in one transaction; what is already stored is left as it is."""
        now = utc_now()
        traces: dict[str, dict[str, Any]] = {}
        records: dict[str, dict[str, Any]] = {}
        spans: dict[str, dict[str, Any]] = {}
        for delivery in deliveries:
            user = delivery.user_id
            for info in delivery.traces:
                records[info.id] = {
                    "id": info.id,
                    "user_id": user,
                    "workflow_name": info.workflow_name,
                    "agent_id": info.agent_id,
                    "run_id": info.run_id,
                    "workflow_run_id": info.workflow_run_id,
                    "attributes": info.attributes,
                    "start_time": now,
                }
            for span in delivery.spans:
                traces.setdefault(
                    span.trace_id,
                    {
                        "id": span.trace_id,
                        "user_id": user,
                        "workflow_name": "",
                        "agent_id": "",
                        "run_id": "",
                        "workflow_run_id": "",
                        "attributes": {},
                        "start_time": now,
                    },
                )
                spans[span.id] = {
                    "id": span.id,
                    "trace_id": span.trace_id,
                    "user_id": user,
                    "parent_id": span.parent_id,
                    "type": span.type,
                    "name": span.name,
                    "start_time": span.start_time,
                    "end_time": span.end_time,
                    "data": span.data,
                    "error": span.error,
                }
        touched = sorted({*traces, *records})
        if not touched:
            return
        # Traces in the order they came (the order runs started in: a list is newest
        # first by row sequence); spans by key.
        missing = [row for key, row in traces.items() if key not in records]
        span_rows = [spans[key] for key in sorted(spans)]
        async with self.engine.begin() as conn:
            if self._postgres:
                await self._write_postgres(conn, list(records.values()), missing, span_rows)
            else:
                if records:
                    await conn.execute(self._upsert_traces, list(records.values()))
                if missing:
                    await conn.execute(self._insert_traces, missing)
                if span_rows:
                    await conn.execute(self._insert_spans, span_rows)
                for chunk in _chunks(touched):
                    await self._summarize(conn, chunk)
            if self._postgres:
                await conn.execute(_PG_SUMMARIZE, {"ids": touched})

    async def _write_postgres(
        self,
        conn: AsyncConnection,
        records: list[dict[str, Any]],
        missing: list[dict[str, Any]],
        spans: list[dict[str, Any]],
    ) -> None:
        """One statement per kind of row, all rows in one JSON parameter the server
        reads as a record set: a statement of constant text (prepared once), not one of
        thousands of bound values to render and escape."""
        for statement, rows in ((_PG_UPSERT_TRACES, records), (_PG_INSERT_TRACES, missing)):
            if rows:
                await conn.execute(statement, {"rows": json.dumps(rows, default=_iso)})
        if not spans:
            return
        # COPY, the fastest way in, while no span is stored yet (almost always); a
        # batch delivered again fails it on a key and takes the INSERT that skips them.
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection  # psycopg's AsyncConnection
        try:
            # A savepoint in the store's transaction (begun: the traces went first).
            async with driver.transaction():
                async with driver.cursor() as cursor:
                    async with cursor.copy(_PG_COPY_SPANS) as copy:
                        for span in spans:
                            await copy.write_row(
                                (
                                    span["id"],
                                    span["trace_id"],
                                    span["user_id"],
                                    span["parent_id"],
                                    span["type"],
                                    span["name"],
                                    span["start_time"],
                                    span["end_time"],
                                    json.dumps(span["data"]),
                                    span["error"],
                                )
                            )
        except psycopg.errors.UniqueViolation:
            await conn.execute(_PG_INSERT_SPANS, {"rows": json.dumps(spans, default=_iso)})

    async def _summarize(self, conn: AsyncConnection, trace_ids: list[str]) -> None:
        mine = and_(SpanRow.trace_id == TraceRow.id, SpanRow.user_id == TraceRow.user_id)
        failed = and_(mine, SpanRow.error != "")

        def of_spans(column: Any) -> Any:
            return select(column).where(mine).scalar_subquery()

        first_error = (
            select(SpanRow.error).where(failed).order_by(SpanRow.start_time).limit(1)
        ).scalar_subquery()
        await conn.execute(
            update(TraceRow)
            .where(TraceRow.id.in_(trace_ids))
            .values(
                span_count=of_spans(func.count()),
                start_time=func.coalesce(
                    of_spans(func.min(SpanRow.start_time)), TraceRow.start_time
                ),
                end_time=of_spans(func.max(SpanRow.end_time)),
                status=case((exists().where(failed), STATUS_ERROR), else_=STATUS_OK),
                error=func.coalesce(first_error, ""),
            )
            .execution_options(synchronize_session=False)
        )

    async def get(self, user_id: str, trace_id: str) -> Trace:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(TraceRow).where(TraceRow.id == trace_id, TraceRow.user_id == user_id)
                )
            ).first()
            if row is None:
                raise NotFound(f"traces/{trace_id}")
            spans = (
                await conn.execute(
                    select(SpanRow)
                    .where(SpanRow.trace_id == trace_id, SpanRow.user_id == user_id)
                    .order_by(SpanRow.start_time, SpanRow.id)
                )
            ).all()
        trace = _trace(row)
        trace.spans = [_span(span) for span in spans]
        return trace

    async def list(self, user_id: str, filters: Filters, after_seq: int, limit: int) -> Page:
        """The user's traces, newest first."""
        query = select(TraceRow).where(TraceRow.user_id == user_id)
        if filters.agent_id:
            query = query.where(TraceRow.agent_id == filters.agent_id)
        if filters.run_id:
            query = query.where(TraceRow.run_id == filters.run_id)
        if filters.workflow_run_id:
            query = query.where(TraceRow.workflow_run_id == filters.workflow_run_id)
        if filters.status:
            query = query.where(TraceRow.status == filters.status)
        if filters.start_after is not None:
            query = query.where(TraceRow.start_time >= filters.start_after)
        if filters.start_before is not None:
            query = query.where(TraceRow.start_time < filters.start_before)
        async with self.engine.connect() as conn:
            rows, last_seq = await fetch_page(
                conn, query, TraceRow.seq, after_seq, limit, newest_first=True
            )
        return Page([_trace(row) for row in rows], last_seq)

    async def delete_started_before(self, cutoff: datetime, batch: int) -> int:
        """Deletes up to `batch` traces that started before `cutoff`, with their spans;
        how many it deleted."""
        async with self.engine.begin() as conn:
            ids = (
                (
                    await conn.execute(
                        select(TraceRow.id)
                        .where(TraceRow.start_time < cutoff)
                        .order_by(TraceRow.seq)
                        .limit(batch)
                    )
                )
                .scalars()
                .all()
            )
            if not ids:
                return 0
            await conn.execute(delete(SpanRow).where(SpanRow.trace_id.in_(ids)))
            await conn.execute(delete(TraceRow).where(TraceRow.id.in_(ids)))
        return len(ids)
