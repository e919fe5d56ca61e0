"""The file_search tool: the agent's vector stores, searched through the files service.

A plain function tool, so it works with every provider (the SDK's hosted
FileSearchTool works only with OpenAI's Responses API and OpenAI's own stores).
The search runs as the run's user: a vector store named in an agent but owned by
someone else is not found, as in any other call. Each result cites its file and
its position (chunk) so the model can cite them too.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
from agents import FunctionTool

from agentmesh.auth import USER_HEADER
from agentmesh.gen.files.v1 import files_pb2, files_pb2_grpc
from agentmesh.gen.registry.v1 import registry_pb2

DEFAULT_RESULTS = 5
_TIMEOUT_SECONDS = 30.0
_DESCRIPTION = (
    "Searches the documents of this agent's knowledge base. Returns the most relevant "
    "passages, each with the file it comes from and its position; cite them."
)
_PARAMETERS = {
    "type": "object",
    "properties": {
        "query": {
            "type": "string",
            "description": "What to look for, in a few words or a question.",
        }
    },
    "required": ["query"],
    "additionalProperties": False,
}


class FileSearch:
    def __init__(self, files: grpc.aio.Channel):
        self._files = files_pb2_grpc.FileServiceStub(files)

    def tool(self, tool: registry_pb2.Tool, user: str) -> FunctionTool:
        stores = list(tool.file_search.vector_stores)
        limit = tool.file_search.max_results or DEFAULT_RESULTS
        user = user if user.startswith("users/") else f"users/{user}"

        async def search(_: Any, arguments: str) -> str:
            try:
                query = json.loads(arguments or "{}")["query"]
                if not isinstance(query, str) or not query.strip():
                    raise ValueError(query)
            except (ValueError, KeyError, TypeError):
                return 'error: file_search takes {"query": "<what to look for>"}'
            return await self.search(user, stores, query[:8192], limit)

        return FunctionTool(
            name=tool.name,
            description=tool.description or _DESCRIPTION,
            params_json_schema=_PARAMETERS,
            on_invoke_tool=search,
            strict_json_schema=True,
            needs_approval=tool.require_approval,
        )

    async def search(self, user: str, stores: list[str], query: str, limit: int) -> str:
        """The best passages across the stores, as text for the model."""
        results: list[files_pb2.SearchResult] = []
        notes = []
        for store in stores:
            try:
                reply = await self._files.SearchVectorStore(
                    files_pb2.SearchVectorStoreRequest(
                        vector_store=store, query=query, max_results=limit
                    ),
                    metadata=((USER_HEADER, user),),
                    timeout=_TIMEOUT_SECONDS,
                )
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    notes.append(f"({store} was not found and was not searched)")
                    continue
                return f"error: the file search failed ({error.code().name}); try again later"
            results.extend(reply.results)
        results.sort(key=lambda result: result.score, reverse=True)
        return format_results(results[:limit], notes)


def format_results(results: list[files_pb2.SearchResult], notes: list[str]) -> str:
    if not results:
        return "\n".join(["No passage in the documents matches this query.", *notes])
    passages = [
        f"[{number}] {result.filename} ({result.file}, chunk {result.chunk_index}, "
        f"score {result.score:.2f})\n{result.text}"
        for number, result in enumerate(results, 1)
    ]
    return "\n\n".join([*passages, *notes])
