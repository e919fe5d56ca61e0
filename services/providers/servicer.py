"""gRPC servicer of the providers service: protos in, store and secret calls, protos out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from datetime import timedelta
from typing import TypeVar

import grpc
from google.protobuf import duration_pb2, empty_pb2, json_format

from agentmesh.api import check_update, merge_update, timestamp
from agentmesh.auth import current_user
from agentmesh.errors import Aborted, FailedPrecondition, InvalidArgument, Unavailable
from agentmesh.events import EventBus
from agentmesh.gen.common.v1 import common_pb2
from agentmesh.gen.providers.v1 import events_pb2, providers_pb2_grpc
from agentmesh.gen.providers.v1 import providers_pb2 as p
from agentmesh.ids import new_id, utc_now
from agentmesh.names import ResourceName
from agentmesh.outbound import BlockedDestination, check_url_literal
from agentmesh.paging import Pages
from services.providers.probe import DEFAULT_BASE_URLS, NEEDS_BASE_URL, probe
from services.providers.secrets import (
    SecretConflict,
    SecretNotFound,
    SecretStore,
    SecretStoreUnavailable,
)
from services.providers.store import Provider, ProviderStore, SecretIntent

PROVIDER = ResourceName.of(p.Provider)
log = logging.getLogger("agentmesh.providers")
_T = TypeVar("_T")
_CONFIG_FIELDS = ("display_name", "base_url", "default_model", "organization")
# Which provider type each typed settings message belongs to.
_SETTINGS_TYPE = {"azure_openai": "azure_openai", "anthropic": "anthropic"}


def _type_name(value: int) -> str:
    return p.ProviderType.Name(value).removeprefix("PROVIDER_TYPE_").lower()


def _type_value(name: str) -> p.ProviderType:
    return p.ProviderType.Value("PROVIDER_TYPE_" + name.upper())


def _secret_path(user_id: str, provider_id: str) -> str:
    return f"users/{user_id}/providers/{provider_id}"


def _hint(api_key: str) -> str:
    # Short keys would give too much away; real provider keys are far longer.
    return api_key[-4:] if len(api_key) >= 16 else ""


def _config(message: p.Provider) -> dict:
    """The stored form of everything but the key: plain JSON, no proto."""
    config = {name: getattr(message, name) for name in _CONFIG_FIELDS}
    config["models"] = list(message.models)
    config["type"] = _type_name(message.type)
    config["extra_headers"] = dict(message.extra_headers)
    which = message.WhichOneof("settings")
    config["settings"] = (
        {
            which: json_format.MessageToDict(
                getattr(message, which), preserving_proto_field_name=True
            )
        }
        if which
        else {}
    )
    return config


def _set_settings(message: p.Provider | p.Credentials, config: dict) -> None:
    message.extra_headers.update(config.get("extra_headers", {}))
    for which, values in config.get("settings", {}).items():
        json_format.ParseDict(values, getattr(message, which))


def _proto(provider: Provider) -> p.Provider:
    config = provider.config
    message = p.Provider(
        name=PROVIDER.format(provider.id),
        type=_type_value(config["type"]),
        api_key_hint=provider.api_key_hint,
        is_default=provider.is_default,
        etag=provider.etag,
        create_time=timestamp(provider.create_time),
        update_time=timestamp(provider.update_time),
        models=config["models"],
        **{name: config[name] for name in _CONFIG_FIELDS},
    )
    _set_settings(message, config)
    return message


def _check(message: p.Provider, require_key: bool, allow: list[str]) -> None:
    kind = _type_name(message.type)
    try:
        check_url_literal(message.base_url, allow)
    except BlockedDestination as blocked:
        raise InvalidArgument([("provider.base_url", str(blocked))]) from None
    if kind in NEEDS_BASE_URL and not message.base_url:
        raise InvalidArgument([("provider.base_url", f"a {kind} provider needs a base_url")])
    which = message.WhichOneof("settings")
    if which and _SETTINGS_TYPE[which] != kind:
        raise InvalidArgument(
            [(f"provider.{which}", f"only for {_SETTINGS_TYPE[which]} providers")]
        )
    if kind == "azure_openai" and which != "azure_openai":
        raise InvalidArgument(
            [("provider.azure_openai", "an azure_openai provider needs its api_version")]
        )
    if require_key and kind != "custom" and not message.api_key:
        raise InvalidArgument([("provider.api_key", f"a {kind} provider needs an api_key")])
    if message.default_model and message.models and message.default_model not in message.models:
        raise InvalidArgument([("provider.default_model", "must be one of provider.models")])
    # What goes out in request headers must be something a header can carry.
    headers = {"provider.api_key": message.api_key, "provider.organization": message.organization}
    headers |= {f'provider.extra_headers["{k}"]': v for k, v in message.extra_headers.items()}
    if unsendable := [field for field, value in headers.items() if not _header_value(value)]:
        raise InvalidArgument(
            (field, "only printable ASCII can be sent in a header") for field in unsendable
        )


def _header_value(text: str) -> bool:
    return all(" " <= char <= "~" or char == "\t" for char in text)


def _base_url(config: dict) -> str:
    return config["base_url"] or DEFAULT_BASE_URLS[config["type"]]


class ProviderServicer(providers_pb2_grpc.ProviderServiceServicer):
    def __init__(
        self,
        store: ProviderStore,
        secrets: SecretStore,
        events: EventBus,
        system_default: p.Credentials | None,
        outbound_allow: list[str],
        pages: Pages,
    ):
        self._store = store
        self._pages = pages
        self._secrets = secrets
        self._events = events
        self._system_default = system_default
        self._outbound_allow = outbound_allow

    async def CreateProvider(
        self, request: p.CreateProviderRequest, context: grpc.aio.ServicerContext
    ) -> p.Provider:
        user = current_user()
        _check(request.provider, require_key=True, allow=self._outbound_allow)
        provider_id, api_key = new_id(), request.provider.api_key
        # Announced, then written, then made live with the row; a failure between
        # takes the secret back, or leaves it to the sweep (store.py).
        intent = await self._store.intend(user.user_id, provider_id)
        try:
            version = await self._put_secret(intent, api_key, cas="0")
        except BaseException:
            await self._take_back(intent)
            raise
        created = utc_now()
        provider = Provider(
            provider_id,
            user.user_id,
            _config(request.provider),
            request.provider.is_default,
            _hint(api_key),
            version,
            new_id(),
            created,
            created,
        )
        try:
            provider = await self._store.create(provider, intent)
        except BaseException:
            await self._take_back(intent)
            raise
        await self._publish_change(provider, common_pb2.CHANGE_KIND_CREATED)
        return _proto(provider)

    async def GetProvider(
        self, request: p.GetProviderRequest, context: grpc.aio.ServicerContext
    ) -> p.Provider:
        provider = await self._store.get(current_user().user_id, PROVIDER.id(request.name))
        return _proto(provider)

    async def ListProviders(
        self, request: p.ListProvidersRequest, context: grpc.aio.ServicerContext
    ) -> p.ListProvidersResponse:
        cursor = self._pages.open(request)
        page = await self._store.list(
            current_user().user_id,
            cursor.after,
            cursor.size,
        )
        return p.ListProvidersResponse(
            providers=[_proto(provider) for provider in page.items],
            next_page_token=cursor.next_token(page.last_seq),
        )

    async def UpdateProvider(
        self, request: p.UpdateProviderRequest, context: grpc.aio.ServicerContext
    ) -> p.Provider:
        user = current_user()
        (provider_id,) = check_update("provider", request.provider, request.update_mask, PROVIDER)
        existing = await self._store.get(user.user_id, provider_id)
        merged = merge_update("provider", _proto(existing), request.provider, request.update_mask)
        _check(merged, require_key=False, allow=self._outbound_allow)
        existing.config, existing.is_default = _config(merged), merged.is_default
        if "api_key" in request.update_mask.paths:
            if not merged.api_key and existing.config["type"] != "custom":
                raise InvalidArgument([("provider.api_key", "cannot be emptied; rotate it")])
            # Rotation: a new version of the same secret, used from the next resolution
            # on. Check-and-set on the latest version: of concurrent rotations one
            # writes and the rest write nothing (ABORTED), so no burst of them can push
            # the version in use out of the secret's bounded history.
            path = _secret_path(user.user_id, existing.id)
            latest = await self._secret_call(self._secrets.latest_version(path))
            intent = await self._store.intend(user.user_id, existing.id)
            try:
                existing.secret_version = await self._put_secret(intent, merged.api_key, latest)
                existing.api_key_hint = _hint(merged.api_key)
                provider = await self._store.update(existing, existing.etag, intent)
            except BaseException:
                await self._take_back(intent)
                raise
        else:
            provider = await self._store.update(existing, expected_etag=existing.etag)
        await self._publish_change(provider, common_pb2.CHANGE_KIND_UPDATED)
        return _proto(provider)

    async def DeleteProvider(
        self, request: p.DeleteProviderRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        user = current_user()
        provider = await self._store.get(user.user_id, PROVIDER.id(request.name))
        # The row first, its secret doomed with it: a secret store that is down
        # now delays the secret's deletion to the sweep, and refuses nothing.
        intent = await self._store.delete(user.user_id, provider.id)
        await self._take_back(intent)
        await self._publish_change(provider, common_pb2.CHANGE_KIND_DELETED)
        return empty_pb2.Empty()

    async def TestProvider(
        self, request: p.TestProviderRequest, context: grpc.aio.ServicerContext
    ) -> p.TestProviderResponse:
        user = current_user()
        provider = await self._store.get(user.user_id, PROVIDER.id(request.name))
        api_key = await self._get_secret(user.user_id, provider)
        result = await probe(
            _base_url(provider.config),
            api_key,
            provider.config["organization"],
            request.model or provider.config["default_model"],
            self._outbound_allow,
        )
        latency = duration_pb2.Duration()
        latency.FromNanoseconds(int(result.latency_seconds * 1e9))
        return p.TestProviderResponse(
            ok=result.ok,
            message=result.message,
            failure_reason=result.failure_reason,
            models=result.models,
            latency=latency,
        )

    async def ResolveCredentials(
        self, request: p.ResolveCredentialsRequest, context: grpc.aio.ServicerContext
    ) -> p.Credentials:
        user_id = request.user.removeprefix("users/")
        provider: Provider | None
        if request.provider:
            provider = await self._store.get(user_id, PROVIDER.id(request.provider))
        else:
            provider = await self._store.get_default(user_id)
        if provider is None:
            if self._system_default is None:
                raise FailedPrecondition(
                    "no model provider is configured: add one with "
                    "ProviderService.CreateProvider (POST /api/v1/providers) and mark it "
                    "default, or set OPENAI_API_KEY for the system default",
                    reason="NO_PROVIDER",
                )
            return self._system_default
        config = provider.config
        credentials = p.Credentials(
            provider=PROVIDER.format(provider.id),
            type=_type_value(config["type"]),
            base_url=_base_url(config),
            api_key=await self._get_secret(user_id, provider),
            organization=config["organization"],
            default_model=config["default_model"],
            version=provider.secret_version,
        )
        _set_settings(credentials, config)
        return credentials

    async def sweep_secrets(self, grace: timedelta) -> int:
        """Finishes the secret writes left half-done more than grace ago (and every
        doomed one): deletes each secret no provider uses. How many it deleted."""
        deleted = 0
        for intent in await self._store.unsettled(utc_now() - grace):
            deleted += await self._finish(intent)
        return deleted

    async def _take_back(self, intent: SecretIntent) -> None:
        """Finishes an intent whose request failed (or a deleted provider's) at once;
        if the secret store fails too, the sweep finishes it later."""
        try:
            await asyncio.shield(self._finish(intent))
        except Exception as error:  # noqa: BLE001 - the sweep tries again
            log.warning(
                "the secret of providers/%s is left to the sweep (%s)",
                intent.provider_id,
                type(error).__name__,
            )

    async def _finish(self, intent: SecretIntent) -> bool:
        if not await self._store.doom(intent):
            return False
        await self._secrets.delete(_secret_path(intent.user_id, intent.provider_id))
        await self._store.forget(intent)
        return True

    async def _put_secret(self, intent: SecretIntent, api_key: str, cas: str) -> str:
        path = _secret_path(intent.user_id, intent.provider_id)
        try:
            return await self._secret_call(self._secrets.put(path, api_key, cas))
        except SecretConflict:
            raise Aborted(
                "the provider's API key was rotated at the same time by another request; "
                "read the provider and try again",
                reason="CONCURRENT_ROTATION",
            ) from None

    async def _secret_call(self, call: Awaitable[_T]) -> _T:
        try:
            return await call
        except SecretStoreUnavailable:
            raise _unavailable() from None

    async def _get_secret(self, user_id: str, provider: Provider) -> str:
        try:
            # The version the row names, not the latest: a rotation whose row
            # update then failed must not take effect.
            return await self._secrets.get(
                _secret_path(user_id, provider.id), provider.secret_version
            )
        except SecretStoreUnavailable:
            raise _unavailable() from None
        except SecretNotFound:
            raise FailedPrecondition(
                f"providers/{provider.id} has lost its API key; set a new one with UpdateProvider",
                reason="SECRET_MISSING",
            ) from None

    async def _publish_change(self, provider: Provider, kind: common_pb2.ChangeKind) -> None:
        await self._events.publish(
            events_pb2.ProviderChanged(
                provider=PROVIDER.format(provider.id),
                user=f"users/{provider.user_id}",
                kind=kind,
                time=timestamp(utc_now()),
            )
        )


def _unavailable() -> Unavailable:
    return Unavailable(
        "the secret store is unavailable; nothing was changed", retry_after_seconds=5
    )
