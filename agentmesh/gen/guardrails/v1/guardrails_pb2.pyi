import datetime

from agentmesh.gen.buf.validate import validate_pb2 as _validate_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GuardrailStage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GUARDRAIL_STAGE_UNSPECIFIED: _ClassVar[GuardrailStage]
    GUARDRAIL_STAGE_INPUT: _ClassVar[GuardrailStage]
    GUARDRAIL_STAGE_OUTPUT: _ClassVar[GuardrailStage]
GUARDRAIL_STAGE_UNSPECIFIED: GuardrailStage
GUARDRAIL_STAGE_INPUT: GuardrailStage
GUARDRAIL_STAGE_OUTPUT: GuardrailStage

class Guardrail(_message.Message):
    __slots__ = ("name", "description", "override_message", "regex", "builtin", "code", "endpoint", "agent")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    OVERRIDE_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REGEX_FIELD_NUMBER: _ClassVar[int]
    BUILTIN_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    override_message: str
    regex: RegexCheck
    builtin: BuiltinCheck
    code: CodeCheck
    endpoint: EndpointCheck
    agent: AgentCheck
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., override_message: _Optional[str] = ..., regex: _Optional[_Union[RegexCheck, _Mapping]] = ..., builtin: _Optional[_Union[BuiltinCheck, _Mapping]] = ..., code: _Optional[_Union[CodeCheck, _Mapping]] = ..., endpoint: _Optional[_Union[EndpointCheck, _Mapping]] = ..., agent: _Optional[_Union[AgentCheck, _Mapping]] = ...) -> None: ...

class RegexCheck(_message.Message):
    __slots__ = ("pattern", "action")
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ACTION_UNSPECIFIED: _ClassVar[RegexCheck.Action]
        ACTION_BLOCK: _ClassVar[RegexCheck.Action]
        ACTION_ALLOW: _ClassVar[RegexCheck.Action]
    ACTION_UNSPECIFIED: RegexCheck.Action
    ACTION_BLOCK: RegexCheck.Action
    ACTION_ALLOW: RegexCheck.Action
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    pattern: str
    action: RegexCheck.Action
    def __init__(self, pattern: _Optional[str] = ..., action: _Optional[_Union[RegexCheck.Action, str]] = ...) -> None: ...

class BuiltinCheck(_message.Message):
    __slots__ = ("pii", "secrets", "prompt_injection", "max_length", "blocked_terms", "json_schema")
    PII_FIELD_NUMBER: _ClassVar[int]
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_INJECTION_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_TERMS_FIELD_NUMBER: _ClassVar[int]
    JSON_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    pii: PiiDetector
    secrets: SecretsDetector
    prompt_injection: PromptInjectionDetector
    max_length: MaxLength
    blocked_terms: BlockedTerms
    json_schema: JsonSchemaConformance
    def __init__(self, pii: _Optional[_Union[PiiDetector, _Mapping]] = ..., secrets: _Optional[_Union[SecretsDetector, _Mapping]] = ..., prompt_injection: _Optional[_Union[PromptInjectionDetector, _Mapping]] = ..., max_length: _Optional[_Union[MaxLength, _Mapping]] = ..., blocked_terms: _Optional[_Union[BlockedTerms, _Mapping]] = ..., json_schema: _Optional[_Union[JsonSchemaConformance, _Mapping]] = ...) -> None: ...

class PiiDetector(_message.Message):
    __slots__ = ("kinds",)
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[PiiDetector.Kind]
        KIND_EMAIL: _ClassVar[PiiDetector.Kind]
        KIND_PHONE: _ClassVar[PiiDetector.Kind]
        KIND_PAYMENT_CARD: _ClassVar[PiiDetector.Kind]
        KIND_IBAN: _ClassVar[PiiDetector.Kind]
    KIND_UNSPECIFIED: PiiDetector.Kind
    KIND_EMAIL: PiiDetector.Kind
    KIND_PHONE: PiiDetector.Kind
    KIND_PAYMENT_CARD: PiiDetector.Kind
    KIND_IBAN: PiiDetector.Kind
    KINDS_FIELD_NUMBER: _ClassVar[int]
    kinds: _containers.RepeatedScalarFieldContainer[PiiDetector.Kind]
    def __init__(self, kinds: _Optional[_Iterable[_Union[PiiDetector.Kind, str]]] = ...) -> None: ...

class SecretsDetector(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PromptInjectionDetector(_message.Message):
    __slots__ = ("extra_phrases",)
    EXTRA_PHRASES_FIELD_NUMBER: _ClassVar[int]
    extra_phrases: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, extra_phrases: _Optional[_Iterable[str]] = ...) -> None: ...

class MaxLength(_message.Message):
    __slots__ = ("max_chars",)
    MAX_CHARS_FIELD_NUMBER: _ClassVar[int]
    max_chars: int
    def __init__(self, max_chars: _Optional[int] = ...) -> None: ...

class BlockedTerms(_message.Message):
    __slots__ = ("terms", "case_sensitive")
    TERMS_FIELD_NUMBER: _ClassVar[int]
    CASE_SENSITIVE_FIELD_NUMBER: _ClassVar[int]
    terms: _containers.RepeatedScalarFieldContainer[str]
    case_sensitive: bool
    def __init__(self, terms: _Optional[_Iterable[str]] = ..., case_sensitive: _Optional[bool] = ...) -> None: ...

class JsonSchemaConformance(_message.Message):
    __slots__ = ("schema",)
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    schema: _struct_pb2.Struct
    def __init__(self, schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class CodeCheck(_message.Message):
    __slots__ = ("source", "timeout")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    source: str
    timeout: _duration_pb2.Duration
    def __init__(self, source: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class EndpointCheck(_message.Message):
    __slots__ = ("url", "timeout")
    URL_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    url: str
    timeout: _duration_pb2.Duration
    def __init__(self, url: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class AgentCheck(_message.Message):
    __slots__ = ("agent",)
    AGENT_FIELD_NUMBER: _ClassVar[int]
    agent: str
    def __init__(self, agent: _Optional[str] = ...) -> None: ...

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
