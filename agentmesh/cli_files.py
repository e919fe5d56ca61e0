"""`agentmesh files`: upload documents into a vector store and search it.

agentmesh files upload PATH... --store NAME   (a store's name, vectorStores/..., or a
                                               display name: created when missing)
agentmesh files search STORE "query" [--top N]
agentmesh files list
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

import grpc
import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from agentmesh.cli_common import Key, KeyFile, Target, async_command, client_for, err, out
from agentmesh.client import Client
from agentmesh.gen.files.v1 import files_pb2 as f

files_app = typer.Typer(help="Files and vector stores: upload, search.", no_args_is_help=True)

PIECE = 1024 * 1024  # bytes per upload message
_STATE = {
    f.PROCESSING_STATE_PROCESSING: "processing",
    f.PROCESSING_STATE_READY: "ready",
    f.PROCESSING_STATE_FAILED: "failed",
}


async def find_store(client: Client, store: str, create: bool = False) -> f.VectorStore:
    """The store by name (vectorStores/...), or the caller's store with this display
    name: created if there is none and `create`, else exit 1."""
    if store.startswith("vectorStores/"):
        return await client.files.GetVectorStore(f.GetVectorStoreRequest(name=store))
    token = ""
    while True:
        page = await client.files.ListVectorStores(
            f.ListVectorStoresRequest(page_size=1000, page_token=token)
        )
        for found in page.vector_stores:
            if found.display_name == store:
                return found
        token = page.next_page_token
        if not token:
            break
    if not create:
        err.print(Text.assemble(("NOT_FOUND", "red"), f": no vector store named {store!r}"))
        raise typer.Exit(1)
    return await client.files.CreateVectorStore(
        f.CreateVectorStoreRequest(vector_store=f.VectorStore(display_name=store))
    )


async def _parts(
    name: str, data: bytes, progress: Progress, task: TaskID
) -> AsyncIterator[f.UploadFileRequest]:
    # The checksum travels with the metadata: the service refuses bytes that differ.
    checksum = hashlib.sha256(data).hexdigest()
    yield f.UploadFileRequest(
        metadata=f.UploadFileRequest.Metadata(filename=name, metadata={"sha256": checksum})
    )
    for start in range(0, len(data), PIECE):
        piece = data[start : start + PIECE]
        yield f.UploadFileRequest(chunk=piece)
        progress.advance(task, len(piece))


async def upload_one(
    client: Client, store: f.VectorStore, path: Path, progress: Progress
) -> f.File:
    """Uploads a file, adds it to the store and follows its ingestion to the end."""
    data = await asyncio.to_thread(path.read_bytes)
    task = progress.add_task(f"{escape(path.name)}: upload", total=len(data) or 1)
    try:
        file = await client.files.UploadFile(_parts(path.name, data, progress, task))
    except grpc.aio.AioRpcError as error:
        # A progress bar's description is markup: the file's name and the error escaped.
        progress.update(task, description=f"{escape(path.name)}: [red]{escape(error.details())}")
        raise
    await client.files.AddVectorStoreFile(
        f.AddVectorStoreFileRequest(vector_store=store.name, file=file.name)
    )
    progress.update(task, description=f"{escape(path.name)}: embed", completed=0, total=None)
    async for watched in client.files.WatchFile(f.WatchFileRequest(name=file.name)):
        file = watched
        if file.chunk_count:
            progress.update(task, completed=file.chunks_embedded, total=file.chunk_count)
    done = file.state == f.PROCESSING_STATE_READY
    label = "[green]ready[/green]" if done else f"[red]failed: {escape(file.error)}[/red]"
    progress.update(task, description=f"{escape(path.name)}: {label}")
    return file


@files_app.command("upload")
@async_command
async def upload(
    paths: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, readable=True)],
    store: Annotated[str, typer.Option(help="vectorStores/... or a display name")],
    target: Target = "127.0.0.1:50051",
    key: Key = None,
    key_file: KeyFile = Path(".agentmesh/admin.key"),
) -> None:
    async with client_for(target, key, key_file) as client:
        vector_store = await find_store(client, store, create=True)
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        results: list[tuple[Path, f.File | None, str]] = []
        with Progress(*columns, console=out, transient=False) as progress:
            for path in paths:
                try:
                    results.append(
                        (path, await upload_one(client, vector_store, path, progress), "")
                    )
                except grpc.aio.AioRpcError as error:
                    results.append((path, None, error.details() or error.code().name))
        table = Table("file", "name", "state", "chunks", "error")
        for path, file, problem in results:
            if file is None:
                table.add_row(str(path), "", "refused", "", problem)
            else:
                table.add_row(
                    str(path), file.name, _STATE[file.state], str(file.chunk_count), file.error
                )
        out.print(f"vector store {vector_store.name} ({vector_store.display_name})")
        out.print(table)
        if any(file is None or file.state != f.PROCESSING_STATE_READY for _, file, _ in results):
            raise typer.Exit(1)


@files_app.command("search")
@async_command
async def search(
    store: str,
    query: str,
    top: Annotated[int, typer.Option(help="Results to show")] = 5,
    target: Target = "127.0.0.1:50051",
    key: Key = None,
    key_file: KeyFile = Path(".agentmesh/admin.key"),
) -> None:
    async with client_for(target, key, key_file) as client:
        vector_store = await find_store(client, store)
        reply = await client.files.SearchVectorStore(
            f.SearchVectorStoreRequest(vector_store=vector_store.name, query=query, max_results=top)
        )
        if not reply.results:
            out.print("no results")
        for number, result in enumerate(reply.results, 1):
            out.print(
                Text.assemble(
                    (f"[{number}] {result.filename}", "bold"),
                    f" ({result.file}, chunk {result.chunk_index}, score {result.score:.3f})",
                )
            )
            out.print(result.text.strip(), highlight=False)
            out.print()


@files_app.command("list")
@async_command
async def list_files(
    target: Target = "127.0.0.1:50051",
    key: Key = None,
    key_file: KeyFile = Path(".agentmesh/admin.key"),
) -> None:
    async with client_for(target, key, key_file) as client:
        table = Table("name", "filename", "type", "bytes", "state", "chunks", "error")
        token = ""
        while True:
            page = await client.files.ListFiles(f.ListFilesRequest(page_token=token))
            for file in page.files:
                table.add_row(
                    file.name,
                    file.filename,
                    file.mime_type,
                    str(file.size_bytes),
                    _STATE[file.state],
                    str(file.chunk_count),
                    file.error,
                )
            token = page.next_page_token
            if not token:
                break
        out.print(table)
