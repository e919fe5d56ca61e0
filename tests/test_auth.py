"""Who may call what: credentials, service-only and admin-only methods, and API key secrets.

Requests here carry their metadata explicitly, on plain channels, so that what is
sent is exactly what the test says.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from rpc_helpers import ADMIN_ONLY, SERVICE_ONLY, error_info, error_text, field_violations
from support import admin_key, service_token

from agentmesh.gen.registry.v1 import account_pb2 as a
from agentmesh.gen.registry.v1 import account_pb2_grpc, registry_pb2_grpc
from agentmesh.gen.registry.v1 import registry_pb2 as r

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
USER_HEADER = "x-agentmesh-user"


@dataclass
class Stubs:
    registry: registry_pb2_grpc.RegistryServiceStub
    accounts: account_pb2_grpc.AccountServiceStub


@pytest.fixture
async def raw(sqlite_mesh) -> AsyncIterator[Stubs]:
    """Stubs on a channel that adds no credentials of its own."""
    async with grpc.aio.insecure_channel(sqlite_mesh.address) as channel:
        yield Stubs(
            registry_pb2_grpc.RegistryServiceStub(channel),
            account_pb2_grpc.AccountServiceStub(channel),
        )


def bearer(key: str, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"), *extra)


async def refused(rpc, request: Message, metadata=()) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rpc(request, metadata=metadata)
    return caught.value


def assert_refused(error: grpc.aio.AioRpcError, code: grpc.StatusCode) -> None:
    """The code, and an ErrorInfo whose reason is the code's name."""
    assert error.code() == code, error.details()
    error_info(error, reason=code.name)


async def new_key(raw: Stubs, owner_key: str, **api_key) -> a.ApiKey:
    return await raw.accounts.CreateApiKey(
        a.CreateApiKeyRequest(parent="users/me", api_key=a.ApiKey(**api_key)),
        metadata=bearer(owner_key),
    )


async def works(raw: Stubs, key: str) -> bool:
    """Whether the key is accepted (answering as its own user)."""
    try:
        await raw.registry.ListAgents(r.ListAgentsRequest(), metadata=bearer(key))
    except grpc.aio.AioRpcError as error:
        assert_refused(error, UNAUTHENTICATED)
        return False
    return True


def in_seconds(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.now(UTC) + timedelta(seconds=seconds))
    return stamp


# ---- authentication -------------------------------------------------------------

UNKNOWN_KEY = "am_" + secrets.token_urlsafe(32)

# Metadata that must not get anyone in, given a valid user key.
BAD_CREDENTIALS: dict[str, Callable[[str], tuple]] = {
    "none": lambda key: (),
    "basic": lambda key: (("authorization", "Basic dXNlcjpwYXNzd29yZA=="),),
    "bearer-without-key": lambda key: (("authorization", "Bearer"),),
    "bearer-and-space": lambda key: (("authorization", "Bearer "),),
    "key-without-scheme": lambda key: (("authorization", key),),
    "valid-key-wrong-scheme": lambda key: (("authorization", f"Token {key}"),),
    "unknown-key": lambda key: bearer(UNKNOWN_KEY),
    "key-with-extra-text": lambda key: bearer(key + "x"),
    "key-in-user-header": lambda key: ((USER_HEADER, key),),
}

# One method of each kind: a registry method, a user's account method, a service-only one.
CALLS: dict[str, Callable[[Stubs], tuple]] = {
    "ListAgents": lambda s: (s.registry.ListAgents, r.ListAgentsRequest()),
    "GetUser": lambda s: (s.accounts.GetUser, a.GetUserRequest(name="users/me")),
    "Authenticate": lambda s: (
        s.accounts.Authenticate,
        a.AuthenticateRequest(api_key=UNKNOWN_KEY),
    ),
}


