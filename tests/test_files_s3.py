"""Blobs in an S3-compatible bucket: the store against a real S3 server over HTTP
(SeaweedFS's S3 gateway, started on free ports, checking signatures and checksums), and a
mesh whose files service keeps its blobs there, including one whose bucket cannot be
reached.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import botocore.exceptions
import grpc
import pytest
from files_support import READY, index_file, new_store, search, upload
from google.rpc import error_details_pb2
from rpc_helpers import details_of
from support import Users, expect_rpc_error, mesh_settings

from agentmesh.config import Settings
from agentmesh.gen.files.v1 import files_pb2 as f
from agentmesh.mesh import Mesh
from agentmesh.processes import free_port
from agentmesh.testing.s3 import DevS3
from services import plugins_named
from services.files.blobs import (
    BlobStoreUnavailable,
    BlobTooLarge,
    LocalBlobStore,
    S3BlobStore,
    blob_store,
)

BUCKET = "agentmesh-blobs"
# Where no server checks it (settings, a closed port); it must never show in an error,
# a log line or the settings' repr, nor must the server's.
SECRET = "s3-secret-that-must-never-show"


@pytest.fixture(scope="module")
def s3() -> Iterator[DevS3]:
    with DevS3((BUCKET,)) as server:
        yield server


def closed_endpoint() -> str:
    """An address nothing listens on: connections to it are refused at once."""
    return f"http://127.0.0.1:{free_port()}"


def identity(s3: DevS3 | str) -> tuple[str, str, str]:
    """Endpoint, key id and secret: the server's, or an address's (a closed port) with ours."""
    if isinstance(s3, str):
        return s3, "nobody", SECRET
    return s3.endpoint, s3.access_key_id, s3.secret_access_key


def s3_store(
    s3: DevS3 | str, spool: Path, bucket: str = BUCKET, prefix: str = "", secret: str = ""
) -> S3BlobStore:
    endpoint, key_id, server_secret = identity(s3)
    return S3BlobStore(
        bucket,
        spool,
        endpoint=endpoint,
        region=DevS3.region,
        prefix=prefix,
        access_key_id=key_id,
        secret_access_key=secret or server_secret,
    )


def stored(store: S3BlobStore, data: bytes, limit: int = 1024) -> str:
    writer = store.writer(limit)
    for start in range(0, len(data), 7):
        writer.write(data[start : start + 7])
    return store.commit(writer)


def object_exists(s3: DevS3, key: str) -> bool:
    try:
        s3.client().head_object(Bucket=BUCKET, Key=key)
    except botocore.exceptions.ClientError as error:
        assert error.response["Error"]["Code"] == "404", error
        return False
    return True


def assert_no_secret(error: BaseException, secret: str = SECRET) -> None:
    assert secret not in str(error) and secret not in repr(error)
    # Nothing chained either: no botocore request rides along into a log.
    assert error.__cause__ is None and error.__context__ is None


# ---- the store against the S3 server --------------------------------------------------


def test_a_blob_is_put_under_its_hash_with_its_checksum_read_back_and_deleted(s3, tmp_path):
    store = s3_store(s3, tmp_path, prefix="/tenant-a/")
    data = b"The quarterly report says revenue grew 12 percent."
    digest = hashlib.sha256(data)
    sha256 = stored(store, data)
    assert sha256 == digest.hexdigest()
    assert list(tmp_path.iterdir()) == []  # the spooled upload is gone
    key = f"tenant-a/blobs/{sha256}"
    assert store.key(sha256) == key
    head = s3.client().head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
    assert head["ContentLength"] == len(data)
    assert head["ChecksumSHA256"] == base64.b64encode(digest.digest()).decode()
    assert store.read(sha256) == data

    store.delete(sha256)
    assert not object_exists(s3, key)
    with pytest.raises(FileNotFoundError):
        store.read(sha256)


def test_bytes_that_changed_after_hashing_are_refused_by_the_server(s3, tmp_path):
    store = s3_store(s3, tmp_path, prefix="changed")
    writer = store.writer(1024)
    writer.write(b"the bytes as uploaded")
    writer.close()
    writer.path.write_bytes(b"the bytes as spooled")  # the spool, damaged after the hash
    with pytest.raises(BlobStoreUnavailable) as refused:
        store.commit(writer)
    assert "(BadDigest)" in refused.value.message
    assert "Contents" not in s3.client().list_objects_v2(Bucket=BUCKET, Prefix="changed/")
    assert list(tmp_path.iterdir()) == []


def test_the_same_bytes_twice_are_one_object(s3, tmp_path):
    store = s3_store(s3, tmp_path, prefix="twice")
    data = b"identical bytes, uploaded twice"
    assert stored(store, data) == stored(store, data)
    listed = s3.client().list_objects_v2(Bucket=BUCKET, Prefix="twice/")
    assert [item["Key"] for item in listed["Contents"]] == [
        f"twice/blobs/{hashlib.sha256(data).hexdigest()}"
    ]


def test_an_upload_past_the_limit_is_refused_and_leaves_nothing(s3, tmp_path):
    store = s3_store(s3, tmp_path, prefix="limit")
    writer = store.writer(10)
    writer.write(b"0123456789")
    with pytest.raises(BlobTooLarge):
        writer.write(b"x")
    writer.discard()
    assert list(tmp_path.iterdir()) == []
    assert "Contents" not in s3.client().list_objects_v2(Bucket=BUCKET, Prefix="limit/")


def test_deleting_a_blob_that_is_not_there_is_fine(s3, tmp_path):
    s3_store(s3, tmp_path).delete(hashlib.sha256(b"never stored").hexdigest())


def test_an_unreachable_store_fails_fast_and_clearly_without_the_secret(tmp_path):
    store = s3_store(closed_endpoint(), tmp_path)
    writer = store.writer(1024)
    writer.write(b"bytes that have nowhere to go")
    started = time.monotonic()
    with pytest.raises(BlobStoreUnavailable) as put:
        store.commit(writer)
    with pytest.raises(BlobStoreUnavailable) as get:
        store.read(writer.sha256)
    # Refused connections, retried a bounded number of times: seconds, not minutes.
    assert time.monotonic() - started < 10
    assert put.value.code == grpc.StatusCode.UNAVAILABLE
    assert "could not store the file (EndpointConnectionError)" in put.value.message
    assert "could not read the file" in get.value.message
    assert_no_secret(put.value)
    assert_no_secret(get.value)
    assert list(tmp_path.iterdir()) == []  # the spooled upload is removed on failure too


def test_a_bucket_that_refuses_fails_with_the_s3_error_code(s3, tmp_path):
    store = s3_store(s3, tmp_path, bucket="no-such-bucket-here")
    writer = store.writer(1024)
    writer.write(b"refused")
    with pytest.raises(BlobStoreUnavailable) as refused:
        store.commit(writer)
    assert "(NoSuchBucket)" in refused.value.message
    assert_no_secret(refused.value, s3.secret_access_key)


def test_a_wrong_secret_is_refused_by_the_server_and_not_repeated(s3, tmp_path):
    store = s3_store(s3, tmp_path, prefix="wrong", secret=SECRET)
    writer = store.writer(1024)
    writer.write(b"signed with the wrong secret")
    with pytest.raises(BlobStoreUnavailable) as refused:
        store.commit(writer)
    assert "(SignatureDoesNotMatch)" in refused.value.message
    assert_no_secret(refused.value)
    assert "Contents" not in s3.client().list_objects_v2(Bucket=BUCKET, Prefix="wrong/")


def test_settings_pick_the_store_and_keep_the_secret_out_of_sight(tmp_path, monkeypatch):
    assert isinstance(blob_store(Settings(data_dir=tmp_path)), LocalBlobStore)
    monkeypatch.setenv("AGENTMESH_FILES_S3_BUCKET", BUCKET)
    monkeypatch.setenv("AGENTMESH_FILES_S3_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("AGENTMESH_FILES_S3_ACCESS_KEY_ID", "key-id")
    monkeypatch.setenv("AGENTMESH_FILES_S3_SECRET_ACCESS_KEY", SECRET)
    settings = Settings(data_dir=tmp_path)
    assert SECRET not in repr(settings) and SECRET not in str(settings.model_dump())
    store = blob_store(settings)
    assert isinstance(store, S3BlobStore) and store.bucket == BUCKET


# ---- a mesh with its blobs in the bucket ----------------------------------------------


def files_mesh(data_dir: Path, s3: DevS3 | str) -> Mesh:
    """A mesh keeping its blobs on the server, or on an address (a closed port)."""
    endpoint, key_id, secret = identity(s3)
    settings = mesh_settings(
        data_dir,
        files_s3_bucket=BUCKET,
        files_s3_endpoint=endpoint,
        files_s3_region=DevS3.region,
        files_s3_prefix="mesh",
        files_s3_access_key_id=key_id,
        files_s3_secret_access_key=secret,
    )
    return Mesh(settings, plugins_named("registry", "providers", "files"))


@pytest.fixture(scope="module")
async def s3_users(s3, tmp_path_factory) -> AsyncIterator[Users]:
    async with files_mesh(tmp_path_factory.mktemp("files-s3"), s3) as mesh:
        users = Users(mesh)
        yield users
        await users.close()


async def test_a_file_lives_in_the_bucket_from_upload_to_delete(s3_users, s3):
    client, _ = await s3_users.new()
    store = await new_store(client)
    file = await index_file(
        client, store, "runbook.txt", b"Rotate the ZX-81 turbine keys every ninety days."
    )
    assert file.state == READY, file.error
    assert (await search(client, store, "ZX-81 turbine"))[0].file == file.name
    key = f"mesh/blobs/{file.sha256}"
    assert object_exists(s3, key)
    assert not list((s3_users.mesh.settings.data_dir / "uploads").iterdir())

    await client.files.DeleteFile(f.DeleteFileRequest(name=file.name))
    assert not object_exists(s3, key)


async def test_with_the_bucket_unreachable_an_upload_is_unavailable_and_leaves_no_file(
    tmp_path,
):
    async with files_mesh(tmp_path, closed_endpoint()) as mesh:
        users = Users(mesh)
        try:
            client, _ = await users.new()
            error = await expect_rpc_error(
                upload(client, "notes.txt", b"These notes cannot be stored."),
                grpc.StatusCode.UNAVAILABLE,
            )
            assert "blob store could not store the file" in error.details()
            assert SECRET not in error.details()
            (info,) = details_of(error, error_details_pb2.ErrorInfo)
            assert info.reason == "UNAVAILABLE"
            assert details_of(error, error_details_pb2.RetryInfo)
            assert not (await client.files.ListFiles(f.ListFilesRequest())).files
            assert not list((tmp_path / "uploads").iterdir())
        finally:
            await users.close()


async def test_a_delete_while_the_bucket_is_unreachable_still_deletes_the_file(
    s3_users, s3, tmp_path, monkeypatch
):
    client, _ = await s3_users.new()
    store = await new_store(client)
    file = await index_file(client, store, "plan.txt", b"The QX-7 rollout starts on Monday.")
    servicer = s3_users.mesh.services["files"].servicers[0]
    monkeypatch.setattr(servicer, "_blobs", s3_store(closed_endpoint(), tmp_path))

    await client.files.DeleteFile(f.DeleteFileRequest(name=file.name))
    await expect_rpc_error(
        client.files.GetFile(f.GetFileRequest(name=file.name)), grpc.StatusCode.NOT_FOUND
    )
    assert await search(client, store, "QX-7 rollout") == []
    # Only the bytes stay behind (logged), where no API reaches them.
    assert object_exists(s3, f"mesh/blobs/{file.sha256}")
