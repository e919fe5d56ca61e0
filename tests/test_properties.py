"""Requests generated from the contract, for every RPC: only documented codes come back,
every error explains itself, and a call that fails changes nothing.

Hypothesis builds request messages of any generated type by walking their descriptors
(`Requests` below): strings that are unicode, NUL bytes, control characters, a few KB
long (rarely 100 KB), at and past each buf.validate bound, or matching each field's
pattern; resource names of every pattern the contract declares, filled with the real
ids of the caller and of another tenant as well as random and malformed ones; numbers
at their edges (NaN and +-Inf for doubles); enums with undefined values; oneofs,
repeated fields and maps; Struct/Value (NaN, nested, empty Values); FieldMask paths
(valid, unknown, "*", OUTPUT_ONLY, forged log lines); Timestamps and Durations out of
range.

Every RPC of every service the mesh serves is enumerated from the descriptors (a new
RPC is covered without a line here); each is called as a fresh user who owns one of
everything (and service- and admin-only methods also with service or admin
credentials). For each answer:

- the code is documented (never INTERNAL, UNKNOWN, DATA_LOSS, DEADLINE_EXCEEDED ...),
  and the call took less than SLOW_SECONDS;
- an error carries a google.rpc.Status with one ErrorInfo (domain agentmesh.dev), an
  INVALID_ARGUMENT a BadRequest whose violations each say what is wrong, and the
  error stays small (under 8 KiB, the size of a trailer clients accept);
- a user never reads another tenant's ids it did not send;
- a call that failed changed nothing the caller can list (agents and revisions,
  contexts, workflows, providers, API keys, credits, runs, approvals, conversations).

Requests buf.validate refuses here must be INVALID_ARGUMENT there (their state is
compared only a couple of times per method: no method code runs for them). A BadRequest
names fields of the request sent, and a run's own error status inside a response is
held to the same codes (plus UNAVAILABLE: a model provider may be unreachable).

Besides: sequences of calls to any method, each free to name what earlier ones created;
raw bytes that are no message (or a mutilated one); and user text with line breaks and
control characters, which never forges a log line (Python logging, and fd 2 where RE2's
C++ logger writes) nor a line of an error.

Known bugs are listed in KNOWN_BUGS: the property steps around exactly their inputs,
and each has a minimal reproduction below marked xfail(strict=True).

AGENTMESH_PROPERTY_EXAMPLES=200 AGENTMESH_PROPERTY_RANDOM=1 runs a longer, random
search (with `-p no:timeout`: a test then runs past pytest-timeout's 120 s);
AGENTMESH_PROPERTY_STATS=FILE writes the codes each method answered.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import importlib
import json
import logging
import math
import os
import pkgutil
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import protovalidate
import pytest
from google.api import field_behavior_pb2, resource_pb2
from google.protobuf import (
    descriptor,
    duration_pb2,
    field_mask_pb2,
    struct_pb2,
    text_format,
    timestamp_pb2,
)
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from google.rpc import status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st
from rpc_helpers import error_info, error_text, field_violations, rich_status
from support import Users

import agentmesh.gen
from agentmesh.client import Client
from agentmesh.errors import DOMAIN
from agentmesh.gen.buf.validate import validate_pb2
from agentmesh.gen.common.v1 import options_pb2
from agentmesh.gen.guardrails.v1 import guardrails_pb2 as g
from agentmesh.gen.providers.v1 import providers_pb2 as p
from agentmesh.gen.registry.v1 import account_pb2 as a
from agentmesh.gen.registry.v1 import registry_pb2 as r
from agentmesh.gen.registry.v1 import workflows_pb2 as w
from agentmesh.gen.runner.v1 import runner_pb2 as rn
from agentmesh.gen.triggers.v1 import schedules_pb2 as sc
from agentmesh.gen.triggers.v1 import triggers_pb2 as tr
from agentmesh.gen.triggers.v1 import webhooks_pb2 as wh
from agentmesh.mesh import Mesh

Code = grpc.StatusCode
FieldDescriptor = descriptor.FieldDescriptor

# ---- what is tested, found from the descriptors ------------------------------------------


def _generated_modules() -> list[Any]:
    modules = []
    for info in pkgutil.walk_packages(agentmesh.gen.__path__, "agentmesh.gen."):
        if info.name.endswith("_pb2"):
            modules.append(importlib.import_module(info.name))
    return modules


MODULES = _generated_modules()
SERVICES = sorted(
    {
        service.full_name: service
        for module in MODULES
        for service in module.DESCRIPTOR.services_by_name.values()
    }.values(),
    key=lambda service: service.full_name,
)

# Services in the contract that no plugin serves yet (test_served_services_are_these
# fails when that changes, so a service that starts being served is tested at once).
UNSERVED: dict[str, str] = {}

USER, SERVICE, ADMIN = "user", "service", "admin"
_ROLE_OF_AUDIENCE = {
    options_pb2.AUDIENCE_SERVICE: SERVICE,
    options_pb2.AUDIENCE_ADMIN: ADMIN,
}


@dataclass(frozen=True)
class Rpc:
    """One method, called with one kind of credentials."""

    method: descriptor.MethodDescriptor
    role: str

    @property
    def service(self) -> str:
        return self.method.containing_service.full_name

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.method.name}"

    @property
    def audience(self) -> int:
        return self.method.GetOptions().Extensions[options_pb2.audience]

    @property
    def request_type(self) -> type[Message]:
        return GetMessageClass(self.method.input_type)

    @property
    def response_type(self) -> type[Message]:
        return GetMessageClass(self.method.output_type)

    @property
    def streaming(self) -> bool:
        return self.method.server_streaming

    def __str__(self) -> str:
        suffix = "" if self.role == USER else f"-as-{self.role}"
        return f"{self.method.containing_service.name}.{self.method.name}{suffix}"


def _rpcs(roles: Callable[[Rpc], list[str]]) -> list[Any]:
    params = []
    for service in SERVICES:
        for method in service.methods:
            for role in roles(Rpc(method, USER)):
                rpc = Rpc(method, role)
                marks = []
                if service.full_name in UNSERVED:
                    marks.append(pytest.mark.skip(reason=UNSERVED[service.full_name]))
                params.append(pytest.param(rpc, id=str(rpc), marks=marks))
    return params


def _every_role(rpc: Rpc) -> list[str]:
    """A user always; the service or an admin too for methods meant for them."""
    privileged = _ROLE_OF_AUDIENCE.get(rpc.audience)
    return [USER, privileged] if privileged else [USER]


def _entitled_role(rpc: Rpc) -> list[str]:
    return [_ROLE_OF_AUDIENCE.get(rpc.audience, USER)]


RPCS = _rpcs(_every_role)
ENTITLED_RPCS = _rpcs(_entitled_role)

# ---- what an answer may be -----------------------------------------------------------------

DOCUMENTED = {
    Code.OK,
    Code.INVALID_ARGUMENT,
    Code.NOT_FOUND,
    Code.ALREADY_EXISTS,
    Code.FAILED_PRECONDITION,
    Code.ABORTED,
    Code.PERMISSION_DENIED,
    Code.RESOURCE_EXHAUSTED,
    Code.UNAUTHENTICATED,
    Code.UNIMPLEMENTED,
    # UNAVAILABLE only where a peer is down: in this mesh every peer is up.
}
# Clients refuse trailers past 8 KiB by default (a status bigger than that reaches them
# as RESOURCE_EXHAUSTED, not as the error it is).
ERROR_LIMIT = 8 * 1024
CALL_TIMEOUT = 20.0
SLOW_SECONDS = 5.0
# Where a tool or provider of the fixtures points: allowed (127.0.0.1) but refused.
NOWHERE = "http://127.0.0.1:1/v1"

EXAMPLES = int(os.environ.get("AGENTMESH_PROPERTY_EXAMPLES", "10"))
RANDOM = bool(os.environ.get("AGENTMESH_PROPERTY_RANDOM"))
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not RANDOM,
    database=None,
    print_blob=False,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
)

# method -> code -> how often; written to AGENTMESH_PROPERTY_STATS at the end.
STATS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


# ---- strategies: a message of any type, from its descriptor ---------------------------------

_UNSET = object()
MAX_DEPTH = 6
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
UINT32 = (0, 2**32 - 1)
UINT64 = (0, 2**64 - 1)
_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: INT32,
    FieldDescriptor.TYPE_SINT32: INT32,
    FieldDescriptor.TYPE_SFIXED32: INT32,
    FieldDescriptor.TYPE_INT64: INT64,
    FieldDescriptor.TYPE_SINT64: INT64,
    FieldDescriptor.TYPE_SFIXED64: INT64,
    FieldDescriptor.TYPE_UINT32: UINT32,
    FieldDescriptor.TYPE_FIXED32: UINT32,
    FieldDescriptor.TYPE_UINT64: UINT64,
    FieldDescriptor.TYPE_FIXED64: UINT64,
}
# Separators a log reader may take for a new line, and an escape that rewrites one.
LINE_BREAKS = ["\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"]
FORGED = "FORGED agentmesh.rpc INFO /agentmesh.registry.v1.RegistryService/GetAgent OK"
TRICKY_TEXT = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\t",
    *(f"x{brk}{FORGED}" for brk in LINE_BREAKS),
    "\x1b[2K\r" + FORGED,
    "%s%s%n%d{0}{}",
    "{{ input }}",
    "{{ steps.x.output.y }}",
    "' OR 1=1 --",
    "../../etc/passwd",
    "me",
    "users/me",
    "*",
    "(",
    "[a-",
    "(?P<x",
    "a{1001}{1001}",
    "\\",
    "\\C",
    "(?<!x)",
    "input ==",
    'steps.a.output == "x"',
    "size(input) > 0 ? input : 1/0",
    "http://127.0.0.1:1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:7f00:1]/",
    "https://localhost./",
    "file:///etc/passwd",
    "${jndi:ldap://x}",
    "\u202e\u0644\u0639",
    "😀" * 3,
    "\ufeff",
    "\U0010ffff",
]
_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)


def _scrub(text: str) -> str:
    """Text protobuf can hold: lone surrogates are not Unicode scalar values."""
    return "".join("?" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)


def _long_text() -> st.SearchStrategy[str]:
    """A few KB, rarely 100 KB."""
    return st.integers(0, 19).flatmap(
        lambda n: (
            st.sampled_from(["x" * 100_000, "\n" * 100_000])
            if n == 0
            else st.sampled_from(["a" * 4096, "é" * 5000, "\n" * 8193, "😀" * 2049, "%s" * 3000])
        )
    )


def _rules(field: FieldDescriptor) -> validate_pb2.FieldRules:
    return field.GetOptions().Extensions[validate_pb2.field]


def _is_python_regex(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


def _string_rule_values(rules: validate_pb2.StringRules) -> list[st.SearchStrategy[str]]:
    """Strings at and past each bound of a field's rules, and ones its pattern matches
    (at the start: a pattern anchored with `$` may still get a trailing newline)."""
    found: list[st.SearchStrategy[str]] = []
    if rules.HasField("pattern") and _is_python_regex(rules.pattern):
        found.append(st.from_regex(rules.pattern, fullmatch=False).map(_scrub))
    if rules.HasField("max_len") and rules.max_len <= 100_000:
        n = rules.max_len
        found.append(st.sampled_from(["m" * n, "😀" * n, "m" * (n + 1)]))
    if rules.HasField("min_len") and rules.min_len > 0:
        found.append(st.just("n" * (rules.min_len - 1)))
    return found


def _number_edges(rules: validate_pb2.FieldRules) -> list[float]:
    kind = rules.WhichOneof("type")
    if kind is None:
        return []
    typed = getattr(rules, kind)
    edges: list[float] = []
    for bound in ("gt", "gte", "lt", "lte", "const"):
        if bound in typed.DESCRIPTOR.fields_by_name and typed.HasField(bound):
            value = getattr(typed, bound)
            if isinstance(value, (int, float)):
                edges += [value - 1, value, value + 1]
    if "not_in" in typed.DESCRIPTOR.fields_by_name:
        edges += list(typed.not_in)
    return edges


def _behaviors(field: FieldDescriptor) -> set[int]:
    return set(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


def _json_value(leaf_text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    numbers = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
        [math.nan, math.inf, -math.inf, -0.0, 2.0**53 + 1, 1e308, 5e-324, 2.0**63]
    )
    leaves = st.none() | st.booleans() | numbers | leaf_text
    schema_keys = st.sampled_from(
        [
            "$schema",
            "$ref",
            "$defs",
            "$id",
            "type",
            "properties",
            "required",
            "pattern",
            "patternProperties",
            "format",
            "items",
            "enum",
            "const",
            "minimum",
            "maxLength",
            "additionalProperties",
            "",
            "\x00",
        ]
    )
    keys = schema_keys | _TEXT
    return st.recursive(
        leaves,
        lambda children: st.lists(children, max_size=3) | _mapping(keys, children, max_size=4),
        max_leaves=12,
    )


def _value_message(value: Any) -> struct_pb2.Value:
    message = struct_pb2.Value()
    if isinstance(value, struct_pb2.Value):
        message.CopyFrom(value)
    elif value is None:
        message.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        message.bool_value = value
    elif isinstance(value, (int, float)):
        message.number_value = value
    elif isinstance(value, str):
        message.string_value = value
    elif isinstance(value, list):
        for item in value:
            message.list_value.values.add().CopyFrom(_value_message(item))
    else:
        for key, item in value.items():
            message.struct_value.fields[key].CopyFrom(_value_message(item))
    return message


def _deep_value(depth: int) -> struct_pb2.Value:
    """A list in a struct in a list ... `depth` levels deep."""
    value = struct_pb2.Value(string_value="leaf")
    for level in range(depth):
        outer = struct_pb2.Value()
        if level % 2:
            outer.list_value.values.add().CopyFrom(value)
        else:
            outer.struct_value.fields["k"].CopyFrom(value)
        value = outer
    return value


@dataclass(frozen=True)
class Pool:
    """Names and ids the generated requests draw from: the caller's real ones, another
    tenant's, and their parts."""

    names: tuple[str, ...]
    ids: tuple[str, ...]
    secrets: tuple[str, ...] = ()
    # Ids no request may name: the API key the caller calls with (deleting it would
    # lock the test out, which proves nothing).
    protected: tuple[str, ...] = ()


