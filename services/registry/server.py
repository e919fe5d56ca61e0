"""gRPC servicers of the registry: protos in, store calls, protos out."""

from __future__ import annotations

from datetime import UTC, timedelta

from google.protobuf import empty_pb2, json_format

from agentmesh import paging
from agentmesh.auth import Authenticator, Principal, current_user
from agentmesh.db import utc_now
from agentmesh.errors import Aborted, InvalidArgument, NotFound, PermissionDenied
from agentmesh.events import AGENTS_CHANGED, EventBus
from agentmesh.gen.events.v1 import events_pb2
from agentmesh.gen.registry.v1 import account_pb2, account_pb2_grpc, registry_pb2, registry_pb2_grpc
from agentmesh.server import check_update, timestamp, validate
from services.registry import store as records
from services.registry.definitions import check_agent
from services.registry.store import RegistryStore

# Agent fields that live outside the stored definition.
_NOT_IN_SPEC = ("name", "handoffs", "createTime", "updateTime", "etag")
# Fields UpdateAgent may change.
_UPDATABLE = {
    field.name
    for field in registry_pb2.Agent.DESCRIPTOR.fields
    if field.name not in ("name", "create_time", "update_time", "etag")
}
DEFAULT_RESERVATION_TTL = timedelta(minutes=10)


def _id(name: str, collection: str) -> str:
    """The id in a validated resource name (`collection/{id}`)."""
    return name.removeprefix(collection + "/")


def _agent_proto(agent: records.Agent) -> registry_pb2.Agent:
    message = json_format.ParseDict(agent.spec, registry_pb2.Agent())
    message.name = f"agents/{agent.id}"
    message.handoffs.extend(f"agents/{target}" for target in agent.handoffs)
    message.create_time.CopyFrom(timestamp(agent.create_time))
    message.update_time.CopyFrom(timestamp(agent.update_time))
    message.etag = agent.etag
    return message


def _spec(agent: registry_pb2.Agent) -> dict:
    spec = json_format.MessageToDict(agent)
    for key in _NOT_IN_SPEC:
        spec.pop(key, None)
    return spec


