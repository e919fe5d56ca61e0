import datetime

from agentmesh.gen.common.v1 import common_pb2 as _common_pb2
from agentmesh.gen.common.v1 import options_pb2 as _options_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProviderChanged(_message.Message):
    __slots__ = ("provider", "user", "kind", "time")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    provider: str
    user: str
    kind: _common_pb2.ChangeKind
    time: _timestamp_pb2.Timestamp
    def __init__(self, provider: _Optional[str] = ..., user: _Optional[str] = ..., kind: _Optional[_Union[_common_pb2.ChangeKind, str]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
