"""The REST API's OpenAPI 3.1 description, made from the contract's `google.api.http` rules.

The gateway's REST API is Envoy's gRPC-JSON transcoder reading the descriptor set
`buf build` makes (agentmesh/gateway.py); this reads the same descriptor set and
says in OpenAPI what that transcoder serves, so that REST clients can be generated
and an OpenAPI fuzzer (tests/test_openapi_fuzz.py) can hold the gateway to it:

- a path per HTTP rule (additional bindings too): `{name=agents/*}` becomes
  `agents/{agent}`, each `*` a path parameter named for the collection before it,
  so every operation on one URL shape shares one OpenAPI path;
- query parameters for the request's other scalar fields (all of them for GET and
  DELETE, those outside the body for `body: "field"`), a JSON body for `body: "*"`
  (the fields not in the path) or `body: "field"`;
- schemas following the proto3 JSON mapping as the gateway prints it (lowerCamelCase
  names, enums as names, every scalar, list and map printed even when empty, 64-bit
  integers as strings, bytes as base64, the well-known types' own JSON forms, oneofs
  as "at most one" or, when `buf.validate` requires one, "exactly one") plus what
  `buf.validate` rules say (lengths, patterns, ranges, sizes) and `field_behavior`
  (REQUIRED, OUTPUT_ONLY as readOnly, INPUT_ONLY as writeOnly), comments as descriptions;
- a server stream as Server-Sent Events, each event's `data` one message as JSON
  (its contentSchema);
- errors as the google.rpc.Status JSON the gateway makes of a gRPC status (or plain
  text when Envoy itself refuses a request), and the bearer API key as security.

Service-only methods (the `audience` option) are left out: the gateway refuses them.

Usage:
  python tools/openapi.py DESCRIPTOR_SET [-o OUT]   # e.g. build/agentmesh.binpb (make contract)
  python tools/openapi.py -o OUT                    # the contract the generated stubs carry
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from google.api import annotations_pb2, field_behavior_pb2, http_pb2
from google.protobuf import descriptor_pb2

from agentmesh.gen.buf.validate import validate_pb2
from agentmesh.gen.common.v1 import options_pb2

FieldProto: TypeAlias = descriptor_pb2.FieldDescriptorProto
Schema: TypeAlias = dict[str, Any]

# The HTTP status the gateway answers for each gRPC code (Envoy's
# Grpc::Utility::grpcToHttpStatus), grouped, with what each means here.
ERROR_STATUSES = {
    "400": "INVALID_ARGUMENT (a google.rpc.BadRequest names the field), FAILED_PRECONDITION "
    "or OUT_OF_RANGE; as plain text when the gateway cannot transcode the request "
    "(not JSON of the request message, an unknown query parameter)",
    "401": "UNAUTHENTICATED: no API key, or one that is not valid",
    "403": "PERMISSION_DENIED: the method is not for this caller (admin only)",
    "404": "NOT_FOUND: no such resource, or another user's (the two are indistinguishable)",
    "409": "ALREADY_EXISTS, or ABORTED (a stale etag, a busy conversation)",
    "413": "the request body is larger than the gateway accepts (plain text)",
    "429": "RESOURCE_EXHAUSTED: out of credits (a google.rpc.QuotaFailure says which)",
    "499": "CANCELLED: the call was cancelled",
    "500": "INTERNAL, UNKNOWN or DATA_LOSS",
    "501": "UNIMPLEMENTED: the service does not serve this method yet",
    "503": "UNAVAILABLE: the service is down or overloaded; retry",
    "504": "DEADLINE_EXCEEDED: the call took longer than the gateway's limit",
}

_INT64 = {"type": "string", "pattern": "^-?[0-9]+$"}
_SCALARS: dict[int, Schema] = {
    FieldProto.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldProto.TYPE_FLOAT: {"type": "number", "format": "float"},
    FieldProto.TYPE_INT64: {**_INT64, "format": "int64"},
    FieldProto.TYPE_SFIXED64: {**_INT64, "format": "int64"},
    FieldProto.TYPE_SINT64: {**_INT64, "format": "int64"},
    FieldProto.TYPE_UINT64: {"type": "string", "pattern": "^[0-9]+$", "format": "uint64"},
    FieldProto.TYPE_FIXED64: {"type": "string", "pattern": "^[0-9]+$", "format": "uint64"},
    FieldProto.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldProto.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FieldProto.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldProto.TYPE_UINT32: {"type": "integer", "format": "uint32", "minimum": 0},
    FieldProto.TYPE_FIXED32: {"type": "integer", "format": "uint32", "minimum": 0},
    FieldProto.TYPE_BOOL: {"type": "boolean"},
    FieldProto.TYPE_STRING: {"type": "string"},
    FieldProto.TYPE_BYTES: {"type": "string", "format": "byte", "contentEncoding": "base64"},
}
_NUMBERS = {FieldProto.TYPE_DOUBLE, FieldProto.TYPE_FLOAT}
# Proto3 JSON prints these floating point values as strings.
_NON_FINITE = {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]}

# The well-known types have JSON forms of their own.
_WELL_KNOWN: dict[str, Schema] = {
    "google.protobuf.Timestamp": {
        "type": "string",
        "format": "date-time",
        "description": "RFC 3339, in UTC (Z), with 0, 3, 6 or 9 fractional digits.",
    },
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$",
        "description": "Seconds with up to 9 fractional digits and an `s`: `1.5s`.",
    },
    "google.protobuf.FieldMask": {
        "type": "string",
        "description": "Comma-separated field paths in lowerCamelCase: `instructions,model`.",
    },
    "google.protobuf.Struct": {
        "type": "object",
        "additionalProperties": {"$ref": "#/components/schemas/google.protobuf.Value"},
    },
    "google.protobuf.Value": {"description": "Any JSON value."},
    "google.protobuf.ListValue": {
        "type": "array",
        "items": {"$ref": "#/components/schemas/google.protobuf.Value"},
    },
    "google.protobuf.NullValue": {"type": "null"},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Any": {
        "type": "object",
        "description": "A message of the type `@type` names, with that message's fields.",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
        "additionalProperties": True,
    },
    "google.protobuf.DoubleValue": _SCALARS[FieldProto.TYPE_DOUBLE],
    "google.protobuf.FloatValue": _SCALARS[FieldProto.TYPE_FLOAT],
    "google.protobuf.Int64Value": _SCALARS[FieldProto.TYPE_INT64],
    "google.protobuf.UInt64Value": _SCALARS[FieldProto.TYPE_UINT64],
    "google.protobuf.Int32Value": _SCALARS[FieldProto.TYPE_INT32],
    "google.protobuf.UInt32Value": _SCALARS[FieldProto.TYPE_UINT32],
    "google.protobuf.BoolValue": _SCALARS[FieldProto.TYPE_BOOL],
    "google.protobuf.StringValue": _SCALARS[FieldProto.TYPE_STRING],
    "google.protobuf.BytesValue": _SCALARS[FieldProto.TYPE_BYTES],
}
# Well-known types a query parameter can carry: they print as one JSON string or number.
_QUERY_WELL_KNOWN = {
    name
    for name, schema in _WELL_KNOWN.items()
    if schema.get("type") in ("string", "number", "integer", "boolean")
}
# Error details a google.rpc.Status may carry (packed in Any): described too.
ERROR_DETAILS = "google/rpc/error_details.proto"

# Path templates of the http rules: {field.path=segments} or {field.path}.
_VARIABLE = re.compile(r"\{([A-Za-z0-9_.]+)(?:=([^}]*))?\}")
_HTTP_METHODS = ("get", "put", "post", "delete", "patch")


def json_name(proto_name: str) -> str:
    """protobuf's lowerCamelCase JSON name, for descriptors without json_name set."""
    head, *rest = proto_name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _ref(full_name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{full_name}"}


@dataclass
class _Message:
    proto: descriptor_pb2.DescriptorProto
    full_name: str
    comment: str
    field_comments: dict[str, str]


@dataclass
class _Enum:
    proto: descriptor_pb2.EnumDescriptorProto
    full_name: str
    comment: str


@dataclass
class _Operation:
    service: str  # agentmesh.registry.v1.RegistryService
    method: descriptor_pb2.MethodDescriptorProto
    comment: str
    verb: str
    template: str
    body: str
    binding: int  # 0 for the rule itself, 1.. for its additional_bindings


@dataclass
class Contract:
    """The messages, enums and HTTP-mapped methods of a FileDescriptorSet."""

    messages: dict[str, _Message] = field(default_factory=dict)
    enums: dict[str, _Enum] = field(default_factory=dict)
    operations: list[_Operation] = field(default_factory=list)
    services: dict[str, str] = field(default_factory=dict)  # full name: comment

    @classmethod
    def of(cls, descriptor_set: bytes) -> Contract:
        contract = cls()
        for file in descriptor_pb2.FileDescriptorSet.FromString(descriptor_set).file:
            contract._add_file(file)
        return contract

    def _add_file(self, file: descriptor_pb2.FileDescriptorProto) -> None:
        comments = {
            tuple(location.path): _clean(location.leading_comments)
            for location in file.source_code_info.location
            if location.leading_comments.strip()
        }
        prefix = f"{file.package}." if file.package else ""

        def add_message(message: descriptor_pb2.DescriptorProto, scope: str, path: tuple) -> None:
            name = f"{scope}{message.name}"
            self.messages[name] = _Message(
                message,
                name,
                comments.get(path, ""),
                {
                    f.name: comments.get((*path, 2, index), "")
                    for index, f in enumerate(message.field)
                },
            )
            for index, nested in enumerate(message.nested_type):
                add_message(nested, f"{name}.", (*path, 3, index))
            for index, enum in enumerate(message.enum_type):
                add_enum(enum, f"{name}.", (*path, 4, index))

        def add_enum(enum: descriptor_pb2.EnumDescriptorProto, scope: str, path: tuple) -> None:
            name = f"{scope}{enum.name}"
            self.enums[name] = _Enum(enum, name, comments.get(path, ""))

        for index, message in enumerate(file.message_type):
            add_message(message, prefix, (4, index))
        for index, enum in enumerate(file.enum_type):
            add_enum(enum, prefix, (5, index))
        for s_index, service in enumerate(file.service):
            service_name = f"{prefix}{service.name}"
            self.services[service_name] = comments.get((6, s_index), "")
            for m_index, method in enumerate(service.method):
                if method.options.Extensions[options_pb2.audience] == options_pb2.AUDIENCE_SERVICE:
                    continue  # only other services call it; the gateway refuses it
                if not method.options.HasExtension(annotations_pb2.http):
                    continue
                rule = method.options.Extensions[annotations_pb2.http]
                comment = comments.get((6, s_index, 2, m_index), "")
                for binding, each in enumerate([rule, *rule.additional_bindings]):
                    verb, template = _pattern(each)
                    self.operations.append(
                        _Operation(
                            service_name, method, comment, verb, template, each.body, binding
                        )
                    )


def _clean(comment: str) -> str:
    return "\n".join(line.strip() for line in comment.strip().splitlines())


def _pattern(rule: http_pb2.HttpRule) -> tuple[str, str]:
    for verb in _HTTP_METHODS:
        if template := getattr(rule, verb):
            return verb, template
    if rule.HasField("custom"):
        return rule.custom.kind.lower(), rule.custom.path
    raise ValueError(f"an http rule with no pattern: {rule}")


def _singular(collection: str) -> str:
    return collection[:-1] if collection.endswith("s") else collection


@dataclass
class _PathVariable:
    field_path: str  # agent.name
    parameters: list[tuple[str, str]]  # (parameter, the segments' literal prefix before it)
    segments: list[str]  # the variable's template segments: agents, *


def _openapi_path(template: str) -> tuple[str, list[_PathVariable]]:
    """`/api/v1/{name=agents/*}:run` -> `/api/v1/agents/{agent}:run` and its variables."""
    variables: list[_PathVariable] = []
    used: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        field_path, pattern = match.group(1), match.group(2) or "*"
        segments = pattern.split("/")
        parts, parameters = [], []
        for index, segment in enumerate(segments):
            if segment in ("*", "**"):
                before = segments[index - 1] if index else field_path.split(".")[-1]
                name = json_name(_singular(before)) if index else json_name(before)
                if name in used:  # agents/{agent}/handoffs/agents/{target}
                    name = json_name(field_path.split(".")[-1])
                used.add(name)
                parameters.append((name, "/".join(segments[:index])))
                parts.append(f"{{{name}}}")
            else:
                parts.append(segment)
        variables.append(_PathVariable(field_path, parameters, segments))
        return "/".join(parts)

    return _VARIABLE.sub(replace, template), variables


class Describer:
    """Builds the OpenAPI document: schemas on first use, then every operation."""

    def __init__(self, contract: Contract):
        self.contract = contract
        self.schemas: dict[str, Schema] = {}

    # --- schemas -----------------------------------------------------------------

    def ref(self, full_name: str) -> Schema:
        if full_name not in self.schemas:
            self.schemas[full_name] = {}  # reserved: recursion stops here
            self.schemas[full_name] = self._schema(full_name)
        return _ref(full_name)

    def _schema(self, full_name: str) -> Schema:
        if full_name in _WELL_KNOWN:
            if full_name in ("google.protobuf.Struct", "google.protobuf.ListValue"):
                self.ref("google.protobuf.Value")
            return json.loads(json.dumps(_WELL_KNOWN[full_name]))  # a copy
        if full_name in self.contract.enums:
            enum = self.contract.enums[full_name]
            return _described(
                {"type": "string", "enum": [value.name for value in enum.proto.value]},
                enum.comment,
            )
        message = self.contract.messages[full_name]
        return self.object_schema(message)

    def object_schema(self, message: _Message, leave_out: set[str] | None = None) -> Schema:
        """A message as a JSON object; `leave_out` names fields bound elsewhere (the path)."""
        properties: Schema = {}
        required: list[str] = []
        groups: dict[int, list[str]] = {}
        for f in message.proto.field:
            if leave_out and f.name in leave_out:
                continue
            name = f.json_name or json_name(f.name)
            properties[name] = self.field_schema(f, message.field_comments.get(f.name, ""))
            behavior = f.options.Extensions[field_behavior_pb2.field_behavior]
            rules = f.options.Extensions[validate_pb2.field]
            if field_behavior_pb2.REQUIRED in behavior or rules.required:
                required.append(name)
            if f.HasField("oneof_index") and not f.proto3_optional:
                groups.setdefault(f.oneof_index, []).append(name)
        # The gateway prints no other field, and refuses one it does not know.
        schema: Schema = {"type": "object", "properties": properties, "additionalProperties": False}
        if required:
            schema["required"] = required
        constraints: list[Schema] = []
        for index, members in groups.items():
            oneof = message.proto.oneof_decl[index]
            if oneof.options.Extensions[validate_pb2.oneof].required:
                constraints.append({"oneOf": [{"required": [m]} for m in members]})
            elif len(members) > 1:  # at most one of them
                pairs = itertools.combinations(members, 2)
                constraints.append({"not": {"anyOf": [{"required": list(p)} for p in pairs]}})
        if len(constraints) == 1:
            schema.update(constraints[0])
        elif constraints:
            schema["allOf"] = constraints
        return _described(schema, message.comment)

    def field_schema(self, f: FieldProto, comment: str = "") -> Schema:
        rules = f.options.Extensions[validate_pb2.field]
        if f.label == FieldProto.LABEL_REPEATED:
            entry = self.contract.messages.get(f.type_name.lstrip("."))
            if entry is not None and entry.proto.options.map_entry:
                key, value = entry.proto.field
                schema: Schema = {
                    "type": "object",
                    "additionalProperties": self._value_schema(value, rules.map.values),
                }
                # JSON object keys are strings: integers and booleans as text.
                if key.type == FieldProto.TYPE_BOOL:
                    schema["propertyNames"] = {"enum": ["true", "false"]}
                elif key.type != FieldProto.TYPE_STRING:
                    schema["propertyNames"] = {"pattern": "^-?[0-9]+$"}
                elif rules.map.keys.HasField("string"):
                    schema["propertyNames"] = _string_rules(rules.map.keys.string)
                _copy(rules.map, schema, min_pairs="minProperties", max_pairs="maxProperties")
            else:
                schema = {"type": "array", "items": self._value_schema(f, rules.repeated.items)}
                _copy(rules.repeated, schema, min_items="minItems", max_items="maxItems")
                if rules.repeated.unique:
                    schema["uniqueItems"] = True
        else:
            schema = self._value_schema(f, rules)
        behavior = f.options.Extensions[field_behavior_pb2.field_behavior]
        if field_behavior_pb2.OUTPUT_ONLY in behavior:
            schema["readOnly"] = True
        if field_behavior_pb2.INPUT_ONLY in behavior:
            # Not writeOnly: the gateway prints every scalar, so answers carry it empty.
            comment = (comment + "\n\n" if comment else "") + "Input only: answers carry it empty."
        return _described(schema, comment)

    def _value_schema(self, f: FieldProto, rules: validate_pb2.FieldRules) -> Schema:
        """One value of a field (an item of a list, a value of a map) and its rules."""
        if f.type in (FieldProto.TYPE_MESSAGE, FieldProto.TYPE_ENUM):
            type_name = f.type_name.lstrip(".")
            reference = self.ref(type_name)
            if f.type == FieldProto.TYPE_ENUM and rules.HasField("enum"):
                allowed = self._enum_subset(type_name, rules.enum)
                if allowed is not None:
                    return {"type": "string", "enum": allowed}
            return reference
        schema = dict(_SCALARS[f.type])
        if rules.ignore == validate_pb2.IGNORE_ALWAYS:
            return schema
        kind = rules.WhichOneof("type")
        if kind == "string":
            schema.update(_string_rules(rules.string))
        elif kind in ("int32", "sint32", "sfixed32", "uint32", "fixed32"):
            schema.update(_range_rules(getattr(rules, kind)))
        elif kind in ("double", "float"):
            schema.update(_range_rules(getattr(rules, kind)))
        if f.type in _NUMBERS and not any(
            k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
        ):
            return {"anyOf": [schema, _NON_FINITE]}
        if rules.ignore == validate_pb2.IGNORE_IF_ZERO_VALUE and schema.get("type") == "string":
            return {"anyOf": [{"const": ""}, schema]}
        return schema

    def _enum_subset(self, type_name: str, rules: validate_pb2.EnumRules) -> list[str] | None:
        values = self.contract.enums[type_name].proto.value
        allowed = list(values)
        if listed := list(getattr(rules, "in")):  # `in` is a Python keyword
            allowed = [v for v in allowed if v.number in listed]
        if rules.not_in:
            allowed = [v for v in allowed if v.number not in rules.not_in]
        if rules.HasField("const"):
            allowed = [v for v in allowed if v.number == rules.const]
        if len(allowed) == len(values):
            return None
        return [v.name for v in allowed]

    # --- operations ----------------------------------------------------------------

    def operation(self, op: _Operation) -> tuple[str, str, Schema]:
        request = self.contract.messages[op.method.input_type.lstrip(".")]
        response = op.method.output_type.lstrip(".")
        path, variables = _openapi_path(op.template)
        parameters = [p for v in variables for p in self._path_parameters(request, v)]
        bound = {v.field_path.split(".")[0] for v in variables if "." not in v.field_path}
        operation: Schema = {
            "operationId": f"{op.service.rsplit('.', 1)[-1]}_{op.method.name}"
            + (str(op.binding + 1) if op.binding else ""),
            "tags": [op.service.rsplit(".", 1)[-1]],
        }
        if op.comment:
            if "\n" not in op.comment:
                operation["summary"] = op.comment
            operation["description"] = op.comment
        audience = op.method.options.Extensions[options_pb2.audience]
        if audience == options_pb2.AUDIENCE_ADMIN:
            said: str = operation.get("description", "")
            operation["description"] = f"{said}\n\nAdmin only.".strip()
        if op.body == "*":
            body_schema = self.object_schema(request, leave_out=bound)
            operation["requestBody"] = _json_body(body_schema)
        elif op.body:
            body_field = next(f for f in request.proto.field if f.name == op.body)
            operation["requestBody"] = _json_body(self.field_schema(body_field))
            parameters += self._query_parameters(request, bound | {op.body})
        else:
            parameters += self._query_parameters(request, bound)
        if parameters:
            operation["parameters"] = parameters
        if op.method.server_streaming:
            ok = {
                "description": (
                    f"A stream of `{response}` messages as Server-Sent Events: one "
                    "`data:` line of JSON per message, until the call ends. An error "
                    "before the first message is answered like any other."
                ),
                # OpenAPI 3.1 has an event stream's schema describe each event (3.2
                # calls it itemSchema); the JSON in `data` is named by contentSchema.
                "content": {"text/event-stream": {"schema": self._event(response)}},
            }
        else:
            ok = {
                "description": "OK",
                "content": {"application/json": {"schema": self.ref(response)}},
            }
        operation["responses"] = {"200": ok} | {
            status: {"$ref": f"#/components/responses/{status}"}
            for status in ERROR_STATUSES
            if status != "413" or "requestBody" in operation
        }
        return path, op.verb, operation

    def _event(self, message: str) -> Schema:
        """One Server-Sent Event whose data is one message as JSON."""
        return {
            "type": "object",
            "properties": {
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": self.ref(message),
                },
                "event": {"type": "string"},
                "id": {"type": "string"},
                "retry": {"type": "integer", "minimum": 0},
            },
            "required": ["data"],
        }

    def _path_parameters(self, request: _Message, variable: _PathVariable) -> Iterator[Schema]:
        f = self._field_at(request, variable.field_path)
        rules = f.options.Extensions[validate_pb2.field] if f else None
        patterns = _segment_patterns(
            variable.segments, rules.string.pattern if rules is not None else ""
        )
        for index, (name, prefix) in enumerate(variable.parameters):
            schema: Schema = {"type": "string", "minLength": 1, "pattern": "^[^/]+$"}
            if patterns:
                schema["pattern"] = patterns[index]
            yield {
                "name": name,
                "in": "path",
                "required": True,
                "schema": schema,
                "description": (
                    f"The `{prefix + '/' if prefix else ''}{{{name}}}` of "
                    f"`{variable.field_path}` (`{'/'.join(variable.segments)}`)."
                ),
            }

    def _field_at(self, message: _Message, path: str) -> FieldProto | None:
        head, _, rest = path.partition(".")
        f = next((f for f in message.proto.field if f.name == head), None)
        if f is None or not rest:
            return f
        return self._field_at(self.contract.messages[f.type_name.lstrip(".")], rest)

    def _query_parameters(self, request: _Message, leave_out: set[str]) -> list[Schema]:
        parameters = []
        for f in request.proto.field:
            if f.name in leave_out:
                continue
            type_name = f.type_name.lstrip(".")
            if f.type == FieldProto.TYPE_MESSAGE and type_name not in _QUERY_WELL_KNOWN:
                continue  # a message in the query would need dotted names: use the body
            schema = self.field_schema(f, request.field_comments.get(f.name, ""))
            description = schema.pop("description", None)
            parameter: Schema = {
                "name": f.json_name or json_name(f.name),
                "in": "query",
                "schema": schema,
            }
            if description:
                parameter["description"] = description
            if f.label == FieldProto.LABEL_REPEATED:
                parameter |= {"style": "form", "explode": True}
            parameters.append(parameter)
        return parameters

    # --- the document --------------------------------------------------------------

    def document(self) -> Schema:
        paths: dict[str, Schema] = {}
        for op in self.contract.operations:
            path, verb, operation = self.operation(op)
            if verb in paths.setdefault(path, {}):
                raise ValueError(f"two operations for {verb.upper()} {path}")
            paths[path][verb] = operation
        status = self.ref("google.rpc.Status")
        for name, message in self.contract.messages.items():
            if name.startswith("google.rpc.") and message.proto.name in _DETAIL_TYPES:
                self.ref(name)
        error_content = {
            "application/json": {"schema": status},
            "text/plain": {"schema": {"type": "string"}},
        }
        return {
            "openapi": "3.1.0",
            "info": {
                "title": "agentmesh",
                "version": "v1",
                "description": (
                    "The agentmesh REST API: the gRPC services' `google.api.http` "
                    "mappings, served by the Envoy gateway's gRPC-JSON transcoder. "
                    "Bodies are the proto3 JSON mapping. Every scalar, list and map "
                    "field of a response is printed even when empty; a message field "
                    "only when set. Errors are a google.rpc.Status, its `details` "
                    "google.rpc error details (BadRequest, ErrorInfo, QuotaFailure, ...)."
                ),
            },
            "servers": [{"url": "http://127.0.0.1:8080", "description": "agentmesh up --gateway"}],
            "security": [{"apiKey": []}],
            "tags": [
                _described({"name": name.rsplit(".", 1)[-1]}, comment)
                for name, comment in self.contract.services.items()
                if any(op.service == name for op in self.contract.operations)
            ],
            "paths": paths,
            "components": {
                "schemas": dict(sorted(self.schemas.items())),
                "responses": {
                    code: {"description": description, "content": error_content}
                    for code, description in ERROR_STATUSES.items()
                },
                "securitySchemes": {
                    "apiKey": {
                        "type": "http",
                        "scheme": "bearer",
                        "description": "An agentmesh API key: `authorization: Bearer am_...`.",
                    }
                },
            },
        }


