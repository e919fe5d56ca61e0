"""The files service's store on each database the mesh runs on (SQLite and Postgres):
the whole life of a file in a store, and BM25's word counts kept per file."""

from __future__ import annotations

import grpc
from files_support import READY, index_file, new_store, search
from support import expect_rpc_error

from agentmesh.gen.files.v1 import files_pb2 as f


async def test_a_file_in_a_store_from_upload_to_delete(new_user, mesh):
    client, _ = await new_user()
    store = await new_store(client)
    first = await index_file(client, store, "a.txt", b"Invoice INV-3141 was paid twice.")
    second = await index_file(client, store, "b.txt", b"The canteen serves soup at noon.")
    assert first.state == second.state == READY
    assert (await search(client, store, "INV-3141"))[0].file == first.name
    files = mesh.services["files"]
    store_id = store.name.removeprefix("vectorStores/")
    # BM25's statistics: two chunks in the store, each word in one of them.
    assert await files.store.term_stats(store_id, {"inv", "soup", "nowhere"}) == (
        2,
        {"inv": 1, "soup": 1},
    )
    listed = await client.files.ListFiles(f.ListFilesRequest(page_size=1))
    assert len(listed.files) == 1 and listed.next_page_token
    rest = await client.files.ListFiles(f.ListFilesRequest(page_token=listed.next_page_token))
    assert [x.name for x in [*listed.files, *rest.files]] == [first.name, second.name]
    await client.files.DeleteFile(f.DeleteFileRequest(name=first.name))
    assert [hit.file for hit in await search(client, store, "INV-3141", top=5)] == [second.name]
    assert await files.store.term_stats(store_id, {"inv", "soup"}) == (1, {"soup": 1})
    await client.files.DeleteVectorStore(f.DeleteVectorStoreRequest(name=store.name))
    assert await files.index.count(384, store_id) == 0
    await expect_rpc_error(
        client.files.SearchVectorStore(
            f.SearchVectorStoreRequest(vector_store=store.name, query="soup")
        ),
        grpc.StatusCode.NOT_FOUND,
    )
