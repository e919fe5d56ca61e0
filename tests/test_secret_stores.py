"""The secret stores: one behavioural suite for both, plus each backend's own guarantees."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import stat
import threading
import traceback
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from agentmesh.testing.vault import DevVault
from services.providers.secrets import (
    LocalSecretStore,
    SecretConflict,
    SecretCorrupted,
    SecretNotFound,
    SecretStore,
    SecretStoreUnavailable,
    VaultSecretStore,
)

SECRET = "sk-test-0123456789abcdefghijklmnop"


@pytest.fixture(scope="session")
def dev_vault() -> Iterator[DevVault]:
    with DevVault() as vault:
        yield vault


@pytest.fixture
def private_vault() -> Iterator[DevVault]:
    """A Vault of the test's own, for tests that stop or seal it."""
    with DevVault() as vault:
        yield vault


def vault_store(vault: DevVault, **options: object) -> VaultSecretStore:
    # A prefix per store keeps the tests sharing the session Vault apart.
    options.setdefault("path_prefix", f"agentmesh/test-{uuid.uuid4().hex}")
    return VaultSecretStore(vault.url, token=vault.token, **options)  # type: ignore[arg-type]


@pytest.fixture(params=["local", "vault"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> SecretStore:
    if request.param == "local":
        return LocalSecretStore(tmp_path / "secrets")
    return vault_store(request.getfixturevalue("dev_vault"))


# --- both stores ---


async def test_round_trip(store: SecretStore) -> None:
    await store.put("openai/default", SECRET)
    assert await store.get("openai/default") == SECRET


async def test_round_trip_unicode(store: SecretStore) -> None:
    await store.put("p", "clé-🔑 with spaces\nand a newline")
    assert await store.get("p") == "clé-🔑 with spaces\nand a newline"


async def test_rotation_writes_a_new_version(store: SecretStore) -> None:
    first = await store.put("p", "old-key")
    second = await store.put("p", "new-key")
    assert isinstance(first, str) and isinstance(second, str)
    assert first != second
    assert await store.get("p") == "new-key"


async def test_get_missing(store: SecretStore) -> None:
    with pytest.raises(SecretNotFound):
        await store.get("never-written")


async def test_delete_removes_every_version_and_is_idempotent(store: SecretStore) -> None:
    await store.put("p", "v1")
    await store.put("p", "v2")
    await store.delete("p")
    with pytest.raises(SecretNotFound):
        await store.get("p")
    await store.delete("p")
    await store.delete("never-written")


async def test_paths_do_not_collide(store: SecretStore) -> None:
    paths = ["a", "b", "a/b", "a-b", "A"]
    for path in paths:
        await store.put(path, f"secret of {path}")
    await store.delete("a")
    with pytest.raises(SecretNotFound):
        await store.get("a")
    for path in paths[1:]:
        assert await store.get(path) == f"secret of {path}"


async def test_concurrent_rotations_get_distinct_versions(store: SecretStore) -> None:
    versions = await asyncio.gather(*(store.put("p", f"key-{i}") for i in range(8)))
    assert len(set(versions)) == 8
    assert (await store.get("p")).startswith("key-")


async def test_check_and_set_writes_only_over_the_expected_version(store: SecretStore) -> None:
    assert await store.latest_version("cas") == "0"
    first = await store.put("cas", "one", cas="0")
    with pytest.raises(SecretConflict):
        await store.put("cas", "again", cas="0")  # it exists now
    assert await store.latest_version("cas") == first
    # Racing writers that read the same latest version: one writes, the rest nothing.
    results = await asyncio.gather(
        *(store.put("cas", f"key-{i}", cas=first) for i in range(8)), return_exceptions=True
    )
    written = [r for r in results if isinstance(r, str)]
    assert len(written) == 1
    assert all(isinstance(r, SecretConflict) for r in results if not isinstance(r, str))
    assert await store.latest_version("cas") == written[0]
    assert await store.get("cas", first) == "one"


@pytest.mark.parametrize("path", ["", "/p", "p/", "a//b", "../p", "a/../b", "."])
async def test_invalid_paths_are_rejected(store: SecretStore, path: str) -> None:
    with pytest.raises(ValueError):
        await store.put(path, SECRET)


# --- Vault ---


async def test_vault_secret_is_in_vault_at_the_configured_place(dev_vault: DevVault) -> None:
    client = dev_vault.client()
    client.sys.enable_secrets_engine("kv", path="agentmesh-kv", options={"version": "2"})
    store = vault_store(dev_vault, mount_point="agentmesh-kv", path_prefix="/team/providers/")

    version = await store.put("openai", SECRET)

    stored = client.secrets.kv.v2.read_secret_version(
        "team/providers/openai", mount_point="agentmesh-kv", raise_on_deleted_version=True
    )
    assert stored["data"]["data"] == {"value": SECRET}
    assert str(stored["data"]["metadata"]["version"]) == version


async def test_vault_missing_mount_is_unavailable_not_not_found(dev_vault: DevVault) -> None:
    store = vault_store(dev_vault, mount_point="no-such-mount")
    with pytest.raises(SecretStoreUnavailable):
        await store.get("p")
    with pytest.raises(SecretStoreUnavailable):
        await store.put("p", SECRET)


async def test_vault_wrong_token_is_unavailable_and_does_not_leak(dev_vault: DevVault) -> None:
    token = f"wrong-{uuid.uuid4().hex}"
    store = VaultSecretStore(dev_vault.url, token=token, path_prefix="x")
    with pytest.raises(SecretStoreUnavailable) as caught:
        await store.put("p", SECRET)
    assert_leaks_nothing(caught.value, SECRET, token)


async def test_vault_stopped_is_unavailable_and_does_not_leak(private_vault: DevVault) -> None:
    token = private_vault.token
    store = vault_store(private_vault, timeout=2)
    await store.put("p", SECRET)
    private_vault.stop()

    with pytest.raises(SecretStoreUnavailable) as on_put:
        await store.put("p", SECRET)
    with pytest.raises(SecretStoreUnavailable) as on_get:
        await store.get("p")
    for error in (on_put.value, on_get.value):
        assert_leaks_nothing(error, SECRET, token)


async def test_vault_sealed_is_unavailable(private_vault: DevVault) -> None:
    store = vault_store(private_vault)
    await store.put("p", SECRET)
    private_vault.seal()

    with pytest.raises(SecretStoreUnavailable) as on_put:
        await store.put("p", SECRET)
    with pytest.raises(SecretStoreUnavailable) as on_get:
        await store.get("p")
    with pytest.raises(SecretStoreUnavailable):
        await store.delete("p")
    for error in (on_put.value, on_get.value):
        assert_leaks_nothing(error, SECRET, private_vault.token)


def test_vault_needs_exactly_one_credential() -> None:
    with pytest.raises(ValueError):
        VaultSecretStore("http://127.0.0.1:1")
    with pytest.raises(ValueError):
        VaultSecretStore("http://127.0.0.1:1", token="t", kubernetes_role="r")


class FakeKubernetes:
    """Just enough of the Kubernetes API for Vault's kubernetes auth: TokenReview.

    Vault sends it the pod's JWT; it answers "authenticated" for the one JWT it minted.
    """

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.jwt = self.mint_jwt()
        self.reviews = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.reviews += 1
                status = {
                    "authenticated": review["spec"]["token"] == fake.jwt,
                    "user": {"username": "system:serviceaccount:default:agentmesh", "uid": "u1"},
                }
                body = json.dumps({"kind": "TokenReview", "status": status}).encode()
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def ca_pem(self) -> str:
        # Vault insists on a CA certificate even for a plain-HTTP API server.
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-kubernetes-ca")])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(1)
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(self.key, hashes.SHA256())
        )
        return certificate.public_bytes(serialization.Encoding.PEM).decode()

    def mint_jwt(self, **extra_claims: str) -> str:
        def encode(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        claims = {
            "iss": "kubernetes/serviceaccount",
            "sub": "system:serviceaccount:default:agentmesh",
            "kubernetes.io/serviceaccount/namespace": "default",
            "kubernetes.io/serviceaccount/service-account.name": "agentmesh",
            "kubernetes.io/serviceaccount/service-account.uid": "u1",
            **extra_claims,
        }
        header = encode(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
        signing_input = f"{header}.{encode(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{encode(signature)}"


@pytest.fixture
def kubernetes() -> Iterator[FakeKubernetes]:
    fake = FakeKubernetes()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def enable_kubernetes_auth(vault: DevVault, kubernetes: FakeKubernetes) -> None:
    client = vault.client()
    client.sys.enable_auth_method("kubernetes")
    client.write_data(
        "auth/kubernetes/config",
        data={
            "kubernetes_host": kubernetes.url,
            "kubernetes_ca_cert": kubernetes.ca_pem(),
            "disable_local_ca_jwt": True,
        },
    )
    client.sys.create_or_update_policy(
        "providers", 'path "secret/*" { capabilities = ["create", "read", "update", "delete"] }'
    )
    client.write_data(
        "auth/kubernetes/role/agentmesh",
        data={
            "bound_service_account_names": "agentmesh",
            "bound_service_account_namespaces": "default",
            "token_policies": "providers",
        },
    )


async def test_vault_kubernetes_auth_logs_in_and_again_when_the_token_dies(
    private_vault: DevVault, kubernetes: FakeKubernetes, tmp_path: Path
) -> None:
    enable_kubernetes_auth(private_vault, kubernetes)
    jwt_file = tmp_path / "token"
    jwt_file.write_text(kubernetes.jwt)
    store = VaultSecretStore(
        private_vault.url, kubernetes_role="agentmesh", kubernetes_jwt_path=str(jwt_file)
    )

    await store.put("p", SECRET)
    assert await store.get("p") == SECRET
    assert kubernetes.reviews == 1

    # What expiry looks like to the store: its token is suddenly refused.
    private_vault.client().sys.revoke_prefix("auth/kubernetes/login")
    assert await store.get("p") == SECRET
    assert kubernetes.reviews == 2


async def test_vault_kubernetes_auth_refused_is_unavailable_and_does_not_leak(
    private_vault: DevVault, kubernetes: FakeKubernetes, tmp_path: Path
) -> None:
    enable_kubernetes_auth(private_vault, kubernetes)
    # Well-formed, but Kubernetes didn't issue it.
    other_jwt = kubernetes.mint_jwt(jti="forged")
    jwt_file = tmp_path / "token"
    jwt_file.write_text(other_jwt)
    store = VaultSecretStore(
        private_vault.url, kubernetes_role="agentmesh", kubernetes_jwt_path=str(jwt_file)
    )

    with pytest.raises(SecretStoreUnavailable) as caught:
        await store.put("p", SECRET)
    assert_leaks_nothing(caught.value, SECRET, other_jwt)

    missing = VaultSecretStore(
        private_vault.url, kubernetes_role="agentmesh", kubernetes_jwt_path=str(tmp_path / "no")
    )
    with pytest.raises(SecretStoreUnavailable):
        await missing.get("p")


def assert_leaks_nothing(error: BaseException, *needles: str) -> None:
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None:
        chain.append(current)
        current = current.__cause__ or current.__context__
    # Only our own exception: the originals carry the request (token header, secret body).
    assert chain == [error]
    rendered = "".join(traceback.format_exception(error)) + repr(error.args) + repr(vars(error))
    for needle in needles:
        assert needle not in rendered


# --- local ---


def secret_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.json"))


async def test_local_key_file_is_private(tmp_path: Path) -> None:
    directory = tmp_path / "secrets"
    await LocalSecretStore(directory).put("p", SECRET)

    assert stat.S_IMODE((directory / "secrets.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert len((directory / "secrets.key").read_bytes()) == 32


async def test_local_files_do_not_contain_the_secret(tmp_path: Path) -> None:
    store = LocalSecretStore(tmp_path)
    await store.put("p", SECRET)
    await store.put("p", SECRET + "-rotated")

    encodings = [SECRET.encode(), base64.b64encode(SECRET.encode()), SECRET.encode().hex().encode()]
    for file in [*secret_files(tmp_path), tmp_path / "secrets.key"]:
        content = file.read_bytes()
        for encoded in encodings:
            assert encoded not in content, file.name


async def test_local_secrets_survive_a_new_store_instance(tmp_path: Path) -> None:
    await LocalSecretStore(tmp_path).put("p", SECRET)
    assert await LocalSecretStore(tmp_path).get("p") == SECRET


async def test_local_tampered_ciphertext_is_an_error(tmp_path: Path) -> None:
    store = LocalSecretStore(tmp_path)
    await store.put("p", SECRET)
    [file] = secret_files(tmp_path)
    document = json.loads(file.read_text())
    ciphertext = bytearray(base64.b64decode(document["versions"][-1]["ciphertext"]))
    ciphertext[0] ^= 0x01
    document["versions"][-1]["ciphertext"] = base64.b64encode(ciphertext).decode()
    file.write_text(json.dumps(document))

    with pytest.raises(SecretCorrupted):
        await store.get("p")


async def test_local_garbled_file_is_an_error(tmp_path: Path) -> None:
    store = LocalSecretStore(tmp_path)
    await store.put("p", SECRET)
    [file] = secret_files(tmp_path)
    file.write_text("{not json")

    with pytest.raises(SecretCorrupted):
        await store.get("p")


async def test_local_ciphertext_moved_to_another_path_does_not_decrypt(tmp_path: Path) -> None:
    store = LocalSecretStore(tmp_path)
    await store.put("victim", "victim-key")
    [victim_file] = secret_files(tmp_path)
    await store.put("attacker", "attacker-key")
    [attacker_file] = set(secret_files(tmp_path)) - {victim_file}

    attacker_file.write_bytes(victim_file.read_bytes())

    with pytest.raises(SecretCorrupted):
        await store.get("attacker")


async def test_local_other_key_does_not_decrypt(tmp_path: Path) -> None:
    await LocalSecretStore(tmp_path).put("p", SECRET)
    (tmp_path / "secrets.key").unlink()

    with pytest.raises(SecretCorrupted):
        await LocalSecretStore(tmp_path).get("p")


async def test_local_io_failure_is_unavailable(tmp_path: Path) -> None:
    # A file where the directory should be: an OSError even for root.
    (tmp_path / "secrets").write_text("not a directory")
    store = LocalSecretStore(tmp_path / "secrets")
    with pytest.raises(SecretStoreUnavailable):
        await store.put("p", SECRET)


async def test_a_named_version_is_read_even_after_rotation(store):
    first = await store.put("users/u/providers/versions", "first-secret")
    second = await store.put("users/u/providers/versions", "second-secret")
    assert await store.get("users/u/providers/versions", first) == "first-secret"
    assert await store.get("users/u/providers/versions", second) == "second-secret"
    assert await store.get("users/u/providers/versions") == "second-secret"
