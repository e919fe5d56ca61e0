"""The mesh's HTTP side: what services serve over plain HTTP, on one port beside gRPC.

gRPC is the contract; some callers speak other protocols (the OpenAI API, A2A,
MCP, webhooks). A service offers those as ASGI routes (`MeshService.http`); the
mesh serves every route of every service it runs on one uvicorn server, started
and stopped with it. A route authenticates its caller itself (`bearer_principal`)
and reaches other services through `MeshContext.peer`, acting for that caller.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, Route

from agentmesh.auth import Authenticator, Principal
from agentmesh.errors import PermissionDenied
from agentmesh.tasks import cancel


async def bearer_principal(authenticator: Authenticator, request: Request) -> Principal:
    """Who sends this HTTP request, by its `authorization: Bearer <api key>`: raises
    Unauthenticated or PermissionDenied (agentmesh.errors) as the gRPC side would.
    Only API keys: the service token and the user header it may carry are not
    accepted over HTTP, where a gateway may expose them to anyone."""
    principal = await authenticator.authenticate(
        {"authorization": request.headers.get("authorization", "")}
    )
    if principal.service:
        raise PermissionDenied("send an API key")
    return principal


class BodyTooLarge(Exception):
    """A request body ran past its route's limit; reading stopped there."""

    def __init__(self, limit: int):
        super().__init__(f"the request body is over {limit} bytes")


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, at most `limit` bytes: BodyTooLarge before reading more,
    and before reading any when its content-length says so."""
    declared = request.headers.get("content-length", "")
    # isascii: str.isdigit takes "²", which int() refuses.
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(limit)
    return bytes(body)


async def _healthy(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


class HttpServer:
    """Serves routes over HTTP/1.1 on a port of its own (uvicorn, no lifespan: the
    services behind the routes are started and stopped by the mesh)."""

    def __init__(self, routes: Sequence[BaseRoute]):
        # /healthz: what a load balancer or probe asks (it says only "ok").
        self.app = Starlette(routes=[Route("/healthz", _healthy), *routes])
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._ticks: asyncio.Task | None = None

    def bind(self, host: str, port: int) -> int:
        """Listens on host:port (0: a free port) and returns the port."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise OSError(f"cannot listen on {host}:{port}: is the port taken?") from None
        sock.listen(1024)
        sock.setblocking(False)
        self._socket = sock
        return int(sock.getsockname()[1])

    async def start(self) -> None:
        assert self._socket is not None, "bind first"
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            # Behind a gateway, what a request says of its scheme and host (an agent
            # card's URL is built from them) is the gateway's X-Forwarded-* headers;
            # nothing here trusts a client's address.
            forwarded_allow_ips="*",
            timeout_graceful_shutdown=5,
        )
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        # Not Server.serve(): that takes over the process's signal handlers, which
        # belong to whoever runs the mesh.
        await server.startup(sockets=[self._socket])
        self._server = server
        self._ticks = asyncio.create_task(server.main_loop(), name="http: ticks")

    async def stop(self) -> None:
        """Stops taking connections and lets requests in flight finish (5 s at most)."""
        if self._server is None:
            return
        self._server.should_exit = True
        if self._ticks is not None:  # it only keeps the Date header current
            await cancel([self._ticks])
        await self._server.shutdown(sockets=[self._socket] if self._socket else None)
        self._server = None
