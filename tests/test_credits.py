"""Credit reservations through the real gRPC server, on SQLite and on Postgres.

Reserve/Settle/Release are service-only, so they go through a client holding the
service token; balances are read by the user itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from rpc_helpers import details_of, error_info
from support import admin_key, database_url, expect_rpc_error, service_token

from agentmesh.client import Client
from agentmesh.config import Settings
from agentmesh.gen.registry.v1 import account_pb2 as a
from agentmesh.mesh import Mesh
from services import PLUGINS


@pytest.fixture
async def service(mesh) -> AsyncIterator[Client]:
    async with Client(mesh.address, service_token(mesh)) as client:
        yield client


@pytest.fixture
async def mesh_admin(mesh) -> AsyncIterator[Client]:
    async with Client(mesh.address, admin_key(mesh)) as client:
        yield client


async def balance(client: Client, user: a.User) -> a.CreditBalance:
    return await client.accounts.GetCreditBalance(
        a.GetCreditBalanceRequest(name=f"{user.name}/creditBalance")
    )


def amounts(value: a.CreditBalance) -> tuple[int, int, int]:
    """(balance, reserved, available)."""
    assert value.available == value.balance - value.reserved
    return value.balance, value.reserved, value.available


async def reserve(service: Client, user: a.User, amount: int, ttl: float = 0) -> a.Reservation:
    request = a.ReserveCreditsRequest(user=user.name, amount=amount)
    if ttl:
        request.ttl.CopyFrom(duration_pb2.Duration(seconds=int(ttl), nanos=int(ttl % 1 * 1e9)))
    return await service.accounts.ReserveCredits(request)


async def settle(service: Client, reservation: a.Reservation, used: int) -> a.CreditBalance:
    return await service.accounts.SettleCredits(
        a.SettleCreditsRequest(reservation=reservation.name, amount=used)
    )


async def release(service: Client, reservation: a.Reservation) -> a.CreditBalance:
    return await service.accounts.ReleaseCredits(
        a.ReleaseCreditsRequest(reservation=reservation.name)
    )


async def test_200_concurrent_reservations_against_50_credits(new_user, service):
    client, user = await new_user(credits=50)
    snapshots: list[a.CreditBalance] = []
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            snapshots.append(await balance(client, user))

    watcher = asyncio.create_task(watch())
    try:
        results = await asyncio.gather(
            *(reserve(service, user, 1) for _ in range(200)), return_exceptions=True
        )
    finally:
        done.set()
        await watcher

    won = [result for result in results if isinstance(result, a.Reservation)]
    lost = [result for result in results if not isinstance(result, a.Reservation)]
    assert len(won) == 50 and len(lost) == 150
    assert len({reservation.name for reservation in won}) == 50
    assert all(r.amount == 1 and r.user == user.name for r in won)
    for error in lost:
        assert isinstance(error, grpc.aio.AioRpcError), error
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        (quota,) = details_of(error, error_details_pb2.QuotaFailure)
        assert [v.subject for v in quota.violations] == [f"{user.name}/creditBalance"]
        error_info(error, "INSUFFICIENT_CREDITS")

    assert snapshots, "the balance was never read while reserving"
    for snapshot in snapshots:
        total, reserved, available = amounts(snapshot)
        assert total == 50 and 0 <= reserved <= 50 and available >= 0
    assert amounts(await balance(client, user)) == (50, 50, 0)

    # Nothing left: one more fails the same way and changes nothing.
    error = await expect_rpc_error(reserve(service, user, 1), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert details_of(error, error_details_pb2.QuotaFailure)
    assert amounts(await balance(client, user)) == (50, 50, 0)

    # Settling every reservation concurrently charges exactly what was held.
    await asyncio.gather(*(settle(service, r, 1) for r in won))
    assert amounts(await balance(client, user)) == (0, 0, 0)


async def test_reservation_larger_than_available(new_user, service):
    client, user = await new_user(credits=10)
    await reserve(service, user, 6)
    error = await expect_rpc_error(reserve(service, user, 5), grpc.StatusCode.RESOURCE_EXHAUSTED)
    (quota,) = details_of(error, error_details_pb2.QuotaFailure)
    assert quota.violations[0].subject == f"{user.name}/creditBalance"
    assert amounts(await balance(client, user)) == (10, 6, 4)
    await reserve(service, user, 4)
    assert amounts(await balance(client, user)) == (10, 10, 0)


async def test_settle_charges_what_was_used_and_returns_the_rest(new_user, service):
    client, user = await new_user(credits=20)
    reservation = await reserve(service, user, 10)
    assert amounts(await balance(client, user)) == (20, 10, 10)
    settled = await settle(service, reservation, 3)
    assert amounts(settled) == (17, 0, 17)
    assert amounts(await balance(client, user)) == (17, 0, 17)


async def test_settling_more_than_reserved_charges_the_reservation(new_user, service):
    client, user = await new_user(credits=20)
    reservation = await reserve(service, user, 5)
    assert amounts(await settle(service, reservation, 1000)) == (15, 0, 15)

    nothing_used = await reserve(service, user, 5)
    assert amounts(await settle(service, nothing_used, 0)) == (15, 0, 15)


async def test_release_returns_everything(new_user, service):
    client, user = await new_user(credits=20)
    reservation = await reserve(service, user, 7)
    assert amounts(await balance(client, user)) == (20, 7, 13)
    assert amounts(await release(service, reservation)) == (20, 0, 20)
    assert amounts(await balance(client, user)) == (20, 0, 20)


@pytest.mark.parametrize(
    "first, second",
    [("settle", "settle"), ("settle", "release"), ("release", "release"), ("release", "settle")],
)
async def test_a_closed_reservation_cannot_be_closed_again(new_user, service, first, second):
    client, user = await new_user(credits=20)
    reservation = await reserve(service, user, 10)
    close = {
        "settle": lambda: settle(service, reservation, 4),
        "release": lambda: release(service, reservation),
    }
    after_first = amounts(await close[first]())
    error = await expect_rpc_error(close[second](), grpc.StatusCode.FAILED_PRECONDITION)
    error_info(error, "RESERVATION_CLOSED")
    assert amounts(await balance(client, user)) == after_first


async def test_unknown_reservation_is_not_found(new_user, service):
    await new_user(credits=5)
    missing = a.Reservation(name="reservations/doesnotexist")
    await expect_rpc_error(settle(service, missing, 1), grpc.StatusCode.NOT_FOUND)
    await expect_rpc_error(release(service, missing), grpc.StatusCode.NOT_FOUND)


async def test_reservations_need_service_credentials(new_user):
    client, user = await new_user(credits=5)
    await expect_rpc_error(
        client.accounts.ReserveCredits(a.ReserveCreditsRequest(user=user.name, amount=1)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert amounts(await balance(client, user)) == (5, 0, 5)


async def test_default_ttl_is_ten_minutes(new_user, service):
    _, user = await new_user(credits=5)
    reservation = await reserve(service, user, 1)
    expires_in = reservation.expire_time.ToDatetime(tzinfo=UTC) - datetime.now(UTC)
    assert timedelta(minutes=9) < expires_in <= timedelta(minutes=10)


async def test_negative_grant_cannot_take_reserved_credits(new_user, service, mesh_admin):
    client, user = await new_user(credits=10)
    reservation = await reserve(service, user, 8)

    async def grant(amount: int):
        return await mesh_admin.accounts.GrantCredits(
            a.GrantCreditsRequest(user=user.name, amount=amount, reason="correction")
        )

    error = await expect_rpc_error(grant(-5), grpc.StatusCode.FAILED_PRECONDITION)
    error_info(error, "INSUFFICIENT_CREDITS")
    assert amounts(await balance(client, user)) == (10, 8, 2)
    assert amounts(await grant(-2)) == (8, 8, 0)
    await expect_rpc_error(grant(-1), grpc.StatusCode.FAILED_PRECONDITION)
    assert amounts(await balance(client, user)) == (8, 8, 0)

    await release(service, reservation)
    assert amounts(await grant(-8)) == (0, 0, 0)
    await expect_rpc_error(grant(-1), grpc.StatusCode.FAILED_PRECONDITION)  # never below zero
    assert amounts(await balance(client, user)) == (0, 0, 0)


async def test_concurrent_settle_and_release_exactly_one_wins(new_user, service):
    client, user = await new_user(credits=100)
    reservations = await asyncio.gather(*(reserve(service, user, 5) for _ in range(20)))
    assert amounts(await balance(client, user)) == (100, 100, 0)

    # Each reservation is raced by a settle of 2, a release and a settle of 5.
    races = [
        asyncio.gather(
            settle(service, r, 2),
            release(service, r),
            settle(service, r, 5),
            return_exceptions=True,
        )  # fmt: skip
        for r in reservations
    ]
    charged = 0
    for results in await asyncio.gather(*races):
        winners = [i for i, result in enumerate(results) if isinstance(result, a.CreditBalance)]
        assert len(winners) == 1, results
        for i, result in enumerate(results):
            if i not in winners:
                assert isinstance(result, grpc.aio.AioRpcError), result
                assert result.code() == grpc.StatusCode.FAILED_PRECONDITION
        charged += (2, 0, 5)[winners[0]]
    assert amounts(await balance(client, user)) == (100 - charged, 0, 100 - charged)


# ---- the expiry sweeper ------------------------------------------------------


@pytest.fixture(scope="module")
async def sweeping_mesh(backend, request, tmp_path_factory) -> AsyncIterator[Mesh]:
    """A mesh whose registry sweeps expired reservations every 0.1 s."""
    data_dir = tmp_path_factory.mktemp(f"sweep-{backend}")
    pg = request.getfixturevalue("postgres") if backend == "postgres" else None
    settings = Settings(
        data_dir=data_dir,
        port=0,
        database_url=database_url(backend, pg, data_dir),
        reservation_sweep_seconds=0.1,
    )
    async with Mesh(settings, PLUGINS) as running:
        yield running


async def test_expired_reservation_is_released_by_the_sweeper(sweeping_mesh):
    mesh = sweeping_mesh
    async with (
        Client(mesh.address, admin_key(mesh)) as admin,
        Client(mesh.address, service_token(mesh)) as service,
    ):
        user = await admin.accounts.CreateUser(
            a.CreateUserRequest(user=a.User(display_name="sweep"))
        )
        await admin.accounts.GrantCredits(a.GrantCreditsRequest(user=user.name, amount=10))
        short = await reserve(service, user, 4, ttl=1)
        started = time.monotonic()
        long = await reserve(service, user, 3)
        expires_in = short.expire_time.ToDatetime(tzinfo=UTC) - datetime.now(UTC)
        assert timedelta(0) < expires_in <= timedelta(seconds=1)
        assert amounts(await balance(admin, user)) == (10, 7, 3)

        # Not before its time: several sweeps pass and the hold stays.
        await asyncio.sleep(0.5)
        assert amounts(await balance(admin, user)) == (10, 7, 3)

        while amounts(await balance(admin, user)) != (10, 3, 7):
            assert time.monotonic() - started < 5, "the expired reservation was never released"
            await asyncio.sleep(0.05)
        assert time.monotonic() - started >= 0.9

        # Released means closed: it can no longer be settled; the other one still can.
        error = await expect_rpc_error(
            settle(service, short, 4), grpc.StatusCode.FAILED_PRECONDITION
        )
        error_info(error, "RESERVATION_CLOSED")
        assert amounts(await settle(service, long, 3)) == (7, 0, 7)
        # And the released credits can be reserved again.
        await reserve(service, user, 7)
        assert amounts(await balance(admin, user)) == (7, 7, 0)
