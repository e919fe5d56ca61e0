"""What every `agentmesh` command group shares: consoles, the options that name a mesh
and a key, and running an async command with gRPC errors as plain messages."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from rich.console import Console

from agentmesh.client import Client

out = Console()
err = Console(stderr=True)

Target = Annotated[str, typer.Option(help="The mesh to talk to")]
Key = Annotated[str | None, typer.Option(help="API key (default: read --key-file)")]
KeyFile = Annotated[Path, typer.Option(help="File holding the API key")]


def async_command(command: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Runs an async command; a gRPC error becomes its message and exit status 1."""

    @wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            asyncio.run(command(*args, **kwargs))
        except grpc.aio.AioRpcError as error:
            err.print(f"[red]{error.code().name}[/red]: {error.details()}")
            raise typer.Exit(1) from None

    return run


def client_for(target: str, key: str | None, key_file: Path) -> Client:
    return Client(target, (key or key_file.read_text()).strip())
