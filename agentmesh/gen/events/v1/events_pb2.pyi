import datetime

from agentmesh.gen.common.v1 import common_pb2 as _common_pb2
from agentmesh.gen.traces.v1 import traces_pb2 as _traces_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChangeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANGE_KIND_UNSPECIFIED: _ClassVar[ChangeKind]
    CHANGE_KIND_CREATED: _ClassVar[ChangeKind]
    CHANGE_KIND_UPDATED: _ClassVar[ChangeKind]
    CHANGE_KIND_DELETED: _ClassVar[ChangeKind]
CHANGE_KIND_UNSPECIFIED: ChangeKind
CHANGE_KIND_CREATED: ChangeKind
CHANGE_KIND_UPDATED: ChangeKind
CHANGE_KIND_DELETED: ChangeKind

class AgentChanged(_message.Message):
    __slots__ = ("agent", "user", "kind", "etag", "time")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    agent: str
    user: str
    kind: ChangeKind
    etag: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, agent: _Optional[str] = ..., user: _Optional[str] = ..., kind: _Optional[_Union[ChangeKind, str]] = ..., etag: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ProviderChanged(_message.Message):
    __slots__ = ("provider", "user", "kind", "time")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    provider: str
    user: str
    kind: ChangeKind
    time: _timestamp_pb2.Timestamp
    def __init__(self, provider: _Optional[str] = ..., user: _Optional[str] = ..., kind: _Optional[_Union[ChangeKind, str]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class FileUploaded(_message.Message):
    __slots__ = ("file", "user", "time")
    FILE_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    file: str
    user: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, file: _Optional[str] = ..., user: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UsageRecorded(_message.Message):
    __slots__ = ("run", "user", "agent", "model", "usage", "time")
    RUN_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    run: str
    user: str
    agent: str
    model: str
    usage: _common_pb2.Usage
    time: _timestamp_pb2.Timestamp
    def __init__(self, run: _Optional[str] = ..., user: _Optional[str] = ..., agent: _Optional[str] = ..., model: _Optional[str] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RunChanged(_message.Message):
    __slots__ = ("run", "user", "agent", "state", "time")
    RUN_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    run: str
    user: str
    agent: str
    state: int
    time: _timestamp_pb2.Timestamp
    def __init__(self, run: _Optional[str] = ..., user: _Optional[str] = ..., agent: _Optional[str] = ..., state: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SpanBatch(_message.Message):
    __slots__ = ("user", "spans", "traces")
    USER_FIELD_NUMBER: _ClassVar[int]
    SPANS_FIELD_NUMBER: _ClassVar[int]
    TRACES_FIELD_NUMBER: _ClassVar[int]
    user: str
    spans: _containers.RepeatedCompositeFieldContainer[_traces_pb2.Span]
    traces: _containers.RepeatedCompositeFieldContainer[_traces_pb2.Trace]
    def __init__(self, user: _Optional[str] = ..., spans: _Optional[_Iterable[_Union[_traces_pb2.Span, _Mapping]]] = ..., traces: _Optional[_Iterable[_Union[_traces_pb2.Trace, _Mapping]]] = ...) -> None: ...
