"""The runner's records: plain data the store reads and writes, never protos.

States and busy policies are the contract's enum numbers (plain ints), named
here once so the store can compare them without reading a message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agentmesh.gen.runner.v1 import runner_pb2

QUEUED = runner_pb2.Run.STATE_QUEUED
RUNNING = runner_pb2.Run.STATE_RUNNING
AWAITING_APPROVAL = runner_pb2.Run.STATE_AWAITING_APPROVAL
SUCCEEDED = runner_pb2.Run.STATE_SUCCEEDED
FAILED = runner_pb2.Run.STATE_FAILED
CANCELLED = runner_pb2.Run.STATE_CANCELLED
BLOCKED = runner_pb2.Run.STATE_BLOCKED
ENDED = frozenset({SUCCEEDED, FAILED, CANCELLED, BLOCKED})
# Busy policies under which a run waits for its conversation rather than fail;
# those that interrupt the active run go ahead of those that only queued.
WAITING = frozenset(
    {
        runner_pb2.BUSY_POLICY_ENQUEUE,
        runner_pb2.BUSY_POLICY_INTERRUPT,
        runner_pb2.BUSY_POLICY_ROLLBACK,
    }
)
INTERRUPTING = frozenset({runner_pb2.BUSY_POLICY_INTERRUPT, runner_pb2.BUSY_POLICY_ROLLBACK})
ROLLBACK = runner_pb2.BUSY_POLICY_ROLLBACK


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
    # The SDK's RunState as JSON from the run's pause until it ends: what a
    # resumed run is replayed from when its runner is lost.
    paused_state: str | None = None
    end_time: datetime | None = None
    # The context values the run starts with: what a queued run, or one replayed
    # from its start, is started with.
    start_context: dict[str, Any] | None = None
    busy_policy: int = 0
    # Queued behind the conversation's active run, which it waits for.
    waiting: bool = False
    # The run this one cancels (INTERRUPT, ROLLBACK) before it runs.
    interrupts: str | None = None
    # The runner replica that executes the run, and until when it holds it
    # unless it renews its lease.
    owner: str | None = None
    lease_expire_time: datetime | None = None
    # No tool has begun since the run's last safe point (its start, or its resume
    # from a pause): a replica that takes it over may run it again from there.
    replayable: bool = False
    # The conversation's last item at that safe point; a replay drops the run's
    # items after it.
    checkpoint_item_seq: int = 0
    # How many runners started it since its safe point (its claim, then each
    # takeover): bounds replays of a run that keeps losing its runner.
    attempts: int = 0
    # Its open credit reservations (reservations/{id}), released if its runner is lost.
    reservations: list[str] = field(default_factory=list)
    # Every guardrail result of the run, in the order decided (GuardrailResult as JSON).
    guardrail_results: list[dict[str, Any]] = field(default_factory=list)
    # The workflow run this run is a step of (its id), if any.
    workflow_run_id: str = ""

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
    compact_time: datetime | None = None


@dataclass
class ConversationItem:
    seq: int
    conversation_id: str
    run_id: str
    item: dict[str, Any]
    create_time: datetime