def _resource_patterns() -> list[str]:
    patterns: set[str] = set()

    def visit(message: descriptor.Descriptor) -> None:
        for pattern in message.GetOptions().Extensions[resource_pb2.resource].pattern:
            patterns.add(pattern)
        for nested in message.nested_types:
            visit(nested)

    for module in MODULES:
        for message in module.DESCRIPTOR.message_types_by_name.values():
            visit(message)
    # Names the contract documents beside its resource patterns.
    patterns |= {"agents/{agent}@{revision}", "users/{user}/creditBalance", "users/me"}
    return sorted(patterns)


RESOURCE_PATTERNS = _resource_patterns()
RESOURCE_NAME = re.compile(
    "|".join(
        re.sub(r"\\\{[a-z_]+\\\}", "[A-Za-z0-9_-]{1,64}", re.escape(pattern))
        for pattern in RESOURCE_PATTERNS
    )
)


def _strings(message: Message, depth: int = 3) -> list[str]:
    """The string values of a message's fields, a few levels down."""
    found = []
    for described, value in message.ListFields():
        values = value if described.is_repeated else [value]
        if described.message_type is not None and described.message_type.GetOptions().map_entry:
            continue
        for item in values:
            if isinstance(item, str):
                found.append(item)
            elif isinstance(item, Message) and depth > 1:
                found += _strings(item, depth - 1)
    return found


# The fixed segments of names ("agents", "contexts", "me", ...), which are no ids.
COLLECTIONS = {
    part for pattern in RESOURCE_PATTERNS for part in pattern.split("/") if "{" not in part
} | {""}
MALFORMED_IDS = [
    "",
    "-",
    "..",
    "a/b",
    "a@b",
    "x" * 65,
    "y" * 1000,
    "é",
    "a b",
    "a\nb",
    "%2e%2e",
    "me",
    "*",
    "a\x00b",
]