_DETAIL_TYPES = {
    "ErrorInfo",
    "RetryInfo",
    "DebugInfo",
    "QuotaFailure",
    "PreconditionFailure",
    "BadRequest",
    "RequestInfo",
    "ResourceInfo",
    "Help",
    "LocalizedMessage",
}


def _described(schema: Schema, comment: str) -> Schema:
    if comment:
        schema["description"] = comment
    return schema


def _json_body(schema: Schema) -> Schema:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _copy(rules: Any, schema: Schema, **names: str) -> None:
    for rule, keyword in names.items():
        if rules.HasField(rule):
            schema[keyword] = getattr(rules, rule)


def _string_rules(rules: validate_pb2.StringRules) -> Schema:
    schema: Schema = {}
    _copy(rules, schema, min_len="minLength", max_len="maxLength", pattern="pattern")
    if rules.HasField("len"):
        schema["minLength"] = schema["maxLength"] = rules.len
    if rules.HasField("const"):
        schema["const"] = rules.const
    if listed := list(getattr(rules, "in")):  # `in` is a Python keyword
        schema["enum"] = listed
    return schema


def _range_rules(rules: Any) -> Schema:
    schema: Schema = {}
    _copy(rules, schema, gte="minimum", gt="exclusiveMinimum")
    _copy(rules, schema, lte="maximum", lt="exclusiveMaximum")
    if rules.HasField("const"):
        schema["const"] = rules.const
    if listed := list(getattr(rules, "in")):
        schema["enum"] = listed
    return schema


