import datetime

from agentmesh.gen.guardrails.v1 import guardrails_pb2 as _guardrails_pb2
from agentmesh.gen.buf.validate import validate_pb2 as _validate_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import resource_pb2 as _resource_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Agent(_message.Message):
    __slots__ = ("name", "display_name", "instructions", "model", "model_settings", "handoff_description", "tools", "input_guardrails", "output_guardrails", "handoffs", "output_type", "metadata", "create_time", "update_time", "etag", "revision_id", "revision_create_time", "max_credits_per_run")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    HANDOFF_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    INPUT_GUARDRAILS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_GUARDRAILS_FIELD_NUMBER: _ClassVar[int]
    HANDOFFS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TYPE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    REVISION_ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    MAX_CREDITS_PER_RUN_FIELD_NUMBER: _ClassVar[int]
    name: str
    display_name: str
    instructions: str
    model: str
    model_settings: ModelSettings
    handoff_description: str
    tools: _containers.RepeatedCompositeFieldContainer[Tool]
    input_guardrails: _containers.RepeatedCompositeFieldContainer[_guardrails_pb2.Guardrail]
    output_guardrails: _containers.RepeatedCompositeFieldContainer[_guardrails_pb2.Guardrail]
    handoffs: _containers.RepeatedScalarFieldContainer[str]
    output_type: _struct_pb2.Struct
    metadata: _containers.ScalarMap[str, str]
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    etag: str
    revision_id: str
    revision_create_time: _timestamp_pb2.Timestamp
    max_credits_per_run: int
    def __init__(self, name: _Optional[str] = ..., display_name: _Optional[str] = ..., instructions: _Optional[str] = ..., model: _Optional[str] = ..., model_settings: _Optional[_Union[ModelSettings, _Mapping]] = ..., handoff_description: _Optional[str] = ..., tools: _Optional[_Iterable[_Union[Tool, _Mapping]]] = ..., input_guardrails: _Optional[_Iterable[_Union[_guardrails_pb2.Guardrail, _Mapping]]] = ..., output_guardrails: _Optional[_Iterable[_Union[_guardrails_pb2.Guardrail, _Mapping]]] = ..., handoffs: _Optional[_Iterable[str]] = ..., output_type: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., etag: _Optional[str] = ..., revision_id: _Optional[str] = ..., revision_create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., max_credits_per_run: _Optional[int] = ...) -> None: ...

class ModelSettings(_message.Message):
    __slots__ = ("provider", "temperature", "top_p", "max_tokens", "additional_params")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ADDITIONAL_PARAMS_FIELD_NUMBER: _ClassVar[int]
    provider: str
    temperature: float
    top_p: float
    max_tokens: int
    additional_params: _struct_pb2.Struct
    def __init__(self, provider: _Optional[str] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., max_tokens: _Optional[int] = ..., additional_params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class Tool(_message.Message):
    __slots__ = ("name", "description", "require_approval", "function", "agent", "file_search", "web_search", "computer", "mcp")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REQUIRE_APPROVAL_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    FILE_SEARCH_FIELD_NUMBER: _ClassVar[int]
    WEB_SEARCH_FIELD_NUMBER: _ClassVar[int]
    COMPUTER_FIELD_NUMBER: _ClassVar[int]
    MCP_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    require_approval: bool
    function: FunctionTool
    agent: AgentTool
    file_search: FileSearchTool
    web_search: WebSearchTool
    computer: ComputerTool
    mcp: McpTool
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., require_approval: _Optional[bool] = ..., function: _Optional[_Union[FunctionTool, _Mapping]] = ..., agent: _Optional[_Union[AgentTool, _Mapping]] = ..., file_search: _Optional[_Union[FileSearchTool, _Mapping]] = ..., web_search: _Optional[_Union[WebSearchTool, _Mapping]] = ..., computer: _Optional[_Union[ComputerTool, _Mapping]] = ..., mcp: _Optional[_Union[McpTool, _Mapping]] = ...) -> None: ...

