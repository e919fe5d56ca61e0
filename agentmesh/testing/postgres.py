"""A throwaway PostgreSQL cluster for tests, built from the Debian server binaries.

Each instance gets its own data directory and port, so tests never touch the
system PostgreSQL on 5432 and leave nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

from agentmesh.processes import free_port

_HOST = "127.0.0.1"
_SUPERUSER = "postgres"
# Only an auto-picked port can lose the race between our probe bind and the
# server's bind; a few attempts make that practically impossible to hit twice.
_PORT_ATTEMPTS = 3
# Durability is pointless for a database deleted after the test run.
_SERVER_SETTINGS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


def _bindir() -> Path:
    def version(bindir: Path) -> tuple[int, ...]:
        try:
            return tuple(int(part) for part in bindir.parent.name.split("."))
        except ValueError:
            return ()

    # Debian keeps server binaries (initdb, pg_ctl) off PATH, one dir per major.
    candidates = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    if candidates:
        return max(candidates, key=version)
    if shutil.which("pg_config"):
        bindir = subprocess.run(
            ["pg_config", "--bindir"], check=True, capture_output=True, text=True
        ).stdout.strip()
        if (Path(bindir) / "initdb").exists():
            return Path(bindir)
    raise RuntimeError("PostgreSQL server binaries not found (apt install postgresql)")


class TemporaryPostgres:
    """A private PostgreSQL cluster on 127.0.0.1 with trust auth for user ``postgres``."""

    def __init__(self, *, port: int | None = None) -> None:
        self._requested_port = port
        self._port: int | None = None
        self._dir: Path | None = None
        self._bindir: Path | None = None
        self._running = False

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("TemporaryPostgres is not started")
        return self._port

    @property
    def directory(self) -> Path:
        """The temporary directory holding the cluster, its socket and its log."""
        if self._dir is None:
            raise RuntimeError("TemporaryPostgres is not started")
        return self._dir

    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://{_SUPERUSER}@{_HOST}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database and return its URL (default driver)."""
        # CREATE DATABASE can't run inside a transaction block.
        with psycopg.connect(
            host=_HOST, port=self.port, user=_SUPERUSER, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def start(self) -> None:
        if self._dir is not None:
            raise RuntimeError("TemporaryPostgres is already started")
        self._bindir = _bindir()
        self._dir = Path(tempfile.mkdtemp(prefix="agentmesh-pg-"))
        try:
            if os.geteuid() == 0:
                # initdb refuses to run as root, so the cluster belongs to the
                # postgres system user, who must own the directory.
                user = pwd.getpwnam(_SUPERUSER)
                os.chown(self._dir, user.pw_uid, user.pw_gid)
            self._run(
                "initdb", "-D", str(self._data_dir), "-U", _SUPERUSER, "-A", "trust",
                # C locale: fast, and independent of the locales this machine has.
                "--no-sync", "--no-instructions", "--encoding=UTF8", "--locale=C",
            )  # fmt: skip
            attempts = 1 if self._requested_port is not None else _PORT_ATTEMPTS
            for attempt in range(1, attempts + 1):
                self._port = self._requested_port or free_port(_HOST)
                try:
                    self._start_server()
                    break
                except RuntimeError as exc:
                    if attempt == attempts or "Address already in use" not in str(exc):
                        raise
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self._dir is None:
            return
        try:
            if self._running:
                # Immediate: no checkpoint, the data is about to be deleted anyway.
                self._run("pg_ctl", "-D", str(self._data_dir), "-m", "immediate", "-w", "stop")
                self._running = False
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            self._port = None

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """The server down while the block runs (its connections ended, as by a
        restart), then up again on the same port with the same data. A fast stop, not
        an immediate one: this cluster runs without fsync or synchronous commit, so a
        crash would lose what was just committed."""
        self._run("pg_ctl", "-D", str(self._data_dir), "-m", "fast", "-w", "stop")
        self._running = False
        try:
            yield
        finally:
            self._start_server()

    def __enter__(self) -> TemporaryPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def _data_dir(self) -> Path:
        assert self._dir is not None
        return self._dir / "data"

    def _start_server(self) -> None:
        assert self._dir is not None
        log = self._dir / "postgres.log"
        # pg_ctl appends; start fresh so the port-race check sees only this attempt.
        log.unlink(missing_ok=True)
        # The socket goes in our dir: the default /var/run/postgresql may not
        # be writable and would collide with the system cluster's sockets.
        options = (
            f"-p {self.port} -k {shlex.quote(str(self._dir))} "
            f"-c listen_addresses={_HOST} {_SERVER_SETTINGS}"
        )
        try:
            self._run("pg_ctl", "-D", str(self._data_dir), "-l", str(log), "-o", options,
                      "-w", "start")  # fmt: skip
        except RuntimeError as exc:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{exc}\nserver log tail:\n{tail}") from None
        self._running = True

    def _run(self, program: str, *args: str) -> None:
        assert self._dir is not None and self._bindir is not None
        command = [str(self._bindir / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", _SUPERUSER, "--", *command]
        # cwd: the postgres user may not be allowed into ours (e.g. /root).
        result = subprocess.run(command, cwd=self._dir, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"{program} failed with code {result.returncode}:\n{result.stdout}{result.stderr}"
            )