def _segment_patterns(segments: list[str], pattern: str) -> list[str] | None:
    """What each `*` of a path variable may be, read from the field's own pattern.

    `agents/*` with `^agents/[A-Za-z0-9_-]{1,64}$` gives `^[A-Za-z0-9_-]{1,64}$`:
    the literal segments are cut out of the field's pattern, if it has them.
    """
    if not pattern.startswith("^") or not pattern.endswith("$") or "|" in pattern:
        return None
    expression = "/".join("(.+?)" if s in ("*", "**") else re.escape(s) for s in segments)
    match = re.fullmatch(expression, pattern[1:-1])
    if match is None:
        return None
    parts = [f"^{part}$" for part in match.groups()]
    for part in parts:
        try:
            re.compile(part)
        except re.error:
            return None
        if "/" in part:
            return None
    return parts


def describe(descriptor_set: bytes) -> Schema:
    """The OpenAPI 3.1 document of the REST API a descriptor set's http rules define."""
    return Describer(Contract.of(descriptor_set)).document()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("descriptor", nargs="?", type=Path, help="a buf build output")
    parser.add_argument("-o", "--out", type=Path, help="default: stdout")
    args = parser.parse_args()
    if args.descriptor is not None:
        descriptor = args.descriptor.read_bytes()
    else:
        from agentmesh.gateway import descriptor_set

        descriptor = descriptor_set()
    text = json.dumps(describe(descriptor), indent=2) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