class Requests:
    """Hypothesis strategies for messages of any type, built from their descriptors.

    A request is one of three kinds, about equally often: one that keeps every
    buf.validate rule (so it reaches the method's own code), the same with one field
    taken from a wild one, or a wild one (any value of each field's type).
    """

    def __init__(self, pool: Pool):
        self.pool = pool
        self._cache: dict[tuple[str, int, bool], st.SearchStrategy[Message]] = {}
        ids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
        if pool.ids:
            ids = _pick(pool.ids) | ids
        self.ids = ids | st.sampled_from(MALFORMED_IDS)
        # Names of what earlier calls created (see `created`), read when drawn.
        self.created: list[str] = []
        fresh = st.integers(0, 2**16).map(self._created)
        self.names = fresh | st.sampled_from(RESOURCE_PATTERNS).flatmap(self._fill)
        if pool.names:
            self.names = _pick(pool.names) | self.names
        self.text = st.one_of(
            _TEXT,
            st.sampled_from(TRICKY_TEXT),
            self.names.map(lambda name: name + "/"),
            st.tuples(self.names, st.sampled_from(LINE_BREAKS)).map("".join),
            _long_text(),
        )
        if pool.secrets:
            self.text = self.text | _pick(pool.secrets)

    def _created(self, index: int, pattern: str | None = None) -> str:
        fitting = [n for n in self.created if pattern is None or re.search(pattern, n)]
        if not fitting:
            known = [*self.pool.names, *self.pool.ids]
            fitting = [n for n in known if pattern is None or re.search(pattern, n)]
        return fitting[index % len(fitting)] if fitting else ""

    def remember(self, response: Message) -> None:
        """Keeps the names of resources a call returned, for later requests to name."""
        for text in _strings(response):
            if not RESOURCE_NAME.fullmatch(text) or text in self.created:
                continue
            if not any(protected in text for protected in self.pool.protected):
                self.created.append(text)

    def _fill(self, pattern: str) -> st.SearchStrategy[str]:
        holes = len(re.findall(r"\{[a-z_]+\}", pattern))

        def fill(ids: list[str]) -> str:
            parts = iter(ids)
            return re.sub(r"\{[a-z_]+\}", lambda _: next(parts), pattern)

        return st.lists(self.ids, min_size=holes, max_size=holes).map(fill)

    def request(self, message: descriptor.Descriptor) -> st.SearchStrategy[Message]:
        valid = self.message(message, conform=True)
        wild = self.message(message, conform=False)
        spliced = st.builds(_splice, valid, wild, st.integers(0, 2**16))
        return st.one_of(valid, spliced, wild)

    # -- messages ------------------------------------------------------------------------

    def message(
        self, message: descriptor.Descriptor, depth: int = 0, conform: bool = False
    ) -> st.SearchStrategy:
        key = (message.full_name, depth, conform)
        if key not in self._cache:
            special = self._well_known(message, conform)
            if special is None:
                special = self._build(message, depth, conform)
            self._cache[key] = special
        return self._cache[key]

    def _build(
        self, message: descriptor.Descriptor, depth: int, conform: bool
    ) -> st.SearchStrategy:
        cls = GetMessageClass(message)
        required: dict[str, st.SearchStrategy] = {}
        optional: dict[str, st.SearchStrategy] = {}
        in_oneofs: set[str] = set()
        for oneof in message.oneofs:
            members = list(oneof.fields)
            if len(members) == 1 and oneof.name == f"_{members[0].name}":
                continue  # proto3 `optional`: a field of its own
            in_oneofs |= {f.name for f in members}
            choices = [
                self._value(f, message, depth, conform).map(lambda v, f=f: (f.name, v))
                for f in members
                if self._reachable(f, depth)
            ]
            if not choices:
                continue
            strategy = st.one_of(choices)
            if oneof.GetOptions().Extensions[validate_pb2.oneof].required:
                required[f"oneof:{oneof.name}"] = strategy if conform else _mostly(strategy)
            else:
                optional[f"oneof:{oneof.name}"] = strategy
        own_name = _name_pattern(message)
        for f in message.fields:
            if f.name in in_oneofs or not self._reachable(f, depth):
                continue
            if conform and f.name == "name" and own_name:
                # An update names the resource it changes: a name of the resource's
                # pattern, where buf.validate has no rule for it (the field is OUTPUT_ONLY).
                required[f.name] = self._valid_string(validate_pb2.StringRules(pattern=own_name))
                continue
            strategy = self._value(f, message, depth, conform)
            if _is_required(f) or (conform and _empty_breaks_rules(f)):
                required[f.name] = strategy if conform else _mostly(strategy)
            else:
                optional[f.name] = strategy
        fields = message.fields_by_name
        return st.fixed_dictionaries(required, optional=optional).map(
            lambda values: _assemble(cls, fields, values)
        )

    def _reachable(self, field: FieldDescriptor, depth: int) -> bool:
        if field.message_type is None or field.message_type.GetOptions().map_entry:
            return True
        return depth < MAX_DEPTH or field.message_type.full_name in WELL_KNOWN

    def _value(
        self, field: FieldDescriptor, parent: descriptor.Descriptor, depth: int, conform: bool
    ) -> st.SearchStrategy:
        rules = _rules(field)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            map_rules = rules.map
            keys = self._single(key_field, parent, depth, map_rules.keys, conform)
            values = self._single(value_field, parent, depth, map_rules.values, conform)
            small = _mapping(keys, values, max_size=3)
            if conform or not map_rules.HasField("max_pairs") or map_rules.max_pairs > 256:
                return small
            too_many = st.just({f"k{i}": "v" for i in range(map_rules.max_pairs + 1)})
            if value_field.type != FieldDescriptor.TYPE_STRING:
                return small
            return st.integers(0, 9).flatmap(lambda i: too_many if i == 0 else small)
        if field.is_repeated:
            repeated = rules.repeated
            item_rules = repeated.items if rules.HasField("repeated") else None
            single = self._single(field, parent, depth, item_rules, conform)
            if conform:
                low = repeated.min_items
                high = min(repeated.max_items or 3, max(low, 3))
                items = st.lists(single, min_size=low, max_size=high)
                if repeated.unique and field.message_type is None:
                    return items.map(lambda values: list(dict.fromkeys(values)))
                return items
            small = st.lists(single, max_size=3)
            if field.message_type is not None or not 0 < repeated.max_items <= 300:
                return small
            n = repeated.max_items + 1
            too_many = st.lists(single, min_size=n, max_size=n)
            same = st.builds(lambda item: [item] * n, single)  # also not unique
            return st.integers(0, 9).flatmap(lambda i: (too_many | same) if i == 0 else small)
        return self._single(field, parent, depth, rules, conform)

    def _single(
        self,
        field: FieldDescriptor,
        parent: descriptor.Descriptor,
        depth: int,
        rules: validate_pb2.FieldRules | None,
        conform: bool,
    ) -> st.SearchStrategy:
        rules = rules if rules is not None else validate_pb2.FieldRules()
        kind = field.type
        if kind == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.full_name == "google.protobuf.FieldMask":
                return self._field_mask(parent, conform)
            return self.message(field.message_type, depth + 1, conform)
        if kind == FieldDescriptor.TYPE_STRING:
            return self._valid_string(rules.string) if conform else self._wild_string(rules)
        if kind == FieldDescriptor.TYPE_BYTES:
            return st.binary(max_size=64)
        if kind == FieldDescriptor.TYPE_BOOL:
            return st.booleans()
        if kind == FieldDescriptor.TYPE_ENUM:
            defined = [value.number for value in field.enum_type.values]
            if conform:
                enum = rules.enum
                allowed = [v for v in defined if v not in enum.not_in]
                allowed = [v for v in allowed if v in getattr(enum, "in")] or allowed
                return st.sampled_from(allowed or defined)
            return st.sampled_from(defined) | st.sampled_from([-1, 99, INT32[0], INT32[1]])
        if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            width = 64 if kind == FieldDescriptor.TYPE_DOUBLE else 32
            if conform:
                low, high = _bounds(rules, -1e6, 1e6)
                return st.floats(low, high, allow_nan=False, width=width)
            edges = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1.0, 2.0, 1e308, -1e308, 5e-324]
            edges += [float(e) for e in _number_edges(rules)]
            return st.floats(width=width) | st.sampled_from(edges)
        low, high = _INT_RANGES[kind]
        if conform:
            low, high = _bounds(rules, low, high)
            typed = getattr(rules, rules.WhichOneof("type") or "int64", None)
            excluded = set(getattr(typed, "not_in", []))
            numbers = st.integers(low, high) | st.sampled_from([low, high, max(low, 0)])
            return numbers.filter(lambda n: n not in excluded)
        edges = [0, -1, 1, low, high, low + 1, high - 1, 10**12, 10**12 + 1, -(10**12) - 1]
        edges += [int(e) for e in _number_edges(rules)]
        return st.sampled_from([e for e in edges if low <= e <= high]) | st.integers(low, high)

    def _wild_string(self, rules: validate_pb2.FieldRules) -> st.SearchStrategy[str]:
        return st.one_of([self.names, self.ids, self.text, *_string_rule_values(rules.string)])

    def _valid_string(self, rules: validate_pb2.StringRules) -> st.SearchStrategy[str]:
        """A string that keeps the field's rules: a real name where one fits."""
        low = rules.min_len
        high = rules.max_len if rules.HasField("max_len") else 10**9
        candidates = [*self.pool.names, *self.pool.ids]
        fitting = [c for c in candidates if low <= len(c) <= high]
        if not rules.HasField("pattern"):
            text = st.text(_PRINTABLE, min_size=max(low, 0), max_size=max(min(high, 24), low))
            return _pick(fitting) | text if fitting else text
        pattern = rules.pattern
        if "https?://" in pattern:
            urls = [NOWHERE, "https://example.com/hook", ""]
            return st.sampled_from([u for u in urls if re.search(pattern, u)])
        fitting = [c for c in fitting if re.search(pattern, c)]
        matching = (
            st.from_regex(pattern, fullmatch=True)
            .map(_scrub)
            .filter(lambda s: low <= len(s) <= high)
        )
        if not fitting:
            return matching
        # A real name: the caller's, another tenant's, or one an earlier call created
        # (picked by index, so what was created never changes how much is drawn).
        fresh = st.integers(0, 2**16).map(lambda i: self._created(i, pattern))
        return fresh | _pick(fitting) | matching

    # -- well-known types ------------------------------------------------------------------

    def _well_known(
        self, message: descriptor.Descriptor, conform: bool
    ) -> st.SearchStrategy | None:
        name = message.full_name
        if name not in WELL_KNOWN:
            return None
        if name == "google.protobuf.Empty":
            return st.builds(GetMessageClass(message))
        if conform:
            return _valid_well_known(name)
        json_value = _json_value(self.text)
        if name == "google.protobuf.Struct":
            deep = st.integers(10, 45).map(
                lambda depth: struct_pb2.Struct(fields={"deep": _deep_value(depth)})
            )
            flat = _mapping(
                st.sampled_from(["", "k", "$schema", "\x00"]) | _TEXT,
                json_value | st.just(struct_pb2.Value()),
                max_size=4,
            ).map(_struct)
            return st.integers(0, 14).flatmap(lambda n: deep if n == 0 else flat)
        if name == "google.protobuf.Value":
            return (json_value | st.just(struct_pb2.Value())).map(_value_message)
        if name == "google.protobuf.ListValue":
            return st.lists(json_value, max_size=3).map(
                lambda items: _value_message(items).list_value
            )
        if name == "google.protobuf.Timestamp":
            seconds = st.sampled_from(
                [0, -1, 1, -62135596800, -62135596801, 253402300799, 253402300800, *INT64]
            ) | st.integers(*INT64)
            nanos = st.sampled_from([0, 1, 999_999_999, 1_000_000_000, -1, *INT32])
            return st.builds(_timestamp, seconds, nanos)
        seconds = st.sampled_from(
            [0, 1, -1, 60, 61, 300, 301, 86400, 86401, 315_576_000_000, 315_576_000_001, *INT64]
        ) | st.integers(*INT64)
        nanos = st.sampled_from([0, 1, -1, 999_999_999, -999_999_999, 1_000_000_000, *INT32])
        return st.builds(_duration, seconds, nanos)

    def _field_mask(self, parent: descriptor.Descriptor, conform: bool) -> st.SearchStrategy:
        """Paths of the message the mask updates (the request's other message field)."""
        targets = [
            f.message_type
            for f in parent.fields
            if f.message_type is not None
            and f.message_type.full_name != "google.protobuf.FieldMask"
            and not f.message_type.GetOptions().map_entry
        ]
        valid: list[str] = []
        for target in targets:
            for f in target.fields:
                valid.append(f.name)
                if f.message_type is not None and not f.is_repeated:
                    valid += [f"{f.name}.{sub.name}" for sub in f.message_type.fields]
        if conform and valid:
            paths = st.sampled_from(valid) | st.just("*")
            return st.lists(paths, min_size=1, max_size=3).map(_mask)
        special = [
            "*",
            "",
            ".",
            "..",
            "name",
            "etag",
            "create_time",
            "not_a_field",
            "display_name.x",
            "displayName",
            "DISPLAY_NAME",
            "*.x",
            "a" * 5000,
            *(f"display_name{brk}{FORGED}" for brk in LINE_BREAKS),
            *(f"{target.name.lower()}.display_name" for target in targets),
        ]
        paths = st.sampled_from(special) | self.text
        if valid:
            paths = st.sampled_from(valid) | paths
        return st.lists(paths, max_size=4).map(_mask)


WELL_KNOWN = {
    "google.protobuf.Struct",
    "google.protobuf.Value",
    "google.protobuf.ListValue",
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.Empty",
}
_PRINTABLE = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"))