@pytest.mark.parametrize("method", CALLS)
@pytest.mark.parametrize("credentials", BAD_CREDENTIALS)
async def test_bad_credentials_are_unauthenticated(raw, new_sqlite_user, credentials, method):
    client, _ = await new_sqlite_user()
    key = await _secret_of(client)
    metadata = BAD_CREDENTIALS[credentials](key)
    rpc, request = CALLS[method](raw)
    error = await refused(rpc, request, metadata)
    assert_refused(error, UNAUTHENTICATED)
    # The error never repeats a credential back.
    assert key not in error_text(error) and UNKNOWN_KEY not in error_text(error)


async def _secret_of(client) -> str:
    # new_sqlite_user's client does not expose its key; give the user one we know.
    # (Created through the user's own client, i.e. with its own key.)
    created = await client.accounts.CreateApiKey(a.CreateApiKeyRequest(parent="users/me"))
    return created.secret


async def test_a_valid_key_works_on_a_raw_channel(raw, new_sqlite_user):
    client, user = await new_sqlite_user()
    key = await _secret_of(client)
    me = await raw.accounts.GetUser(a.GetUserRequest(name="users/me"), metadata=bearer(key))
    assert me.name == user.name
    # The scheme is case-insensitive (RFC 9110), so this is the same credential.
    lower = await raw.accounts.GetUser(
        a.GetUserRequest(name="users/me"), metadata=(("authorization", f"bearer {key}"),)
    )
    assert lower == me


@pytest.mark.parametrize("deleted_by", ["owner", "admin"])
async def test_a_deleted_key_stops_working_at_once(raw, sqlite_mesh, new_sqlite_user, deleted_by):
    client, user = await new_sqlite_user()
    keeper = await _secret_of(client)
    doomed = await new_key(raw, keeper, display_name="doomed")
    assert await works(raw, doomed.secret)  # and now it is in the authenticator's cache

    deleter = keeper if deleted_by == "owner" else admin_key(sqlite_mesh)
    await raw.accounts.DeleteApiKey(
        a.DeleteApiKeyRequest(name=doomed.name), metadata=bearer(deleter)
    )
    assert not await works(raw, doomed.secret)
    assert await works(raw, keeper)  # the user's other keys are unaffected
    listed = await raw.accounts.ListApiKeys(
        a.ListApiKeysRequest(parent=user.name), metadata=bearer(keeper)
    )
    assert doomed.name not in [k.name for k in listed.api_keys]


