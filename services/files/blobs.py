"""Uploaded bytes, content-addressed: in a local directory, or in an S3-compatible bucket.

A blob's key is its SHA-256: the same bytes uploaded twice are stored once, and a
blob is stored whole or not at all. Either store first spools an upload to a local
file (`BlobWriter`: hashed, counted and capped as it arrives), so nothing is stored
before the servicer has checked it; `commit` then moves it into place (a rename on the
same filesystem) or puts it in the bucket (S3 verifies the SHA-256 it is sent with).

The methods are synchronous (boto3 is): the servicer and the ingestor call them through
`asyncio.to_thread`. `blob_store(settings)` picks the store: a bucket when
`files_s3_bucket` is set, else the directory.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

from agentmesh.config import Settings
from agentmesh.errors import Unavailable

log = logging.getLogger("agentmesh.files")
_T = TypeVar("_T")

# Bounded, so an S3 that is down fails an upload in seconds rather than holding it:
# a connection refused is retried twice (standard mode backs off under a second or
# two), a connection that cannot be opened gives up after _CONNECT_SECONDS, and a
# server that stops answering mid-request after _READ_SECONDS without a byte.
_CONNECT_SECONDS = 5.0
_READ_SECONDS = 30.0
_ATTEMPTS = 3


class BlobTooLarge(ValueError):
    pass


class BlobStoreUnavailable(Unavailable):
    """The bucket could not be reached or refused the request. The message names the
    step and the S3 error code or exception type, never a credential; uploads answer
    UNAVAILABLE with it."""


class BlobWriter:
    """Receives an upload's bytes: hashes and counts them, and refuses past the limit."""

    def __init__(self, spool: Path, limit: int):
        self._limit = limit
        self._hash = hashlib.sha256()
        self.size = 0
        handle, path = tempfile.mkstemp(dir=spool, prefix="upload-")
        self._out = os.fdopen(handle, "wb")
        self.path = Path(path)

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self._limit:
            raise BlobTooLarge(f"the file is larger than the {self._limit} byte limit")
        self._hash.update(data)
        self._out.write(data)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def digest(self) -> bytes:
        return self._hash.digest()

    def head(self, size: int = 8192) -> bytes:
        """The first bytes written (for sniffing the type); the writer must be closed."""
        with open(self.path, "rb") as source:
            return source.read(size)

    def close(self) -> None:
        self._out.close()

    def discard(self) -> None:
        self._out.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class BlobStore(Protocol):
    def writer(self, limit: int) -> BlobWriter: ...

    def commit(self, writer: BlobWriter) -> str:
        """Stores a finished upload under its hash; returns the hash."""
        ...

    def read(self, sha256: str) -> bytes:
        """The blob's bytes; FileNotFoundError if there is none."""
        ...

    def delete(self, sha256: str) -> None:
        """Removes the blob; one already gone is no error."""
        ...


