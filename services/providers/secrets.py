"""Where model-provider API keys live: never in the providers database.

``VaultSecretStore`` (Vault/OpenBao KV v2) is the production store;
``LocalSecretStore`` (AES-GCM files under a generated key) is the embedded default.
Both keep old versions on rotation, like KV v2 does.

No error raised here may carry a secret or a Vault token, in its text or in
its ``__cause__``/``__context__`` chain: these exceptions end up in logs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import hvac
import hvac.exceptions
import requests
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_T = TypeVar("_T")

# KV v2's default max_versions; the local store keeps the same history depth.
_MAX_VERSIONS = 10
_NONCE_BYTES = 12
_KEY_BYTES = 32
_KEY_FILE = "secrets.key"


class SecretStoreError(Exception):
    """Base class; messages never contain a secret or a credential."""


class SecretNotFound(SecretStoreError):
    pass


class SecretStoreUnavailable(SecretStoreError):
    """The backend is down, sealed, misconfigured or refused the request."""


class SecretConflict(SecretStoreError):
    """A check-and-set write found another version than the one it expected."""


class SecretCorrupted(SecretStoreError):
    """A stored ciphertext failed authentication: tampered, moved, or under another key."""


class SecretStore(Protocol):
    async def put(self, path: str, secret: str, cas: str | None = None) -> str:
        """Store a new version of the secret at ``path``; returns its version id.

        With ``cas`` (check-and-set) only if the latest version is that one ("0":
        only if there is none yet), else SecretConflict and nothing is written.
        """
        ...

    async def latest_version(self, path: str) -> str:
        """The latest version's id; "0" when there is none."""
        ...

    async def get(self, path: str, version: str | None = None) -> str:
        """That version (as put returned it), or the latest; raises SecretNotFound."""
        ...

    async def delete(self, path: str) -> None:
        """Delete all versions and metadata; deleting a missing path is not an error."""
        ...


def _check_path(path: str) -> None:
    # Empty or dot segments would let a path escape the Vault prefix, and the
    # two stores must accept exactly the same paths.
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise ValueError(f"invalid secret path: {path!r}")


