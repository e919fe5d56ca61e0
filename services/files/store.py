"""Files, vector stores and which file is in which store: the rows, and their queries.

A file's public state is derived, never stored twice: FAILED when its own
extraction failed, PROCESSING while it or any of its store ingestions runs, READY
otherwise; its chunk counts are the sums over its stores.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    String,
    and_,
    case,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from agentmesh.api import timestamp
from agentmesh.db import Page, UtcDateTime, fetch_page
from agentmesh.gen.files.v1 import events_pb2
from agentmesh.ids import utc_now
from agentmesh.outbox import outbox_table, stage

PROCESSING, READY, FAILED = "processing", "ready", "failed"


class Base(DeclarativeBase):
    pass


# Named apart from the runner's: services may share one database.
OUTBOX = outbox_table(Base.metadata, "files_outbox")


class FileRow(Base):
    __tablename__ = "files"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[str] = mapped_column(String(64), index=True)
    filename: Mapped[str] = mapped_column(String(512))
    mime_type: Mapped[str] = mapped_column(String(256))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    # The blob's key too: blobs are content-addressed.
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    # Extraction: processing, ready or failed (with error).
    state: Mapped[str] = mapped_column(String(16))
    error: Mapped[str] = mapped_column(String(1024))
    file_metadata: Mapped[dict[str, str]] = mapped_column("metadata", JSON)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)


class VectorStoreRow(Base):
    __tablename__ = "vector_stores"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[str] = mapped_column(String(64), index=True)
    display_name: Mapped[str] = mapped_column(String(200))
    embedding_provider: Mapped[str] = mapped_column(String(128))
    embedding_model: Mapped[str] = mapped_column(String(256))
    dimensions: Mapped[int] = mapped_column(Integer)
    max_tokens: Mapped[int] = mapped_column(Integer)
    overlap_tokens: Mapped[int] = mapped_column(Integer)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)


class StoreFileRow(Base):
    """A file in a vector store: its ingestion into that store and its progress."""

    __tablename__ = "vector_store_files"
    __table_args__ = (Index("ix_vector_store_files_file", "file_id"),)
    store_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("vector_stores.id", ondelete="CASCADE"), primary_key=True
    )
    file_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("files.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    error: Mapped[str] = mapped_column(String(1024))
    chunk_count: Mapped[int] = mapped_column(Integer)
    chunks_embedded: Mapped[int] = mapped_column(Integer)


class StoreTermRow(Base):
    """In how many of a file's chunks in a store a word occurs: BM25's document
    frequencies, summed over the store's files at query time."""

    __tablename__ = "vector_store_terms"
    __table_args__ = (Index("ix_vector_store_terms_term", "store_id", "term"),)
    store_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("vector_stores.id", ondelete="CASCADE"), primary_key=True
    )
    file_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("files.id", ondelete="CASCADE"), primary_key=True
    )
    term: Mapped[str] = mapped_column(String(64), primary_key=True)
    chunks: Mapped[int] = mapped_column(Integer)


@dataclass
class File:
    id: str
    user_id: str
    filename: str
    mime_type: str
    size_bytes: int
    sha256: str
    state: str
    error: str
    metadata: dict[str, str]
    create_time: datetime
    chunk_count: int = 0
    chunks_embedded: int = 0


@dataclass
class VectorStore:
    id: str
    user_id: str
    display_name: str
    embedding_provider: str
    embedding_model: str
    dimensions: int
    max_tokens: int
    overlap_tokens: int
    create_time: datetime
    file_count: int = 0


@dataclass
class StoreFile:
    store_id: str
    file_id: str
    user_id: str
    state: str
    error: str = ""
    chunk_count: int = 0
    chunks_embedded: int = 0


@dataclass
class Ingestion:
    """What one ingestion message needs: the file, and the store it goes into if any."""

    file: File
    store: VectorStore | None = None
    store_file: StoreFile | None = field(default=None)