def _valid_well_known(name: str) -> st.SearchStrategy:
    simple = st.none() | st.booleans() | st.integers(-100, 100) | st.text(_PRINTABLE, max_size=12)
    json_value = st.recursive(
        simple,
        lambda children: (
            st.lists(children, max_size=2)
            | _mapping(st.text(_PRINTABLE, max_size=8), children, max_size=2)
        ),
        max_leaves=5,
    )
    if name == "google.protobuf.Struct":
        schema = st.sampled_from(
            [
                {"type": "object"},
                {"type": "string", "pattern": "^[a-z]+$"},
                {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]},
            ]
        )
        keys = st.text(_PRINTABLE, min_size=1, max_size=8)
        return (schema | _mapping(keys, json_value, max_size=3)).map(_struct)
    if name == "google.protobuf.Value":
        return json_value.map(_value_message)
    if name == "google.protobuf.ListValue":
        return st.lists(json_value, max_size=3).map(lambda items: _value_message(items).list_value)
    if name == "google.protobuf.Timestamp":
        return st.builds(_timestamp, st.integers(0, 4 * 10**9), st.integers(0, 999_999_999))
    return st.builds(_duration, st.integers(0, 60), st.just(0))


def _timestamp(seconds: int, nanos: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def _duration(seconds: int, nanos: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=seconds, nanos=nanos)


def _mask(paths: list[str]) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=paths)


def _is_required(field: FieldDescriptor) -> bool:
    return _rules(field).required or field_behavior_pb2.REQUIRED in _behaviors(field)


def _empty_breaks_rules(field: FieldDescriptor) -> bool:
    """Whether the field's rules refuse its empty value (proto3 checks unset fields)."""
    rules = _rules(field)
    if field.is_repeated:
        return rules.HasField("repeated") and rules.repeated.min_items > 0
    kind = rules.WhichOneof("type")
    if kind == "string":
        typed = rules.string
        return typed.min_len > 0 or (
            typed.HasField("pattern") and re.search(typed.pattern, "") is None
        )
    if kind is None or field.message_type is not None:
        return False
    typed = getattr(rules, kind)
    names = typed.DESCRIPTOR.fields_by_name
    if "not_in" in names and 0 in typed.not_in:
        return True
    low, high = _bounds(rules, -math.inf, math.inf)
    return not low <= 0 <= high


def _bounds(rules: validate_pb2.FieldRules, low: float, high: float) -> tuple[Any, Any]:
    """The range a number field's rules allow, within `low`..`high`."""
    kind = rules.WhichOneof("type")
    if kind is None:
        return low, high
    typed = getattr(rules, kind)
    names = typed.DESCRIPTOR.fields_by_name
    step = 1 if isinstance(low, int) else 1e-9
    if "gte" in names and typed.HasField("gte"):
        low = max(low, typed.gte)
    if "gt" in names and typed.HasField("gt"):
        low = max(low, typed.gt + step)
    if "lte" in names and typed.HasField("lte"):
        high = min(high, typed.lte)
    if "lt" in names and typed.HasField("lt"):
        high = min(high, typed.lt - step)
    return (low, high) if low <= high else (high, low)


def _set_paths(message: Message, prefix: tuple = (), depth: int = 2) -> list[tuple]:
    """Paths (field names) of the fields set in a message, up to `depth` levels."""
    paths = []
    for described, value in message.ListFields():
        path = (*prefix, described.name)
        paths.append(path)
        nested = (
            described.message_type is not None
            and not described.is_repeated
            and described.message_type.full_name not in WELL_KNOWN
        )
        if nested and depth > 1:
            paths += _set_paths(value, path, depth - 1)
    return paths


def _splice(valid: Message, wild: Message, index: int) -> Message:
    """`valid` with one of `wild`'s fields (at the top or one level down) in place."""
    paths = _set_paths(wild)
    if not paths:
        return valid
    path = paths[index % len(paths)]
    spliced = type(valid)()
    spliced.CopyFrom(valid)
    target, source = spliced, wild
    for name in path[:-1]:
        target, source = getattr(target, name), getattr(source, name)
    target.ClearField(path[-1])
    described = source.DESCRIPTOR.fields_by_name[path[-1]]
    value = getattr(source, path[-1])
    if described.is_repeated:  # maps too
        getattr(target, path[-1]).MergeFrom(value)
    elif described.message_type is not None:
        getattr(target, path[-1]).CopyFrom(value)
    else:
        setattr(target, path[-1], value)
    return spliced


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    for key, value in values.items():
        struct.fields[key].CopyFrom(_value_message(value))
    return struct


def _name_pattern(message: descriptor.Descriptor) -> str:
    """A regex of the names of a resource message (its google.api.resource pattern)."""
    patterns = message.GetOptions().Extensions[resource_pb2.resource].pattern
    if not patterns:
        return ""
    ids = re.sub(r"\\\{[a-z_]+\\\}", "[A-Za-z0-9_-]{1,64}", re.escape(patterns[0]))
    return f"^{ids}$"


def _mapping(
    keys: st.SearchStrategy, values: st.SearchStrategy, max_size: int
) -> st.SearchStrategy[dict]:
    """A dict of up to `max_size` pairs. Unlike st.dictionaries, a repeated key does not
    make it draw again: what it draws never depends on the values (names of what earlier
    calls created), so a replayed example draws the same."""
    return st.lists(st.tuples(keys, values), max_size=max_size).map(dict)


def _pick(items: list | tuple) -> st.SearchStrategy:
    """One of the items (like sampled_from, with a short repr for long lists)."""
    items = tuple(items)
    return st.integers(0, len(items) - 1).map(items.__getitem__)


