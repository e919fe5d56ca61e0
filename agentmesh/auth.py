"""Who a request acts for.

Callers send `authorization: Bearer <api key>`. Services send the shared service
token instead; when they act for a user they name it in `x-agentmesh-user`, a
header only the service token may carry.
"""

from __future__ import annotations

import contextvars
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from agentmesh.errors import PermissionDenied, Unauthenticated

USER_HEADER = "x-agentmesh-user"


@dataclass(frozen=True)
class Principal:
    user: str  # users/{id}; empty for a service acting for no one
    admin: bool = False
    service: bool = False
    # When the credential stops being valid (an API key's expire_time); None: never,
    # or not known. Not part of who the principal is.
    expire_time: datetime | None = field(default=None, compare=False)

    @property
    def user_id(self) -> str:
        return self.user.removeprefix("users/")


_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("principal")


def current_principal() -> Principal:
    """The caller of the RPC being served (set by the server's interceptor)."""
    return _current.get()


def current_principal_or_none() -> Principal | None:
    """The caller of the RPC being served, or None outside one."""
    return _current.get(None)


def caller_for_logs() -> str:
    """Who is calling, for a log line: a user's name, "service", or "-" before auth."""
    principal = _current.get(None)
    if principal is None:
        return "-"
    if principal.service:
        return f"service({principal.user})" if principal.user else "service"
    return principal.user


def set_principal(principal: Principal) -> contextvars.Token:
    return _current.set(principal)


def current_user() -> Principal:
    """The caller, who must act for a user (a user key, or a service naming one)."""
    principal = _current.get()
    if not principal.user:
        raise PermissionDenied("this method acts for a user; send x-agentmesh-user")
    return principal


# Looks up an API key: the principal, or None for a key that is not valid.
KeyLookup = Callable[[str], Awaitable[Principal | None]]


class Authenticator:
    """Turns request metadata into a Principal, caching key lookups briefly."""

    def __init__(self, service_token: str, lookup: KeyLookup, cache_seconds: float = 30.0):
        self._service_token = service_token.encode()
        self._lookup = lookup
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Principal]] = {}

    async def authenticate(self, metadata: dict[str, str]) -> Principal:
        header = metadata.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer" or not credential:
            raise Unauthenticated("missing credentials: send 'authorization: Bearer <api key>'")
        if hmac.compare_digest(credential.encode(), self._service_token):
            return Principal(user=metadata.get(USER_HEADER, ""), service=True)
        if USER_HEADER in metadata:
            raise PermissionDenied(f"{USER_HEADER} is for service credentials only")
        return await self._principal_for_key(credential)

    async def _principal_for_key(self, key: str) -> Principal:
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached and cached[0] > now:
            return cached[1]
        principal = await self._lookup(key)
        if principal is None:
            raise Unauthenticated("invalid or expired API key")
        if len(self._cache) > 10_000:
            self._cache.clear()
        trusted_until = now + self._cache_seconds
        if principal.expire_time is not None:
            # Never trust a cached key past its own expiry.
            remaining = (principal.expire_time - datetime.now(UTC)).total_seconds()
            trusted_until = min(trusted_until, now + remaining)
        self._cache[key] = (trusted_until, principal)
        return principal

    def forget(self, user: str | None = None) -> None:
        """Drops cached keys (of one user, or all), e.g. after a key is deleted."""
        if user is None:
            self._cache.clear()
            return
        for key, (_, principal) in list(self._cache.items()):
            if principal.user == user:
                del self._cache[key]