async def test_a_key_cannot_be_created_already_expired(raw, new_sqlite_user):
    client, _ = await new_sqlite_user()
    keeper = await _secret_of(client)
    before = await raw.accounts.ListApiKeys(
        a.ListApiKeysRequest(parent="users/me"), metadata=bearer(keeper)
    )
    error = await refused(
        raw.accounts.CreateApiKey,
        a.CreateApiKeyRequest(parent="users/me", api_key=a.ApiKey(expire_time=in_seconds(-60))),
        bearer(keeper),
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == ["api_key.expire_time"]
    error_info(error)
    after = await raw.accounts.ListApiKeys(
        a.ListApiKeysRequest(parent="users/me"), metadata=bearer(keeper)
    )
    assert after == before


async def test_an_expiring_key_stops_working_when_it_expires(raw, new_sqlite_user):
    client, _ = await new_sqlite_user()
    keeper = await _secret_of(client)
    expire_time = in_seconds(1.5)
    key = await new_key(raw, keeper, display_name="short-lived", expire_time=expire_time)
    assert key.expire_time == expire_time
    assert await works(raw, key.secret)  # used, so cached, before it expires

    await asyncio.sleep(max(0.0, expire_time.ToDatetime(UTC).timestamp() - time.time()) + 0.2)
    assert not await works(raw, key.secret)
    assert await works(raw, keeper)


# ---- service-only methods ----------------------------------------------------------


@dataclass
class Account:
    user: a.User
    key: str  # a user key
    reservation: str  # an open reservation of 10 on a balance of 100


@pytest.fixture
async def account(raw, sqlite_mesh, new_sqlite_user) -> Account:
    client, user = await new_sqlite_user(credits=100)
    key = await _secret_of(client)
    reservation = await raw.accounts.ReserveCredits(
        a.ReserveCreditsRequest(user=user.name, amount=10),
        metadata=bearer(service_token(sqlite_mesh)),
    )
    return Account(user, key, reservation.name)


@dataclass(frozen=True)
class ServiceOnly:
    request: Callable[[Account], Message]
    check: Callable[[Account, Message], None]  # on the service's successful response
    balance: tuple[int, int]  # (balance, reserved) after the service's call


SERVICE_ONLY_CASES = {
    "Authenticate": ServiceOnly(
        lambda acc: a.AuthenticateRequest(api_key=acc.key),
        lambda acc, principal: principal == a.Principal(user=acc.user.name, admin=False),
        (100, 10),
    ),
    "ReserveCredits": ServiceOnly(
        lambda acc: a.ReserveCreditsRequest(user=acc.user.name, amount=30),
        lambda acc, reservation: reservation.user == acc.user.name and reservation.amount == 30,
        (100, 40),
    ),
    "SettleCredits": ServiceOnly(
        lambda acc: a.SettleCreditsRequest(reservation=acc.reservation, amount=4),
        lambda acc, balance: balance.available == 96,
        (96, 0),
    ),
    "ReleaseCredits": ServiceOnly(
        lambda acc: a.ReleaseCreditsRequest(reservation=acc.reservation),
        lambda acc, balance: balance.available == 100,
        (100, 0),
    ),
}


def test_service_only_cases_cover_every_service_only_method():
    assert set(SERVICE_ONLY_CASES) == SERVICE_ONLY


async def _balance(raw: Stubs, account: Account) -> tuple[int, int]:
    balance = await raw.accounts.GetCreditBalance(
        a.GetCreditBalanceRequest(name="users/me/creditBalance"), metadata=bearer(account.key)
    )
    return balance.balance, balance.reserved


@pytest.mark.parametrize("method", sorted(SERVICE_ONLY))
async def test_service_only_methods_refuse_users_and_admins(raw, sqlite_mesh, account, method):
    case = SERVICE_ONLY_CASES[method]
    rpc = getattr(raw.accounts, method)
    callers = {
        "user": bearer(account.key),
        "admin": bearer(admin_key(sqlite_mesh)),
        # Not even a user naming itself in the service header.
        "user-as-itself": bearer(account.key, (USER_HEADER, account.user.name)),
    }
    for caller, metadata in callers.items():
        error = await refused(rpc, case.request(account), metadata)
        assert error.code() == PERMISSION_DENIED, caller
        error_info(error, reason="PERMISSION_DENIED")
    assert await _balance(raw, account) == (100, 10)  # nothing happened

    response = await rpc(case.request(account), metadata=bearer(service_token(sqlite_mesh)))
    assert case.check(account, response), response
    assert await _balance(raw, account) == case.balance


@pytest.fixture
async def two_tenants(raw, new_sqlite_user):
    """Users A and B, each with a key and one agent."""
    tenants = {}
    for label in "AB":
        client, user = await new_sqlite_user()
        key = await _secret_of(client)
        agent = await raw.registry.CreateAgent(
            r.CreateAgentRequest(agent=r.Agent(display_name=f"{label}'s")), metadata=bearer(key)
        )
        tenants[label] = (user, key, agent)
    return tenants


@pytest.mark.parametrize("caller", ["user", "admin"])
async def test_only_the_service_may_name_the_user(raw, sqlite_mesh, two_tenants, caller):
    user_b, _, agent_b = two_tenants["B"]
    _, key_a, _ = two_tenants["A"]
    key = key_a if caller == "user" else admin_key(sqlite_mesh)
    impersonating = bearer(key, (USER_HEADER, user_b.name))
    for rpc, request in [
        (raw.registry.ListAgents, r.ListAgentsRequest()),
        (raw.registry.GetAgent, r.GetAgentRequest(name=agent_b.name)),
        (raw.accounts.GetUser, a.GetUserRequest(name="users/me")),
    ]:
        assert_refused(await refused(rpc, request, impersonating), PERMISSION_DENIED)


async def test_the_service_acts_for_the_user_it_names(raw, sqlite_mesh, two_tenants):
    user_b, _, agent_b = two_tenants["B"]
    _, _, agent_a = two_tenants["A"]
    as_b = bearer(service_token(sqlite_mesh), (USER_HEADER, user_b.name))

    listed = await raw.registry.ListAgents(r.ListAgentsRequest(page_size=1000), metadata=as_b)
    assert [agent.name for agent in listed.agents] == [agent_b.name]
    assert await raw.registry.GetAgent(r.GetAgentRequest(name=agent_b.name), metadata=as_b)
    error = await refused(raw.registry.GetAgent, r.GetAgentRequest(name=agent_a.name), as_b)
    assert_refused(error, grpc.StatusCode.NOT_FOUND)
    me = await raw.accounts.GetUser(a.GetUserRequest(name="users/me"), metadata=as_b)
    assert me.name == user_b.name
    # Acting for a user gives the service that user's rights, not an administrator's.
    error = await refused(
        raw.accounts.GrantCredits, a.GrantCreditsRequest(user=user_b.name, amount=5), as_b
    )
    assert_refused(error, PERMISSION_DENIED)


async def test_the_service_naming_no_user_cannot_call_user_methods(raw, sqlite_mesh):
    service = bearer(service_token(sqlite_mesh))
    for rpc, request in [
        (raw.registry.ListAgents, r.ListAgentsRequest()),
        (raw.accounts.GetUser, a.GetUserRequest(name="users/me")),
    ]:
        assert_refused(await refused(rpc, request, service), PERMISSION_DENIED)


# ---- admin-only methods ---------------------------------------------------------------


ADMIN_ONLY_CASES: dict[str, Callable[[a.User], Message]] = {
    "CreateUser": lambda user: a.CreateUserRequest(user=a.User(display_name="sock puppet")),
    "GrantCredits": lambda user: a.GrantCreditsRequest(user=user.name, amount=1_000_000),
}


def test_admin_only_cases_cover_every_admin_only_method():
    assert set(ADMIN_ONLY_CASES) == ADMIN_ONLY


@pytest.mark.parametrize("method", sorted(ADMIN_ONLY))
async def test_admin_only_methods_refuse_users(raw, sqlite_mesh, new_sqlite_user, method):
    client, user = await new_sqlite_user(credits=5)
    key = await _secret_of(client)
    request = ADMIN_ONLY_CASES[method](user)
    rpc = getattr(raw.accounts, method)
    for metadata in [
        bearer(key),
        bearer(service_token(sqlite_mesh), (USER_HEADER, user.name)),
    ]:
        assert_refused(await refused(rpc, request, metadata), PERMISSION_DENIED)
    balance = await raw.accounts.GetCreditBalance(
        a.GetCreditBalanceRequest(name="users/me/creditBalance"), metadata=bearer(key)
    )
    assert balance.balance == 5
    # The same request from an administrator goes through.
    await rpc(request, metadata=bearer(admin_key(sqlite_mesh)))


async def test_users_me_names_the_caller(raw, new_sqlite_user):
    client, user = await new_sqlite_user(credits=3)
    key = await _secret_of(client)
    me = bearer(key)
    assert await raw.accounts.GetUser(a.GetUserRequest(name="users/me"), metadata=me) == user
    assert await raw.accounts.GetUser(a.GetUserRequest(name=user.name), metadata=me) == user
    balance = await raw.accounts.GetCreditBalance(
        a.GetCreditBalanceRequest(name="users/me/creditBalance"), metadata=me
    )
    assert balance.name == f"{user.name}/creditBalance" and balance.balance == 3
    keys = await raw.accounts.ListApiKeys(a.ListApiKeysRequest(parent="users/me"), metadata=me)
    assert keys.api_keys and all(k.name.startswith(f"{user.name}/apiKeys/") for k in keys.api_keys)


async def test_admin_reaches_any_user(admin, new_sqlite_user):
    _, user = await new_sqlite_user()
    assert await admin.accounts.GetUser(a.GetUserRequest(name=user.name)) == user
    me = await admin.accounts.GetUser(a.GetUserRequest(name="users/me"))
    assert me.admin and me.name != user.name


# ---- secrets -------------------------------------------------------------------------


async def test_a_key_secret_is_shown_once_and_never_stored(raw, sqlite_mesh, new_sqlite_user):
    client, user = await new_sqlite_user()
    keeper = await _secret_of(client)
    created = await new_key(raw, keeper, display_name="shown once")
    assert created.secret.startswith("am_") and len(created.secret) > 40
    assert created.prefix and created.secret.startswith(created.prefix)
    assert len(created.prefix) < len(created.secret) // 2

    for reader in [keeper, admin_key(sqlite_mesh)]:
        listed = await raw.accounts.ListApiKeys(
            a.ListApiKeysRequest(parent=user.name), metadata=bearer(reader)
        )
        assert created.name in [k.name for k in listed.api_keys]
        for key in listed.api_keys:
            assert key.secret == ""
            assert created.secret not in str(key)
        (listed_key,) = [k for k in listed.api_keys if k.name == created.name]
        assert listed_key.prefix == created.prefix

    files = sorted(sqlite_mesh.settings.data_dir.glob("registry.db*"))
    assert files, "no registry database under the data dir"
    stored = b"".join(path.read_bytes() for path in files)
    key_id = created.name.rpartition("/")[2]
    assert key_id.encode() in stored  # the key's row is there, in the files read
    random_part = created.secret.removeprefix(created.prefix)
    assert created.secret.encode() not in stored
    assert random_part.encode() not in stored


async def test_api_keys_list_in_pages(new_sqlite_user):
    client, user = await new_sqlite_user()  # it has one key already
    for i in range(4):
        await client.accounts.CreateApiKey(
            a.CreateApiKeyRequest(parent="users/me", api_key=a.ApiKey(display_name=f"k{i}"))
        )
    first = await client.accounts.ListApiKeys(a.ListApiKeysRequest(parent=user.name, page_size=3))
    second = await client.accounts.ListApiKeys(
        a.ListApiKeysRequest(parent=user.name, page_size=3, page_token=first.next_page_token)
    )
    assert len(first.api_keys) == 3 and first.next_page_token
    assert len(second.api_keys) == 2 and not second.next_page_token
    names = [key.name for key in (*first.api_keys, *second.api_keys)]
    assert len(set(names)) == 5
    assert all(not key.secret for key in (*first.api_keys, *second.api_keys))


async def test_each_call_is_logged_with_its_caller_and_code(new_sqlite_user, caplog):
    caplog.set_level(logging.INFO, logger="agentmesh.rpc")
    client, user = await new_sqlite_user()
    await client.registry.ListAgents(r.ListAgentsRequest())
    with pytest.raises(grpc.aio.AioRpcError):
        await client.registry.GetAgent(r.GetAgentRequest(name="agents/missing"))
    lines = [record.getMessage() for record in caplog.records if record.name == "agentmesh.rpc"]
    assert any(
        "RegistryService/ListAgents OK" in line and f"caller={user.name}" in line for line in lines
    )
    assert any(
        "RegistryService/GetAgent NOT_FOUND" in line and f"caller={user.name}" in line
        for line in lines
    )