def _mostly(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """A required field: set nine times in ten."""
    return st.integers(0, 9).flatmap(lambda n: st.just(_UNSET) if n == 0 else strategy)


def _assemble(cls: type[Message], fields: dict, values: dict[str, Any]) -> Message:
    message = cls()
    for key, value in values.items():
        if value is _UNSET:
            continue
        if key.startswith("oneof:"):
            key, value = value
        _set(message, fields[key], value)
    return message


def _set(message: Message, field: FieldDescriptor, value: Any) -> None:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        container = getattr(message, field.name)
        value_field = field.message_type.fields_by_name["value"]
        for key, item in value.items():
            if value_field.message_type is not None:
                container[key].CopyFrom(item)
            else:
                container[key] = item
    elif field.is_repeated:
        getattr(message, field.name).extend(value)
    elif field.message_type is not None:
        getattr(message, field.name).CopyFrom(value)
    else:
        setattr(message, field.name, value)


# ---- the mesh, its tenants and what they own -------------------------------------------


class Tenant:
    """A user, its client, and the names, ids and secrets of what it owns."""

    def __init__(self, client: Client, user: a.User):
        self.client = client
        self.user = user
        self.names: list[str] = []
        self.ids: list[str] = []
        self.secrets: list[str] = []
        self.requests: Requests | None = None
        self.state: dict[str, Any] | None = None  # as last read, for tests that read it
        self.echoable: set[str] = set()  # another tenant's ids this one sent itself
        self.protected: list[str] = []  # ids of what no request may name (its API key)

    @property
    def user_id(self) -> str:
        return self.user.name.removeprefix("users/")

    def own(self, *names: str) -> None:
        for name in names:
            self.names.append(name)
            for part in re.split(r"[/@]", name):
                if part not in COLLECTIONS and part not in self.ids:
                    self.ids.append(part)

    def __repr__(self) -> str:
        return f"Tenant({self.user.name})"


class World:
    def __init__(self, mesh: Mesh, users: Users, service: Client, other: Tenant):
        self.mesh = mesh
        self.users = users
        self.service = service
        self.other = other

    def __repr__(self) -> str:
        return f"World({self.mesh.address}, other={self.other})"


async def make_tenant(world_users: Users, service: Client, with_runs: bool) -> Tenant:
    """A user with credits who owns one of everything: two agents (one with two
    revisions, a context and a handoff to the other, which has a tool that needs
    approval), a workflow, a provider, a spare API key, a credit reservation, an hourly
    schedule, a webhook subscription, an inbound trigger and, with `with_runs`, a
    finished run and one paused for an approval."""
    client, user = await world_users.new(credits=1_000_000)
    tenant = Tenant(client, user)
    tool = r.Tool(
        name="needs_ok",
        require_approval=True,
        function=r.FunctionTool(http=r.HttpFunction(url=NOWHERE)),
    )
    target = await client.registry.CreateAgent(
        r.CreateAgentRequest(agent=r.Agent(display_name="target", tools=[tool]))
    )

    async def triage() -> tuple[r.Agent, str, r.Context]:
        """An agent handing off to `target`, with two revisions and a default context."""
        agent = await client.registry.CreateAgent(
            r.CreateAgentRequest(
                agent=r.Agent(display_name="triage", handoffs=[target.name], metadata={"k": "v"}),
                agent_id=f"triage-{user.name.removeprefix('users/')[:8].lower()}",
            )
        )
        first_revision = agent.revision_id
        agent = await client.registry.UpdateAgent(
            r.UpdateAgentRequest(
                agent=r.Agent(name=agent.name, instructions="second revision"),
                update_mask=field_mask_pb2.FieldMask(paths=["instructions"]),
            )
        )
        values = struct_pb2.Struct()
        values.update({"tier": "gold"})
        context = await client.registry.CreateContext(
            r.CreateContextRequest(
                parent=agent.name,
                context=r.Context(display_name="ctx", values=values, is_default=True),
            )
        )
        return agent, first_revision, context

    async def keys() -> tuple[a.ListApiKeysResponse, a.ApiKey]:
        in_use = await client.accounts.ListApiKeys(a.ListApiKeysRequest(parent="users/me"))
        spare = await client.accounts.CreateApiKey(
            a.CreateApiKeyRequest(parent="users/me", api_key=a.ApiKey(display_name="spare"))
        )
        return in_use, spare

    (
        (agent, first_revision, context),
        workflow,
        provider,
        (in_use, spare),
        reservation,
    ) = await asyncio.gather(
        triage(),
        client.workflows.CreateWorkflow(
            w.CreateWorkflowRequest(
                workflow=w.Workflow(
                    display_name="flow",
                    steps=[w.WorkflowStep(id="only", agent=w.AgentStep(agent=target.name))],
                )
            )
        ),
        client.providers.CreateProvider(
            p.CreateProviderRequest(
                provider=p.Provider(
                    display_name="nowhere",
                    type=p.PROVIDER_TYPE_CUSTOM,
                    base_url=NOWHERE,
                    api_key="sk-nowhere-" + "n" * 20,
                )
            )
        ),
        keys(),
        service.accounts.ReserveCredits(a.ReserveCreditsRequest(user=user.name, amount=7)),
    )
    hourly = duration_pb2.Duration(seconds=3600)
    schedule, subscription, trigger = await asyncio.gather(
        client.schedules.CreateSchedule(
            sc.CreateScheduleRequest(
                schedule=sc.Schedule(
                    display_name="hourly", target=target.name, input="tick", interval=hourly
                )
            )
        ),
        client.webhooks.CreateSubscription(
            wh.CreateSubscriptionRequest(
                subscription=wh.Subscription(
                    url=NOWHERE, event_types=[wh.EVENT_TYPE_RUN_FAILED], agent=target.name
                )
            )
        ),
        client.triggers.CreateTrigger(
            tr.CreateTriggerRequest(trigger=tr.Trigger(target=target.name))
        ),
    )
    # Paused, as settled_snapshot would make it (at the cost of a wait) before reading.
    await client.schedules.PauseSchedule(sc.PauseScheduleRequest(name=schedule.name))
    tenant.protected += [key.name.rpartition("/")[2] for key in in_use.api_keys]
    tenant.own(
        user.name,
        target.name,
        agent.name,
        f"{agent.name}@{first_revision}",
        f"{agent.name}@{agent.revision_id}",
        f"{target.name}@{target.revision_id}",
        context.name,
        workflow.name,
        provider.name,
        spare.name,
        f"users/me/apiKeys/{spare.name.rpartition('/')[2]}",
        f"{user.name}/creditBalance",
        reservation.name,
        schedule.name,
        subscription.name,
        trigger.name,
    )
    tenant.secrets += [spare.secret, subscription.secret, trigger.secret]
    if with_runs:
        run, paused = await asyncio.gather(
            client.runner.RunAgent(rn.RunAgentRequest(agent=agent.name, input="hello")),
            client.runner.RunAgent(
                rn.RunAgentRequest(agent=target.name, input="please call needs_ok")
            ),
        )
        assert run.state == rn.Run.STATE_SUCCEEDED, run
        assert paused.state == rn.Run.STATE_AWAITING_APPROVAL, paused
        approvals = await client.runner.ListApprovals(rn.ListApprovalsRequest(parent=paused.name))
        tenant.own(
            run.name,
            run.conversation,
            paused.name,
            paused.conversation,
            *(approval.name for approval in approvals.approvals),
        )
    return tenant


@pytest.fixture(scope="module")
async def world(sqlite_mesh):
    users = Users(sqlite_mesh)
    service = users.service()
    other = await make_tenant(users, service, with_runs=True)
    yield World(sqlite_mesh, users, service, other)
    await users.close()
    _write_stats()


def _write_stats() -> None:
    if path := os.environ.get("AGENTMESH_PROPERTY_STATS"):
        with open(path, "w") as out:
            json.dump({k: dict(v) for k, v in sorted(STATS.items())}, out, indent=1)


@pytest.fixture
async def caller(world, request) -> Tenant:
    """A fresh user who owns one of everything (runs too, for the runner's methods)."""
    params = request.node.callspec.params
    service = params["rpc"].service if "rpc" in params else params["service"].full_name
    return await make_tenant(
        world.users, world.service, with_runs=service == "agentmesh.runner.v1.RunnerService"
    )


def requests_for(caller: Tenant, other: Tenant) -> Requests:
    """The strategies for a caller's requests (built once: their pool does not change)."""
    if caller.requests is None:
        caller.requests = Requests(pool_of(caller, other))
    return caller.requests


def pool_of(caller: Tenant, other: Tenant) -> Pool:
    return Pool(
        names=tuple(dict.fromkeys([*caller.names, *other.names])),
        ids=tuple(dict.fromkeys([*caller.ids, *other.ids])),
        secrets=tuple(caller.secrets),
        protected=tuple(caller.protected),
    )


# ---- what a tenant can see of its own state ---------------------------------------------

_ACTIVE = {rn.Run.STATE_QUEUED, rn.Run.STATE_RUNNING}


async def snapshot(client: Client) -> dict[str, Any]:
    """Everything a user owns, read through the List RPCs as that user."""
    page = 1000

    async def answer_or_code(call: Any) -> Any:
        try:
            return await call
        except grpc.aio.AioRpcError as error:  # a List method not served yet
            return error.code().name

    reads = {
        "user": client.accounts.GetUser(a.GetUserRequest(name="users/me")),
        "keys": client.accounts.ListApiKeys(
            a.ListApiKeysRequest(parent="users/me", page_size=page)
        ),
        "balance": client.accounts.GetCreditBalance(
            a.GetCreditBalanceRequest(name="users/me/creditBalance")
        ),
        "agents": client.registry.ListAgents(r.ListAgentsRequest(page_size=page)),
        "workflows": client.workflows.ListWorkflows(w.ListWorkflowsRequest(page_size=page)),
        "providers": client.providers.ListProviders(p.ListProvidersRequest(page_size=page)),
        "runs": client.runner.ListRuns(rn.ListRunsRequest(page_size=page)),
        "conversations": client.runner.ListConversations(
            rn.ListConversationsRequest(page_size=page)
        ),
        "workflow runs": answer_or_code(
            client.runner.ListWorkflowRuns(rn.ListWorkflowRunsRequest(page_size=page))
        ),
        "schedules": client.schedules.ListSchedules(sc.ListSchedulesRequest(page_size=page)),
        # Not their deliveries: those are made and tried again on their own.
        "subscriptions": client.webhooks.ListSubscriptions(
            wh.ListSubscriptionsRequest(page_size=page)
        ),
        "triggers": client.triggers.ListTriggers(tr.ListTriggersRequest(page_size=page)),
    }
    async with asyncio.timeout(CALL_TIMEOUT):  # a read that hangs fails the test
        state = dict(zip(reads, await asyncio.gather(*reads.values()), strict=True))
    nested = {}
    for agent in state["agents"].agents:
        nested[f"{agent.name} revisions"] = client.registry.ListAgentRevisions(
            r.ListAgentRevisionsRequest(name=agent.name, page_size=page)
        )
        nested[f"{agent.name} contexts"] = client.registry.ListContexts(
            r.ListContextsRequest(parent=agent.name, page_size=page)
        )
    for run in state["runs"].runs:
        if run.state == rn.Run.STATE_AWAITING_APPROVAL:
            nested[f"{run.name} approvals"] = client.runner.ListApprovals(
                rn.ListApprovalsRequest(parent=run.name, page_size=page)
            )
    async with asyncio.timeout(CALL_TIMEOUT):
        state.update(zip(nested, await asyncio.gather(*nested.values()), strict=True))
    return state


async def settled_snapshot(client: Client, within: float = 10.0) -> dict[str, Any]:
    """The state once no run of the user is still going (a call that succeeded may
    leave work behind it, e.g. a resumed run). The user's schedules are paused first:
    a schedule that fires changes the state by itself."""
    deadline = time.monotonic() + within
    schedules = await client.schedules.ListSchedules(sc.ListSchedulesRequest(page_size=1000))
    firing = [schedule.name for schedule in schedules.schedules if not schedule.paused]
    for name in firing:
        await client.schedules.PauseSchedule(sc.PauseScheduleRequest(name=name))
    if firing:
        await asyncio.sleep(0.3)  # a tick claimed before the pause starts its run
    while True:
        state = await snapshot(client)
        workflow_runs = getattr(state["workflow runs"], "workflow_runs", [])
        if not any(run.state in _ACTIVE for run in [*state["runs"].runs, *workflow_runs]):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"runs still active after {within}s: {state['runs']}")
        await asyncio.sleep(0.05)


def _show(value: Any) -> str:
    try:
        text = text_format.MessageToString(value) if isinstance(value, Message) else repr(value)
    except Exception:  # noqa: BLE001 - nested past what text_format prints
        text = repr(value.SerializeToString()) if isinstance(value, Message) else repr(value)
    return text if len(text) < 3000 else text[:3000] + "..."


def state_diff(before: dict[str, Any], after: dict[str, Any]) -> str:
    lines = []
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            lines.append(f"--- {key} before:\n{_show(before.get(key))}")
            lines.append(f"+++ {key} after:\n{_show(after.get(key))}")
    return "\n".join(lines)


# ---- calling an RPC and judging the answer ----------------------------------------------


@dataclass
class Answer:
    code: grpc.StatusCode
    error: grpc.aio.AioRpcError | None
    responses: list[Message]
    seconds: float


def _client(world: World, caller: Tenant, role: str) -> Client:
    return {USER: caller.client, SERVICE: world.service, ADMIN: world.users.admin}[role]


async def invoke(channel: grpc.aio.Channel, rpc: Rpc, request: Any, raw: bool = False) -> Answer:
    """Calls the method with `request` (a message, or bytes sent as they are)."""
    serialize = None if raw else rpc.request_type.SerializeToString
    deserialize = rpc.response_type.FromString
    responses: list[Message] = []
    started = time.perf_counter()
    try:
        if rpc.method.client_streaming:
            # A client stream of the one generated message (an upload's first part).
            async def one() -> AsyncIterator[Any]:
                yield request

            call = channel.stream_unary(rpc.path, serialize, deserialize)
            responses.append(await call(one(), timeout=CALL_TIMEOUT))
        elif rpc.streaming:
            call = channel.unary_stream(rpc.path, serialize, deserialize)
            async for response in call(request, timeout=CALL_TIMEOUT):
                responses.append(response)
        else:
            call = channel.unary_unary(rpc.path, serialize, deserialize)
            responses.append(await call(request, timeout=CALL_TIMEOUT))
    except grpc.aio.AioRpcError as error:
        return Answer(error.code(), error, responses, time.perf_counter() - started)
    return Answer(Code.OK, None, responses, time.perf_counter() - started)


