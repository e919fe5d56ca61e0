"""What a servicer needs to speak the contract: validation, timestamps and updates.

Everything here reads the protos' own annotations (buf.validate rules,
google.api.field_behavior, google.api.resource patterns) instead of lists kept
by hand beside them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from datetime import datetime
from functools import cache

import protovalidate
from google.api import field_behavior_pb2
from google.protobuf import struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from agentmesh.errors import Aborted, InvalidArgument, quoted
from agentmesh.names import ResourceName

_OUTPUT_ONLY = field_behavior_pb2.OUTPUT_ONLY
_IMMUTABLE = field_behavior_pb2.IMMUTABLE
# Standard fields no update mask may name: the name says which resource, and the
# etag is the concurrency token compared before any change.
_NEVER_UPDATED = {"name", "etag"}


def field_path(violation) -> str:
    parts = []
    for element in violation.proto.field.elements:
        subscript = element.subscript
        if subscript is None:
            parts.append(element.field_name)
        elif subscript.field == "string_key":
            parts.append(f'{element.field_name}["{subscript.value}"]')
        else:
            parts.append(f"{element.field_name}[{subscript.value}]")
    return ".".join(parts)


def validate(message: Message, prefix: str = "") -> None:
    """Raises InvalidArgument naming every field that breaks its buf.validate rules,
    or holds a value no store can keep (see unstorable)."""
    violations = [
        (prefix + field_path(violation), violation.proto.message)
        for violation in protovalidate.collect_violations(message)
    ]
    violations += [(prefix + path, reason) for path, reason in unstorable(message)]
    if violations:
        raise InvalidArgument(violations)


_WELL_KNOWN = {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
_TIMES = {"google.protobuf.Timestamp", "google.protobuf.Duration"}
_MIN_SECONDS, _MAX_SECONDS = -62135596800, 253402300799  # 0001-01-01 .. 9999-12-31
_MAX_DURATION = 315576000000  # 10,000 years, protobuf's bound


def unstorable(message: Message, path: str = "") -> Iterator[tuple[str, str]]:
    """The fields holding what neither JSON nor the databases can keep, whatever the
    field's rules say: NaN or an infinity in a Struct, a NUL character (Postgres text
    and jsonb refuse it), a Timestamp or Duration outside protobuf's range (it cannot
    become a datetime). Each is an INVALID_ARGUMENT at its path, never an INTERNAL
    from deep in a store."""
    name = message.DESCRIPTOR.full_name
    if name in _WELL_KNOWN:
        if problem := _json_problem(message):
            yield path, problem
        return
    if name in _TIMES:
        seconds, nanos = message.seconds, message.nanos  # type: ignore[attr-defined]
        if name.endswith("Timestamp"):
            valid = _MIN_SECONDS <= seconds <= _MAX_SECONDS and 0 <= nanos < 1_000_000_000
        else:
            valid = abs(seconds) <= _MAX_DURATION and abs(nanos) < 1_000_000_000
            valid = valid and (seconds == 0 or nanos == 0 or (seconds > 0) == (nanos > 0))
        if not valid:
            yield path, "not a valid time: out of protobuf's range"
        return
    for field, value in message.ListFields():
        here = f"{path}.{field.name}" if path else field.name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for key, item in value.items():
                at = f'{here}["{key}"]' if isinstance(key, str) else f"{here}[{key}]"
                if isinstance(key, str) and "\0" in key:
                    yield here, "a key holds a NUL character"
                if value_field.message_type is not None:
                    yield from unstorable(item, at)
                elif isinstance(item, str) and "\0" in item:
                    yield at, "holds a NUL character"
        elif field.message_type is not None:
            items = enumerate(value) if field.is_repeated else [(None, value)]
            for index, item in items:
                yield from unstorable(item, here if index is None else f"{here}[{index}]")
        elif field.type == field.TYPE_STRING:
            texts = value if field.is_repeated else [value]
            if any("\0" in text for text in texts):
                yield here, "holds a NUL character"


def _json_problem(value: Message) -> str | None:
    """What keeps a Struct, Value or ListValue from being stored as JSON, if anything."""
    if isinstance(value, struct_pb2.Struct):
        if any("\0" in key for key in value.fields):
            return "holds a NUL character"
        items: Iterable[Message] = value.fields.values()
    elif isinstance(value, struct_pb2.ListValue):
        items = value.values
    else:
        kind = value.WhichOneof("kind")  # type: ignore[attr-defined]
        if kind == "number_value" and not math.isfinite(value.number_value):  # type: ignore[attr-defined]
            return "holds NaN or an infinity, which JSON cannot"
        if kind == "string_value" and "\0" in value.string_value:  # type: ignore[attr-defined]
            return "holds a NUL character"
        if kind not in ("struct_value", "list_value"):
            return None
        items = [getattr(value, kind)]
    return next((problem for item in items if (problem := _json_problem(item))), None)


def timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _behaviors(field: FieldDescriptor) -> set[int]:
    return set(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


@cache
def field_behaviors(descriptor: Descriptor) -> dict[str, set[int]]:
    """Each top-level field's google.api.field_behavior values."""
    return {field.name: _behaviors(field) for field in descriptor.fields}


