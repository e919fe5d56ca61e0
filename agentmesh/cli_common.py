"""What every `agentmesh` command group shares: consoles, the options that name a mesh
and a key, and running an async command with gRPC errors as plain messages."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, NoReturn

import grpc
import typer
from google.protobuf import json_format
from rich.console import Console
from rich.text import Text

from agentmesh.client import Client

# No markup: what they print holds users' and servers' text, in which "[/x]" is no
# style (rich would raise on it, or swallow "[a-z]" from a pattern). Styles are given
# as style=, or Text.
out = Console(markup=False)
err = Console(stderr=True, markup=False)

Target = Annotated[str, typer.Option(help="The mesh to talk to")]
Key = Annotated[str | None, typer.Option(help="API key (default: read --key-file)")]
KeyFile = Annotated[Path, typer.Option(help="File holding the API key")]


def async_command(command: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Runs an async command; a gRPC error becomes its message and exit status 1, and
    so does what the command was given locally and could not use: a file it cannot
    read, a key, a number or JSON out of range."""

    @wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            asyncio.run(command(*args, **kwargs))
        except grpc.aio.AioRpcError as error:
            err.print(Text.assemble((error.code().name, "red"), f": {error.details()}"))
            raise typer.Exit(1) from None
        except (OSError, ValueError, ArithmeticError, json_format.ParseError) as error:
            fail(local_problem(error))

    return run


def local_problem(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename:
        return f"cannot read {error.filename}: {error.strerror or error}"
    return str(error)


def fail(message: str) -> NoReturn:
    err.print(Text.assemble(("error", "red"), f": {message}"))
    raise typer.Exit(1)


def client_for(target: str, key: str | None, key_file: Path) -> Client:
    if not key:
        try:
            key = key_file.read_text()
        except (OSError, UnicodeDecodeError) as error:
            why = error.strerror if isinstance(error, OSError) else "it is not text"
            raise ValueError(
                f"cannot read the API key from {key_file} ({why}); pass --key or --key-file"
            ) from None
    key = key.strip()
    if not (key.isascii() and key.isprintable()):
        raise ValueError("an API key is printable ASCII, and this one is not")
    return Client(target, key)