def check_answer(rpc: Rpc, answer: Answer) -> None:
    """The answer's code is documented, and an error explains itself, briefly."""
    STATS[str(rpc)][answer.code.name] += 1
    shown = answer.error.details() if answer.error else ""
    assert answer.code in DOCUMENTED, f"{rpc} answered {answer.code.name}: {shown[:2000]}"
    assert answer.seconds < SLOW_SECONDS, f"{rpc} took {answer.seconds:.1f}s"
    for response in answer.responses:
        for status in _statuses(response):
            # A run's error is a status too; a model provider that is not there is
            # the one thing a run may report beyond what an RPC may.
            code = _CODE_OF.get(status.code)
            assert code in DOCUMENTED | {Code.UNAVAILABLE}, (
                f"{rpc} answered a {code.name if code else status.code} inside: {status}"
            )
    if answer.error is None:
        return
    error = answer.error
    status, _ = rich_status(error)
    assert status.code == answer.code.value[0], status
    info = error_info(error)
    assert info.domain == DOMAIN
    assert len((error.details() or "").encode()) < ERROR_LIMIT, f"message of {len(shown)} chars"
    assert status.ByteSize() < ERROR_LIMIT, f"status of {status.ByteSize()} bytes"
    if answer.code == Code.INVALID_ARGUMENT:
        assert field_violations(error), "INVALID_ARGUMENT without a field violation"
    # Clients log what errors say: user text in them is quoted escaped, so no line of
    # an error starts where a line break in the request put it.
    forged = [line for line in status.message.splitlines() if line.lstrip().startswith("FORGED")]
    assert not forged, f"{rpc}'s error forges a line: {status.message[:1000]!r}"


_CODE_OF = {code.value[0]: code for code in Code}


def _statuses(message: Message, depth: int = 4) -> list[status_pb2.Status]:
    """The google.rpc.Status values inside a message (a run's error, a step's ...)."""
    if isinstance(message, status_pb2.Status):
        return [message] if message.code else []
    found = []
    for described, value in message.ListFields():
        if described.message_type is None or depth <= 1:
            continue
        if described.message_type.GetOptions().map_entry:
            continue
        for item in value if described.is_repeated else [value]:
            found += _statuses(item, depth - 1)
    return found


def check_no_leak(caller: Tenant, request: Any, answer: Answer, other: Tenant) -> None:
    """A user reads nothing of another tenant's that it did not send itself (in this
    request or an earlier one: what it stored it may read back)."""
    sent = str(request) if isinstance(request, Message) else repr(request)
    secret = [value for value in [*other.ids, *other.secrets] if len(value) > 3]
    caller.echoable.update(value for value in secret if value in sent)
    received = "".join(str(response) for response in answer.responses)
    if answer.error is not None:
        received += error_text(answer.error)
    leaked = [value for value in secret if value in received and value not in caller.echoable]
    assert not leaked, f"another tenant's {leaked} in {received[:2000]}"


def check_violations_name_fields(request: Message, answer: Answer) -> None:
    """Each BadRequest violation names a field of the request the client sent (or ""
    for the request as a whole), so the client knows what to fix."""
    if answer.code != Code.INVALID_ARGUMENT:
        return
    # A required oneof left empty is named by its oneof (an upload's "part").
    fields = set(request.DESCRIPTOR.fields_by_name) | set(request.DESCRIPTOR.oneofs_by_name)
    for path in field_violations(answer.error):
        top = re.split(r"[.\[]", path, maxsplit=1)[0]
        assert path == "" or top in fields, (
            f"violation of {path!r}, not a field of {request.DESCRIPTOR.name} "
            f"({answer.error.details()[:500]})"
        )


def changed_state(answer: Answer) -> bool:
    """Whether the call may have changed something: it succeeded, or a stream that
    failed had started (a run that began and then failed is recorded)."""
    return answer.code == Code.OK or bool(answer.responses)


# ---- known bugs: the properties step around them; each has an xfail test below --------------


@dataclass(frozen=True)
class KnownBug:
    test: str  # the xfail test that reproduces it
    applies: Callable[[Rpc, Message], bool]


_MOST_CREDITS = 10**12  # the most one ReserveCredits may hold (account.proto)

KNOWN_BUGS: list[KnownBug] = []


def known_bug(rpc: Rpc, request: Message) -> KnownBug | None:
    for bug in KNOWN_BUGS:
        try:
            if bug.applies(rpc, request):
                STATS[str(rpc)][f"skipped: {bug.test}"] += 1
                return bug
        except Exception:  # noqa: BLE001 - a predicate that does not apply
            continue
    return None


# ---- the properties -------------------------------------------------------------------


@dataclass
class Baseline:
    """The caller's state as last read (None after a call that may have changed it),
    and how many requests buf.validate refuses were followed by a full state check."""

    state: dict[str, Any] | None = None
    refused_checked: int = 0
    # The calls since the state was read, to tell which one changed it if an effect
    # lands late.
    calls: list[str] = dataclasses.field(default_factory=list)


# Requests the interceptor refuses (buf.validate, before any method code runs) get a
# full state check this often per method; the others just the exact code.
REFUSED_STATE_CHECKS = 2


def breaks_rules(request: Any) -> bool | None:
    """Whether buf.validate refuses the request here as the server will; None: unsure."""
    if not isinstance(request, Message):
        return None
    try:
        return bool(protovalidate.collect_violations(request))
    except Exception:  # noqa: BLE001 - let the server judge it
        return None


def comparable(state: dict[str, Any], role: str) -> dict[str, Any]:
    if role != SERVICE:
        return state
    # Service callers make reservations with generated ttls, which expire on their own:
    # what is reserved may change without any call.
    balance = state["balance"]
    return {**state, "balance": a.CreditBalance(name=balance.name, balance=balance.balance)}


async def judged_call(
    world: World, caller: Tenant, rpc: Rpc, request: Any, baseline: Baseline
) -> Answer:
    """Calls `rpc` with the request (bytes are sent raw) and checks the answer: a
    documented code, a self-explaining error, no other tenant's ids, and, when the
    call failed, the caller's state as it was."""
    raw = not isinstance(request, Message)
    refused_here = breaks_rules(request)
    entitled = rpc.role != USER or rpc.audience == options_pb2.AUDIENCE_UNSPECIFIED
    skip_state = refused_here and baseline.refused_checked >= REFUSED_STATE_CHECKS
    if baseline.state is None and not skip_state:
        baseline.state = await settled_snapshot(caller.client)
        baseline.calls = []
    answer = await invoke(_client(world, caller, rpc.role).channel, rpc, request, raw=raw)
    shown = _show(request).replace("\n", " ")
    baseline.calls.append(f"{rpc} {answer.code.name}: {shown[:300]}")
    check_answer(rpc, answer)
    if rpc.role == USER:
        check_no_leak(caller, request, answer, world.other)
    if not raw:
        check_violations_name_fields(request, answer)
    if not entitled:
        assert answer.code == Code.PERMISSION_DENIED, answer.error
    elif refused_here:
        assert answer.code == Code.INVALID_ARGUMENT, (
            f"buf.validate refuses the request, the server answered {answer.code.name}"
        )
    if changed_state(answer):
        baseline.state = None
        return answer
    if skip_state:
        return answer
    if refused_here:
        baseline.refused_checked += 1
    after = await snapshot(caller.client)
    before = comparable(baseline.state, rpc.role)
    assert comparable(after, rpc.role) == before, (
        f"{rpc} failed with {answer.code.name} and changed the caller's state:\n"
        + state_diff(before, comparable(after, rpc.role))
        + "\ncalls since the state was read:\n"
        + "\n".join(baseline.calls[-8:])
    )
    return answer


@pytest.mark.parametrize("rpc", RPCS)
@PROPERTY
@given(data=st.data())
async def test_generated_requests_answer_documented_codes_and_fail_cleanly(
    world: World, caller: Tenant, rpc: Rpc, data, baseline: Baseline
):
    requests = requests_for(caller, world.other)
    request = data.draw(requests.request(rpc.method.input_type), label="request")
    note(f"{rpc.path} as {rpc.role}: {_show(request)}")
    if bug := known_bug(rpc, request):
        note(f"known bug, see {bug.test}")
        return
    answer = await judged_call(world, caller, rpc, request, baseline)
    for response in answer.responses:
        requests.remember(response)


SEQUENCE_METHODS = [
    method
    for service in SERVICES
    if service.full_name not in UNSERVED
    for method in service.methods
    if not method.client_streaming
    and method.GetOptions().Extensions[options_pb2.audience] == options_pb2.AUDIENCE_UNSPECIFIED
]
SEQUENCE_LENGTH = 5


@settings(
    PROPERTY,
    max_examples=EXAMPLES * 2,
    # A sequence's outcome depends on what earlier ones left on the server: a replay
    # is not the same test, so a failure is reported as found, with the calls before it.
    phases=[Phase.explicit, Phase.generate],
)
@given(data=st.data())
async def test_generated_call_sequences_fail_cleanly(
    world: World, sequencer: Tenant, data, baseline: Baseline
):
    """Calls of any method in a row, each free to name what the ones before it created
    (a provider, then tested; an agent, then run, handed off to, deleted ...)."""
    requests = requests_for(sequencer, world.other)
    for step in range(SEQUENCE_LENGTH):
        method = data.draw(st.sampled_from(SEQUENCE_METHODS), label=f"method {step}")
        rpc = Rpc(method, USER)
        request = data.draw(requests.request(method.input_type), label=f"request {step}")
        note(f"{step}: {rpc.path}: {_show(request)}")
        if known_bug(rpc, request):
            continue
        answer = await judged_call(world, sequencer, rpc, request, baseline)
        for response in answer.responses:
            requests.remember(response)


@pytest.fixture(scope="module")
async def sequencer(world: World) -> Tenant:
    """The user whose calls make the sequences: it keeps what they create."""
    return await make_tenant(world.users, world.service, with_runs=True)


@pytest.fixture
def baseline() -> Baseline:
    return Baseline()


