"""The providers service against a real OpenBao and against the local encrypted store."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from datetime import timedelta

import grpc
import hvac
import openai
import pytest
from google.protobuf import field_mask_pb2
from rpc_helpers import field_violations
from sqlalchemy import text
from support import admin_key, database_url, service_token

from agentmesh.client import Client
from agentmesh.config import Settings
from agentmesh.db import create_engine, dispose
from agentmesh.errors import Aborted
from agentmesh.gen.providers.v1 import providers_pb2 as p
from agentmesh.gen.registry.v1 import account_pb2
from agentmesh.ids import utc_now
from agentmesh.mesh import Mesh
from agentmesh.model_server import ModelServer, Reply, ToolCall
from agentmesh.processes import free_port
from agentmesh.testing.vault import DevVault
from services import PLUGINS
from services.providers.plugin import secret_store
from services.providers.secrets import SecretNotFound, SecretStoreUnavailable

KEY = "sk-test-" + "k3y" * 10 + "WXYZ"
ROTATED = "sk-test-" + "r0t" * 10 + "ABCD"


@pytest.fixture(scope="session")
def vault():
    with DevVault() as server:
        yield server


def _settings(data_dir, store: str, vault: DevVault | None) -> Settings:
    extra = {"vault_url": vault.url, "vault_token": vault.token} if vault else {}
    return Settings(
        data_dir=data_dir,
        port=0,
        secret_store=store,
        standin_model=False,
        openai_api_key="",
        # The model server the tests call listens on loopback.
        outbound_allow=["127.0.0.1"],
        **extra,
    )


@pytest.fixture(scope="session", params=["vault", "local"])
async def providers_mesh(request, tmp_path_factory):
    """Production's shape (Vault, Postgres) and the embedded one (local store, SQLite)."""
    store = request.param
    dev_vault = request.getfixturevalue("vault") if store == "vault" else None
    data_dir = tmp_path_factory.mktemp(f"providers-{store}")
    settings = _settings(data_dir, store, dev_vault)
    if store == "vault":
        postgres = request.getfixturevalue("postgres")
        settings = settings.model_copy(
            update={"database_url": database_url("postgres", postgres, data_dir)}
        )
    async with Mesh(settings, PLUGINS) as mesh:
        yield mesh


async def _stored_rows(mesh) -> bytes:
    """Everything the providers database holds, as bytes to search."""
    engine = create_engine(mesh.settings.database_url_for("providers"))
    async with engine.connect() as conn:
        rows = [
            row
            for table in ("providers", "secret_intents")
            for row in (await conn.execute(text(f"SELECT * FROM {table}"))).all()
        ]
    await dispose(engine)
    return repr(rows).encode()


@pytest.fixture(scope="session")
async def model_server():
    async with ModelServer(api_key=KEY) as server:
        yield server


@pytest.fixture
async def tenant(providers_mesh):
    """A fresh user's client and a service client for the same mesh."""
    admin = Client(providers_mesh.address, admin_key(providers_mesh))
    clients = [admin]

    async def make():
        user = await admin.accounts.CreateUser(
            account_pb2.CreateUserRequest(user=account_pb2.User(display_name="t"))
        )
        key = await admin.accounts.CreateApiKey(account_pb2.CreateApiKeyRequest(parent=user.name))
        client = Client(providers_mesh.address, key.secret)
        clients.append(client)
        return client, user.name

    service = Client(providers_mesh.address, service_token(providers_mesh))
    clients.append(service)
    yield make, service
    for client in clients:
        await client.close()


def custom(base_url: str, api_key: str = KEY, **fields) -> p.CreateProviderRequest:
    return p.CreateProviderRequest(
        provider=p.Provider(
            display_name="local",
            type=p.PROVIDER_TYPE_CUSTOM,
            base_url=base_url,
            api_key=api_key,
            **fields,
        )
    )


def _closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"


def _bytes_under(directory) -> bytes:
    return b"".join(path.read_bytes() for path in directory.rglob("*") if path.is_file())


