"""The registry's tables and queries. Speaks in plain records, never protos."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Integer,
    String,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from agentmesh.db import Page, UtcDateTime, fetch_page, new_id, utc_now
from agentmesh.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    QuotaExceeded,
)

KEY_PREFIX = "am_"


def hash_key(key: str) -> str:
    # API keys are 256-bit random strings, so a fast hash is enough: there is
    # nothing to brute-force the way there is with passwords.
    return hashlib.sha256(key.encode()).hexdigest()


class Base(DeclarativeBase):
    pass


class UserRow(Base):
    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320), default="")
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)


class ApiKeyRow(Base):
    __tablename__ = "api_keys"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    expire_time: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class CreditAccountRow(Base):
    __tablename__ = "credit_accounts"
    __table_args__ = (
        # The last line of defence: no code path can take an account below zero.
        CheckConstraint("reserved >= 0", name="reserved_not_negative"),
        CheckConstraint("balance >= reserved", name="balance_covers_reserved"),
    )
    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved: Mapped[int] = mapped_column(BigInteger, default=0)


class ReservationRow(Base):
    __tablename__ = "credit_reservations"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16), default="open", index=True)
    expire_time: Mapped[datetime] = mapped_column(UtcDateTime, index=True)


class LedgerRow(Base):
    __tablename__ = "credit_ledger"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    delta: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))  # grant | charge
    reference: Mapped[str] = mapped_column(String(1024), default="")
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)


class AgentRow(Base):
    __tablename__ = "agents"
    # seq orders pages; id is the public name.
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    etag: Mapped[str] = mapped_column(String(64))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime)


class HandoffRow(Base):
    __tablename__ = "handoffs"
    agent_id: Mapped[str] = mapped_column(
        ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True
    )
    target_id: Mapped[str] = mapped_column(ForeignKey("agents.id"), primary_key=True, index=True)
    position: Mapped[int] = mapped_column(Integer)


class ContextRow(Base):
    __tablename__ = "contexts"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"), index=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    values: Mapped[dict[str, Any]] = mapped_column(JSON)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)


@dataclass
class User:
    id: str
    display_name: str
    email: str
    admin: bool
    create_time: datetime


@dataclass
class ApiKey:
    id: str
    user_id: str
    display_name: str
    prefix: str
    create_time: datetime
    expire_time: datetime | None
    secret: str = ""  # only when just created


@dataclass
class Balance:
    user_id: str
    balance: int
    reserved: int


@dataclass
class Reservation:
    id: str
    user_id: str
    amount: int
    expire_time: datetime


@dataclass
class Agent:
    id: str
    user_id: str
    spec: dict[str, Any]  # every definition field but name, handoffs and times
    handoffs: list[str]  # target ids, in order
    etag: str
    create_time: datetime
    update_time: datetime


@dataclass
class Context:
    id: str
    agent_id: str
    display_name: str
    values: dict[str, Any]
    is_default: bool
    create_time: datetime


class RegistryStore:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    # ---- users and keys -------------------------------------------------

    async def create_user(self, display_name: str, email: str, admin: bool) -> User:
        user = User(new_id(), display_name, email, admin, utc_now())
        async with self.engine.begin() as conn:
            await conn.execute(insert(UserRow).values(**user.__dict__))
            await conn.execute(insert(CreditAccountRow).values(user_id=user.id, balance=0))
        return user

    async def count_users(self) -> int:
        async with self.engine.connect() as conn:
            return (await conn.execute(select(func.count()).select_from(UserRow))).scalar_one()

    async def get_user(self, user_id: str) -> User:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(UserRow).where(UserRow.id == user_id))).first()
        if row is None:
            raise NotFound(f"users/{user_id}")
        return User(row.id, row.display_name, row.email, row.admin, row.create_time)

    async def create_api_key(
        self, user_id: str, display_name: str, expire_time: datetime | None
    ) -> ApiKey:
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(new_id(), user_id, display_name, secret[:10], utc_now(), expire_time, secret)
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(ApiKeyRow).values(
                    id=key.id,
                    user_id=user_id,
                    display_name=display_name,
                    prefix=key.prefix,
                    key_hash=hash_key(secret),
                    create_time=key.create_time,
                    expire_time=expire_time,
                )
            )
        return key

    async def list_api_keys(self, user_id: str, after_seq: int, limit: int) -> Page:
        async with self.engine.connect() as conn:
            rows, last_seq = await fetch_page(
                conn,
                select(ApiKeyRow).where(ApiKeyRow.user_id == user_id),
                ApiKeyRow.seq,
                after_seq,
                limit,
            )
        keys = [
            ApiKey(r.id, r.user_id, r.display_name, r.prefix, r.create_time, r.expire_time)
            for r in rows
        ]
        return Page(keys, last_seq)

    async def delete_api_key(self, user_id: str, key_id: str) -> None:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                delete(ApiKeyRow).where(ApiKeyRow.id == key_id, ApiKeyRow.user_id == user_id)
            )
        if result.rowcount == 0:
            raise NotFound(f"users/{user_id}/apiKeys/{key_id}")

    async def key_owner(self, secret: str) -> tuple[User, datetime | None] | None:
        """The key's owner and when the key expires; None for an unknown or expired key."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(UserRow, ApiKeyRow.expire_time.label("key_expire_time"))
                    .join(ApiKeyRow, ApiKeyRow.user_id == UserRow.id)
                    .where(ApiKeyRow.key_hash == hash_key(secret))
                )
            ).first()
        if row is None:
            return None
        expire_time = row.key_expire_time
        if expire_time is not None and expire_time <= utc_now():
            return None
        user = User(row.id, row.display_name, row.email, row.admin, row.create_time)
        return user, expire_time

    # ---- credits ----------------------------------------------------------

    async def get_balance(self, user_id: str) -> Balance:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(CreditAccountRow).where(CreditAccountRow.user_id == user_id)
                )
            ).first()
        if row is None:
            raise NotFound(f"users/{user_id}/creditBalance")
        return Balance(row.user_id, row.balance, row.reserved)

    async def grant_credits(self, user_id: str, amount: int, reason: str) -> Balance:
        async with self.engine.begin() as conn:
            # Taking credits back may not dip into what open reservations hold.
            result = await conn.execute(
                update(CreditAccountRow)
                .where(
                    CreditAccountRow.user_id == user_id,
                    CreditAccountRow.balance + amount >= CreditAccountRow.reserved,
                )
                .values(balance=CreditAccountRow.balance + amount)
            )
            if result.rowcount == 0:
                await self._account_exists(conn, user_id)
                raise FailedPrecondition(
                    "cannot take back more credits than are available",
                    reason="INSUFFICIENT_CREDITS",
                )
            await conn.execute(
                insert(LedgerRow).values(
                    user_id=user_id,
                    delta=amount,
                    kind="grant",
                    reference=reason,
                    create_time=utc_now(),
                )
            )
        return await self.get_balance(user_id)

    async def reserve_credits(self, user_id: str, amount: int, ttl: timedelta) -> Reservation:
        reservation = Reservation(new_id(), user_id, amount, utc_now() + ttl)
        async with self.engine.begin() as conn:
            # One conditional UPDATE is the whole race story: the database applies
            # it atomically, so concurrent reservations can never overdraw.
            result = await conn.execute(
                update(CreditAccountRow)
                .where(
                    CreditAccountRow.user_id == user_id,
                    CreditAccountRow.balance - CreditAccountRow.reserved >= amount,
                )
                .values(reserved=CreditAccountRow.reserved + amount)
            )
            if result.rowcount == 0:
                await self._account_exists(conn, user_id)
                raise QuotaExceeded(
                    f"users/{user_id}/creditBalance",
                    f"not enough credits available to reserve {amount}",
                )
            await conn.execute(
                insert(ReservationRow).values(
                    id=reservation.id,
                    user_id=user_id,
                    amount=amount,
                    state="open",
                    expire_time=reservation.expire_time,
                )
            )
        return reservation

    async def settle_credits(self, reservation_id: str, used: int) -> Balance:
        async with self.engine.begin() as conn:
            reservation = await self._close_reservation(conn, reservation_id, "settled")
            charge = min(used, reservation.amount)
            await conn.execute(
                update(CreditAccountRow)
                .where(CreditAccountRow.user_id == reservation.user_id)
                .values(
                    reserved=CreditAccountRow.reserved - reservation.amount,
                    balance=CreditAccountRow.balance - charge,
                )
            )
            if charge:
                await conn.execute(
                    insert(LedgerRow).values(
                        user_id=reservation.user_id,
                        delta=-charge,
                        kind="charge",
                        reference=f"reservations/{reservation_id}",
                        create_time=utc_now(),
                    )
                )
        return await self.get_balance(reservation.user_id)

    async def release_credits(self, reservation_id: str) -> Balance:
        async with self.engine.begin() as conn:
            reservation = await self._close_reservation(conn, reservation_id, "released")
            await self._unreserve(conn, reservation.user_id, reservation.amount)
        return await self.get_balance(reservation.user_id)

    async def release_expired(self) -> int:
        """Releases every open reservation past its expiry; returns how many."""
        released = 0
        async with self.engine.connect() as conn:
            expired = (
                (
                    await conn.execute(
                        select(ReservationRow.id).where(
                            ReservationRow.state == "open", ReservationRow.expire_time <= utc_now()
                        )
                    )
                )
                .scalars()
                .all()
            )
        for reservation_id in expired:
            async with self.engine.begin() as conn:
                try:
                    reservation = await self._close_reservation(conn, reservation_id, "released")
                except FailedPrecondition:
                    continue  # settled or released meanwhile
                await self._unreserve(conn, reservation.user_id, reservation.amount)
                released += 1
        return released

    async def _close_reservation(self, conn, reservation_id: str, state: str) -> Reservation:
        # Flipping the state first, conditionally, makes settle/release/expiry
        # mutually exclusive: only one of them ever sees rowcount 1.
        result = await conn.execute(
            update(ReservationRow)
            .where(ReservationRow.id == reservation_id, ReservationRow.state == "open")
            .values(state=state)
        )
        row = (
            await conn.execute(select(ReservationRow).where(ReservationRow.id == reservation_id))
        ).first()
        if row is None:
            raise NotFound(f"reservations/{reservation_id}")
        if result.rowcount == 0:
            raise FailedPrecondition(
                f"reservations/{reservation_id} is already {row.state}",
                reason="RESERVATION_CLOSED",
            )
        return Reservation(row.id, row.user_id, row.amount, row.expire_time)

    async def _unreserve(self, conn, user_id: str, amount: int) -> None:
        await conn.execute(
            update(CreditAccountRow)
            .where(CreditAccountRow.user_id == user_id)
            .values(reserved=CreditAccountRow.reserved - amount)
        )

    async def _account_exists(self, conn, user_id: str) -> None:
        found = await conn.execute(
            select(CreditAccountRow.user_id).where(CreditAccountRow.user_id == user_id)
        )
        if found.first() is None:
            raise NotFound(f"users/{user_id}/creditBalance")

    # ---- agents -------------------------------------------------------------

    async def create_agent(self, user_id: str, spec: dict[str, Any], handoffs: list[str]) -> Agent:
        created = utc_now()
        agent = Agent(new_id(), user_id, spec, handoffs, new_id(), created, created)
        async with self.engine.begin() as conn:
            await self._require_own_agents(conn, user_id, handoffs)
            await conn.execute(
                insert(AgentRow).values(
                    id=agent.id,
                    user_id=user_id,
                    spec=spec,
                    etag=agent.etag,
                    create_time=created,
                    update_time=created,
                )
            )
            await self._write_handoffs(conn, agent.id, handoffs)
        return agent

    async def get_agent(self, user_id: str, agent_id: str) -> Agent:
        async with self.engine.connect() as conn:
            return await self._get_agent(conn, user_id, agent_id)

    async def list_agents(self, user_id: str, after_seq: int, limit: int) -> Page:
        async with self.engine.connect() as conn:
            rows, last_seq = await fetch_page(
                conn,
                select(AgentRow).where(AgentRow.user_id == user_id),
                AgentRow.seq,
                after_seq,
                limit,
            )
            handoffs = await self._handoffs_of(conn, [row.id for row in rows])
        return Page([self._agent(row, handoffs.get(row.id, [])) for row in rows], last_seq)

    async def update_agent(
        self,
        user_id: str,
        agent_id: str,
        expected_etag: str,
        spec: dict[str, Any],
        handoffs: list[str],
    ) -> Agent:
        etag, updated = new_id(), utc_now()
        async with self.engine.begin() as conn:
            await self._require_own_agents(conn, user_id, handoffs)
            result = await conn.execute(
                update(AgentRow)
                .where(
                    AgentRow.id == agent_id,
                    AgentRow.user_id == user_id,
                    AgentRow.etag == expected_etag,
                )
                .values(spec=spec, etag=etag, update_time=updated)
            )
            if result.rowcount == 0:
                await self._get_agent(conn, user_id, agent_id)  # NotFound if gone
                raise Aborted(f"agents/{agent_id} changed since it was read; read it again")
            await conn.execute(delete(HandoffRow).where(HandoffRow.agent_id == agent_id))
            await self._write_handoffs(conn, agent_id, handoffs)
            return await self._get_agent(conn, user_id, agent_id)

    async def delete_agent(self, user_id: str, agent_id: str, etag: str) -> None:
        async with self.engine.begin() as conn:
            agent = await self._get_agent(conn, user_id, agent_id)
            if etag and etag != agent.etag:
                raise Aborted(f"agents/{agent_id} changed since it was read; read it again")
            referrers = (
                (
                    await conn.execute(
                        select(HandoffRow.agent_id).where(HandoffRow.target_id == agent_id)
                    )
                )
                .scalars()
                .all()
            )
            if referrers:
                names = ", ".join(f"agents/{r}" for r in sorted(referrers))
                raise FailedPrecondition(
                    f"agents/{agent_id} is a handoff target of {names}; "
                    "remove those handoffs first",
                    reason="AGENT_IN_USE",
                )
            await conn.execute(delete(ContextRow).where(ContextRow.agent_id == agent_id))
            await conn.execute(delete(HandoffRow).where(HandoffRow.agent_id == agent_id))
            await conn.execute(delete(AgentRow).where(AgentRow.id == agent_id))

    async def _get_agent(self, conn, user_id: str, agent_id: str) -> Agent:
        # One round trip: the agent's row once per handoff (or once, without any).
        rows = (
            await conn.execute(
                select(AgentRow, HandoffRow.target_id)
                .outerjoin(HandoffRow, HandoffRow.agent_id == AgentRow.id)
                .where(AgentRow.id == agent_id, AgentRow.user_id == user_id)
                .order_by(HandoffRow.position)
            )
        ).all()
        if not rows:
            raise NotFound(f"agents/{agent_id}")
        return self._agent(rows[0], [row.target_id for row in rows if row.target_id])

    @staticmethod
    def _agent(row, handoffs: list[str]) -> Agent:
        return Agent(
            row.id,
            row.user_id,
            row.spec,
            handoffs,
            row.etag,
            row.create_time,
            row.update_time,
        )

    async def _handoffs_of(self, conn, agent_ids: list[str]) -> dict[str, list[str]]:
        if not agent_ids:
            return {}
        rows = await conn.execute(
            select(HandoffRow)
            .where(HandoffRow.agent_id.in_(agent_ids))
            .order_by(HandoffRow.agent_id, HandoffRow.position)
        )
        result: dict[str, list[str]] = {}
        for row in rows:
            result.setdefault(row.agent_id, []).append(row.target_id)
        return result

    async def _write_handoffs(self, conn, agent_id: str, targets: list[str]) -> None:
        if targets:
            await conn.execute(
                insert(HandoffRow),
                [
                    {"agent_id": agent_id, "target_id": target, "position": i}
                    for i, target in enumerate(targets)
                ],
            )

    async def _require_own_agents(self, conn, user_id: str, agent_ids: list[str]) -> None:
        if not agent_ids:
            return
        found = set(
            (
                await conn.execute(
                    select(AgentRow.id).where(
                        AgentRow.id.in_(agent_ids), AgentRow.user_id == user_id
                    )
                )
            ).scalars()
        )
        missing = [
            (f"agent.handoffs[{i}]", f"agents/{agent_id} not found")
            for i, agent_id in enumerate(agent_ids)
            if agent_id not in found
        ]
        if missing:
            raise InvalidArgument(missing, reason="HANDOFF_TARGET_NOT_FOUND")

    # ---- contexts -------------------------------------------------------------

    async def create_context(
        self, user_id: str, agent_id: str, display_name: str, values: dict, is_default: bool
    ) -> Context:
        context = Context(new_id(), agent_id, display_name, values, is_default, utc_now())
        async with self.engine.begin() as conn:
            await self._get_agent(conn, user_id, agent_id)
            if is_default:
                await conn.execute(
                    update(ContextRow)
                    .where(ContextRow.agent_id == agent_id)
                    .values(is_default=False)
                )
            await conn.execute(
                insert(ContextRow).values(
                    id=context.id,
                    agent_id=agent_id,
                    display_name=display_name,
                    values=values,
                    is_default=is_default,
                    create_time=context.create_time,
                )
            )
        return context

    async def get_context(self, user_id: str, agent_id: str, context_id: str) -> Context:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(ContextRow)
                    .join(AgentRow, AgentRow.id == ContextRow.agent_id)
                    .where(
                        ContextRow.id == context_id,
                        ContextRow.agent_id == agent_id,
                        AgentRow.user_id == user_id,
                    )
                )
            ).first()
        if row is None:
            raise NotFound(f"agents/{agent_id}/contexts/{context_id}")
        return self._context(row)

    async def list_contexts(self, user_id: str, agent_id: str, after_seq: int, limit: int) -> Page:
        async with self.engine.connect() as conn:
            await self._get_agent(conn, user_id, agent_id)
            rows, last_seq = await fetch_page(
                conn,
                select(ContextRow).where(ContextRow.agent_id == agent_id),
                ContextRow.seq,
                after_seq,
                limit,
            )
        return Page([self._context(row) for row in rows], last_seq)

    async def delete_context(self, user_id: str, agent_id: str, context_id: str) -> None:
        await self.get_context(user_id, agent_id, context_id)
        async with self.engine.begin() as conn:
            await conn.execute(delete(ContextRow).where(ContextRow.id == context_id))

    @staticmethod
    def _context(row) -> Context:
        return Context(
            row.id,
            row.agent_id,
            row.display_name,
            row.values,
            row.is_default,
            row.create_time,
        )
