"""The runner's records: plain data the store reads and writes, never protos."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass
class Run:
    id: str
    user_id: str
    agent_id: str
    # The revision of every agent the run may reach (its own and its handoffs'
    # and tools'), pinned when it started: a paused run resumes on the same ones.
    revisions: dict[str, str]
    conversation_id: str
    state: int
    input: str
    create_time: datetime
    update_time: datetime
    max_credits: int = 0
    max_turns: int = 10
    request_id: str = ""
    trace_id: str = ""
    last_agent_id: str = ""
    final_output: str = ""
    structured_output: Any = None
    items: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)
    credits: int = 0
    # A google.rpc.Status, serialized, when the run failed.
    error: bytes | None = None
    # The SDK's RunState as JSON while the run waits for approvals.
    paused_state: str | None = None
    end_time: datetime | None = None

    @property
    def agent_revision(self) -> str:
        return self.revisions.get(self.agent_id, "")


@dataclass
class Approval:
    id: str
    run_id: str
    user_id: str
    call_id: str
    agent_id: str
    tool_name: str
    arguments: str
    state: int
    create_time: datetime
    expire_time: datetime
    reason: str = ""
    decided_by: str = ""
    decide_time: datetime | None = None


@dataclass
class Conversation:
    id: str
    user_id: str
    agent_id: str
    create_time: datetime
    update_time: datetime
    active_run: str | None = None
    item_count: int = 0


@dataclass
class ConversationItem:
    seq: int
    conversation_id: str
    run_id: str
    item: dict[str, Any]
    create_time: datetime