async def test_key_goes_to_the_secret_store_and_nowhere_else(
    providers_mesh, tenant, model_server, caplog
):
    caplog.set_level(logging.DEBUG)
    make, service = tenant
    client, user = await make()
    created = await client.providers.CreateProvider(custom(model_server.base_url, is_default=True))
    assert created.api_key == "" and created.api_key_hint == "WXYZ"
    fetched = await client.providers.GetProvider(p.GetProviderRequest(name=created.name))
    listed = await client.providers.ListProviders(p.ListProvidersRequest())
    for message in (created, fetched, listed):
        assert KEY.encode() not in message.SerializeToString()

    settings = providers_mesh.settings
    assert await secret_store(settings).get(f"{user}/providers/{created.name.split('/')[1]}") == KEY
    if settings.secret_store == "vault":
        raw = hvac.Client(url=settings.vault_url, token=settings.vault_token)
        path = f"{settings.vault_path_prefix}/{user}/providers/{created.name.split('/')[1]}"
        stored = raw.secrets.kv.v2.read_secret_version(
            path, mount_point="secret", raise_on_deleted_version=True
        )
        assert KEY in json.dumps(stored["data"]["data"])
    # Not in the database, not in the encrypted files, not in any log line.
    assert created.name.removeprefix("providers/").encode() in await _stored_rows(providers_mesh)
    assert KEY.encode() not in await _stored_rows(providers_mesh)
    if settings.database_url.startswith("sqlite"):
        assert KEY.encode() not in (settings.data_dir / "providers.db").read_bytes()
    assert KEY.encode() not in _bytes_under(settings.data_dir)
    assert KEY not in caplog.text

    credentials = await service.providers.ResolveCredentials(p.ResolveCredentialsRequest(user=user))
    assert credentials.api_key == KEY and credentials.provider == created.name
    # Calling the provider (the openai client logging at DEBUG) logs no key either.
    tested = await client.providers.TestProvider(p.TestProviderRequest(name=created.name))
    assert tested.ok and "openai" in caplog.text.lower()
    assert KEY not in caplog.text


