"""Uploaded bytes, content-addressed in a local directory.

A blob's key is its SHA-256: the same bytes uploaded twice are stored once, and a
blob is written whole (to a temporary file, then renamed) or not at all. An S3-
compatible store would sit behind the same four methods; only the local one exists
here, since no S3-compatible server can be started in this project's tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path


class BlobTooLarge(ValueError):
    pass


class BlobWriter:
    """Receives an upload's bytes: hashes and counts them, and refuses past the limit."""

    def __init__(self, root: Path, limit: int):
        self._root = root
        self._limit = limit
        self._hash = hashlib.sha256()
        self.size = 0
        handle, path = tempfile.mkstemp(dir=root / "tmp", prefix="upload-")
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


class LocalBlobStore:
    def __init__(self, root: Path):
        self.root = root
        (root / "tmp").mkdir(mode=0o700, parents=True, exist_ok=True)

    def _path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def writer(self, limit: int) -> BlobWriter:
        return BlobWriter(self.root, limit)

    def commit(self, writer: BlobWriter) -> str:
        """Moves a finished upload into place under its hash; returns the hash."""
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