class VaultSecretStore:
    """Secrets in a Vault (or OpenBao) KV v2 engine, at ``{mount_point}/{path_prefix}/{path}``.

    Authenticates with a static ``token`` or, in Kubernetes, by logging in with
    the pod's service account JWT under ``kubernetes_role``.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        kubernetes_role: str | None = None,
        kubernetes_jwt_path: str = "/var/run/secrets/kubernetes.io/serviceaccount/token",
        mount_point: str = "secret",
        path_prefix: str = "agentmesh/providers",
        timeout: float = 5,
    ) -> None:
        if (token is None) == (kubernetes_role is None):
            raise ValueError("pass exactly one of token or kubernetes_role")
        self._client = hvac.Client(url=url, token=token, timeout=timeout)
        self._kubernetes_role = kubernetes_role
        self._kubernetes_jwt_path = Path(kubernetes_jwt_path)
        self._logged_in = False
        self._login_lock = threading.Lock()
        self._mount_point = mount_point
        self._prefix = path_prefix.strip("/")

    async def put(self, path: str, secret: str, cas: str | None = None) -> str:
        response = await self._call(
            "put",
            path,
            lambda kv, at: kv.create_or_update_secret(
                at,
                secret={"value": secret},
                cas=None if cas is None else int(cas),
                mount_point=self._mount_point,
            ),
        )
        return str(response["data"]["version"])

    async def latest_version(self, path: str) -> str:
        try:
            response = await self._call(
                "read metadata",
                path,
                lambda kv, at: kv.read_secret_metadata(at, mount_point=self._mount_point),
            )
        except SecretNotFound:
            return "0"
        return str(response["data"]["current_version"])

    async def get(self, path: str, version: str | None = None) -> str:
        response = await self._call(
            "get",
            path,
            lambda kv, at: kv.read_secret_version(
                at,
                version=int(version) if version else None,
                mount_point=self._mount_point,
                raise_on_deleted_version=True,
            ),
        )
        return response["data"]["data"]["value"]

    async def delete(self, path: str) -> None:
        # Vault answers 204 for a path that never existed, so this is idempotent.
        await self._call(
            "delete",
            path,
            lambda kv, at: kv.delete_metadata_and_all_versions(at, mount_point=self._mount_point),
        )

    async def _call(self, action: str, path: str, operation: Callable[[Any, str], _T]) -> _T:
        _check_path(path)
        at = f"{self._prefix}/{path}" if self._prefix else path
        try:
            return await asyncio.to_thread(self._authenticated, operation, at)
        except hvac.exceptions.InvalidPath as exc:
            # A missing secret is a 404 with no error text; a 404 with text
            # ("no handler for route") means the mount itself is missing.
            if exc.errors:
                error: SecretStoreError = SecretStoreUnavailable(
                    f"Vault {action} failed: no KV mount at {self._mount_point!r}"
                )
            else:
                error = SecretNotFound(f"no secret at {path!r}")
        except hvac.exceptions.InvalidRequest as exc:
            if any("check-and-set" in str(text) for text in exc.errors or ()):
                error = SecretConflict(f"the secret at {path!r} has a newer version")
            else:
                error = SecretStoreUnavailable(f"Vault {action} failed ({type(exc).__name__})")
        except (hvac.exceptions.VaultError, requests.RequestException, OSError) as exc:
            error = SecretStoreUnavailable(f"Vault {action} failed ({type(exc).__name__})")
        # Raised outside the except blocks so neither __cause__ nor __context__
        # holds the original: a requests exception keeps the prepared request,
        # with the X-Vault-Token header and the secret in its body.
        raise error

    def _authenticated(self, operation: Callable[[Any, str], _T], at: str) -> _T:
        kv = self._client.secrets.kv.v2
        if self._kubernetes_role is None:
            return operation(kv, at)
        if not self._logged_in:
            self._kubernetes_login()
        try:
            return operation(kv, at)
        except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized):
            # Tokens from a Kubernetes login expire; logging in again (with the
            # current, possibly rotated, service account JWT) is the renewal.
            self._kubernetes_login()
            return operation(kv, at)

    def _kubernetes_login(self) -> None:
        with self._login_lock:
            jwt = self._kubernetes_jwt_path.read_text().strip()
            self._client.auth.kubernetes.login(role=self._kubernetes_role, jwt=jwt)
            self._logged_in = True


class LocalSecretStore:
    """Secrets in ``directory``, one JSON file per path, each version AES-256-GCM encrypted.

    The key is ``directory/secrets.key``, generated (mode 0600) on first use.
    The path is the associated data, so a ciphertext moved to another path's
    file fails to decrypt instead of yielding the wrong provider's key.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._directory = Path(directory)
        self._aead: AESGCM | None = None
        # put and delete are read-modify-write on one file; serialising every
        # operation is the simplest way to keep worker threads from interleaving.
        self._lock = threading.Lock()

    async def put(self, path: str, secret: str, cas: str | None = None) -> str:
        _check_path(path)
        return await self._run(self._put, path, secret, cas)

    async def latest_version(self, path: str) -> str:
        _check_path(path)
        return await self._run(self._latest_version, path)

    async def get(self, path: str, version: str | None = None) -> str:
        _check_path(path)
        return await self._run(self._get, path, version)

    async def delete(self, path: str) -> None:
        _check_path(path)
        await self._run(self._delete, path)

    async def _run(self, function: Callable[..., _T], *args: str | None) -> _T:
        try:
            return await asyncio.to_thread(function, *args)
        except OSError as exc:
            # OSError carries at most a file name (a hash), never a secret.
            raise SecretStoreUnavailable(f"local secret store I/O failed: {exc.strerror}") from exc

    def _put(self, path: str, secret: str, cas: str | None) -> str:
        with self._lock:
            aead = self._cipher()
            file = self._file(path)
            versions = self._read(file)
            latest = versions[-1]["version"] if versions else 0
            if cas is not None and str(latest) != cas:
                raise SecretConflict(f"the secret at {path!r} has a newer version")
            version = latest + 1
            nonce = os.urandom(_NONCE_BYTES)
            ciphertext = aead.encrypt(nonce, secret.encode(), path.encode())
            versions.append(
                {
                    "version": version,
                    "nonce": base64.b64encode(nonce).decode(),
                    "ciphertext": base64.b64encode(ciphertext).decode(),
                }
            )
            self._write(file, {"versions": versions[-_MAX_VERSIONS:]})
            return str(version)

    def _get(self, path: str, version: str | None) -> str:
        with self._lock:
            aead = self._cipher()
            versions = self._read(self._file(path))
            if version is not None:
                versions = [v for v in versions if str(v.get("version")) == version]
            if not versions:
                raise SecretNotFound(f"no secret at {path!r}")
            try:
                latest = versions[-1]
                nonce = base64.b64decode(latest["nonce"], validate=True)
                ciphertext = base64.b64decode(latest["ciphertext"], validate=True)
                return aead.decrypt(nonce, ciphertext, path.encode()).decode()
            except (InvalidTag, ValueError, KeyError, TypeError):
                raise SecretCorrupted(f"stored secret at {path!r} failed to decrypt") from None

    def _latest_version(self, path: str) -> str:
        with self._lock:
            versions = self._read(self._file(path))
            return str(versions[-1]["version"]) if versions else "0"

    def _delete(self, path: str) -> None:
        with self._lock:
            self._file(path).unlink(missing_ok=True)

    def _file(self, path: str) -> Path:
        # A hash keeps any path a safe, flat file name and keeps provider ids
        # out of directory listings.
        return self._directory / f"{hashlib.sha256(path.encode()).hexdigest()}.json"

    def _read(self, file: Path) -> list[dict[str, Any]]:
        try:
            text = file.read_text()
        except FileNotFoundError:
            return []
        try:
            versions = json.loads(text)["versions"]
        except (ValueError, KeyError, TypeError):
            raise SecretCorrupted(f"secret file {file.name} is not valid") from None
        if not isinstance(versions, list):
            raise SecretCorrupted(f"secret file {file.name} is not valid")
        return versions

    def _write(self, file: Path, document: dict[str, Any]) -> None:
        # Temp file + rename: a crash leaves the old versions or the new ones, never half.
        fd, temp = tempfile.mkstemp(dir=self._directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(document, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, file)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    def _cipher(self) -> AESGCM:
        if self._aead is None:
            self._aead = AESGCM(self._load_or_create_key())
        return self._aead

    def _load_or_create_key(self) -> bytes:
        self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_file = self._directory / _KEY_FILE
        try:
            key = key_file.read_bytes()
        except FileNotFoundError:
            key = self._create_key(key_file)
        if len(key) != _KEY_BYTES:
            raise SecretStoreUnavailable(f"{key_file} is not a {_KEY_BYTES}-byte key")
        return key

    def _create_key(self, key_file: Path) -> bytes:
        key = AESGCM.generate_key(bit_length=_KEY_BYTES * 8)
        # Written under a private name, then linked into place: the key file
        # appears complete or not at all (a crash can't leave an empty key),
        # and a concurrent creator in another process loses the link cleanly.
        temp = self._directory / f".{_KEY_FILE}.{os.urandom(8).hex()}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(key)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(temp, key_file)
            except FileExistsError:
                return key_file.read_bytes()
            return key
        finally:
            temp.unlink(missing_ok=True)
