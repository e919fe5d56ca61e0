import datetime

from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Audience(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIENCE_UNSPECIFIED: _ClassVar[Audience]
    AUDIENCE_ADMIN: _ClassVar[Audience]
    AUDIENCE_SERVICE: _ClassVar[Audience]

class Delivery(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DELIVERY_UNSPECIFIED: _ClassVar[Delivery]
    DELIVERY_CORE: _ClassVar[Delivery]
    DELIVERY_JETSTREAM: _ClassVar[Delivery]

class Retention(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RETENTION_UNSPECIFIED: _ClassVar[Retention]
    RETENTION_WORK_QUEUE: _ClassVar[Retention]
AUDIENCE_UNSPECIFIED: Audience
AUDIENCE_ADMIN: Audience
AUDIENCE_SERVICE: Audience
DELIVERY_UNSPECIFIED: Delivery
DELIVERY_CORE: Delivery
DELIVERY_JETSTREAM: Delivery
RETENTION_UNSPECIFIED: Retention
RETENTION_WORK_QUEUE: Retention
AUDIENCE_FIELD_NUMBER: _ClassVar[int]
audience: _descriptor.FieldDescriptor
EVENT_FIELD_NUMBER: _ClassVar[int]
event: _descriptor.FieldDescriptor

class Event(_message.Message):
    __slots__ = ("subject", "delivery", "stream", "retention", "max_age")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    RETENTION_FIELD_NUMBER: _ClassVar[int]
    MAX_AGE_FIELD_NUMBER: _ClassVar[int]
    subject: str
    delivery: Delivery
    stream: str
    retention: Retention
    max_age: _duration_pb2.Duration
    def __init__(self, subject: _Optional[str] = ..., delivery: _Optional[_Union[Delivery, str]] = ..., stream: _Optional[str] = ..., retention: _Optional[_Union[Retention, str]] = ..., max_age: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...
