from agentmesh.gen.buf.validate import validate_pb2 as _validate_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GuardrailImplementation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GUARDRAIL_IMPLEMENTATION_UNSPECIFIED: _ClassVar[GuardrailImplementation]
    GUARDRAIL_IMPLEMENTATION_REGEX: _ClassVar[GuardrailImplementation]
    GUARDRAIL_IMPLEMENTATION_BUILTIN: _ClassVar[GuardrailImplementation]
    GUARDRAIL_IMPLEMENTATION_CODE: _ClassVar[GuardrailImplementation]
    GUARDRAIL_IMPLEMENTATION_ENDPOINT: _ClassVar[GuardrailImplementation]
    GUARDRAIL_IMPLEMENTATION_AGENT: _ClassVar[GuardrailImplementation]

class GuardrailStage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GUARDRAIL_STAGE_UNSPECIFIED: _ClassVar[GuardrailStage]
    GUARDRAIL_STAGE_INPUT: _ClassVar[GuardrailStage]
    GUARDRAIL_STAGE_OUTPUT: _ClassVar[GuardrailStage]
GUARDRAIL_IMPLEMENTATION_UNSPECIFIED: GuardrailImplementation
GUARDRAIL_IMPLEMENTATION_REGEX: GuardrailImplementation
GUARDRAIL_IMPLEMENTATION_BUILTIN: GuardrailImplementation
GUARDRAIL_IMPLEMENTATION_CODE: GuardrailImplementation
GUARDRAIL_IMPLEMENTATION_ENDPOINT: GuardrailImplementation
GUARDRAIL_IMPLEMENTATION_AGENT: GuardrailImplementation
GUARDRAIL_STAGE_UNSPECIFIED: GuardrailStage
GUARDRAIL_STAGE_INPUT: GuardrailStage
GUARDRAIL_STAGE_OUTPUT: GuardrailStage

class Guardrail(_message.Message):
    __slots__ = ("name", "description", "implementation", "config")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    IMPLEMENTATION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    implementation: GuardrailImplementation
    config: _struct_pb2.Struct
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., implementation: _Optional[_Union[GuardrailImplementation, str]] = ..., config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class EvaluateGuardrailsRequest(_message.Message):
    __slots__ = ("guardrails", "text", "stage", "agent")
    GUARDRAILS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    guardrails: _containers.RepeatedCompositeFieldContainer[Guardrail]
    text: str
    stage: GuardrailStage
    agent: str
    def __init__(self, guardrails: _Optional[_Iterable[_Union[Guardrail, _Mapping]]] = ..., text: _Optional[str] = ..., stage: _Optional[_Union[GuardrailStage, str]] = ..., agent: _Optional[str] = ...) -> None: ...

class GuardrailResult(_message.Message):
    __slots__ = ("name", "tripwire_triggered", "message", "info")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TRIPWIRE_TRIGGERED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    name: str
    tripwire_triggered: bool
    message: str
    info: _struct_pb2.Struct
    def __init__(self, name: _Optional[str] = ..., tripwire_triggered: _Optional[bool] = ..., message: _Optional[str] = ..., info: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class EvaluateGuardrailsResponse(_message.Message):
    __slots__ = ("results", "tripwire_triggered")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    TRIPWIRE_TRIGGERED_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[GuardrailResult]
    tripwire_triggered: bool
    def __init__(self, results: _Optional[_Iterable[_Union[GuardrailResult, _Mapping]]] = ..., tripwire_triggered: _Optional[bool] = ...) -> None: ...
