"""Agents, their revisions, and which agents each one references.

An agent row says which revision is current; revisions hold the definitions
and are never changed. Every write runs in one transaction that checks the
agents it references exist and are the caller's, and the composite foreign
keys of agent_references hold that in the database too: a delete racing the
write makes one of them fail, and that failure is mapped to the error the
check would have given, never left as an IntegrityError.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from sqlalchemy import Select, and_, bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agentmesh.db import Page, Reads, fetch_page
from agentmesh.errors import Aborted, AlreadyExists, FailedPrecondition, NotFound
from services.registry.records import Agent, AgentsNotFound
from services.registry.tables import (
    AgentReferenceRow,
    AgentRevisionRow,
    AgentRow,
    WorkflowAgentRow,
)

# What change_agent applies: the current agent to its next revision and the ids
# that revision references, or None for no change.
AgentChange = Callable[[Agent], tuple[Agent, Collection[str]] | None]


def _name(agent_id: str) -> str:
    return f"agents/{agent_id}"


def _revisions(seq=AgentRow.seq) -> Select:
    """Agents joined with their revisions (all of them: narrow it down), with `seq`
    (of either table) for paging."""
    return (
        select(
            seq,
            AgentRow.create_time,
            AgentRevisionRow.user_id,
            AgentRevisionRow.agent_id,
            AgentRevisionRow.id.label("revision_id"),
            AgentRevisionRow.definition,
            AgentRevisionRow.handoffs,
            AgentRevisionRow.etag,
            AgentRevisionRow.create_time.label("revision_time"),
        )
        .select_from(AgentRow)
        .join(
            AgentRevisionRow,
            and_(
                AgentRevisionRow.user_id == AgentRow.user_id,
                AgentRevisionRow.agent_id == AgentRow.id,
            ),
        )
    )


def _current() -> Select:
    return _revisions().where(AgentRevisionRow.id == AgentRow.revision_id)


# The hottest reads (every GetAgent, every run's definition): built once, executed
# with parameters, so no request pays for building the statement again.
_CURRENT_AGENT = _current().where(
    AgentRow.user_id == bindparam("user_id"), AgentRow.id == bindparam("agent_id")
)
_AGENT_REVISION = _revisions().where(
    AgentRow.user_id == bindparam("user_id"),
    AgentRow.id == bindparam("agent_id"),
    AgentRevisionRow.id == bindparam("revision_id"),
)


def _agent(row) -> Agent:
    return Agent(
        id=row.agent_id,
        user_id=row.user_id,
        definition=row.definition,
        handoffs=list(row.handoffs),
        etag=row.etag,
        revision_id=row.revision_id,
        create_time=row.create_time,
        update_time=row.revision_time,
    )


class AgentStore:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        self._reads = Reads(engine)

    async def create_agent(self, agent: Agent, references: Collection[str]) -> None:
        """Raises AlreadyExists, or AgentsNotFound for `references` (ids of the agents
        it hands off to or uses) that are not the user's."""
        try:
            async with self.engine.begin() as conn:
                await require_agents(conn, agent.user_id, references)
                try:
                    await conn.execute(
                        insert(AgentRow).values(
                            user_id=agent.user_id,
                            id=agent.id,
                            etag=agent.etag,
                            revision_id=agent.revision_id,
                            create_time=agent.create_time,
                            update_time=agent.update_time,
                        )
                    )
                except IntegrityError:
                    # The key is (user_id, id): a tenant learns only of its own ids.
                    raise AlreadyExists(f"{_name(agent.id)} exists already") from None
                await self._write_revision(conn, agent, references)
        except IntegrityError:
            await agents_deleted_meanwhile(self.engine, agent.user_id, references)
            raise

    async def change_agent(
        self, user_id: str, agent_id: str, change: AgentChange
    ) -> tuple[Agent, bool]:
        """Applies `change` to the current agent and makes what it returns (a new
        revision, and the ids that revision references) current; returns the agent
        as it then is, and whether it changed (a change returning None does not).

        The agent is locked first, so concurrent changes of one agent run one after
        another, each on what the one before left: none is lost and none fails for
        the other. Raises NotFound, AgentsNotFound, or what `change` raises.
        """
        references: Collection[str] = ()
        try:
            async with self.engine.begin() as conn:
                # A write of the row takes its lock on Postgres and the write lock
                # on SQLite, before the state the change builds on is read.
                locked = await conn.execute(
                    update(AgentRow)
                    .where(AgentRow.user_id == user_id, AgentRow.id == agent_id)
                    .values(etag=AgentRow.etag)
                )
                if locked.rowcount == 0:
                    raise NotFound(_name(agent_id))
                current = await self._get_agent(conn, user_id, agent_id)
                changed = change(current)
                if changed is None:
                    return current, False
                agent, references = changed
                await require_agents(conn, user_id, references)
                await conn.execute(
                    update(AgentRow)
                    .where(AgentRow.user_id == user_id, AgentRow.id == agent_id)
                    .values(
                        etag=agent.etag,
                        revision_id=agent.revision_id,
                        update_time=agent.update_time,
                    )
                )
                await conn.execute(
                    delete(AgentReferenceRow).where(
                        AgentReferenceRow.user_id == user_id,
                        AgentReferenceRow.agent_id == agent_id,
                    )
                )
                await self._write_revision(conn, agent, references)
                return agent, True
        except IntegrityError:
            await agents_deleted_meanwhile(self.engine, user_id, references)
            raise

    async def get_agent(self, user_id: str, agent_id: str) -> Agent:
        row = await self._reads.first(_CURRENT_AGENT, {"user_id": user_id, "agent_id": agent_id})
        if row is None:
            raise NotFound(_name(agent_id))
        return _agent(row)

    async def get_agent_revision(self, user_id: str, agent_id: str, revision_id: str) -> Agent:
        """The agent as one of its revisions made it (what a pinned run executes)."""
        row = await self._reads.first(
            _AGENT_REVISION,
            {"user_id": user_id, "agent_id": agent_id, "revision_id": revision_id},
        )
        if row is None:
            raise NotFound(f"{_name(agent_id)}@{revision_id}")
        return _agent(row)

    async def list_agents(self, user_id: str, after_seq: int, limit: int) -> Page:
        async with self.engine.connect() as conn:
            rows, last_seq = await fetch_page(
                conn, _current().where(AgentRow.user_id == user_id), AgentRow.seq, after_seq, limit
            )
        return Page([_agent(row) for row in rows], last_seq)

    async def list_agent_revisions(
        self, user_id: str, agent_id: str, before_seq: int, limit: int
    ) -> Page:
        """The agent's revisions, newest first."""
        async with self.engine.connect() as conn:
            await self._get_agent(conn, user_id, agent_id)  # NotFound if there is none
            rows, last_seq = await fetch_page(
                conn,
                _revisions(AgentRevisionRow.seq).where(
                    AgentRow.user_id == user_id, AgentRow.id == agent_id
                ),
                AgentRevisionRow.seq,
                before_seq,
                limit,
                newest_first=True,
            )
        return Page([_agent(row) for row in rows], last_seq)

    async def delete_agent(self, user_id: str, agent_id: str, etag: str) -> None:
        """Deletes the agent with its revisions and contexts (cascading in the database).

        Raises FailedPrecondition (AGENT_IN_USE) while another agent or a workflow uses it.
        """
        try:
            async with self.engine.begin() as conn:
                agent = await self._get_agent(conn, user_id, agent_id)
                if etag and etag != agent.etag:
                    raise Aborted.stale(_name(agent_id))
                await self._refuse_if_used(conn, user_id, agent_id)
                await conn.execute(
                    delete(AgentRow).where(AgentRow.user_id == user_id, AgentRow.id == agent_id)
                )
        except IntegrityError:
            # A reference was written after the check above: the foreign key held.
            async with self.engine.connect() as conn:
                await self._refuse_if_used(conn, user_id, agent_id)
            raise

    async def _get_agent(self, conn: AsyncConnection, user_id: str, agent_id: str) -> Agent:
        row = (
            await conn.execute(_CURRENT_AGENT, {"user_id": user_id, "agent_id": agent_id})
        ).first()
        if row is None:
            raise NotFound(_name(agent_id))
        return _agent(row)

    async def _write_revision(
        self, conn: AsyncConnection, agent: Agent, references: Collection[str]
    ) -> None:
        await conn.execute(
            insert(AgentRevisionRow).values(
                user_id=agent.user_id,
                agent_id=agent.id,
                id=agent.revision_id,
                definition=agent.definition,
                handoffs=agent.handoffs,
                etag=agent.etag,
                create_time=agent.update_time,
            )
        )
        if references:
            await conn.execute(
                insert(AgentReferenceRow),
                [
                    {"user_id": agent.user_id, "agent_id": agent.id, "target_id": target}
                    for target in sorted(set(references))
                ],
            )

    async def _refuse_if_used(self, conn: AsyncConnection, user_id: str, agent_id: str) -> None:
        agents = (
            await conn.execute(
                select(AgentReferenceRow.agent_id).where(
                    AgentReferenceRow.user_id == user_id, AgentReferenceRow.target_id == agent_id
                )
            )
        ).scalars()
        workflows = (
            await conn.execute(
                select(WorkflowAgentRow.workflow_id).where(
                    WorkflowAgentRow.user_id == user_id, WorkflowAgentRow.agent_id == agent_id
                )
            )
        ).scalars()
        used_by = [
            *(_name(a) for a in sorted(agents)),
            *(f"workflows/{w}" for w in sorted(workflows)),
        ]
        if used_by:
            raise FailedPrecondition(
                f"{_name(agent_id)} is used by {', '.join(used_by[:10])}"
                f"{' and others' if len(used_by) > 10 else ''}; change those first",
                reason="AGENT_IN_USE",
            )


async def agents_deleted_meanwhile(
    engine: AsyncEngine, user_id: str, references: Collection[str]
) -> None:
    """After a foreign key refused a write: AgentsNotFound for the agents deleted
    between the check and the write (the check's answer, just later)."""
    async with engine.connect() as conn:
        await require_agents(conn, user_id, references)


async def require_agents(conn: AsyncConnection, user_id: str, agent_ids: Collection[str]) -> None:
    """Raises AgentsNotFound unless every id is one of the user's agents."""
    if not agent_ids:
        return
    found = set(
        (
            await conn.execute(
                select(AgentRow.id).where(AgentRow.user_id == user_id, AgentRow.id.in_(agent_ids))
            )
        ).scalars()
    )
    if missing := frozenset(agent_ids) - found:
        raise AgentsNotFound(missing)