@pytest.mark.parametrize("rpc", ENTITLED_RPCS)
async def test_every_method_refuses_callers_without_credentials(world: World, rpc: Rpc):
    request = rpc.request_type()
    async with (
        grpc.aio.insecure_channel(world.mesh.address) as channel,
        Client(world.mesh.address, "am_" + "0" * 40) as stranger,
    ):
        anonymous = await invoke(channel, rpc, request)
        wrong = await invoke(stranger.channel, rpc, request)
    for answer in (anonymous, wrong):
        check_answer(rpc, answer)
        assert answer.code == Code.UNAUTHENTICATED, answer.error


def _invalid_utf8_in_strings(message: descriptor.Descriptor) -> bytes:
    """Every top-level string field of the message, holding bytes that are not UTF-8."""
    payload = b""
    for f in message.fields:
        if f.type == FieldDescriptor.TYPE_STRING:
            payload += _length_delimited(f.number, b"\xff\xfe\xc0\xafok")
    return payload


def _varint(value: int) -> bytes:
    out = b""
    while True:
        byte = value & 0x7F
        value >>= 7
        out += bytes([byte | (0x80 if value else 0)])
        if not value:
            return out


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


@pytest.fixture(scope="module")
async def bystander(world: World) -> Tenant:
    """One user who owns one of everything, for tests whose calls all fail."""
    return await make_tenant(world.users, world.service, with_runs=False)


@pytest.mark.parametrize("rpc", ENTITLED_RPCS)
async def test_bytes_that_are_no_message_are_invalid_argument(
    world: World, bystander: Tenant, rpc: Rpc
):
    channel = _client(world, bystander, rpc.role).channel
    payloads = [b"\xff\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f"]
    if utf8 := _invalid_utf8_in_strings(rpc.method.input_type):
        payloads.append(utf8)
    if bystander.state is None:
        bystander.state = await settled_snapshot(bystander.client)
    for payload in payloads:
        answer = await invoke(channel, rpc, payload, raw=True)
        check_answer(rpc, answer)
        assert answer.code == Code.INVALID_ARGUMENT, (payload, answer.error)
        assert "Traceback" not in (answer.error.details() or "")
    after = await snapshot(bystander.client)
    assert comparable(after, rpc.role) == comparable(bystander.state, rpc.role), state_diff(
        bystander.state, after
    )


def _mutilated(serialized: bytes, how: int, where: int, byte: int) -> bytes:
    if not serialized:
        return bytes([byte])
    where %= len(serialized)
    if how == 0:  # cut short
        return serialized[:where]
    if how == 1:  # one byte changed
        return serialized[:where] + bytes([byte]) + serialized[where + 1 :]
    if how == 2:  # garbage inserted
        return serialized[:where] + bytes([byte, 0xFF, 0xFF]) + serialized[where:]
    # an unknown field, then a field 1 of the wrong wire type
    return serialized + _length_delimited(1999, b"x") + _varint(1 << 3 | 5) + b"\x01\x02"


# A few methods with deep requests (and one streaming, one service-only) get mutilated
# encodings of generated requests; every method gets test_bytes_that_are_no_message_...
RAW_METHODS = [
    "agentmesh.registry.v1.RegistryService.CreateAgent",
    "agentmesh.registry.v1.WorkflowService.UpdateWorkflow",
    "agentmesh.runner.v1.RunnerService.StreamRun",
    "agentmesh.registry.v1.AccountService.ReserveCredits",
]