def _context_proto(context: records.Context) -> registry_pb2.Context:
    message = registry_pb2.Context(
        name=f"agents/{context.agent_id}/contexts/{context.id}",
        display_name=context.display_name,
        default=context.is_default,
    )
    message.values.update(context.values)
    message.create_time.CopyFrom(timestamp(context.create_time))
    return message


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, store: RegistryStore, events: EventBus):
        self._store = store
        self._events = events

    async def CreateAgent(self, request, context):
        user = current_user()
        spec = _spec(request.agent)
        check_agent(spec)
        agent = await self._store.create_agent(
            user.user_id, spec, [_id(h, "agents") for h in request.agent.handoffs]
        )
        await self._changed(agent, events_pb2.CHANGE_KIND_CREATED)
        return _agent_proto(agent)

    async def GetAgent(self, request, context):
        agent = await self._store.get_agent(current_user().user_id, _id(request.name, "agents"))
        return _agent_proto(agent)

    async def ListAgents(self, request, context):
        page = await self._store.list_agents(
            current_user().user_id,
            paging.decode_page_token(request.page_token),
            paging.page_size(request.page_size),
        )
        return registry_pb2.ListAgentsResponse(
            agents=[_agent_proto(agent) for agent in page.items],
            next_page_token=paging.next_page_token(page.last_seq),
        )

    async def UpdateAgent(self, request, context):
        user = current_user()
        check_update("agent", request.agent.name, "agents", request.update_mask, _UPDATABLE)
        agent_id = _id(request.agent.name, "agents")
        existing = await self._store.get_agent(user.user_id, agent_id)
        if request.agent.etag and request.agent.etag != existing.etag:
            raise Aborted(f"agents/{agent_id} changed since it was read; read it again")
        merged = _agent_proto(existing)
        request.update_mask.MergeMessage(
            request.agent, merged, replace_message_field=True, replace_repeated_field=True
        )
        validate(merged, prefix="agent.")
        spec = _spec(merged)
        check_agent(spec)
        handoffs = [_id(h, "agents") for h in merged.handoffs]
        if agent_id in handoffs:
            raise InvalidArgument([("agent.handoffs", "an agent cannot hand off to itself")])
        agent = await self._store.update_agent(
            user.user_id, agent_id, existing.etag, spec, handoffs
        )
        await self._changed(agent, events_pb2.CHANGE_KIND_UPDATED)
        return _agent_proto(agent)

    async def DeleteAgent(self, request, context):
        user = current_user()
        agent_id = _id(request.name, "agents")
        await self._store.delete_agent(user.user_id, agent_id, request.etag)
        await self._events.publish(
            AGENTS_CHANGED,
            events_pb2.AgentChanged(
                agent=request.name, user=user.user, kind=events_pb2.CHANGE_KIND_DELETED
            ),
        )
        return empty_pb2.Empty()

    async def AddHandoff(self, request, context):
        user = current_user()
        agent_id, target_id = _id(request.agent, "agents"), _id(request.target, "agents")
        existing = await self._store.get_agent(user.user_id, agent_id)
        if target_id == agent_id:
            raise InvalidArgument([("target", "an agent cannot hand off to itself")])
        try:
            await self._store.get_agent(user.user_id, target_id)
        except NotFound:
            raise InvalidArgument([("target", f"{request.target} not found")]) from None
        if target_id in existing.handoffs:
            return _agent_proto(existing)
        agent = await self._store.update_agent(
            user.user_id, agent_id, existing.etag, existing.spec, [*existing.handoffs, target_id]
        )
        await self._changed(agent, events_pb2.CHANGE_KIND_UPDATED)
        return _agent_proto(agent)

    async def RemoveHandoff(self, request, context):
        user = current_user()
        agent_id, target_id = _id(request.agent, "agents"), _id(request.target, "agents")
        existing = await self._store.get_agent(user.user_id, agent_id)
        if target_id not in existing.handoffs:
            raise NotFound(f"{request.agent}/handoffs/{target_id}")
        remaining = [h for h in existing.handoffs if h != target_id]
        agent = await self._store.update_agent(
            user.user_id, agent_id, existing.etag, existing.spec, remaining
        )
        await self._changed(agent, events_pb2.CHANGE_KIND_UPDATED)
        return _agent_proto(agent)

    async def CreateContext(self, request, context):
        user = current_user()
        created = await self._store.create_context(
            user.user_id,
            _id(request.parent, "agents"),
            request.context.display_name,
            json_format.MessageToDict(request.context.values),
            request.context.default,
        )
        return _context_proto(created)

    async def GetContext(self, request, context):
        agent_id, _, context_id = _id(request.name, "agents").partition("/contexts/")
        found = await self._store.get_context(current_user().user_id, agent_id, context_id)
        return _context_proto(found)

    async def ListContexts(self, request, context):
        page = await self._store.list_contexts(
            current_user().user_id,
            _id(request.parent, "agents"),
            paging.decode_page_token(request.page_token),
            paging.page_size(request.page_size),
        )
        return registry_pb2.ListContextsResponse(
            contexts=[_context_proto(c) for c in page.items],
            next_page_token=paging.next_page_token(page.last_seq),
        )

    async def DeleteContext(self, request, context):
        agent_id, _, context_id = _id(request.name, "agents").partition("/contexts/")
        await self._store.delete_context(current_user().user_id, agent_id, context_id)
        return empty_pb2.Empty()

    async def _changed(self, agent: records.Agent, kind: events_pb2.ChangeKind) -> None:
        await self._events.publish(
            AGENTS_CHANGED,
            events_pb2.AgentChanged(
                agent=f"agents/{agent.id}",
                user=f"users/{agent.user_id}",
                kind=kind,
                etag=agent.etag,
                time=timestamp(agent.update_time),
            ),
        )


def _user_proto(user: records.User) -> account_pb2.User:
    return account_pb2.User(
        name=f"users/{user.id}",
        display_name=user.display_name,
        email=user.email,
        admin=user.admin,
        create_time=timestamp(user.create_time),
    )


def _key_proto(key: records.ApiKey) -> account_pb2.ApiKey:
    message = account_pb2.ApiKey(
        name=f"users/{key.user_id}/apiKeys/{key.id}",
        display_name=key.display_name,
        secret=key.secret,
        prefix=key.prefix,
        create_time=timestamp(key.create_time),
    )
    if key.expire_time:
        message.expire_time.CopyFrom(timestamp(key.expire_time))
    return message


