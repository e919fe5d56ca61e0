import datetime

from agentmesh.gen.common.v1 import common_pb2 as _common_pb2
from agentmesh.gen.common.v1 import options_pb2 as _options_pb2
from agentmesh.gen.runner.v1 import runner_pb2 as _runner_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunChanged(_message.Message):
    __slots__ = ("run", "user", "agent", "state", "time", "workflow_run")
    RUN_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_RUN_FIELD_NUMBER: _ClassVar[int]
    run: str
    user: str
    agent: str
    state: _runner_pb2.Run.State
    time: _timestamp_pb2.Timestamp
    workflow_run: str
    def __init__(self, run: _Optional[str] = ..., user: _Optional[str] = ..., agent: _Optional[str] = ..., state: _Optional[_Union[_runner_pb2.Run.State, str]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., workflow_run: _Optional[str] = ...) -> None: ...

class WorkflowRunChanged(_message.Message):
    __slots__ = ("workflow_run", "user", "workflow", "state", "time")
    WORKFLOW_RUN_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    workflow_run: str
    user: str
    workflow: str
    state: _runner_pb2.Run.State
    time: _timestamp_pb2.Timestamp
    def __init__(self, workflow_run: _Optional[str] = ..., user: _Optional[str] = ..., workflow: _Optional[str] = ..., state: _Optional[_Union[_runner_pb2.Run.State, str]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UsageRecorded(_message.Message):
    __slots__ = ("run", "user", "agent", "model", "usage", "time", "credits")
    RUN_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    run: str
    user: str
    agent: str
    model: str
    usage: _common_pb2.Usage
    time: _timestamp_pb2.Timestamp
    credits: int
    def __init__(self, run: _Optional[str] = ..., user: _Optional[str] = ..., agent: _Optional[str] = ..., model: _Optional[str] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., credits: _Optional[int] = ...) -> None: ...

class RunQueued(_message.Message):
    __slots__ = ("run", "user", "time")
    RUN_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    run: str
    user: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, run: _Optional[str] = ..., user: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RunCancelRequested(_message.Message):
    __slots__ = ("run", "user", "time")
    RUN_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    run: str
    user: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, run: _Optional[str] = ..., user: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