class Missing(LookupError):
    """The row is gone (deleted, or another user's)."""


def _file(row: Any, chunk_count: int = 0, chunks_embedded: int = 0, busy: bool = False) -> File:
    state = row.state
    if state == READY and busy:
        state = PROCESSING
    return File(
        row.id,
        row.user_id,
        row.filename,
        row.mime_type,
        row.size_bytes,
        row.sha256,
        state,
        row.error,
        dict(row.metadata or {}),
        row.create_time,
        int(chunk_count or 0),
        int(chunks_embedded or 0),
    )


def _store(row: Any, file_count: int = 0) -> VectorStore:
    return VectorStore(
        row.id,
        row.user_id,
        row.display_name,
        row.embedding_provider,
        row.embedding_model,
        row.dimensions,
        row.max_tokens,
        row.overlap_tokens,
        row.create_time,
        int(file_count or 0),
    )


def _store_file(row: Any) -> StoreFile:
    return StoreFile(
        row.store_id,
        row.file_id,
        row.user_id,
        row.state,
        row.error,
        row.chunk_count,
        row.chunks_embedded,
    )


# Each file with its ingestions summed: chunk counts, and whether any still runs.
_PROGRESS = (
    select(
        StoreFileRow.file_id,
        func.sum(StoreFileRow.chunk_count).label("chunk_count"),
        func.sum(StoreFileRow.chunks_embedded).label("chunks_embedded"),
        func.sum(case((StoreFileRow.state == PROCESSING, 1), else_=0)).label("busy"),
    )
    .group_by(StoreFileRow.file_id)
    .subquery()
)


def _files_query():  # type: ignore[no-untyped-def]
    return select(
        *FileRow.__table__.c,
        _PROGRESS.c.chunk_count,
        _PROGRESS.c.chunks_embedded,
        _PROGRESS.c.busy,
    ).outerjoin(_PROGRESS, _PROGRESS.c.file_id == FileRow.id)


def _file_of(row: Any) -> File:
    return _file(row, row.chunk_count, row.chunks_embedded, bool(row.busy))


_FILE_COUNTS = (
    select(StoreFileRow.store_id, func.count().label("file_count"))
    .group_by(StoreFileRow.store_id)
    .subquery()
)


def _stores_query():  # type: ignore[no-untyped-def]
    return select(*VectorStoreRow.__table__.c, _FILE_COUNTS.c.file_count).outerjoin(
        _FILE_COUNTS, _FILE_COUNTS.c.store_id == VectorStoreRow.id
    )


def _uploaded(file_id: str, user_id: str, store_id: str = "") -> events_pb2.FileUploaded:
    return events_pb2.FileUploaded(
        file=f"files/{file_id}",
        user=f"users/{user_id}",
        time=timestamp(utc_now()),
        vector_store=f"vectorStores/{store_id}" if store_id else "",
    )


