"""Workflow definitions, and which of the user's agents each one runs.

Like agents' references, workflow_agents is checked in the write's own
transaction and held by composite foreign keys, so an agent a workflow runs
cannot be deleted, not even by a delete racing the workflow's save.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agentmesh.db import Page, fetch_page
from agentmesh.errors import Aborted, AlreadyExists, NotFound
from services.registry.agents_store import agents_deleted_meanwhile, require_agents
from services.registry.records import Workflow
from services.registry.tables import WorkflowAgentRow, WorkflowRow

# What change_workflow applies: the current workflow to its next state and the
# ids of the agents that state runs.
WorkflowChange = Callable[[Workflow], tuple[Workflow, Collection[str]]]


def _name(workflow_id: str) -> str:
    return f"workflows/{workflow_id}"


def _workflow(row) -> Workflow:
    return Workflow(row.id, row.user_id, row.definition, row.etag, row.create_time, row.update_time)


class WorkflowStore:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    async def create_workflow(self, workflow: Workflow, agents: Collection[str]) -> None:
        """Raises AlreadyExists, or AgentsNotFound for `agents` (the ids its steps run)
        that are not the user's."""
        try:
            async with self.engine.begin() as conn:
                await require_agents(conn, workflow.user_id, agents)
                try:
                    await conn.execute(
                        insert(WorkflowRow).values(
                            user_id=workflow.user_id,
                            id=workflow.id,
                            definition=workflow.definition,
                            etag=workflow.etag,
                            create_time=workflow.create_time,
                            update_time=workflow.update_time,
                        )
                    )
                except IntegrityError:
                    raise AlreadyExists(f"{_name(workflow.id)} exists already") from None
                await self._write_agents(conn, workflow, agents)
        except IntegrityError:
            await agents_deleted_meanwhile(self.engine, workflow.user_id, agents)
            raise

    async def change_workflow(
        self, user_id: str, workflow_id: str, change: WorkflowChange
    ) -> Workflow:
        """Applies `change` to the current workflow under a lock on it, as
        AgentStore.change_agent does; returns the workflow it made current.

        Raises NotFound, AgentsNotFound, or what `change` raises.
        """
        agents: Collection[str] = ()
        try:
            async with self.engine.begin() as conn:
                locked = await conn.execute(
                    update(WorkflowRow)
                    .where(WorkflowRow.user_id == user_id, WorkflowRow.id == workflow_id)
                    .values(etag=WorkflowRow.etag)
                )
                if locked.rowcount == 0:
                    raise NotFound(_name(workflow_id))
                workflow, agents = change(await self._get(conn, user_id, workflow_id))
                await require_agents(conn, user_id, agents)
                await conn.execute(
                    update(WorkflowRow)
                    .where(WorkflowRow.user_id == user_id, WorkflowRow.id == workflow_id)
                    .values(
                        definition=workflow.definition,
                        etag=workflow.etag,
                        update_time=workflow.update_time,
                    )
                )
                await conn.execute(
                    delete(WorkflowAgentRow).where(
                        WorkflowAgentRow.user_id == user_id,
                        WorkflowAgentRow.workflow_id == workflow_id,
                    )
                )
                await self._write_agents(conn, workflow, agents)
                return workflow
        except IntegrityError:
            await agents_deleted_meanwhile(self.engine, user_id, agents)
            raise

    async def get_workflow(self, user_id: str, workflow_id: str) -> Workflow:
        async with self.engine.connect() as conn:
            return await self._get(conn, user_id, workflow_id)

    async def list_workflows(self, user_id: str, after_seq: int, limit: int) -> Page:
        async with self.engine.connect() as conn:
            rows, last_seq = await fetch_page(
                conn,
                select(WorkflowRow).where(WorkflowRow.user_id == user_id),
                WorkflowRow.seq,
                after_seq,
                limit,
            )
        return Page([_workflow(row) for row in rows], last_seq)

    async def delete_workflow(self, user_id: str, workflow_id: str, etag: str) -> None:
        async with self.engine.begin() as conn:
            workflow = await self._get(conn, user_id, workflow_id)
            if etag and etag != workflow.etag:
                raise Aborted.stale(_name(workflow_id))
            await conn.execute(
                delete(WorkflowRow).where(
                    WorkflowRow.user_id == user_id, WorkflowRow.id == workflow_id
                )
            )

    async def _get(self, conn: AsyncConnection, user_id: str, workflow_id: str) -> Workflow:
        row = (
            await conn.execute(
                select(WorkflowRow).where(
                    WorkflowRow.user_id == user_id, WorkflowRow.id == workflow_id
                )
            )
        ).first()
        if row is None:
            raise NotFound(_name(workflow_id))
        return _workflow(row)

    async def _write_agents(
        self, conn: AsyncConnection, workflow: Workflow, agents: Collection[str]
    ) -> None:
        if agents:
            await conn.execute(
                insert(WorkflowAgentRow),
                [
                    {"user_id": workflow.user_id, "workflow_id": workflow.id, "agent_id": agent}
                    for agent in sorted(set(agents))
                ],
            )