class FunctionTool(_message.Message):
    __slots__ = ("parameters", "code", "http")
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    HTTP_FIELD_NUMBER: _ClassVar[int]
    parameters: _struct_pb2.Struct
    code: CodeFunction
    http: HttpFunction
    def __init__(self, parameters: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., code: _Optional[_Union[CodeFunction, _Mapping]] = ..., http: _Optional[_Union[HttpFunction, _Mapping]] = ...) -> None: ...

class CodeFunction(_message.Message):
    __slots__ = ("source", "timeout", "memory_mb")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    source: str
    timeout: _duration_pb2.Duration
    memory_mb: int
    def __init__(self, source: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., memory_mb: _Optional[int] = ...) -> None: ...

class HttpFunction(_message.Message):
    __slots__ = ("url", "timeout")
    URL_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    url: str
    timeout: _duration_pb2.Duration
    def __init__(self, url: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class AgentTool(_message.Message):
    __slots__ = ("agent",)
    AGENT_FIELD_NUMBER: _ClassVar[int]
    agent: str
    def __init__(self, agent: _Optional[str] = ...) -> None: ...

class FileSearchTool(_message.Message):
    __slots__ = ("vector_stores", "max_results")
    VECTOR_STORES_FIELD_NUMBER: _ClassVar[int]
    MAX_RESULTS_FIELD_NUMBER: _ClassVar[int]
    vector_stores: _containers.RepeatedScalarFieldContainer[str]
    max_results: int
    def __init__(self, vector_stores: _Optional[_Iterable[str]] = ..., max_results: _Optional[int] = ...) -> None: ...

class WebSearchTool(_message.Message):
    __slots__ = ("search_context_size", "user_location")
    class ContextSize(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        CONTEXT_SIZE_UNSPECIFIED: _ClassVar[WebSearchTool.ContextSize]
        CONTEXT_SIZE_LOW: _ClassVar[WebSearchTool.ContextSize]
        CONTEXT_SIZE_MEDIUM: _ClassVar[WebSearchTool.ContextSize]
        CONTEXT_SIZE_HIGH: _ClassVar[WebSearchTool.ContextSize]
    CONTEXT_SIZE_UNSPECIFIED: WebSearchTool.ContextSize
    CONTEXT_SIZE_LOW: WebSearchTool.ContextSize
    CONTEXT_SIZE_MEDIUM: WebSearchTool.ContextSize
    CONTEXT_SIZE_HIGH: WebSearchTool.ContextSize
    class UserLocation(_message.Message):
        __slots__ = ("country", "region", "city", "timezone")
        COUNTRY_FIELD_NUMBER: _ClassVar[int]
        REGION_FIELD_NUMBER: _ClassVar[int]
        CITY_FIELD_NUMBER: _ClassVar[int]
        TIMEZONE_FIELD_NUMBER: _ClassVar[int]
        country: str
        region: str
        city: str
        timezone: str
        def __init__(self, country: _Optional[str] = ..., region: _Optional[str] = ..., city: _Optional[str] = ..., timezone: _Optional[str] = ...) -> None: ...
    SEARCH_CONTEXT_SIZE_FIELD_NUMBER: _ClassVar[int]
    USER_LOCATION_FIELD_NUMBER: _ClassVar[int]
    search_context_size: WebSearchTool.ContextSize
    user_location: WebSearchTool.UserLocation
    def __init__(self, search_context_size: _Optional[_Union[WebSearchTool.ContextSize, str]] = ..., user_location: _Optional[_Union[WebSearchTool.UserLocation, _Mapping]] = ...) -> None: ...

class ComputerTool(_message.Message):
    __slots__ = ("allowed_commands", "blocked_paths", "read_only")
    ALLOWED_COMMANDS_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_PATHS_FIELD_NUMBER: _ClassVar[int]
    READ_ONLY_FIELD_NUMBER: _ClassVar[int]
    allowed_commands: _containers.RepeatedScalarFieldContainer[str]
    blocked_paths: _containers.RepeatedScalarFieldContainer[str]
    read_only: bool
    def __init__(self, allowed_commands: _Optional[_Iterable[str]] = ..., blocked_paths: _Optional[_Iterable[str]] = ..., read_only: _Optional[bool] = ...) -> None: ...

class McpTool(_message.Message):
    __slots__ = ("url", "allowed_tools", "approval_required_tools", "authorization", "has_authorization")
    URL_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_TOOLS_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_REQUIRED_TOOLS_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_FIELD_NUMBER: _ClassVar[int]
    HAS_AUTHORIZATION_FIELD_NUMBER: _ClassVar[int]
    url: str
    allowed_tools: _containers.RepeatedScalarFieldContainer[str]
    approval_required_tools: _containers.RepeatedScalarFieldContainer[str]
    authorization: str
    has_authorization: bool
    def __init__(self, url: _Optional[str] = ..., allowed_tools: _Optional[_Iterable[str]] = ..., approval_required_tools: _Optional[_Iterable[str]] = ..., authorization: _Optional[str] = ..., has_authorization: _Optional[bool] = ...) -> None: ...

class Context(_message.Message):
    __slots__ = ("name", "display_name", "values", "is_default", "create_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    display_name: str
    values: _struct_pb2.Struct
    is_default: bool
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., display_name: _Optional[str] = ..., values: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., is_default: _Optional[bool] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateAgentRequest(_message.Message):
    __slots__ = ("agent", "agent_id")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent: Agent
    agent_id: str
    def __init__(self, agent: _Optional[_Union[Agent, _Mapping]] = ..., agent_id: _Optional[str] = ...) -> None: ...

class GetAgentRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListAgentsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents", "next_page_token")
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[Agent]
    next_page_token: str
    def __init__(self, agents: _Optional[_Iterable[_Union[Agent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateAgentRequest(_message.Message):
    __slots__ = ("agent", "update_mask")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    agent: Agent
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, agent: _Optional[_Union[Agent, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class DeleteAgentRequest(_message.Message):
    __slots__ = ("name", "etag")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    name: str
    etag: str
    def __init__(self, name: _Optional[str] = ..., etag: _Optional[str] = ...) -> None: ...

class ListAgentRevisionsRequest(_message.Message):
    __slots__ = ("name", "page_size", "page_token")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    page_size: int
    page_token: str
    def __init__(self, name: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAgentRevisionsResponse(_message.Message):
    __slots__ = ("agents", "next_page_token")
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[Agent]
    next_page_token: str
    def __init__(self, agents: _Optional[_Iterable[_Union[Agent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RollbackAgentRequest(_message.Message):
    __slots__ = ("name", "revision_id", "etag")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REVISION_ID_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    name: str
    revision_id: str
    etag: str
    def __init__(self, name: _Optional[str] = ..., revision_id: _Optional[str] = ..., etag: _Optional[str] = ...) -> None: ...

class AddHandoffRequest(_message.Message):
    __slots__ = ("agent", "target")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    agent: str
    target: str
    def __init__(self, agent: _Optional[str] = ..., target: _Optional[str] = ...) -> None: ...

class RemoveHandoffRequest(_message.Message):
    __slots__ = ("agent", "target")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    agent: str
    target: str
    def __init__(self, agent: _Optional[str] = ..., target: _Optional[str] = ...) -> None: ...

class CreateContextRequest(_message.Message):
    __slots__ = ("parent", "context")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    parent: str
    context: Context
    def __init__(self, parent: _Optional[str] = ..., context: _Optional[_Union[Context, _Mapping]] = ...) -> None: ...

class GetContextRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListContextsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListContextsResponse(_message.Message):
    __slots__ = ("contexts", "next_page_token")
    CONTEXTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    contexts: _containers.RepeatedCompositeFieldContainer[Context]
    next_page_token: str
    def __init__(self, contexts: _Optional[_Iterable[_Union[Context, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteContextRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...