def _masked_paths(field: str, descriptor: Descriptor, mask: FieldMask) -> list[str]:
    """The paths an update may apply, or InvalidArgument naming what it may not.

    OUTPUT_ONLY paths are ignored (AIP-203); IMMUTABLE and unknown ones are refused;
    "*" stands for every field a client may change.
    """
    behaviors = field_behaviors(descriptor)
    violations: list[tuple[str, str]] = []
    paths: list[str] = []
    for path in mask.paths:
        top = path.split(".", 1)[0]
        if path == "*":
            paths.extend(
                name
                for name, kinds in behaviors.items()
                if name not in _NEVER_UPDATED and not kinds & {_OUTPUT_ONLY, _IMMUTABLE}
            )
        elif top not in behaviors or not FieldMask(paths=[path]).IsValidForDescriptor(descriptor):
            violations.append(("update_mask", f"{quoted(path)} is not a field of {field}"))
        elif _OUTPUT_ONLY in behaviors[top]:
            continue
        elif top in _NEVER_UPDATED or _IMMUTABLE in behaviors[top]:
            violations.append(("update_mask", f"{quoted(path)} cannot be changed"))
        else:
            paths.append(path)
    if violations:
        raise InvalidArgument(violations)
    return paths


def check_update(
    field: str, patch: Message, mask: FieldMask, resource: ResourceName
) -> tuple[str, ...]:
    """What buf.validate cannot check of an Update request (its resource is exempt,
    since fields outside the mask are not sent): the name, and every mask path.
    Both are reported together; returns the ids in the name."""
    violations = []
    name = patch.name  # type: ignore[attr-defined]
    ids = resource.match(name)
    if not name:
        violations.append((f"{field}.name", f"name the {field} to update"))
    elif ids is None:
        violations.append((f"{field}.name", f"must look like {resource.pattern}"))
    try:
        _masked_paths(field, patch.DESCRIPTOR, mask)
    except InvalidArgument as invalid:
        violations.extend(invalid.violations)
    if violations or ids is None:
        raise InvalidArgument(violations)
    return ids


def merge_update(field: str, current: Message, patch: Message, mask: FieldMask) -> Message:
    """AIP-134: `current` with the fields `mask` names taken from `patch`, validated.

    A non-empty etag in `patch` must be current's, else ABORTED. The merged resource
    is validated whole, since fields outside the mask were never sent.
    """
    paths = _masked_paths(field, current.DESCRIPTOR, mask)
    if patch.etag and patch.etag != current.etag:  # type: ignore[attr-defined]
        raise Aborted.stale(current.name)  # type: ignore[attr-defined]
    merged = type(current)()
    merged.CopyFrom(current)
    FieldMask(paths=paths).MergeMessage(
        patch, merged, replace_message_field=True, replace_repeated_field=True
    )
    validate(merged, prefix=f"{field}.")
    return merged
