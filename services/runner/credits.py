"""Credits for a run: held before the model is called, charged for what was used.

A run reserves its cap (the request's, else the agent's) or, without one, a
default hold that it extends while it runs. The registry's conditional UPDATE
keeps every balance at or above zero however many runs race; the runner only
has to stop a run that cannot extend its hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import grpc

from agentmesh.errors import PeerError, QuotaExceeded
from agentmesh.gen.registry.v1 import account_pb2, account_pb2_grpc


@dataclass(frozen=True)
class Price:
    """Credits per 1,000 tokens."""

    input: float = 1.0
    cached_input: float = 0.25
    output: float = 4.0


def cost(usage: dict[str, int], price: Price) -> int:
    """Credits for a usage: cached input tokens at their own price; at least 1 for a
    run that called a model."""
    cached = usage.get("cached_input_tokens", 0)
    fresh = max(usage.get("input_tokens", 0) - cached, 0)
    exact = (
        fresh * price.input
        + cached * price.cached_input
        + usage.get("output_tokens", 0) * price.output
    ) / 1000
    return max(math.ceil(exact), 1 if usage.get("requests") else 0)


@dataclass
class Hold:
    """The reservations one run holds, and what it may still take."""

    user: str
    cap: int  # 0: no cap
    reservations: list[account_pb2.Reservation] = field(default_factory=list)

    @property
    def reserved(self) -> int:
        return sum(r.amount for r in self.reservations)


class Credits:
    def __init__(self, registry: grpc.aio.Channel, prices: dict[str, Price], chunk: int):
        self._accounts = account_pb2_grpc.AccountServiceStub(registry)
        self._prices = prices
        self._chunk = chunk

    def price(self, model: str) -> Price:
        return self._prices.get(model) or self._prices.get("default") or Price()

    async def hold(self, user: str, cap: int) -> Hold:
        """Reserves the run's first hold; RESOURCE_EXHAUSTED (QuotaFailure) when the
        balance cannot cover it, before any model is called."""
        hold = Hold(user, cap)
        await self._reserve(hold, cap or self._chunk)
        return hold

    async def cover(self, hold: Hold, used: int) -> None:
        """Makes the hold cover `used` credits, extending it in chunks up to the cap."""
        while used > hold.reserved:
            if hold.cap and hold.reserved >= hold.cap:
                raise QuotaExceeded(
                    f"{hold.user}/creditBalance",
                    f"the run reached its cap of {hold.cap} credits",
                )
            amount = self._chunk if not hold.cap else min(self._chunk, hold.cap - hold.reserved)
            await self._reserve(hold, max(amount, used - hold.reserved))

    async def settle(self, hold: Hold, used: int) -> int:
        """Charges `used` (at most what is held) across the reservations, returns the rest;
        what was charged."""
        charged, left = 0, used
        for reservation in hold.reservations:
            take = min(left, reservation.amount)
            await self._call(
                self._accounts.SettleCredits,
                account_pb2.SettleCreditsRequest(reservation=reservation.name, amount=take),
            )
            charged, left = charged + take, left - take
        hold.reservations.clear()
        return charged

    async def _reserve(self, hold: Hold, amount: int) -> None:
        reservation = await self._call(
            self._accounts.ReserveCredits,
            account_pb2.ReserveCreditsRequest(user=hold.user, amount=amount),
        )
        hold.reservations.append(reservation)

    @staticmethod
    async def _call(method, request):  # type: ignore[no-untyped-def]
        try:
            return await method(request, timeout=10)
        except grpc.aio.AioRpcError as error:
            raise PeerError.of(error) from None
