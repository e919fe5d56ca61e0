"""Credit accounts, reservations and the ledger.

Every change is one conditional UPDATE, so the database applies it atomically
and concurrent callers can never overdraw an account; CHECK constraints on the
table back that up.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agentmesh.errors import FailedPrecondition, NotFound, QuotaExceeded
from agentmesh.ids import new_id, utc_now
from services.registry.records import Balance, Reservation
from services.registry.tables import CreditAccountRow, LedgerRow, ReservationRow

# The statements every run makes (reserve, settle), built once: building one and its
# cache key cost more than running it on SQLite. WHERE and SET expressions take b_*
# parameters; plain values come as execution parameters.
_ACCOUNT = select(CreditAccountRow).where(CreditAccountRow.user_id == bindparam("b_user"))
_RESERVE = (
    update(CreditAccountRow)
    .where(
        CreditAccountRow.user_id == bindparam("b_user"),
        CreditAccountRow.balance - CreditAccountRow.reserved >= bindparam("b_amount"),
    )
    .values(reserved=CreditAccountRow.reserved + bindparam("b_amount"))
)
_INSERT_RESERVATION = insert(ReservationRow)
_CLOSE_RESERVATION = (
    update(ReservationRow)
    .where(ReservationRow.id == bindparam("b_id"), ReservationRow.state == "open")
    .returning(ReservationRow.user_id, ReservationRow.amount, ReservationRow.expire_time)
)
_RESERVATION_STATE = select(ReservationRow.state).where(ReservationRow.id == bindparam("b_id"))
# Settling and releasing answer the balance as their own change left it (RETURNING),
# rather than with another read after the commit.
_BALANCE_COLUMNS = (CreditAccountRow.user_id, CreditAccountRow.balance, CreditAccountRow.reserved)
_CHARGE = (
    update(CreditAccountRow)
    .where(CreditAccountRow.user_id == bindparam("b_user"))
    .values(
        reserved=CreditAccountRow.reserved - bindparam("b_amount"),
        balance=CreditAccountRow.balance - bindparam("b_charge"),
    )
    .returning(*_BALANCE_COLUMNS)
)
_UNRESERVE = (
    update(CreditAccountRow)
    .where(CreditAccountRow.user_id == bindparam("b_user"))
    .values(reserved=CreditAccountRow.reserved - bindparam("b_amount"))
    .returning(*_BALANCE_COLUMNS)
)
_INSERT_LEDGER = insert(LedgerRow)


class CreditStore:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    async def get_balance(self, user_id: str) -> Balance:
        async with self.engine.connect() as conn:
            row = (await conn.execute(_ACCOUNT, {"b_user": user_id})).first()
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
            result = await conn.execute(_RESERVE, {"b_user": user_id, "b_amount": amount})
            if result.rowcount == 0:
                await self._account_exists(conn, user_id)
                raise QuotaExceeded(
                    f"users/{user_id}/creditBalance",
                    f"not enough credits available to reserve {amount}",
                )
            await conn.execute(
                _INSERT_RESERVATION,
                {
                    "id": reservation.id,
                    "user_id": user_id,
                    "amount": amount,
                    "state": "open",
                    "expire_time": reservation.expire_time,
                },
            )
        return reservation

    async def settle_credits(self, reservation_id: str, used: int) -> Balance:
        async with self.engine.begin() as conn:
            reservation = await self._close_reservation(conn, reservation_id, "settled")
            charge = min(used, reservation.amount)
            account = (
                await conn.execute(
                    _CHARGE,
                    {
                        "b_user": reservation.user_id,
                        "b_amount": reservation.amount,
                        "b_charge": charge,
                    },
                )
            ).one()
            if charge:
                await conn.execute(
                    _INSERT_LEDGER,
                    {
                        "user_id": reservation.user_id,
                        "delta": -charge,
                        "kind": "charge",
                        "reference": f"reservations/{reservation_id}",
                        "create_time": utc_now(),
                    },
                )
        return Balance(account.user_id, account.balance, account.reserved)

    async def release_credits(self, reservation_id: str) -> Balance:
        async with self.engine.begin() as conn:
            reservation = await self._close_reservation(conn, reservation_id, "released")
            return await self._unreserve(conn, reservation.user_id, reservation.amount)

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

    async def _close_reservation(
        self, conn: AsyncConnection, reservation_id: str, state: str
    ) -> Reservation:
        # Flipping the state first, conditionally, makes settle/release/expiry
        # mutually exclusive: only one of them ever sees rowcount 1.
        closed = (
            await conn.execute(_CLOSE_RESERVATION, {"b_id": reservation_id, "state": state})
        ).first()
        if closed is not None:
            return Reservation(reservation_id, closed.user_id, closed.amount, closed.expire_time)
        found = (await conn.execute(_RESERVATION_STATE, {"b_id": reservation_id})).first()
        if found is None:
            raise NotFound(f"reservations/{reservation_id}")
        raise FailedPrecondition(
            f"reservations/{reservation_id} is already {found.state}",
            reason="RESERVATION_CLOSED",
        )

    async def _unreserve(self, conn: AsyncConnection, user_id: str, amount: int) -> Balance:
        account = (await conn.execute(_UNRESERVE, {"b_user": user_id, "b_amount": amount})).one()
        return Balance(account.user_id, account.balance, account.reserved)

    async def _account_exists(self, conn: AsyncConnection, user_id: str) -> None:
        found = await conn.execute(
            select(CreditAccountRow.user_id).where(CreditAccountRow.user_id == user_id)
        )
        if found.first() is None:
            raise NotFound(f"users/{user_id}/creditBalance")