async def test_rotation_is_used_by_the_next_resolution_and_delete_removes_the_secret(
    providers_mesh, tenant, model_server
):
    make, service = tenant
    client, user = await make()
    created = await client.providers.CreateProvider(custom(model_server.base_url))
    first = await service.providers.ResolveCredentials(
        p.ResolveCredentialsRequest(user=user, provider=created.name)
    )
    rotated = await client.providers.UpdateProvider(
        p.UpdateProviderRequest(
            provider=p.Provider(name=created.name, api_key=ROTATED),
            update_mask=field_mask_pb2.FieldMask(paths=["api_key"]),
        )
    )
    assert rotated.api_key_hint == "ABCD"
    second = await service.providers.ResolveCredentials(
        p.ResolveCredentialsRequest(user=user, provider=created.name)
    )
    assert (first.api_key, second.api_key) == (KEY, ROTATED)
    assert first.version != second.version

    await client.providers.DeleteProvider(p.DeleteProviderRequest(name=created.name))
    with pytest.raises(SecretNotFound):
        await secret_store(providers_mesh.settings).get(
            f"{user}/providers/{created.name.split('/')[1]}"
        )
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await client.providers.GetProvider(p.GetProviderRequest(name=created.name))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_resolve_credentials_is_service_only_and_tenant_scoped(
    providers_mesh, tenant, model_server
):
    make, service = tenant
    owner, owner_name = await make()
    other, other_name = await make()
    created = await owner.providers.CreateProvider(custom(model_server.base_url))

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await owner.providers.ResolveCredentials(p.ResolveCredentialsRequest(user=owner_name))
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await service.providers.ResolveCredentials(
            p.ResolveCredentialsRequest(user=other_name, provider=created.name)
        )
    assert error.value.code() == grpc.StatusCode.NOT_FOUND

    # No provider of one's own and no system default: a precondition, with directions.
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await service.providers.ResolveCredentials(p.ResolveCredentialsRequest(user=other_name))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "CreateProvider" in error.value.details()

    for call, request in (
        (other.providers.GetProvider, p.GetProviderRequest(name=created.name)),
        (other.providers.TestProvider, p.TestProviderRequest(name=created.name)),
        (other.providers.DeleteProvider, p.DeleteProviderRequest(name=created.name)),
        (
            other.providers.UpdateProvider,
            p.UpdateProviderRequest(
                provider=p.Provider(name=created.name, display_name="mine"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            ),
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call(request)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert (await other.providers.ListProviders(p.ListProvidersRequest())).providers == []
    unchanged = await owner.providers.GetProvider(p.GetProviderRequest(name=created.name))
    assert unchanged.display_name == "local"


async def test_test_provider_reports_success_and_distinct_failures(
    providers_mesh, tenant, model_server
):
    make, _ = tenant
    client, _ = await make()
    good = await client.providers.CreateProvider(custom(model_server.base_url))
    closed = await client.providers.CreateProvider(custom(_closed_port_url()))
    wrong_key = await client.providers.CreateProvider(custom(model_server.base_url, "sk-wrong"))

    ok = await client.providers.TestProvider(p.TestProviderRequest(name=good.name))
    assert ok.ok and ok.models and not ok.failure_reason
    refused = await client.providers.TestProvider(p.TestProviderRequest(name=closed.name))
    assert not refused.ok and refused.failure_reason == "UNREACHABLE"
    assert "could not connect" in refused.message
    rejected = await client.providers.TestProvider(p.TestProviderRequest(name=wrong_key.name))
    assert not rejected.ok and rejected.failure_reason == "UNAUTHENTICATED"
    assert "401" in rejected.message and "sk-wrong" not in rejected.message
    missing = await client.providers.TestProvider(
        p.TestProviderRequest(name=good.name, model="no-such-model")
    )
    assert not missing.ok and missing.failure_reason == "MODEL_NOT_FOUND"


async def test_openai_client_through_a_custom_provider(providers_mesh, tenant, model_server):
    make, service = tenant
    client, user = await make()
    await client.providers.CreateProvider(custom(model_server.base_url, is_default=True))
    credentials = await service.providers.ResolveCredentials(p.ResolveCredentialsRequest(user=user))
    model_server.reset()
    model_server.enqueue(
        Reply(text="hello from the stand-in"),
        Reply(text="streamed reply"),
        Reply(tool_calls=[ToolCall("get_weather", {"city": "Rome"})]),
    )
    async with openai.AsyncOpenAI(
        base_url=credentials.base_url, api_key=credentials.api_key
    ) as llm:
        chat = await llm.chat.completions.create(
            model="stand-in-model", messages=[{"role": "user", "content": "hi"}]
        )
        assert chat.choices[0].message.content == "hello from the stand-in"
        stream = await llm.chat.completions.create(
            model="stand-in-model", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "streamed reply"
        tool_reply = await llm.chat.completions.create(
            model="stand-in-model",
            messages=[{"role": "user", "content": "weather?"}],
            tools=[
                {
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "parameters": {
                            "type": "object",
                            "properties": {"city": {"type": "string"}},
                        },
                    },
                }
            ],
        )
        call = tool_reply.choices[0].message.tool_calls[0]
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "Rome"}
    assert all(
        request.headers["authorization"] == f"Bearer {KEY}" for request in model_server.requests
    )


async def test_bad_provider_input_names_the_field(providers_mesh, tenant):
    make, _ = tenant
    client, _ = await make()
    cases = [
        (custom(""), "provider.base_url"),
        (
            p.CreateProviderRequest(
                provider=p.Provider(display_name="x", type=p.PROVIDER_TYPE_OPENAI)
            ),
            "provider.api_key",
        ),
        (p.CreateProviderRequest(provider=p.Provider(display_name="x")), "provider.type"),
        (custom("ftp://example.com"), "provider.base_url"),
    ]
    for request, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await client.providers.CreateProvider(request)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in field_violations(error.value)
    assert (await client.providers.ListProviders(p.ListProvidersRequest())).providers == []


@pytest.mark.parametrize("failure", ["stopped", "sealed"])
async def test_vault_down_or_sealed_fails_unavailable_and_writes_nothing(
    failure, tmp_path, model_server
):
    with DevVault() as broken:
        async with Mesh(_settings(tmp_path, "vault", broken), PLUGINS) as mesh:
            async with Client(mesh.address, admin_key(mesh)) as admin:
                user = await admin.accounts.CreateUser(
                    account_pb2.CreateUserRequest(user=account_pb2.User(display_name="t"))
                )
                key = await admin.accounts.CreateApiKey(
                    account_pb2.CreateApiKeyRequest(parent=user.name)
                )
            if failure == "stopped":
                broken.stop()
            else:
                broken.seal()
            async with Client(mesh.address, key.secret) as client:
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    await client.providers.CreateProvider(custom(model_server.base_url))
                assert error.value.code() == grpc.StatusCode.UNAVAILABLE
                assert KEY not in error.value.details()
                listed = await client.providers.ListProviders(p.ListProvidersRequest())
                assert listed.providers == []


async def test_system_default_is_the_stand_in_when_offline(sqlite_mesh, new_sqlite_user):
    _, user = await new_sqlite_user()
    async with Client(sqlite_mesh.address, service_token(sqlite_mesh)) as service:
        credentials = await service.providers.ResolveCredentials(
            p.ResolveCredentialsRequest(user=user.name)
        )
    assert credentials.type == p.PROVIDER_TYPE_CUSTOM and credentials.provider == ""
    async with openai.AsyncOpenAI(base_url=credentials.base_url, api_key="unused") as llm:
        reply = await llm.chat.completions.create(
            model="stand-in-model", messages=[{"role": "user", "content": "ping"}]
        )
    assert "ping" in reply.choices[0].message.content


async def test_system_default_is_openai_api_key_when_set(tmp_path):
    env_key = "sk-env-" + "e" * 30
    settings = Settings(data_dir=tmp_path, port=0, openai_api_key=env_key)
    async with Mesh(settings, PLUGINS) as mesh, Client(mesh.address, admin_key(mesh)) as admin:
        user = await admin.accounts.CreateUser(
            account_pb2.CreateUserRequest(user=account_pb2.User(display_name="t"))
        )
        async with Client(mesh.address, service_token(mesh)) as service:
            credentials = await service.providers.ResolveCredentials(
                p.ResolveCredentialsRequest(user=user.name)
            )
    assert credentials.type == p.PROVIDER_TYPE_OPENAI
    assert (credentials.api_key, credentials.base_url) == (env_key, "https://api.openai.com/v1")


async def test_update_mask_default_and_stale_etag(providers_mesh, tenant, model_server):
    make, service = tenant
    client, user = await make()
    first = await client.providers.CreateProvider(custom(model_server.base_url, is_default=True))
    second = await client.providers.CreateProvider(
        custom(model_server.base_url, models=["a", "b"], default_model="a")
    )
    mask = field_mask_pb2.FieldMask(paths=["display_name", "is_default", "default_model"])
    updated = await client.providers.UpdateProvider(
        p.UpdateProviderRequest(
            provider=p.Provider(
                name=second.name,
                display_name="renamed",
                is_default=True,
                default_model="b",
                base_url="http://ignored.example/v1",  # not in the mask
                etag=second.etag,
            ),
            update_mask=mask,
        )
    )
    assert (updated.display_name, updated.is_default, updated.default_model) == (
        "renamed",
        True,
        "b",
    )
    assert updated.base_url == model_server.base_url and updated.etag != second.etag
    # One default per user: the new one replaced the first.
    assert not (
        await client.providers.GetProvider(p.GetProviderRequest(name=first.name))
    ).is_default
    resolved = await service.providers.ResolveCredentials(p.ResolveCredentialsRequest(user=user))
    assert resolved.provider == second.name and resolved.default_model == "b"

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await client.providers.UpdateProvider(
            p.UpdateProviderRequest(
                provider=p.Provider(name=second.name, display_name="lost", etag=second.etag),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            )
        )
    assert error.value.code() == grpc.StatusCode.ABORTED
    for paths, field in ((["type"], "update_mask"), (["default_model"], "provider.default_model")):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await client.providers.UpdateProvider(
                p.UpdateProviderRequest(
                    provider=p.Provider(
                        name=second.name, type=p.PROVIDER_TYPE_OPENAI, default_model="zzz"
                    ),
                    update_mask=field_mask_pb2.FieldMask(paths=paths),
                )
            )
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in field_violations(error.value)
    unchanged = await client.providers.GetProvider(p.GetProviderRequest(name=second.name))
    assert unchanged == updated


@pytest.mark.parametrize(
    "base_url",
    [
        "http://169.254.169.254/latest/meta-data",  # cloud metadata
        "http://10.1.2.3:8080/v1",
        "http://127.0.0.2:11434/v1",  # loopback, but not the allowed 127.0.0.1
        "http://0.0.0.0/v1",
        "http://[::1]:8000/v1",
        "http://192.168.0.10/v1",
    ],
)
async def test_internal_base_urls_are_refused_unless_allowed(providers_mesh, tenant, base_url):
    make, _ = tenant
    client, _ = await make()
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await client.providers.CreateProvider(custom(base_url))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error.value) == ["provider.base_url"]
    assert (await client.providers.ListProviders(p.ListProvidersRequest())).providers == []


async def test_a_name_that_resolves_inside_is_refused_when_called(tmp_path):
    from agentmesh.outbound import BlockedDestination, check_destination

    # The machine's own name is no IP literal: only resolving it shows it is internal.
    name = socket.gethostname()
    addresses = {info[4][0] for info in socket.getaddrinfo(name, 9, type=socket.SOCK_STREAM)}
    with pytest.raises(BlockedDestination):
        await check_destination(f"http://{name}:9/v1", [])
    await check_destination(f"http://{name}:9/v1", sorted(addresses))
    await check_destination("http://no-such-host.invalid/v1", [])  # unreachable, not blocked


async def test_test_provider_refuses_a_name_that_resolves_inside(tmp_path):
    settings = Settings(data_dir=tmp_path, port=0, openai_api_key="", standin_model=False)
    async with Mesh(settings, PLUGINS) as mesh, Client(mesh.address, admin_key(mesh)) as admin:
        created = await admin.providers.CreateProvider(
            custom(f"http://{socket.gethostname()}:9/v1")
        )
        result = await admin.providers.TestProvider(p.TestProviderRequest(name=created.name))
    assert not result.ok and result.failure_reason == "BLOCKED"
    assert "internal address" in result.message


async def test_a_rotation_that_loses_a_race_does_not_take_effect(
    providers_mesh, tenant, model_server
):
    make, service = tenant
    client, user = await make()
    created = await client.providers.CreateProvider(custom(model_server.base_url))
    # More racers than the secret's history holds: no loser may push the winner out.
    keys = [f"sk-race-{i}-" + "x" * 24 for i in range(14)]

    async def rotate(key: str):
        return await client.providers.UpdateProvider(
            p.UpdateProviderRequest(
                provider=p.Provider(name=created.name, api_key=key, etag=created.etag),
                update_mask=field_mask_pb2.FieldMask(paths=["api_key"]),
            )
        )

    results = await asyncio.gather(*(rotate(key) for key in keys), return_exceptions=True)
    winners = [
        key for key, result in zip(keys, results, strict=True) if isinstance(result, p.Provider)
    ]
    assert len(winners) == 1
    assert all(
        r.code() == grpc.StatusCode.ABORTED for r in results if not isinstance(r, p.Provider)
    )
    resolved = await service.providers.ResolveCredentials(
        p.ResolveCredentialsRequest(user=user, provider=created.name)
    )
    assert resolved.api_key == winners[0]


@pytest.mark.parametrize("name", ["", "provider/x", "providers/has space", "agents/abc"])
async def test_update_provider_rejects_a_malformed_name(providers_mesh, tenant, name):
    make, _ = tenant
    client, _ = await make()
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await client.providers.UpdateProvider(
            p.UpdateProviderRequest(
                provider=p.Provider(name=name, display_name="x"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name", "nope"]),
            )
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error.value) == ["provider.name", "update_mask"]


class _FailingSecrets:
    """The mesh's real secret store, with the calls named in `failing` failing as a
    store that is down does."""

    def __init__(self, real, *failing: str):
        self._real = real
        self.failing = set(failing)

    def __getattr__(self, name: str):
        call = getattr(self._real, name)

        async def maybe(*args, **kwargs):
            if name in self.failing:
                raise SecretStoreUnavailable(f"{name} failed (injected)")
            return await call(*args, **kwargs)

        return maybe


def _providers_servicer(mesh):
    return mesh.services["providers"].servicers[0]


async def _intents(servicer, user: str) -> list:
    everything = await servicer._store.unsettled(utc_now() + timedelta(days=1), limit=10_000)
    return [intent for intent in everything if f"users/{intent.user_id}" == user]


async def _secret(mesh, user: str, provider_id: str) -> str | None:
    try:
        return await secret_store(mesh.settings).get(f"{user}/providers/{provider_id}")
    except SecretNotFound:
        return None


async def test_a_create_whose_row_and_take_back_both_fail_leaves_the_secret_to_the_sweep(
    providers_mesh, tenant, model_server, monkeypatch
):
    make, _ = tenant
    client, user = await make()
    servicer = _providers_servicer(providers_mesh)
    secrets = _FailingSecrets(servicer._secrets, "delete")
    monkeypatch.setattr(servicer, "_secrets", secrets)

    async def row_fails(provider, intent):
        raise OSError("disk full (injected)")

    monkeypatch.setattr(servicer._store, "create", row_fails)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await client.providers.CreateProvider(custom(model_server.base_url))
    assert error.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE)
    (intent,) = await _intents(servicer, user)
    assert await _secret(providers_mesh, user, intent.provider_id) == KEY  # left behind

    secrets.failing.clear()
    assert await servicer.sweep_secrets(timedelta(hours=1)) >= 1  # doomed: no grace
    assert await _secret(providers_mesh, user, intent.provider_id) is None
    assert await _intents(servicer, user) == []
    assert (await client.providers.ListProviders(p.ListProvidersRequest())).providers == []


async def test_writes_a_dead_process_left_half_done_are_swept_after_the_grace(
    providers_mesh, tenant, model_server
):
    make, service = tenant
    client, user = await make()
    servicer = _providers_servicer(providers_mesh)
    store, secrets = servicer._store, secret_store(providers_mesh.settings)
    live = await client.providers.CreateProvider(custom(model_server.base_url))
    live_id = live.name.removeprefix("providers/")
    user_id = user.removeprefix("users/")
    # What two processes killed mid-request leave: a create's secret with no row, and
    # a rotation's new version the row never came to name.
    lost = await store.intend(user_id, "lostprovider")
    await secrets.put(f"{user}/providers/lostprovider", KEY, "0")
    rotation = await store.intend(user_id, live_id)
    await secrets.put(f"{user}/providers/{live_id}", ROTATED, "1")

    assert await servicer.sweep_secrets(timedelta(hours=1)) == 0  # may still be under way
    assert await _secret(providers_mesh, user, "lostprovider") == KEY
    assert await servicer.sweep_secrets(timedelta(0)) == 1
    assert await _secret(providers_mesh, user, "lostprovider") is None
    assert await _intents(servicer, user) == []
    resolved = await service.providers.ResolveCredentials(
        p.ResolveCredentialsRequest(user=user, provider=live.name)
    )
    assert resolved.api_key == KEY  # the version the row names, untouched
    # A request that finishes after the sweep gave up on it writes nothing.
    with pytest.raises(Aborted):
        await store.update(await store.get(user_id, live_id), live.etag, rotation)
    assert (await store.get(user_id, live_id)).etag == live.etag
    assert lost not in await _intents(servicer, user)


async def test_delete_while_the_secret_store_is_down_succeeds_and_the_sweep_finishes_it(
    providers_mesh, tenant, model_server, monkeypatch
):
    make, _ = tenant
    client, user = await make()
    servicer = _providers_servicer(providers_mesh)
    created = await client.providers.CreateProvider(custom(model_server.base_url))
    provider_id = created.name.removeprefix("providers/")
    secrets = _FailingSecrets(servicer._secrets, "delete")
    monkeypatch.setattr(servicer, "_secrets", secrets)

    await client.providers.DeleteProvider(p.DeleteProviderRequest(name=created.name))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await client.providers.GetProvider(p.GetProviderRequest(name=created.name))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert await _secret(providers_mesh, user, provider_id) == KEY
    secrets.failing.clear()
    assert await servicer.sweep_secrets(timedelta(hours=1)) == 1
    assert await _secret(providers_mesh, user, provider_id) is None
    assert await _intents(servicer, user) == []