@pytest.mark.parametrize(
    "rpc",
    [param for param in ENTITLED_RPCS if param.values[0].method.full_name in RAW_METHODS],
)
@settings(PROPERTY, max_examples=max(EXAMPLES * 2 // 3, 4))
@given(data=st.data())
async def test_raw_bytes_answer_documented_codes_and_fail_cleanly(
    world: World, caller: Tenant, rpc: Rpc, data, baseline: Baseline
):
    requests = requests_for(caller, world.other)
    payload = data.draw(
        st.one_of(
            st.binary(max_size=300),
            st.builds(
                _mutilated,
                requests.request(rpc.method.input_type).map(
                    lambda m: m.SerializeToString(deterministic=True)
                ),
                st.integers(0, 3),
                st.integers(0, 10**6),
                st.integers(0, 255),
            ),
        ),
        label="payload",
    )
    try:
        decoded = rpc.request_type.FromString(payload)
    except Exception:  # noqa: BLE001 - not a message: nothing known about it
        decoded = None
    if decoded is not None and (bug := known_bug(rpc, decoded)):
        note(f"known bug, see {bug.test}")
        return
    await judged_call(world, caller, rpc, payload, baseline)


async def test_served_services_are_these(world: World):
    async with grpc.aio.insecure_channel(world.mesh.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        served = set()
        for service in SERVICES:
            try:
                answer = await health.Check(
                    health_pb2.HealthCheckRequest(service=service.full_name)
                )
            except grpc.aio.AioRpcError as error:
                assert error.code() == Code.NOT_FOUND, error
                continue
            if answer.status == health_pb2.HealthCheckResponse.SERVING:
                served.add(service.full_name)
    assert served == {s.full_name for s in SERVICES} - set(UNSERVED)


# ---- log injection ----------------------------------------------------------------------


def _injections() -> st.SearchStrategy[str]:
    """User text that would start a forged line if it reached a log raw."""
    return st.builds(
        lambda before, brk, after: f"{before}{brk}{FORGED}{after}",
        _TEXT.filter(lambda t: not any(b in t for b in LINE_BREAKS)),
        st.sampled_from([*LINE_BREAKS, "\x1b[2K\r", "\x1b[1A\n"]),
        st.sampled_from(["", " caller=users/admin", "\n", "(", "\\"]),
    )


def _where_injected(tenant: Tenant, text: str) -> list[tuple[Rpc, Message]]:
    """Requests that put `text` where it ends up in an error (or a log): invalid
    patterns and schemas, mask paths, names, ids, conditions, URLs, model names."""
    agent, workflow, provider = (
        next(n for n in tenant.names if n.startswith(prefix))
        for prefix in ("agents/triage", "workflows/", "providers/")
    )
    method = {m.full_name: m for service in SERVICES for m in service.methods}.__getitem__
    registry = "agentmesh.registry.v1.RegistryService."
    regex = g.Guardrail(
        name="re", regex=g.RegexCheck(pattern="(" + text, action=g.RegexCheck.ACTION_BLOCK)
    )
    schema = struct_pb2.Struct()
    schema.update({"type": "string", "pattern": "(" + text, "format": text})
    mask = field_mask_pb2.FieldMask(paths=[text, "display_name." + text])
    condition = w.Transition.Case(condition="input == " + text, goto="end")
    steps = [
        w.WorkflowStep(
            id="only",
            agent=w.AgentStep(agent=agent, input="{{ " + text + " }}"),
            next=w.Transition(switch=w.Transition.Switch(cases=[condition], default="end")),
        )
    ]
    return [
        (
            Rpc(method(registry + "CreateAgent"), USER),
            r.CreateAgentRequest(agent=r.Agent(display_name="x", input_guardrails=[regex])),
        ),
        (
            Rpc(method(registry + "CreateAgent"), USER),
            r.CreateAgentRequest(agent=r.Agent(display_name=text, output_type=schema)),
        ),
        (
            Rpc(method(registry + "CreateAgent"), USER),
            r.CreateAgentRequest(agent=r.Agent(display_name="x"), agent_id=text),
        ),
        (
            Rpc(method(registry + "UpdateAgent"), USER),
            r.UpdateAgentRequest(agent=r.Agent(name=agent), update_mask=mask),
        ),
        (
            Rpc(method(registry + "UpdateAgent"), USER),
            r.UpdateAgentRequest(
                agent=r.Agent(name=agent, output_guardrails=[regex]),
                update_mask=field_mask_pb2.FieldMask(paths=["output_guardrails"]),
            ),
        ),
        (Rpc(method(registry + "GetAgent"), USER), r.GetAgentRequest(name=agent + text)),
        (
            Rpc(method("agentmesh.registry.v1.WorkflowService.UpdateWorkflow"), USER),
            w.UpdateWorkflowRequest(workflow=w.Workflow(name=workflow), update_mask=mask),
        ),
        (
            Rpc(method("agentmesh.registry.v1.WorkflowService.CreateWorkflow"), USER),
            w.CreateWorkflowRequest(workflow=w.Workflow(display_name="x", steps=steps)),
        ),
        (
            Rpc(method("agentmesh.providers.v1.ProviderService.UpdateProvider"), USER),
            p.UpdateProviderRequest(provider=p.Provider(name=provider), update_mask=mask),
        ),
        (
            Rpc(method("agentmesh.providers.v1.ProviderService.CreateProvider"), USER),
            p.CreateProviderRequest(
                provider=p.Provider(
                    display_name="x",
                    type=p.PROVIDER_TYPE_CUSTOM,
                    base_url="http://" + text + ".example/",
                    extra_headers={"X-A": text},
                )
            ),
        ),
        (
            Rpc(method("agentmesh.providers.v1.ProviderService.TestProvider"), USER),
            p.TestProviderRequest(name=provider, model=text),
        ),
    ]


async def _run_with_injected_text(tenant: Tenant, text: str) -> None:
    """A run whose agent, guardrail, context and input all carry the text, and whose
    guardrail trips on it: the runner's own log lines see it too."""
    guardrail = g.Guardrail(
        name=text[:128],
        override_message=text,
        regex=g.RegexCheck(pattern="FORGED", action=g.RegexCheck.ACTION_BLOCK),
    )
    agent = await tenant.client.registry.CreateAgent(
        r.CreateAgentRequest(
            agent=r.Agent(
                display_name=text[:200],
                instructions=text,
                metadata={"note": text[:1024]},
                input_guardrails=[guardrail],
            )
        )
    )
    values = struct_pb2.Struct()
    values.update({"note": text})
    for blocked in (True, False):
        run = await tenant.client.runner.RunAgent(
            rn.RunAgentRequest(
                agent=agent.name,
                input=text if blocked else "hello",
                context_values=values,
                request_id=f"x{blocked}{uuid.uuid4().hex}",
            )
        )
        expected = rn.Run.STATE_BLOCKED if blocked else rn.Run.STATE_SUCCEEDED
        assert run.state == expected, run


@PROPERTY
@given(text=_injections())
async def test_user_text_never_forges_a_log_line(
    world: World, bystander: Tenant, caplog, capfd, text: str
):
    tenant = bystander
    capfd.readouterr()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        for rpc, request in _where_injected(tenant, text):
            answer = await invoke(tenant.client.channel, rpc, request)
            if not known_bug(rpc, request):  # its log lines are checked all the same
                check_answer(rpc, answer)
        await _run_with_injected_text(tenant, text)
        out, err = capfd.readouterr()
    logged = {"caplog": caplog.text, "stdout": out, "stderr (fd 2)": err}
    for source, output in logged.items():
        forged = [line for line in output.splitlines() if line.lstrip().startswith("FORGED")]
        assert not forged, f"{source} has a forged line: {forged[:3]}\n{output[-3000:]}"
        assert "\x1b[" not in output, f"{source} carries the caller's escape sequence"


# ---- regressions: once known bugs (KNOWN_BUGS), each reproduced minimally --------------
#
# A new known bug gets an entry in KNOWN_BUGS (the properties step around its inputs)
# and a test here marked xfail(strict=True); when it is fixed, both go.


def _own_agent(tenant: Tenant) -> str:
    return next(n for n in tenant.names if n.startswith("agents/triage") and "@" not in n)


RUN_METHODS = ["RunAgent", "StreamRun", "SubmitRun"]
_RUNNER = {m.name: m for m in rn.DESCRIPTOR.services_by_name["RunnerService"].methods}


@pytest.mark.parametrize("method", RUN_METHODS)
async def test_a_run_on_a_malformed_conversation_name_is_invalid_argument(
    world: World, bystander: Tenant, method: str
):
    request = rn.RunAgentRequest(agent=_own_agent(bystander), input="hi", conversation="x")
    answer = await invoke(bystander.client.channel, Rpc(_RUNNER[method], USER), request)
    assert answer.code == Code.INVALID_ARGUMENT, answer.error
    assert field_violations(answer.error) == ["conversation"]


@pytest.mark.parametrize("method", RUN_METHODS)
async def test_a_run_with_a_malformed_context_name_says_which_field(
    world: World, bystander: Tenant, method: str
):
    request = rn.RunAgentRequest(agent=_own_agent(bystander), input="hi", context="x")
    answer = await invoke(bystander.client.channel, Rpc(_RUNNER[method], USER), request)
    assert answer.code == Code.INVALID_ARGUMENT, answer.error
    assert field_violations(answer.error) == ["context"]


@pytest.mark.parametrize(
    "expire_time",
    [
        timestamp_pb2.Timestamp(seconds=4_000_000_000, nanos=1_000_000_000),
        timestamp_pb2.Timestamp(seconds=4_000_000_000, nanos=-1),
        timestamp_pb2.Timestamp(seconds=253402300800),
    ],
    ids=["nanos-past-a-second", "negative-nanos", "after-year-9999"],
)
async def test_a_key_expiring_at_no_valid_time_is_invalid_argument(
    bystander: Tenant, expire_time: timestamp_pb2.Timestamp
):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await bystander.client.accounts.CreateApiKey(
            a.CreateApiKeyRequest(parent="users/me", api_key=a.ApiKey(expire_time=expire_time))
        )
    assert caught.value.code() == Code.INVALID_ARGUMENT, caught.value
    assert field_violations(caught.value) == ["api_key.expire_time"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        pytest.param({"base_url": "http://[::1/v1"}, "base_url", id="base-url-bracket"),
        pytest.param({"base_url": "http://127.0.0.1:99999/v1"}, "base_url", id="base-url-port"),
        pytest.param({"base_url": "http://\nX.example/v1"}, "base_url", id="base-url-line-break"),
        pytest.param({"api_key": "sk-clé"}, "api_key", id="non-ascii-api-key"),
        pytest.param({"organization": "örg"}, "organization", id="non-ascii-organization"),
        pytest.param(
            {"extra_headers": {"X-Team": "Ēquipe"}}, "extra_headers", id="non-ascii-header"
        ),
    ],
)
async def test_a_provider_that_cannot_be_called_is_refused_or_never_answers_internal(
    world: World, bystander: Tenant, fields: dict, field: str
):
    fields = {"base_url": NOWHERE, "api_key": "k", **fields}
    provider = p.Provider(display_name="odd", type=p.PROVIDER_TYPE_CUSTOM, **fields)
    create = Rpc(
        p.DESCRIPTOR.services_by_name["ProviderService"].methods_by_name["CreateProvider"], USER
    )
    created = await invoke(
        bystander.client.channel, create, p.CreateProviderRequest(provider=provider)
    )
    if created.code == Code.INVALID_ARGUMENT:  # refused on save: the better fix
        violations = field_violations(created.error)
        assert [v.split("[")[0] for v in violations] == [f"provider.{field}"], violations
        return
    assert created.code == Code.OK, created.error
    name = created.responses[0].name
    test = Rpc(
        p.DESCRIPTOR.services_by_name["ProviderService"].methods_by_name["TestProvider"], USER
    )
    tested = await invoke(bystander.client.channel, test, p.TestProviderRequest(name=name))
    check_answer(test, tested)
    agent = await bystander.client.registry.CreateAgent(
        r.CreateAgentRequest(
            agent=r.Agent(display_name="odd", model_settings=r.ModelSettings(provider=name))
        )
    )
    run = await bystander.client.runner.RunAgent(rn.RunAgentRequest(agent=agent.name, input="hi"))
    assert run.error.code != Code.INTERNAL.value[0], run.error


async def test_an_invalid_regex_is_quoted_escaped_in_the_error(bystander: Tenant):
    guardrail = g.Guardrail(
        name="re", regex=g.RegexCheck(pattern="(\nFORGED", action=g.RegexCheck.ACTION_BLOCK)
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await bystander.client.registry.CreateAgent(
            r.CreateAgentRequest(agent=r.Agent(display_name="x", input_guardrails=[guardrail]))
        )
    assert caught.value.code() == Code.INVALID_ARGUMENT
    assert field_violations(caught.value) == ["agent.input_guardrails[0].regex.pattern"]
    assert "\n" not in caught.value.details(), caught.value.details()


def _nan_struct(value: float) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.fields["type"].string_value = "object"
    struct.fields["x"].list_value.values.add().number_value = value
    return struct


def _struct_places(tenant: Tenant, struct: struct_pb2.Struct) -> dict[str, tuple[str, Message]]:
    """Where a request carries a Struct: the method, and the request."""
    agent = _own_agent(tenant)
    http = r.HttpFunction(url=NOWHERE)
    schema_check = g.BuiltinCheck(json_schema=g.JsonSchemaConformance(schema=struct))
    return {
        "agent.output_type": (
            "RegistryService.CreateAgent",
            r.CreateAgentRequest(agent=r.Agent(display_name="x", output_type=struct)),
        ),
        "agent.model_settings.additional_params": (
            "RegistryService.CreateAgent",
            r.CreateAgentRequest(
                agent=r.Agent(
                    display_name="x", model_settings=r.ModelSettings(additional_params=struct)
                )
            ),
        ),
        "agent.tools[0].function.parameters": (
            "RegistryService.CreateAgent",
            r.CreateAgentRequest(
                agent=r.Agent(
                    display_name="x",
                    tools=[r.Tool(name="t", function=r.FunctionTool(parameters=struct, http=http))],
                )
            ),
        ),
        "agent.input_guardrails[0].builtin.json_schema.schema": (
            "RegistryService.CreateAgent",
            r.CreateAgentRequest(
                agent=r.Agent(
                    display_name="x", input_guardrails=[g.Guardrail(name="j", builtin=schema_check)]
                )
            ),
        ),
        "agent.output_type (update)": (
            "RegistryService.UpdateAgent",
            r.UpdateAgentRequest(
                agent=r.Agent(name=agent, output_type=struct),
                update_mask=field_mask_pb2.FieldMask(paths=["output_type"]),
            ),
        ),
        "context.values": (
            "RegistryService.CreateContext",
            r.CreateContextRequest(parent=agent, context=r.Context(values=struct)),
        ),
        "context_values": (
            "RunnerService.RunAgent",
            rn.RunAgentRequest(agent=agent, input="hi", context_values=struct),
        ),
    }


def _places() -> list[str]:
    someone = Tenant(None, a.User(name="users/someone"))  # type: ignore[arg-type]
    someone.names.append("agents/triage-someone")
    return list(_struct_places(someone, struct_pb2.Struct()))


_STRUCT_PLACES = _places()


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "infinity"])
@pytest.mark.parametrize("place", _STRUCT_PLACES)
async def test_a_struct_holding_nan_or_infinity_is_invalid_argument(
    bystander: Tenant, place: str, value: float
):
    method, request = _struct_places(bystander, _nan_struct(value))[place]
    service, name = method.split(".")
    descriptor_ = next(s for s in SERVICES if s.name == service).methods_by_name[name]
    answer = await invoke(bystander.client.channel, Rpc(descriptor_, USER), request)
    assert answer.code == Code.INVALID_ARGUMENT, answer.error
    field = place.removesuffix(" (update)")
    violations = field_violations(answer.error)
    assert violations and all(v.startswith(field) for v in violations), violations


@pytest.mark.parametrize("method", RUN_METHODS)
async def test_a_run_capped_past_what_can_be_reserved_names_its_own_field(
    bystander: Tenant, method: str
):
    request = rn.RunAgentRequest(
        agent=_own_agent(bystander), input="hi", max_credits=_MOST_CREDITS + 1
    )
    answer = await invoke(bystander.client.channel, Rpc(_RUNNER[method], USER), request)
    assert answer.code == Code.INVALID_ARGUMENT, answer.error
    assert field_violations(answer.error) == ["max_credits"]


async def test_an_agent_capped_past_what_can_be_reserved_is_refused(bystander: Tenant):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await bystander.client.registry.CreateAgent(
            r.CreateAgentRequest(
                agent=r.Agent(display_name="big", max_credits_per_run=_MOST_CREDITS + 1)
            )
        )
    assert caught.value.code() == Code.INVALID_ARGUMENT
    assert field_violations(caught.value) == ["agent.max_credits_per_run"]
