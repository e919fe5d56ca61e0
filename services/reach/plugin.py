"""The reach service: every agent callable over the OpenAI API, A2A and MCP.

It keeps no data and runs nothing itself: each protocol is an adapter that turns
its requests into `RunnerService` calls for the caller (services/reach/calls.py),
served on the mesh's HTTP port (agentmesh/http.py).
"""

from __future__ import annotations

from typing import Protocol

from starlette.routing import BaseRoute

from agentmesh.mesh import MeshContext, MeshService
from services.reach.a2a import A2aAdapter
from services.reach.calls import Reach
from services.reach.mcp_server import McpAdapter
from services.reach.openai_api import OpenAiAdapter


class Adapter(Protocol):
    """One protocol: its routes, and what it runs while the mesh does."""

    routes: list[BaseRoute]

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class ReachService(MeshService):
    def __init__(self, adapters: list[Adapter]):
        super().__init__(http=[route for adapter in adapters for route in adapter.routes])
        self._adapters = adapters

    async def stop(self) -> None:
        for adapter in reversed(self._adapters):
            await adapter.stop()


async def create(context: MeshContext) -> ReachService:
    reach = Reach(context)
    adapters: list[Adapter] = [OpenAiAdapter(reach), A2aAdapter(reach), McpAdapter(reach)]
    started: list[Adapter] = []
    try:
        for adapter in adapters:
            await adapter.start()
            started.append(adapter)
    except BaseException:
        for adapter in reversed(started):
            await adapter.stop()
        raise
    return ReachService(adapters)
