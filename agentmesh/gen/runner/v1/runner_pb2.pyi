import datetime

from agentmesh.gen.common.v1 import common_pb2 as _common_pb2
from agentmesh.gen.guardrails.v1 import guardrails_pb2 as _guardrails_pb2
from agentmesh.gen.buf.validate import validate_pb2 as _validate_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import resource_pb2 as _resource_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BusyPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BUSY_POLICY_UNSPECIFIED: _ClassVar[BusyPolicy]
    BUSY_POLICY_REJECT: _ClassVar[BusyPolicy]
    BUSY_POLICY_ENQUEUE: _ClassVar[BusyPolicy]
    BUSY_POLICY_INTERRUPT: _ClassVar[BusyPolicy]
    BUSY_POLICY_ROLLBACK: _ClassVar[BusyPolicy]
BUSY_POLICY_UNSPECIFIED: BusyPolicy
BUSY_POLICY_REJECT: BusyPolicy
BUSY_POLICY_ENQUEUE: BusyPolicy
BUSY_POLICY_INTERRUPT: BusyPolicy
BUSY_POLICY_ROLLBACK: BusyPolicy

class Run(_message.Message):
    __slots__ = ("name", "agent", "last_agent", "conversation", "state", "input", "final_output", "structured_output", "items", "usage", "credits", "error", "trace", "create_time", "end_time", "agent_revision", "max_credits", "guardrail_results", "workflow_run")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Run.State]
        STATE_QUEUED: _ClassVar[Run.State]
        STATE_RUNNING: _ClassVar[Run.State]
        STATE_AWAITING_APPROVAL: _ClassVar[Run.State]
        STATE_SUCCEEDED: _ClassVar[Run.State]
        STATE_FAILED: _ClassVar[Run.State]
        STATE_CANCELLED: _ClassVar[Run.State]
        STATE_BLOCKED: _ClassVar[Run.State]
    STATE_UNSPECIFIED: Run.State
    STATE_QUEUED: Run.State
    STATE_RUNNING: Run.State
    STATE_AWAITING_APPROVAL: Run.State
    STATE_SUCCEEDED: Run.State
    STATE_FAILED: Run.State
    STATE_CANCELLED: Run.State
    STATE_BLOCKED: Run.State
    NAME_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    LAST_AGENT_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    FINAL_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    STRUCTURED_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    AGENT_REVISION_FIELD_NUMBER: _ClassVar[int]
    MAX_CREDITS_FIELD_NUMBER: _ClassVar[int]
    GUARDRAIL_RESULTS_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_RUN_FIELD_NUMBER: _ClassVar[int]
    name: str
    agent: str
    last_agent: str
    conversation: str
    state: Run.State
    input: str
    final_output: str
    structured_output: _struct_pb2.Value
    items: _containers.RepeatedCompositeFieldContainer[RunItem]
    usage: _common_pb2.Usage
    credits: int
    error: _status_pb2.Status
    trace: str
    create_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    agent_revision: str
    max_credits: int
    guardrail_results: _containers.RepeatedCompositeFieldContainer[_guardrails_pb2.GuardrailResult]
    workflow_run: str
    def __init__(self, name: _Optional[str] = ..., agent: _Optional[str] = ..., last_agent: _Optional[str] = ..., conversation: _Optional[str] = ..., state: _Optional[_Union[Run.State, str]] = ..., input: _Optional[str] = ..., final_output: _Optional[str] = ..., structured_output: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., items: _Optional[_Iterable[_Union[RunItem, _Mapping]]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., credits: _Optional[int] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., trace: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., agent_revision: _Optional[str] = ..., max_credits: _Optional[int] = ..., guardrail_results: _Optional[_Iterable[_Union[_guardrails_pb2.GuardrailResult, _Mapping]]] = ..., workflow_run: _Optional[str] = ...) -> None: ...

class RunItem(_message.Message):
    __slots__ = ("type", "agent", "text", "tool_name", "call_id", "data")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TYPE_UNSPECIFIED: _ClassVar[RunItem.Type]
        TYPE_MESSAGE: _ClassVar[RunItem.Type]
        TYPE_TOOL_CALL: _ClassVar[RunItem.Type]
        TYPE_TOOL_OUTPUT: _ClassVar[RunItem.Type]
        TYPE_HANDOFF: _ClassVar[RunItem.Type]
        TYPE_REASONING: _ClassVar[RunItem.Type]
        TYPE_APPROVAL_REQUEST: _ClassVar[RunItem.Type]
    TYPE_UNSPECIFIED: RunItem.Type
    TYPE_MESSAGE: RunItem.Type
    TYPE_TOOL_CALL: RunItem.Type
    TYPE_TOOL_OUTPUT: RunItem.Type
    TYPE_HANDOFF: RunItem.Type
    TYPE_REASONING: RunItem.Type
    TYPE_APPROVAL_REQUEST: RunItem.Type
    TYPE_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    type: RunItem.Type
    agent: str
    text: str
    tool_name: str
    call_id: str
    data: str
    def __init__(self, type: _Optional[_Union[RunItem.Type, str]] = ..., agent: _Optional[str] = ..., text: _Optional[str] = ..., tool_name: _Optional[str] = ..., call_id: _Optional[str] = ..., data: _Optional[str] = ...) -> None: ...

class RunAgentRequest(_message.Message):
    __slots__ = ("agent", "input", "context", "context_values", "conversation", "max_turns", "request_id", "busy_policy", "max_credits")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_VALUES_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    MAX_TURNS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BUSY_POLICY_FIELD_NUMBER: _ClassVar[int]
    MAX_CREDITS_FIELD_NUMBER: _ClassVar[int]
    agent: str
    input: str
    context: str
    context_values: _struct_pb2.Struct
    conversation: str
    max_turns: int
    request_id: str
    busy_policy: BusyPolicy
    max_credits: int
    def __init__(self, agent: _Optional[str] = ..., input: _Optional[str] = ..., context: _Optional[str] = ..., context_values: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., conversation: _Optional[str] = ..., max_turns: _Optional[int] = ..., request_id: _Optional[str] = ..., busy_policy: _Optional[_Union[BusyPolicy, str]] = ..., max_credits: _Optional[int] = ...) -> None: ...

class RunEvent(_message.Message):
    __slots__ = ("sequence", "run_started", "text_delta", "item", "agent_updated", "approval_required", "run_finished")
    class TextDelta(_message.Message):
        __slots__ = ("agent", "delta")
        AGENT_FIELD_NUMBER: _ClassVar[int]
        DELTA_FIELD_NUMBER: _ClassVar[int]
        agent: str
        delta: str
        def __init__(self, agent: _Optional[str] = ..., delta: _Optional[str] = ...) -> None: ...
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    RUN_STARTED_FIELD_NUMBER: _ClassVar[int]
    TEXT_DELTA_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    AGENT_UPDATED_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    RUN_FINISHED_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    run_started: Run
    text_delta: RunEvent.TextDelta
    item: RunItem
    agent_updated: str
    approval_required: Approval
    run_finished: Run
    def __init__(self, sequence: _Optional[int] = ..., run_started: _Optional[_Union[Run, _Mapping]] = ..., text_delta: _Optional[_Union[RunEvent.TextDelta, _Mapping]] = ..., item: _Optional[_Union[RunItem, _Mapping]] = ..., agent_updated: _Optional[str] = ..., approval_required: _Optional[_Union[Approval, _Mapping]] = ..., run_finished: _Optional[_Union[Run, _Mapping]] = ...) -> None: ...

class WatchRunRequest(_message.Message):
    __slots__ = ("name", "after_sequence")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    after_sequence: int
    def __init__(self, name: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("agent", "page_size", "page_token")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    agent: str
    page_size: int
    page_token: str
    def __init__(self, agent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[Run]
    next_page_token: str
    def __init__(self, runs: _Optional[_Iterable[_Union[Run, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelRunRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Approval(_message.Message):
    __slots__ = ("name", "agent", "tool_name", "arguments", "state", "reason", "create_time", "decided_by", "decide_time", "expire_time", "call_id")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Approval.State]
        STATE_PENDING: _ClassVar[Approval.State]
        STATE_APPROVED: _ClassVar[Approval.State]
        STATE_REJECTED: _ClassVar[Approval.State]
        STATE_EXPIRED: _ClassVar[Approval.State]
    STATE_UNSPECIFIED: Approval.State
    STATE_PENDING: Approval.State
    STATE_APPROVED: Approval.State
    STATE_REJECTED: Approval.State
    STATE_EXPIRED: Approval.State
    NAME_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    DECIDE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    agent: str
    tool_name: str
    arguments: str
    state: Approval.State
    reason: str
    create_time: _timestamp_pb2.Timestamp
    decided_by: str
    decide_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    call_id: str
    def __init__(self, name: _Optional[str] = ..., agent: _Optional[str] = ..., tool_name: _Optional[str] = ..., arguments: _Optional[str] = ..., state: _Optional[_Union[Approval.State, str]] = ..., reason: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., decided_by: _Optional[str] = ..., decide_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., call_id: _Optional[str] = ...) -> None: ...

class ListApprovalsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListApprovalsResponse(_message.Message):
    __slots__ = ("approvals", "next_page_token")
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    approvals: _containers.RepeatedCompositeFieldContainer[Approval]
    next_page_token: str
    def __init__(self, approvals: _Optional[_Iterable[_Union[Approval, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ResolveApprovalRequest(_message.Message):
    __slots__ = ("name", "decision", "reason")
    class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        DECISION_UNSPECIFIED: _ClassVar[ResolveApprovalRequest.Decision]
        DECISION_APPROVE: _ClassVar[ResolveApprovalRequest.Decision]
        DECISION_REJECT: _ClassVar[ResolveApprovalRequest.Decision]
    DECISION_UNSPECIFIED: ResolveApprovalRequest.Decision
    DECISION_APPROVE: ResolveApprovalRequest.Decision
    DECISION_REJECT: ResolveApprovalRequest.Decision
    NAME_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    decision: ResolveApprovalRequest.Decision
    reason: str
    def __init__(self, name: _Optional[str] = ..., decision: _Optional[_Union[ResolveApprovalRequest.Decision, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class Conversation(_message.Message):
    __slots__ = ("name", "agent", "item_count", "active_run", "create_time", "update_time", "compact_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_RUN_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    COMPACT_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    agent: str
    item_count: int
    active_run: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    compact_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., agent: _Optional[str] = ..., item_count: _Optional[int] = ..., active_run: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., compact_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ConversationItem(_message.Message):
    __slots__ = ("sequence", "role", "type", "text", "data", "run", "create_time")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    role: str
    type: str
    text: str
    data: _struct_pb2.Struct
    run: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, sequence: _Optional[int] = ..., role: _Optional[str] = ..., type: _Optional[str] = ..., text: _Optional[str] = ..., data: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., run: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetConversationRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListConversationsRequest(_message.Message):
    __slots__ = ("agent", "page_size", "page_token")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    agent: str
    page_size: int
    page_token: str
    def __init__(self, agent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListConversationsResponse(_message.Message):
    __slots__ = ("conversations", "next_page_token")
    CONVERSATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    conversations: _containers.RepeatedCompositeFieldContainer[Conversation]
    next_page_token: str
    def __init__(self, conversations: _Optional[_Iterable[_Union[Conversation, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteConversationRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListConversationItemsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListConversationItemsResponse(_message.Message):
    __slots__ = ("items", "next_page_token")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ConversationItem]
    next_page_token: str
    def __init__(self, items: _Optional[_Iterable[_Union[ConversationItem, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WorkflowRun(_message.Message):
    __slots__ = ("name", "workflow", "workflow_etag", "state", "input", "steps", "final_output", "structured_output", "usage", "credits", "error", "trace", "create_time", "end_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ETAG_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    FINAL_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    STRUCTURED_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    workflow: str
    workflow_etag: str
    state: Run.State
    input: str
    steps: _containers.RepeatedCompositeFieldContainer[StepRun]
    final_output: str
    structured_output: _struct_pb2.Value
    usage: _common_pb2.Usage
    credits: int
    error: _status_pb2.Status
    trace: str
    create_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., workflow: _Optional[str] = ..., workflow_etag: _Optional[str] = ..., state: _Optional[_Union[Run.State, str]] = ..., input: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[StepRun, _Mapping]]] = ..., final_output: _Optional[str] = ..., structured_output: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., credits: _Optional[int] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., trace: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StepRun(_message.Message):
    __slots__ = ("step", "branch", "visit", "state", "input", "output", "structured_output", "run", "usage", "credits", "error", "start_time", "end_time", "next_step")
    STEP_FIELD_NUMBER: _ClassVar[int]
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    VISIT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    STRUCTURED_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    NEXT_STEP_FIELD_NUMBER: _ClassVar[int]
    step: str
    branch: str
    visit: int
    state: Run.State
    input: str
    output: str
    structured_output: _struct_pb2.Value
    run: str
    usage: _common_pb2.Usage
    credits: int
    error: _status_pb2.Status
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    next_step: str
    def __init__(self, step: _Optional[str] = ..., branch: _Optional[str] = ..., visit: _Optional[int] = ..., state: _Optional[_Union[Run.State, str]] = ..., input: _Optional[str] = ..., output: _Optional[str] = ..., structured_output: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., run: _Optional[str] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., credits: _Optional[int] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., next_step: _Optional[str] = ...) -> None: ...

class WorkflowEvent(_message.Message):
    __slots__ = ("sequence", "workflow_started", "step_started", "step_finished", "run_event", "approval_required", "workflow_finished")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_STARTED_FIELD_NUMBER: _ClassVar[int]
    STEP_STARTED_FIELD_NUMBER: _ClassVar[int]
    STEP_FINISHED_FIELD_NUMBER: _ClassVar[int]
    RUN_EVENT_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_FINISHED_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    workflow_started: WorkflowRun
    step_started: StepRun
    step_finished: StepRun
    run_event: RunEvent
    approval_required: Approval
    workflow_finished: WorkflowRun
    def __init__(self, sequence: _Optional[int] = ..., workflow_started: _Optional[_Union[WorkflowRun, _Mapping]] = ..., step_started: _Optional[_Union[StepRun, _Mapping]] = ..., step_finished: _Optional[_Union[StepRun, _Mapping]] = ..., run_event: _Optional[_Union[RunEvent, _Mapping]] = ..., approval_required: _Optional[_Union[Approval, _Mapping]] = ..., workflow_finished: _Optional[_Union[WorkflowRun, _Mapping]] = ...) -> None: ...

class RunWorkflowRequest(_message.Message):
    __slots__ = ("workflow", "input", "vars", "request_id", "max_credits")
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    VARS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_CREDITS_FIELD_NUMBER: _ClassVar[int]
    workflow: str
    input: str
    vars: _struct_pb2.Struct
    request_id: str
    max_credits: int
    def __init__(self, workflow: _Optional[str] = ..., input: _Optional[str] = ..., vars: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., request_id: _Optional[str] = ..., max_credits: _Optional[int] = ...) -> None: ...

class GetWorkflowRunRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListWorkflowRunsRequest(_message.Message):
    __slots__ = ("workflow", "page_size", "page_token")
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    workflow: str
    page_size: int
    page_token: str
    def __init__(self, workflow: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListWorkflowRunsResponse(_message.Message):
    __slots__ = ("workflow_runs", "next_page_token")
    WORKFLOW_RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    workflow_runs: _containers.RepeatedCompositeFieldContainer[WorkflowRun]
    next_page_token: str
    def __init__(self, workflow_runs: _Optional[_Iterable[_Union[WorkflowRun, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelWorkflowRunRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class WatchWorkflowRunRequest(_message.Message):
    __slots__ = ("name", "after_sequence")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    after_sequence: int
    def __init__(self, name: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...