def _balance_proto(balance: records.Balance) -> account_pb2.CreditBalance:
    return account_pb2.CreditBalance(
        name=f"users/{balance.user_id}/creditBalance",
        balance=balance.balance,
        reserved=balance.reserved,
        available=balance.balance - balance.reserved,
    )


def _own_user_id(user_name: str) -> str:
    """The user a caller may act on: itself (or users/me), any user for an admin.

    Anyone else's user answers NOT_FOUND, so a caller cannot learn who exists.
    """
    principal = current_user()
    user_id = _id(user_name, "users")
    if user_id == "me":
        return principal.user_id
    if user_id != principal.user_id and not principal.admin:
        raise NotFound(user_name)
    return user_id


def _require_admin() -> Principal:
    principal = current_user()
    if not principal.admin:
        raise PermissionDenied("this method is for administrators")
    return principal


class AccountServicer(account_pb2_grpc.AccountServiceServicer):
    def __init__(self, store: RegistryStore, authenticator: Authenticator):
        self._store = store
        self._authenticator = authenticator

    async def CreateUser(self, request, context):
        _require_admin()
        if not request.user.display_name:
            raise InvalidArgument([("user.display_name", "value is required")])
        user = await self._store.create_user(
            request.user.display_name, request.user.email, request.user.admin
        )
        return _user_proto(user)

    async def GetUser(self, request, context):
        return _user_proto(await self._store.get_user(_own_user_id(request.name)))

    async def CreateApiKey(self, request, context):
        user_id = _own_user_id(request.parent)
        await self._store.get_user(user_id)
        expire_time = None
        if request.api_key.HasField("expire_time"):
            expire_time = request.api_key.expire_time.ToDatetime(tzinfo=UTC)
            if expire_time <= utc_now():
                raise InvalidArgument([("api_key.expire_time", "must be in the future")])
        key = await self._store.create_api_key(user_id, request.api_key.display_name, expire_time)
        return _key_proto(key)

    async def ListApiKeys(self, request, context):
        page = await self._store.list_api_keys(
            _own_user_id(request.parent),
            paging.decode_page_token(request.page_token),
            paging.page_size(request.page_size),
        )
        return account_pb2.ListApiKeysResponse(
            api_keys=[_key_proto(key) for key in page.items],
            next_page_token=paging.next_page_token(page.last_seq),
        )

    async def DeleteApiKey(self, request, context):
        user_name, _, key_id = request.name.partition("/apiKeys/")
        user_id = _own_user_id(user_name)
        await self._store.delete_api_key(user_id, key_id)
        # Keys are cached for a few seconds; a deleted one must stop working now
        # (in this process; others expire it within auth_cache_seconds).
        self._authenticator.forget(f"users/{user_id}")
        return empty_pb2.Empty()

    async def GetCreditBalance(self, request, context):
        user_id = _own_user_id(request.name.removesuffix("/creditBalance"))
        return _balance_proto(await self._store.get_balance(user_id))

    async def GrantCredits(self, request, context):
        _require_admin()
        balance = await self._store.grant_credits(
            _id(request.user, "users"), request.amount, request.reason
        )
        return _balance_proto(balance)

    async def Authenticate(self, request, context):
        found = await self._store.key_owner(request.api_key)
        if found is None:
            raise NotFound("api key")
        user, expire_time = found
        principal = account_pb2.Principal(user=f"users/{user.id}", admin=user.admin)
        if expire_time:
            principal.expire_time.CopyFrom(timestamp(expire_time))
        return principal

    async def ReserveCredits(self, request, context):
        ttl = request.ttl.ToTimedelta() if request.HasField("ttl") else timedelta(0)
        reservation = await self._store.reserve_credits(
            _id(request.user, "users"), request.amount, ttl or DEFAULT_RESERVATION_TTL
        )
        return account_pb2.Reservation(
            name=f"reservations/{reservation.id}",
            user=request.user,
            amount=reservation.amount,
            expire_time=timestamp(reservation.expire_time),
        )

    async def SettleCredits(self, request, context):
        balance = await self._store.settle_credits(
            _id(request.reservation, "reservations"), request.amount
        )
        return _balance_proto(balance)

    async def ReleaseCredits(self, request, context):
        balance = await self._store.release_credits(_id(request.reservation, "reservations"))
        return _balance_proto(balance)


SERVICE_ONLY = ("Authenticate", "ReserveCredits", "SettleCredits", "ReleaseCredits")
