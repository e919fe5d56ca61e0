"""The database layer: point reads on the driver (agentmesh.db.Reads) return what the
engine returns, and the engine's transactions of one process take turns."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy import JSON, Integer, String, bindparam, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from support import database_url

from agentmesh.db import Reads, UtcDateTime, create_engine, dispose


class _Base(DeclarativeBase):
    pass


class _Thing(_Base):
    __tablename__ = "things"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    body: Mapped[dict] = mapped_column(JSON)
    time: Mapped[datetime] = mapped_column(UtcDateTime)


_BY_OWNER = (
    select(_Thing.id, _Thing.body, _Thing.time.label("when"))
    .where(_Thing.owner == bindparam("owner"))
    .order_by(_Thing.id)
)


@pytest.fixture(params=["sqlite", "postgres"])
async def engine(request, tmp_path):
    postgres = request.getfixturevalue("postgres") if request.param == "postgres" else None
    engine = create_engine(database_url(request.param, postgres, tmp_path).format(service="r"))
    async with engine.begin() as conn:
        await conn.run_sync(_Base.metadata.create_all)
    yield engine
    await dispose(engine)


async def test_reads_return_the_engines_rows(engine):
    time = datetime(2026, 11, 27, 12, 30, 15, 123456, tzinfo=UTC)
    body = {"name": "ä \"quoted\" 'x'", "list": [1, 2.5, None], "nested": {"ok": True}}
    async with engine.begin() as conn:
        await conn.execute(
            _Thing.__table__.insert(),
            [
                {"id": 1, "owner": "a", "body": body, "time": time},
                {"id": 2, "owner": "a", "body": {}, "time": time},
                {"id": 3, "owner": "b'; drop table things; --", "body": {}, "time": time},
            ],
        )
        expected = (await conn.execute(_BY_OWNER, {"owner": "a"})).all()
    reads = Reads(engine)
    rows = await reads.all(_BY_OWNER, {"owner": "a"})
    assert [tuple(row) for row in rows] == [tuple(row) for row in expected]
    first = await reads.first(_BY_OWNER, {"owner": "a"})
    assert (first.id, first.body, first.when) == (1, body, time)
    assert first.when.tzinfo is not None
    assert await reads.first(_BY_OWNER, {"owner": "nobody"}) is None
    # Parameters are values, never SQL.
    (odd,) = await reads.all(_BY_OWNER, {"owner": "b'; drop table things; --"})
    assert odd.id == 3
    # What another connection commits, the next read sees (no snapshot is held).
    async with engine.begin() as conn:
        await conn.execute(_Thing.__table__.delete().where(_Thing.id == 1))
    assert [row.id for row in await reads.all(_BY_OWNER, {"owner": "a"})] == [2]


@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
async def test_a_read_outlives_its_pooled_connections(engine):
    """Connections the server closed (a restart ends them all) cost the reads
    nothing: each runs again on a new one. (SQLite's reader is a local file.)"""
    async with engine.begin() as conn:
        await conn.execute(
            _Thing.__table__.insert(),
            [{"id": 1, "owner": "a", "body": {}, "time": datetime.now(UTC)}],
        )
    reads = Reads(engine)
    # Reads at once: the pool holds several connections, each about to be ended.
    together = await asyncio.gather(*(reads.all(_BY_OWNER, {"owner": "a"}) for _ in range(8)))
    assert all([row.id for row in rows] == [1] for rows in together)
    async with engine.connect() as conn:
        ended = await conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
        assert ended.all()  # the reader's connections were among them
    assert [row.id for row in await reads.all(_BY_OWNER, {"owner": "a"})] == [1]
    # And at once again: every connection ended is replaced where a read finds it.
    together = await asyncio.gather(*(reads.all(_BY_OWNER, {"owner": "a"}) for _ in range(8)))
    assert all([row.id for row in rows] == [1] for rows in together)


async def test_write_transactions_in_flight_together_take_turns_and_never_stall_the_loop(engine):
    """Several transactions of one process, each waiting on something between its
    writes, all commit, and the event loop runs throughout. (SQLite's statements
    run on the loop's thread: two connections writing at once would find each
    other's lock and sleep there, holding the loop and the other transaction.)
    A transaction that fails leaves nothing behind and breaks nothing after it."""
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    async def write(owner: str) -> None:
        async with engine.begin() as conn:
            for id_ in (1, 2):
                await conn.execute(
                    _Thing.__table__.insert(),
                    {"id": hash((owner, id_)) % 10**9, "owner": owner, "body": {}, "time": now},
                )
                await asyncio.sleep(0.02)  # a network call, say, mid-transaction

    async def fail() -> None:
        async with engine.begin() as conn:
            await conn.execute(
                _Thing.__table__.insert(),
                {"id": 7, "owner": "failed", "body": {}, "time": now},
            )
            raise RuntimeError("a bug mid-transaction")

    now = datetime.now(UTC)
    ticker = asyncio.create_task(tick())
    owners = [f"writer-{n}" for n in range(4)]
    with pytest.raises(RuntimeError):
        await fail()
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(asyncio.gather(*(write(owner) for owner in owners)), 10)
    elapsed = asyncio.get_running_loop().time() - started
    ticker.cancel()
    # At least one tick per 5 ms slice the writers took, give or take a busy machine.
    assert ticks >= elapsed / 0.005 / 4
    async with engine.connect() as conn:
        rows = (await conn.execute(select(_Thing.owner))).scalars().all()
    assert sorted(rows) == sorted(owner for owner in owners for _ in (1, 2))


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)
async def test_an_autocommit_connection_writes_at_once_and_leaves_the_pool_transactional(engine):
    """SQLite's inline connection takes the isolation level SQLAlchemy sets on it (the
    aiosqlite dialect sets it through the driver's work queue)."""
    async with engine.connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.execute(
            _Thing.__table__.insert(),
            {"id": 1, "owner": "a", "body": {}, "time": datetime.now(UTC)},
        )
    reads = Reads(engine)  # another connection sees it: it was committed
    assert [row.id for row in await reads.all(_BY_OWNER, {"owner": "a"})] == [1]
    async with engine.connect() as conn:  # the same pooled connection, transactional again
        await conn.execute(
            _Thing.__table__.insert(),
            {"id": 2, "owner": "a", "body": {}, "time": datetime.now(UTC)},
        )
        await conn.rollback()
    assert [row.id for row in await reads.all(_BY_OWNER, {"owner": "a"})] == [1]
