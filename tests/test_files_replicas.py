"""Files replicas sharing one database, one NATS, one blob directory and one Milvus:
a replica that dies in the middle of a file leaves it to another, which finishes it
with no duplicate chunks.

The registry and providers run in their own mesh; each files replica is a mesh of
the files service alone, as a files pod would be.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from files_support import READY, new_store, upload
from support import Users, mesh_settings

from agentmesh.client import Client
from agentmesh.gen.files.v1 import files_pb2 as f
from agentmesh.gen.registry.v1 import account_pb2 as a
from agentmesh.mesh import Mesh
from agentmesh.nats_server import EmbeddedNats
from services import plugins_named
from services.files.embed import LocalEmbedder, local_embedder


@pytest.fixture(scope="module")
async def shared(tmp_path_factory) -> AsyncIterator[tuple[Mesh, dict]]:
    root = tmp_path_factory.mktemp("files-replicas")
    async with EmbeddedNats(root / "nats") as nats:
        settings = {
            "nats_url": nats.url,
            "service_token": "files-replica-test-token",
            "database_url": f"sqlite+aiosqlite:///{root}/{{service}}.db",
            "milvus_uri": str(root / "milvus.db"),
            "files_blob_dir": str(root / "blobs"),
            # A dead replica's file goes to another after this long without progress.
            "files_ingest_ack_seconds": 1.5,
            "files_embed_batch": 4,
        }
        core = Mesh(
            mesh_settings(root / "core", **settings), plugins_named("registry", "providers")
        )
        async with core:
            settings["peers"] = {"registry": core.address, "providers": core.address}
            settings["root"] = root
            yield core, settings


def replica(settings: dict, name: str) -> Mesh:
    options = {key: value for key, value in settings.items() if key != "root"}
    return Mesh(mesh_settings(settings["root"] / name, **options), plugins_named("files"))


async def test_a_replica_killed_mid_file_leaves_it_ready_without_duplicates(shared, monkeypatch):
    core, settings = shared
    embed = LocalEmbedder.embed

    async def slow_embed(self, texts, batch_size=32):
        await asyncio.sleep(0.25)  # slow enough to be caught in the middle
        return await embed(self, texts, batch_size)

    monkeypatch.setattr(LocalEmbedder, "embed", slow_embed)
    users = Users(core)
    _, user = await users.new()
    key = (await users.admin.accounts.CreateApiKey(a.CreateApiKeyRequest(parent=user.name))).secret
    text = " ".join(
        f"Section {i}: the turbine inspection log notes vibration level {i * 7 % 13}."
        for i in range(220)
    )
    expected = len(local_embedder().chunks(text, 200, 40))
    assert expected >= 12

    doomed = replica(settings, "doomed")
    await doomed.start()
    survivor: Mesh | None = None
    try:
        async with Client(doomed.address, key) as client:
            store = await new_store(client)
            file = await upload(client, "log.txt", text.encode())
            await client.files.AddVectorStoreFile(
                f.AddVectorStoreFileRequest(vector_store=store.name, file=file.name)
            )
            async with asyncio.timeout(60):
                while True:
                    seen = await client.files.GetFile(f.GetFileRequest(name=file.name))
                    if seen.chunks_embedded >= 8:
                        break
                    await asyncio.sleep(0.05)
        # Only now does another replica come up: the doomed one holds the file.
        survivor = replica(settings, "survivor")
        await survivor.start()
        await doomed.stop()  # mid-file: the message is neither acknowledged nor returned
        assert seen.chunks_embedded < seen.chunk_count == expected
        async with Client(survivor.address, key) as client:
            async with asyncio.timeout(60):
                watched = [
                    w async for w in client.files.WatchFile(f.WatchFileRequest(name=file.name))
                ]
            final = watched[-1]
            assert final.state == READY, final.error
            assert final.chunk_count == final.chunks_embedded == expected
            index = survivor.services["files"].index
            store_id, file_id = store.name.split("/")[1], file.name.split("/")[1]
            assert await index.count(384, store_id, file_id) == expected
            results = await client.files.SearchVectorStore(
                f.SearchVectorStoreRequest(
                    vector_store=store.name, query="Section 219 turbine", max_results=50
                )
            )
            ids = [(r.file, r.chunk_index) for r in results.results]
            assert len(ids) == len(set(ids)) and results.results[0].file == file.name
    finally:
        if survivor is not None:
            await survivor.stop()
        await users.close()
