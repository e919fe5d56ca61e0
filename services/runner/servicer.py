"""gRPC servicer of the runner: protos in, runs started, watched and governed, protos out."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator

import grpc
from google.protobuf import empty_pb2, json_format

from agentmesh.api import timestamp
from agentmesh.auth import current_user
from agentmesh.errors import FailedPrecondition, Unimplemented
from agentmesh.gen.runner.v1 import runner_pb2, runner_pb2_grpc
from agentmesh.ids import new_id, utc_now
from agentmesh.names import ResourceName
from agentmesh.paging import Pages
from services.runner import records
from services.runner.build import check_runnable
from services.runner.definitions import AgentDefinitions
from services.runner.dispatch import Dispatcher
from services.runner.event_log import Execution
from services.runner.execute import (
    APPROVAL,
    RUN,
    Executor,
    State,
    approval_proto,
    run_proto,
)
from services.runner.store import RunnerStore
from services.runner.workflows import WORKFLOW_RUN, WorkflowEngine, workflow_run_proto

log = logging.getLogger("agentmesh.runner")
Approval = runner_pb2.Approval
Decision = runner_pb2.ResolveApprovalRequest.Decision
CONVERSATION = ResourceName.of(runner_pb2.Conversation)
# agents/{agent} or agents/{agent}@{revision}; the request was validated already.
_AGENT_AT = re.compile(r"agents/([A-Za-z0-9_-]+)(?:@([A-Za-z0-9_-]+))?")
_DEFAULT_MAX_TURNS = 10


def _cap(request_cap: int, agent_cap: int) -> int:
    """The run's credit cap: a request may lower its agent's cap, never raise it."""
    caps = [cap for cap in (request_cap, agent_cap) if cap]
    return min(caps) if caps else 0


def _conversation_proto(conversation: records.Conversation) -> runner_pb2.Conversation:
    return runner_pb2.Conversation(
        name=CONVERSATION.format(conversation.id),
        agent=f"agents/{conversation.agent_id}",
        item_count=conversation.item_count,
        active_run=RUN.format(conversation.active_run) if conversation.active_run else "",
        create_time=timestamp(conversation.create_time),
        update_time=timestamp(conversation.update_time),
        compact_time=timestamp(conversation.compact_time) if conversation.compact_time else None,
    )


def _text(data: dict) -> str:
    """What a person reads of an item: a message's text, or a tool call's output."""
    content = data.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    output = data.get("output")
    return output if isinstance(output, str) else ""


def _item_proto(item: records.ConversationItem) -> runner_pb2.ConversationItem:
    data = item.item
    message = runner_pb2.ConversationItem(
        sequence=item.seq,
        role=str(data.get("role", "")),
        type=str(data.get("type", "message")),
        text=_text(data),
        run=RUN.format(item.run_id),
        create_time=timestamp(item.create_time),
    )
    json_format.ParseDict(data, message.data)
    return message


class RunnerServicer(runner_pb2_grpc.RunnerServiceServicer):
    def __init__(
        self,
        store: RunnerStore,
        definitions: AgentDefinitions,
        dispatcher: Dispatcher,
        executor: Executor,
        pages: Pages,
        workflows: WorkflowEngine | None = None,
    ):
        self._store = store
        self._workflows = workflows
        self._pages = pages
        self._definitions = definitions
        self._dispatcher = dispatcher
        self._executor = executor

    # ---- starting runs ----------------------------------------------------------

    async def _start(
        self, request: runner_pb2.RunAgentRequest, queued: bool, streamed: bool = True
    ) -> tuple[records.Run, Execution | None]:
        user = current_user()
        if request.request_id:
            earlier = await self._store.run_by_request(user.user_id, request.request_id)
            if earlier is not None:
                return earlier, self._executor.active.get(earlier.id)
        match = _AGENT_AT.fullmatch(request.agent)
        assert match is not None
        agent_id, revision = match.group(1), match.group(2) or ""
        graph = await self._definitions.graph(
            user.user, agent_id, {agent_id: revision} if revision else {}
        )
        check_runnable(graph)
        definition = graph[agent_id]
        conversation_id, new_conversation = new_id(), True
        if request.conversation:
            conversation_id = CONVERSATION.id(request.conversation)
            await self._store.get_conversation(user.user_id, conversation_id)  # NotFound
            new_conversation = False
        now = utc_now()
        run = records.Run(
            id=new_id(),
            user_id=user.user_id,
            agent_id=agent_id,
            revisions={id_: agent.revision_id for id_, agent in graph.items()},
            conversation_id=conversation_id,
            state=State.STATE_RUNNING,
            input=request.input,
            create_time=now,
            update_time=now,
            max_credits=_cap(request.max_credits, definition.max_credits_per_run),
            max_turns=request.max_turns or _DEFAULT_MAX_TURNS,
            request_id=request.request_id,
            trace_id=f"trace_{new_id()}",
            last_agent_id=agent_id,
            busy_policy=request.busy_policy,
        )
        context = self._context(user.user, agent_id, request)  # read while credits are held
        return await self._dispatcher.start(run, context, new_conversation, queued, streamed)

    async def _context(self, user: str, agent_id: str, request: runner_pb2.RunAgentRequest) -> dict:
        """The run's context: the named context's values (else the agent's default
        context's), with the request's values over them."""
        context = await self._definitions.context_values(user, agent_id, request.context)
        context.update(json_format.MessageToDict(request.context_values))
        return context

    async def RunAgent(
        self, request: runner_pb2.RunAgentRequest, context: grpc.aio.ServicerContext
    ) -> runner_pb2.Run:
        # Its caller waits for the end: its models are asked for whole replies.
        run, _ = await self._start(request, queued=False, streamed=False)
        try:
            return run_proto(await self._dispatcher.wait(run))
        except asyncio.CancelledError:
            # The caller hung up: the run ends with it.
            self._dispatcher.hung_up(run.id)
            raise

    async def StreamRun(
        self, request: runner_pb2.RunAgentRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[runner_pb2.RunEvent]:
        run, _ = await self._start(request, queued=False)
        try:
            async for event in self._dispatcher.follow(run, 0):
                yield event
        except (asyncio.CancelledError, GeneratorExit):
            # A client that hangs up on the run it started cancels it; a watcher
            # that hangs up only stops watching.
            self._dispatcher.hung_up(run.id)
            raise

    async def SubmitRun(
        self, request: runner_pb2.RunAgentRequest, context: grpc.aio.ServicerContext
    ) -> runner_pb2.Run:
        run, _ = await self._start(request, queued=True)
        return run_proto(run)

    async def WatchRun(
        self, request: runner_pb2.WatchRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[runner_pb2.RunEvent]:
        run = await self._store.get_run(current_user().user_id, RUN.id(request.name))
        async for event in self._dispatcher.follow(run, request.after_sequence):
            yield event

    # ---- reading and governing runs ---------------------------------------------

    async def GetRun(
        self, request: runner_pb2.GetRunRequest, context: grpc.aio.ServicerContext
    ) -> runner_pb2.Run:
        run_id = RUN.id(request.name)
        if execution := self._executor.active.get(run_id):
            if execution.run.user_id == current_user().user_id:
                return run_proto(execution.run)
        return run_proto(await self._store.get_run(current_user().user_id, run_id))

    async def ListRuns(
        self, request: runner_pb2.ListRunsRequest, context: grpc.aio.ServicerContext
    ) -> runner_pb2.ListRunsResponse:
        cursor = self._pages.open(request)
        page = await self._store.list_runs(
            current_user().user_id,
            request.agent.removeprefix("agents/"),
            cursor.after,
            cursor.size,
        )
        return runner_pb2.ListRunsResponse(
            runs=[run_proto(run) for run in page.items],
            next_page_token=cursor.next_token(page.last_seq),
        )

    async def CancelRun(
        self, request: runner_pb2.CancelRunRequest, context: grpc.aio.ServicerContext
    ) -> runner_pb2.Run:
        run = await self._dispatcher.cancel(current_user().user_id, RUN.id(request.name))
        return run_proto(run)

    # ---- approvals -----------------------------------------------------------------

    async def ListApprovals(
        self, request: runner_pb2.ListApprovalsRequest, context: grpc.aio.ServicerContext
    ) -> runner_pb2.ListApprovalsResponse:
        cursor = self._pages.open(request)
        page = await self._store.list_approvals(
            current_user().user_id,
            RUN.id(request.parent),
            cursor.after,
            cursor.size,
        )
        return runner_pb2.ListApprovalsResponse(
            approvals=[approval_proto(a) for a in page.items],
            next_page_token=cursor.next_token(page.last_seq),
        )

    async def ResolveApproval(
        self, request: runner_pb2.ResolveApprovalRequest, context: grpc.aio.ServicerContext
    ) -> runner_pb2.Approval:
        user = current_user()
        run_id, approval_id = APPROVAL.parse(request.name)
        approval = await self._store.get_approval(user.user_id, run_id, approval_id)
        if approval.state == Approval.STATE_PENDING and approval.expire_time <= utc_now():
            await self._dispatcher.expire(approval)
            approval = await self._store.get_approval(user.user_id, run_id, approval_id)
        approve = request.decision == Decision.DECISION_APPROVE
        state = Approval.STATE_APPROVED if approve else Approval.STATE_REJECTED
        if approval.state != Approval.STATE_PENDING or not await self._store.decide_approval(
            approval, state, Approval.STATE_PENDING, request.reason, user.user
        ):
            decided = await self._store.get_approval(user.user_id, run_id, approval_id)
            raise FailedPrecondition(
                f"{request.name} was decided already: {Approval.State.Name(decided.state)}"
                + (f" by {decided.decided_by}" if decided.decided_by else "")
                + (f" ({decided.reason})" if decided.reason else ""),
                reason="APPROVAL_DECIDED",
            )
        await self._dispatcher.resume_if_decided(user.user_id, run_id)
        if self._workflows is not None:  # a step's run: its workflow run goes on with it
            await self._workflows.resume_after(run_id)
        return approval_proto(await self._store.get_approval(user.user_id, run_id, approval_id))

    # ---- conversations ------------------------------------------------------------

    async def GetConversation(
        self, request: runner_pb2.GetConversationRequest, context: grpc.aio.ServicerContext
    ) -> runner_pb2.Conversation:
        conversation = await self._store.get_conversation(
            current_user().user_id, CONVERSATION.id(request.name)
        )
        return _conversation_proto(conversation)

    async def ListConversations(
        self, request: runner_pb2.ListConversationsRequest, context: grpc.aio.ServicerContext
    ) -> runner_pb2.ListConversationsResponse:
        cursor = self._pages.open(request)
        page = await self._store.list_conversations(
            current_user().user_id,
            request.agent.removeprefix("agents/"),
            cursor.after,
            cursor.size,
        )
        return runner_pb2.ListConversationsResponse(
            conversations=[_conversation_proto(c) for c in page.items],
            next_page_token=cursor.next_token(page.last_seq),
        )

    async def DeleteConversation(
        self, request: runner_pb2.DeleteConversationRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await self._store.delete_conversation(current_user().user_id, CONVERSATION.id(request.name))
        return empty_pb2.Empty()

    async def ListConversationItems(
        self, request: runner_pb2.ListConversationItemsRequest, context: grpc.aio.ServicerContext
    ) -> runner_pb2.ListConversationItemsResponse:
        cursor = self._pages.open(request)
        page = await self._store.list_items(
            current_user().user_id,
            CONVERSATION.id(request.parent),
            cursor.after,
            cursor.size,
        )
        return runner_pb2.ListConversationItemsResponse(
            items=[_item_proto(item) for item in page.items],
            next_page_token=cursor.next_token(page.last_seq),
        )

    # ---- workflow runs (services/runner/workflows.py) -------------------------------

    def _engine(self) -> WorkflowEngine:
        if self._workflows is None:
            raise Unimplemented("this runner runs no workflows")
        return self._workflows

    async def RunWorkflow(
        self, request: runner_pb2.RunWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> runner_pb2.WorkflowRun:
        user_id = current_user().user_id
        run = await self._engine().start(user_id, request, queued=False)
        try:
            return workflow_run_proto(await self._engine().wait(run))
        except asyncio.CancelledError:
            self._engine().hung_up(run.id, user_id)
            raise

    async def StreamWorkflow(
        self, request: runner_pb2.RunWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[runner_pb2.WorkflowEvent]:
        user_id = current_user().user_id
        run = await self._engine().start(user_id, request, queued=False)
        try:
            async for event in self._engine().follow(run, 0):
                yield event
        except (asyncio.CancelledError, GeneratorExit):
            self._engine().hung_up(run.id, user_id)
            raise

    async def SubmitWorkflow(
        self, request: runner_pb2.RunWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> runner_pb2.WorkflowRun:
        run = await self._engine().start(current_user().user_id, request, queued=True)
        return workflow_run_proto(run)

    async def GetWorkflowRun(
        self, request: runner_pb2.GetWorkflowRunRequest, context: grpc.aio.ServicerContext
    ) -> runner_pb2.WorkflowRun:
        run = await self._engine().get(current_user().user_id, WORKFLOW_RUN.id(request.name))
        return workflow_run_proto(run)

    async def ListWorkflowRuns(
        self, request: runner_pb2.ListWorkflowRunsRequest, context: grpc.aio.ServicerContext
    ) -> runner_pb2.ListWorkflowRunsResponse:
        cursor = self._pages.open(request)
        page = await self._engine().list(
            current_user().user_id,
            request.workflow.removeprefix("workflows/"),
            cursor.after,
            cursor.size,
        )
        return runner_pb2.ListWorkflowRunsResponse(
            workflow_runs=[workflow_run_proto(run) for run in page.items],
            next_page_token=cursor.next_token(page.last_seq),
        )

    async def CancelWorkflowRun(
        self, request: runner_pb2.CancelWorkflowRunRequest, context: grpc.aio.ServicerContext
    ) -> runner_pb2.WorkflowRun:
        run = await self._engine().cancel(current_user().user_id, WORKFLOW_RUN.id(request.name))
        return workflow_run_proto(run)

    async def WatchWorkflowRun(
        self, request: runner_pb2.WatchWorkflowRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[runner_pb2.WorkflowEvent]:
        run = await self._engine().get(current_user().user_id, WORKFLOW_RUN.id(request.name))
        async for event in self._engine().follow(run, request.after_sequence):
            yield event
