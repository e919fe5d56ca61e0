"""What the test seams that run a server binary share: a temporary directory, free ports
(retried when one is lost to a race before the server binds it), a log, readiness
polling, and a stop that takes the whole process group down."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

# Only an auto-picked port can lose the race between our probe bind and the
# server's bind; a few attempts make that practically impossible to hit twice.
_PORT_ATTEMPTS = 3


class ChildServer:
    """A server run as a child process, owned by this process.

    Synchronous on purpose: it is meant for (session or module) fixtures. A subclass
    names its binary (``name``) and says how to prepare, start and probe it.
    """

    name = "server"
    poll_interval = 0.02
    # What stop() sends first; after 10 s, SIGKILL.
    stop_signal = signal.SIGTERM

    def __init__(self, *, startup_timeout: float = 30.0) -> None:
        self._startup_timeout = startup_timeout
        self._directory: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.startup_seconds: float | None = None

    @property
    def directory(self) -> Path:
        if self._directory is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._directory

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.name}.log"

    def start(self) -> None:
        if self._directory is not None:
            raise RuntimeError(f"{type(self).__name__} is already started")
        started = time.monotonic()
        self._directory = Path(tempfile.mkdtemp(prefix=f"agentmesh-{self.name}-"))
        try:
            self._prepare()
            for attempt in range(1, _PORT_ATTEMPTS + 1):
                self._pick_ports()
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
            self._forget()
            shutil.rmtree(self._directory, ignore_errors=True)
        self._directory = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- what a subclass says -----------------------------------------------------

    def _prepare(self) -> None:
        """Once per start, before any attempt: credentials, config files."""

    def _pick_ports(self) -> None:
        raise NotImplementedError

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _environment(self) -> dict[str, str]:
        """Added to ours; HOME is always the temporary directory, away from the user's."""
        return {}

    def _ready(self) -> bool:
        raise NotImplementedError

    def _forget(self) -> None:
        """What the server leaves outside its directory, and what it was given."""

    # ---- the process ----------------------------------------------------------------

    def _spawn(self) -> None:
        # Truncated per attempt, so the port-race check sees only this attempt.
        self._log = self.log_path.open("wb")
        self._process = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HOME": str(self.directory), **self._environment()},
            cwd=self.directory,
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
                    f"{self.name} exited with code {self._process.returncode}:\n"
                    f"{self._log_text()[-2000:]}"
                )
            if self._ready():
                return
            time.sleep(self.poll_interval)
        raise RuntimeError(
            f"{self.name} not ready after {self._startup_timeout}s:\n{self._log_text()[-2000:]}"
        )

    def _terminate(self) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                self._signal(self.stop_signal)
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
