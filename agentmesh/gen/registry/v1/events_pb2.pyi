import datetime

from agentmesh.gen.common.v1 import common_pb2 as _common_pb2
from agentmesh.gen.common.v1 import options_pb2 as _options_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentChanged(_message.Message):
    __slots__ = ("agent", "user", "kind", "etag", "time", "revision_id")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    REVISION_ID_FIELD_NUMBER: _ClassVar[int]
    agent: str
    user: str
    kind: _common_pb2.ChangeKind
    etag: str
    time: _timestamp_pb2.Timestamp
    revision_id: str
    def __init__(self, agent: _Optional[str] = ..., user: _Optional[str] = ..., kind: _Optional[_Union[_common_pb2.ChangeKind, str]] = ..., etag: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revision_id: _Optional[str] = ...) -> None: ...

class WorkflowChanged(_message.Message):
    __slots__ = ("workflow", "user", "kind", "etag", "time")
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    workflow: str
    user: str
    kind: _common_pb2.ChangeKind
    etag: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, workflow: _Optional[str] = ..., user: _Optional[str] = ..., kind: _Optional[_Union[_common_pb2.ChangeKind, str]] = ..., etag: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ApiKeyRevoked(_message.Message):
    __slots__ = ("api_key", "user", "time")
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    api_key: str
    user: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, api_key: _Optional[str] = ..., user: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
