from agentmesh.gen.common.v1 import options_pb2 as _options_pb2
from agentmesh.gen.traces.v1 import traces_pb2 as _traces_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SpanBatch(_message.Message):
    __slots__ = ("user", "spans", "traces")
    USER_FIELD_NUMBER: _ClassVar[int]
    SPANS_FIELD_NUMBER: _ClassVar[int]
    TRACES_FIELD_NUMBER: _ClassVar[int]
    user: str
    spans: _containers.RepeatedCompositeFieldContainer[_traces_pb2.Span]
    traces: _containers.RepeatedCompositeFieldContainer[_traces_pb2.Trace]
    def __init__(self, user: _Optional[str] = ..., spans: _Optional[_Iterable[_Union[_traces_pb2.Span, _Mapping]]] = ..., traces: _Optional[_Iterable[_Union[_traces_pb2.Trace, _Mapping]]] = ...) -> None: ...
