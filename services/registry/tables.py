"""The registry's tables, as migrations/versions builds them.

Everything an agent or workflow belongs to or points at is keyed by
(user_id, id): ids are unique per user only, so two tenants may both have
agents/triage, and the composite foreign keys make it impossible, in the
database itself, for one tenant's agent to reference another's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from agentmesh.db import UtcDateTime

AGENT_KEY = ["agents.user_id", "agents.id"]


class Base(DeclarativeBase):
    pass


class UserRow(Base):
    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320), default="")
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)


class ApiKeyRow(Base):
    __tablename__ = "api_keys"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    expire_time: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class CreditAccountRow(Base):
    __tablename__ = "credit_accounts"
    __table_args__ = (
        # The last line of defence: no code path can take an account below zero.
        CheckConstraint("reserved >= 0", name="reserved_not_negative"),
        CheckConstraint("balance >= reserved", name="balance_covers_reserved"),
    )
    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved: Mapped[int] = mapped_column(BigInteger, default=0)


class ReservationRow(Base):
    __tablename__ = "credit_reservations"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16), default="open", index=True)
    expire_time: Mapped[datetime] = mapped_column(UtcDateTime, index=True)


class LedgerRow(Base):
    __tablename__ = "credit_ledger"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    delta: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))  # grant | charge
    reference: Mapped[str] = mapped_column(String(1024), default="")
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)


class AgentRow(Base):
    """An agent: which of its revisions is current. The definitions live in revisions."""

    __tablename__ = "agents"
    __table_args__ = (UniqueConstraint("user_id", "id", name="uq_agents_user_id_id"),)
    # seq orders pages; (user_id, id) is the public name.
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    id: Mapped[str] = mapped_column(String(64))
    etag: Mapped[str] = mapped_column(String(64))
    revision_id: Mapped[str] = mapped_column(String(64))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    # When the current revision was made: every change makes one.
    update_time: Mapped[datetime] = mapped_column(UtcDateTime)


class AgentRevisionRow(Base):
    """One immutable version of an agent (AIP-162), handoffs included."""

    __tablename__ = "agent_revisions"
    __table_args__ = (
        ForeignKeyConstraint(["user_id", "agent_id"], AGENT_KEY, ondelete="CASCADE"),
        UniqueConstraint(
            "user_id", "agent_id", "id", name="uq_agent_revisions_user_id_agent_id_id"
        ),
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(64))
    agent_id: Mapped[str] = mapped_column(String(64))
    id: Mapped[str] = mapped_column(String(64))
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    handoffs: Mapped[list[str]] = mapped_column(JSON)
    etag: Mapped[str] = mapped_column(String(64))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)


class AgentReferenceRow(Base):
    """An agent the current revision of another hands off to, or uses as a tool or
    guardrail. Derived from the definition, and kept so that the database itself
    refuses to delete an agent in use: the target's key has no ON DELETE."""

    __tablename__ = "agent_references"
    __table_args__ = (
        ForeignKeyConstraint(["user_id", "agent_id"], AGENT_KEY, ondelete="CASCADE"),
        ForeignKeyConstraint(["user_id", "target_id"], AGENT_KEY),
        Index("ix_agent_references_user_id_target_id", "user_id", "target_id"),
    )
    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    agent_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    target_id: Mapped[str] = mapped_column(String(64), primary_key=True)


class ContextRow(Base):
    __tablename__ = "contexts"
    __table_args__ = (
        ForeignKeyConstraint(["user_id", "agent_id"], AGENT_KEY, ondelete="CASCADE"),
        Index("ix_contexts_user_id_agent_id", "user_id", "agent_id"),
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[str] = mapped_column(String(64))
    agent_id: Mapped[str] = mapped_column(String(64))
    display_name: Mapped[str] = mapped_column(String(200), default="")
    values: Mapped[dict[str, Any]] = mapped_column(JSON)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)


class WorkflowRow(Base):
    __tablename__ = "workflows"
    __table_args__ = (UniqueConstraint("user_id", "id", name="uq_workflows_user_id_id"),)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    id: Mapped[str] = mapped_column(String(64))
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    etag: Mapped[str] = mapped_column(String(64))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime)


class WorkflowAgentRow(Base):
    """An agent a workflow's steps run; it cannot be deleted while one does."""

    __tablename__ = "workflow_agents"
    __table_args__ = (
        ForeignKeyConstraint(
            ["user_id", "workflow_id"], ["workflows.user_id", "workflows.id"], ondelete="CASCADE"
        ),
        ForeignKeyConstraint(["user_id", "agent_id"], AGENT_KEY),
        Index("ix_workflow_agents_user_id_agent_id", "user_id", "agent_id"),
    )
    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workflow_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    agent_id: Mapped[str] = mapped_column(String(64), primary_key=True)