class LocalBlobStore:
    def __init__(self, root: Path):
        self.root = root
        (root / "tmp").mkdir(mode=0o700, parents=True, exist_ok=True)

    def _path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def writer(self, limit: int) -> BlobWriter:
        # Beside the blobs: the rename into place stays on one filesystem, so atomic.
        return BlobWriter(self.root / "tmp", limit)

    def commit(self, writer: BlobWriter) -> str:
        writer.close()
        target = self._path(writer.sha256)
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.replace(writer.path, target)  # atomic; the same bytes may already be there
        return writer.sha256

    def read(self, sha256: str) -> bytes:
        return self._path(sha256).read_bytes()

    def delete(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(sha256).unlink()


class S3BlobStore:
    """Blobs as objects `{prefix}/blobs/{sha256}` (no prefix: `blobs/{sha256}`) in one
    bucket of any S3-compatible store.

    Credentials are the given key pair, or else boto3's usual chain (AWS_ACCESS_KEY_ID /
    AWS_SECRET_ACCESS_KEY, a web identity such as EKS's IRSA, an instance profile).
    """

    def __init__(
        self,
        bucket: str,
        spool: Path,
        *,
        endpoint: str = "",
        region: str = "",
        prefix: str = "",
        access_key_id: str = "",
        secret_access_key: str = "",
    ):
        self.bucket = bucket
        self._prefix = f"{prefix.strip('/')}/blobs/" if prefix.strip("/") else "blobs/"
        self._spool = spool
        spool.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Imported here: boto3 takes a good part of a second to import, which a mesh
        # that keeps its blobs in a directory should not pay.
        import boto3
        import botocore.config

        config = botocore.config.Config(
            connect_timeout=_CONNECT_SECONDS,
            read_timeout=_READ_SECONDS,
            retries={"mode": "standard", "total_max_attempts": _ATTEMPTS},
            # S3-compatible servers (MinIO, Ceph, ...) answer on one host name;
            # AWS itself picks virtual-hosted buckets.
            s3={"addressing_style": "path" if endpoint else "auto"},
        )
        self._s3 = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint or None,
            region_name=region or None,
            aws_access_key_id=access_key_id or None,
            aws_secret_access_key=secret_access_key or None,
            config=config,
        )

    def key(self, sha256: str) -> str:
        return self._prefix + sha256

    def writer(self, limit: int) -> BlobWriter:
        return BlobWriter(self._spool, limit)

    def commit(self, writer: BlobWriter) -> str:
        """Puts the spooled upload under its hash; the spool file is removed either way.
        S3 checks the bytes against the SHA-256 sent with them and keeps it, so a read
        is verified against it too. Putting the same bytes again rewrites one object."""
        writer.close()
        try:
            with open(writer.path, "rb") as body:
                self._call(
                    "store the file",
                    lambda: self._s3.put_object(
                        Bucket=self.bucket,
                        Key=self.key(writer.sha256),
                        Body=body,
                        ChecksumAlgorithm="SHA256",
                        ChecksumSHA256=base64.b64encode(writer.digest()).decode(),
                    ),
                )
        finally:
            writer.discard()
        return writer.sha256

    def read(self, sha256: str) -> bytes:
        key = self.key(sha256)
        try:
            # The body inside the call too: a connection lost or a checksum that does
            # not match while it streams in is the store failing, like a refused GET.
            return self._call(
                "read the file",
                lambda: self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read(),
            )
        except _NoSuchKey:
            raise FileNotFoundError(f"no blob {sha256} in the bucket") from None

    def delete(self, sha256: str) -> None:
        key = self.key(sha256)
        # S3 answers a delete of a missing key with success; some compatible stores 404.
        with contextlib.suppress(_NoSuchKey):
            self._call(
                "delete the file", lambda: self._s3.delete_object(Bucket=self.bucket, Key=key)
            )

    def _call(self, doing: str, request: Callable[[], _T]) -> _T:
        import botocore.exceptions

        try:
            return request()
        except botocore.exceptions.ClientError as exc:
            why = str(exc.response.get("Error", {}).get("Code", "error"))
        except botocore.exceptions.BotoCoreError as exc:
            why = type(exc).__name__
        # Raised outside the except blocks: no cause or context chained to them, so no
        # request (with its signed headers) travels along into a log or a trace.
        if why in ("NoSuchKey", "404"):
            raise _NoSuchKey
        log.warning("S3 bucket %s: could not %s (%s)", self.bucket, doing, why)
        raise BlobStoreUnavailable(f"the blob store could not {doing} ({why}); try again")


class _NoSuchKey(Exception):
    pass


def blob_store(settings: Settings) -> LocalBlobStore | S3BlobStore:
    """The store settings name: the S3 bucket when one is set, else the local directory."""
    if settings.files_s3_bucket:
        return S3BlobStore(
            settings.files_s3_bucket,
            settings.data_dir / "uploads",
            endpoint=settings.files_s3_endpoint,
            region=settings.files_s3_region,
            prefix=settings.files_s3_prefix,
            access_key_id=settings.files_s3_access_key_id,
            secret_access_key=settings.files_s3_secret_access_key.get_secret_value(),
        )
    return LocalBlobStore(
        Path(settings.files_blob_dir) if settings.files_blob_dir else settings.data_dir / "blobs"
    )