class FileStore:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    # ---- files ---------------------------------------------------------------------

    async def create_file(self, file: File) -> File:
        """The file row and its ingestion event, in one transaction."""
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(FileRow).values(
                    id=file.id,
                    user_id=file.user_id,
                    filename=file.filename,
                    mime_type=file.mime_type,
                    size_bytes=file.size_bytes,
                    sha256=file.sha256,
                    state=file.state,
                    error=file.error,
                    file_metadata=file.metadata,
                    create_time=file.create_time,
                )
            )
            await stage(conn, OUTBOX, _uploaded(file.id, file.user_id))
        return file

    async def get_file(self, user_id: str, file_id: str) -> File:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    _files_query().where(FileRow.id == file_id, FileRow.user_id == user_id)
                )
            ).first()
        if row is None:
            raise Missing(f"files/{file_id}")
        return _file_of(row)

    async def list_files(self, user_id: str, after_seq: int, limit: int) -> Page:
        async with self.engine.connect() as conn:
            rows, last_seq = await fetch_page(
                conn,
                _files_query().where(FileRow.user_id == user_id),
                FileRow.seq,
                after_seq,
                limit,
            )
        return Page([_file_of(row) for row in rows], last_seq)

    async def delete_file(self, user_id: str, file_id: str) -> bool:
        """Deletes the file and its store memberships; False if there was none. The
        caller removes its vectors and, when no file still uses it, its blob."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                delete(FileRow).where(FileRow.id == file_id, FileRow.user_id == user_id)
            )
            if result.rowcount:
                await conn.execute(delete(StoreTermRow).where(StoreTermRow.file_id == file_id))
                await conn.execute(delete(StoreFileRow).where(StoreFileRow.file_id == file_id))
        return bool(result.rowcount)

    async def filenames(self, user_id: str, file_ids: set[str]) -> dict[str, str]:
        """The names of those of these files the user has."""
        if not file_ids:
            return {}
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(FileRow.id, FileRow.filename).where(
                    FileRow.user_id == user_id, FileRow.id.in_(file_ids)
                )
            )
            return {row.id: row.filename for row in rows}

    async def blob_in_use(self, sha256: str) -> bool:
        async with self.engine.connect() as conn:
            found = await conn.execute(select(FileRow.id).where(FileRow.sha256 == sha256).limit(1))
            return found.first() is not None

    async def finish_extraction(self, file_id: str, error: str = "") -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(FileRow)
                .where(FileRow.id == file_id, FileRow.state == PROCESSING)
                .values(state=FAILED if error else READY, error=error[:1024])
            )

    # ---- vector stores ---------------------------------------------------------------

    async def create_store(self, store: VectorStore) -> VectorStore:
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(VectorStoreRow).values(
                    id=store.id,
                    user_id=store.user_id,
                    display_name=store.display_name,
                    embedding_provider=store.embedding_provider,
                    embedding_model=store.embedding_model,
                    dimensions=store.dimensions,
                    max_tokens=store.max_tokens,
                    overlap_tokens=store.overlap_tokens,
                    create_time=store.create_time,
                )
            )
        return store

    async def get_store(self, user_id: str, store_id: str) -> VectorStore:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    _stores_query().where(
                        VectorStoreRow.id == store_id, VectorStoreRow.user_id == user_id
                    )
                )
            ).first()
        if row is None:
            raise Missing(f"vectorStores/{store_id}")
        return _store(row, row.file_count)

    async def list_stores(self, user_id: str, after_seq: int, limit: int) -> Page:
        async with self.engine.connect() as conn:
            rows, last_seq = await fetch_page(
                conn,
                _stores_query().where(VectorStoreRow.user_id == user_id),
                VectorStoreRow.seq,
                after_seq,
                limit,
            )
        return Page([_store(row, row.file_count) for row in rows], last_seq)

    async def delete_store(self, user_id: str, store_id: str) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                delete(VectorStoreRow).where(
                    VectorStoreRow.id == store_id, VectorStoreRow.user_id == user_id
                )
            )
            if result.rowcount:
                await conn.execute(delete(StoreTermRow).where(StoreTermRow.store_id == store_id))
                await conn.execute(delete(StoreFileRow).where(StoreFileRow.store_id == store_id))
        return bool(result.rowcount)

    # ---- files in stores ---------------------------------------------------------------

    async def add_to_store(self, user_id: str, store_id: str, file_id: str) -> StoreFile:
        """Queues the file's ingestion into the store, unless it is there or on its way;
        a failed one is tried again."""
        async with self.engine.begin() as conn:
            existing = await self._store_file(conn, store_id, file_id)
            if existing is not None and existing.state != FAILED:
                return existing
            values = dict(state=PROCESSING, error="", chunk_count=0, chunks_embedded=0)
            if existing is None:
                try:
                    async with conn.begin_nested():
                        await conn.execute(
                            insert(StoreFileRow).values(
                                store_id=store_id, file_id=file_id, user_id=user_id, **values
                            )
                        )
                except IntegrityError:  # added by a racing call: that one queued it
                    found = await self._store_file(conn, store_id, file_id)
                    assert found is not None
                    return found
            else:
                await conn.execute(
                    update(StoreFileRow)
                    .where(StoreFileRow.store_id == store_id, StoreFileRow.file_id == file_id)
                    .values(**values)
                )
            await stage(conn, OUTBOX, _uploaded(file_id, user_id, store_id))
        return StoreFile(store_id, file_id, user_id, PROCESSING)

    async def _store_file(
        self, conn: AsyncConnection, store_id: str, file_id: str
    ) -> StoreFile | None:
        row = (
            await conn.execute(
                select(StoreFileRow).where(
                    StoreFileRow.store_id == store_id, StoreFileRow.file_id == file_id
                )
            )
        ).first()
        return None if row is None else _store_file(row)

    async def store_file(self, store_id: str, file_id: str) -> StoreFile | None:
        async with self.engine.connect() as conn:
            return await self._store_file(conn, store_id, file_id)

    async def store_ids_of(self, file_id: str) -> list[str]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(StoreFileRow.store_id).where(StoreFileRow.file_id == file_id)
            )
            return [row.store_id for row in rows]

    async def progress(
        self, store_id: str, file_id: str, chunk_count: int, chunks_embedded: int
    ) -> bool:
        """Records progress; False when the file left the store (deleted) meanwhile."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(StoreFileRow)
                .where(StoreFileRow.store_id == store_id, StoreFileRow.file_id == file_id)
                .values(chunk_count=chunk_count, chunks_embedded=chunks_embedded)
            )
        return bool(result.rowcount)

    async def finish_store_file(
        self,
        store_id: str,
        file_id: str,
        error: str = "",
        terms: Mapping[str, int] | None = None,
    ) -> bool:
        """Ends a file's ingestion into a store, READY with its words' chunk counts
        (replacing any a previous delivery wrote) or FAILED; False if it left the
        store meanwhile."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(StoreFileRow)
                .where(and_(StoreFileRow.store_id == store_id, StoreFileRow.file_id == file_id))
                .values(state=FAILED if error else READY, error=error[:1024])
            )
            if not result.rowcount:
                return False
            await conn.execute(
                delete(StoreTermRow).where(
                    StoreTermRow.store_id == store_id, StoreTermRow.file_id == file_id
                )
            )
            if terms and not error:
                await conn.execute(
                    insert(StoreTermRow),
                    [
                        {"store_id": store_id, "file_id": file_id, "term": term, "chunks": n}
                        for term, n in terms.items()
                    ],
                )
        return True

    async def term_stats(self, store_id: str, terms: set[str]) -> tuple[int, dict[str, int]]:
        """The store's indexed chunks, and in how many of them each term occurs."""
        async with self.engine.connect() as conn:
            chunks = await conn.scalar(
                select(func.coalesce(func.sum(StoreFileRow.chunk_count), 0)).where(
                    StoreFileRow.store_id == store_id, StoreFileRow.state == READY
                )
            )
            rows = await conn.execute(
                select(StoreTermRow.term, func.sum(StoreTermRow.chunks).label("chunks"))
                .where(StoreTermRow.store_id == store_id, StoreTermRow.term.in_(terms))
                .group_by(StoreTermRow.term)
            )
            return int(chunks or 0), {row.term: int(row.chunks) for row in rows}

    async def ingestion(self, user_id: str, file_id: str, store_id: str) -> Ingestion:
        """The rows an ingestion message names; Missing when any is gone."""
        file = await self.get_file(user_id, file_id)
        if not store_id:
            return Ingestion(file)
        store = await self.get_store(user_id, store_id)
        store_file = await self.store_file(store_id, file_id)
        if store_file is None:
            raise Missing(f"vectorStores/{store_id}/files/{file_id}")
        return Ingestion(file, store, store_file)
