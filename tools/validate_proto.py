"""Write third_party/buf/validate/validate.proto from protovalidate's embedded descriptor.

Why: our protos import "buf/validate/validate.proto", but the Buf Schema Registry is
unreachable from our machines and the protovalidate wheel ships only generated code
(protovalidate/_gen/buf/validate/validate_pb.py), not the .proto source. That module
embeds the serialized FileDescriptorProto, which is enough to print the schema back.

Rule options on fields (the predefined CEL expressions, examples) are dropped: the
validator has the standard rules built in, and our protos only need the message and
extension structure with the right field numbers to write `(buf.validate.field)...`.

Usage: python tools/validate_proto.py [--out third_party/buf/validate/validate.proto]
"""

from __future__ import annotations

import argparse
import json
from importlib.metadata import version
from pathlib import Path

from google.protobuf import descriptor_pb2
from protovalidate._gen.buf.validate import validate_pb

F = descriptor_pb2.FieldDescriptorProto
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "third_party/buf/validate/validate.proto"

SCALAR_TYPE_NAMES = {
    F.TYPE_DOUBLE: "double",
    F.TYPE_FLOAT: "float",
    F.TYPE_INT64: "int64",
    F.TYPE_UINT64: "uint64",
    F.TYPE_INT32: "int32",
    F.TYPE_FIXED64: "fixed64",
    F.TYPE_FIXED32: "fixed32",
    F.TYPE_BOOL: "bool",
    F.TYPE_STRING: "string",
    F.TYPE_BYTES: "bytes",
    F.TYPE_UINT32: "uint32",
    F.TYPE_SFIXED32: "sfixed32",
    F.TYPE_SFIXED64: "sfixed64",
    F.TYPE_SINT32: "sint32",
    F.TYPE_SINT64: "sint64",
}
LABEL_KEYWORDS = {
    F.LABEL_OPTIONAL: "optional",
    F.LABEL_REQUIRED: "required",
    F.LABEL_REPEATED: "repeated",
}
# Exclusive end used in descriptors for "to max" (field numbers stop at 2^29 - 1).
MAX_FIELD_NUMBER_EXCLUSIVE = 2**29


def load_descriptor() -> descriptor_pb2.FileDescriptorProto:
    # validate_pb._DESC is a protobuf-py DescFile; .proto.to_binary() gives back exactly the
    # bytes literal passed to file_desc(...) in validate_pb.py.
    serialized = validate_pb._DESC.proto.to_binary()
    return descriptor_pb2.FileDescriptorProto.FromString(serialized)


def default_json_name(field_name: str) -> str:
    # protoc's rule: drop underscores, upper-case the letter after each one.
    head, *rest = field_name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def type_name_of(field: descriptor_pb2.FieldDescriptorProto) -> str:
    if field.type in (F.TYPE_MESSAGE, F.TYPE_ENUM):
        return field.type_name  # fully qualified with a leading dot: never ambiguous
    if field.type == F.TYPE_GROUP:
        raise SystemExit(f"group field {field.name} is not supported by this printer")
    return SCALAR_TYPE_NAMES[field.type]


def default_literal(field: descriptor_pb2.FieldDescriptorProto) -> str:
    value = field.default_value
    if field.type == F.TYPE_STRING:
        return json.dumps(value)  # a JSON string literal is a valid proto string literal
    if field.type == F.TYPE_BYTES:
        return f'"{value}"'  # descriptors already hold bytes defaults C-escaped
    return value  # numbers, true/false, enum value names, inf/-inf/nan


def field_options(field: descriptor_pb2.FieldDescriptorProto, is_extension: bool) -> str:
    options = []
    if field.HasField("default_value"):
        options.append(f"default = {default_literal(field)}")
    if not is_extension and field.HasField("json_name"):
        if field.json_name != default_json_name(field.name):
            options.append(f"json_name = {json.dumps(field.json_name)}")
    if field.options.HasField("packed"):
        options.append(f"packed = {str(field.options.packed).lower()}")
    if field.options.deprecated:
        options.append("deprecated = true")
    return f" [{', '.join(options)}]" if options else ""


def field_line(field, syntax: str, map_entries: dict, in_oneof: bool, is_extension=False) -> str:
    entry = map_entries.get(field.type_name) if field.type == F.TYPE_MESSAGE else None
    if entry is not None and field.label == F.LABEL_REPEATED:
        key, value = entry.field
        type_text, label = f"map<{type_name_of(key)}, {type_name_of(value)}>", ""
    else:
        type_text = type_name_of(field)
        label = "" if in_oneof else LABEL_KEYWORDS[field.label]
        if syntax == "proto3" and field.label == F.LABEL_OPTIONAL and not field.proto3_optional:
            label = ""  # proto3 implicit presence has no keyword
    prefix = f"{label} " if label else ""
    options = field_options(field, is_extension)
    return f"{prefix}{type_text} {field.name} = {field.number}{options};"


def range_text(start: int, end_exclusive: int) -> str:
    if end_exclusive >= MAX_FIELD_NUMBER_EXCLUSIVE:
        return f"{start} to max"
    if end_exclusive - 1 == start:
        return str(start)
    return f"{start} to {end_exclusive - 1}"


def enum_lines(enum: descriptor_pb2.EnumDescriptorProto, indent: str) -> list[str]:
    lines = [f"{indent}enum {enum.name} {{"]
    if enum.options.allow_alias:
        lines.append(f"{indent}  option allow_alias = true;")
    for value in enum.value:
        deprecated = " [deprecated = true]" if value.options.deprecated else ""
        lines.append(f"{indent}  {value.name} = {value.number}{deprecated};")
    # Enum reserved ranges are inclusive at both ends (unlike message ones).
    for reserved in enum.reserved_range:
        lines.append(f"{indent}  reserved {range_text(reserved.start, reserved.end + 1)};")
    if enum.reserved_name:
        lines.append(f"{indent}  reserved {', '.join(json.dumps(n) for n in enum.reserved_name)};")
    lines.append(f"{indent}}}")
    return lines


def message_lines(message: descriptor_pb2.DescriptorProto, scope: str, syntax: str, indent: str):
    full_name = f"{scope}.{message.name}"
    map_entries = {
        f"{full_name}.{nested.name}": nested
        for nested in message.nested_type
        if nested.options.map_entry
    }
    lines = [f"{indent}message {message.name} {{"]
    inner = indent + "  "
    if message.options.deprecated:
        lines.append(f"{inner}option deprecated = true;")

    # Fields in declaration order; a oneof is printed as a block at its first field, and
    # proto3 `optional` fields live in synthetic oneofs that are not printed as blocks.
    printed_oneofs = set()
    for field in message.field:
        real_oneof = field.HasField("oneof_index") and not field.proto3_optional
        if not real_oneof:
            lines.append(inner + field_line(field, syntax, map_entries, in_oneof=False))
            continue
        if field.oneof_index in printed_oneofs:
            continue
        printed_oneofs.add(field.oneof_index)
        lines.append(f"{inner}oneof {message.oneof_decl[field.oneof_index].name} {{")
        for member in message.field:
            if member.HasField("oneof_index") and member.oneof_index == field.oneof_index:
                lines.append(inner + "  " + field_line(member, syntax, map_entries, in_oneof=True))
        lines.append(f"{inner}}}")

    for nested in message.nested_type:
        if not nested.options.map_entry:
            lines += message_lines(nested, full_name, syntax, inner)
    for enum in message.enum_type:
        lines += enum_lines(enum, inner)
    for extension_range in message.extension_range:
        lines.append(f"{inner}extensions {range_text(extension_range.start, extension_range.end)};")
    for reserved in message.reserved_range:
        lines.append(f"{inner}reserved {range_text(reserved.start, reserved.end)};")
    if message.reserved_name:
        names = ", ".join(json.dumps(n) for n in message.reserved_name)
        lines.append(f"{inner}reserved {names};")
    lines += extend_blocks(message.extension, syntax, inner)
    lines.append(f"{indent}}}")
    return lines


def extend_blocks(extensions, syntax: str, indent: str) -> list[str]:
    lines = []
    extendees = list(dict.fromkeys(extension.extendee for extension in extensions))
    for extendee in extendees:
        lines.append(f"{indent}extend {extendee.lstrip('.')} {{")
        for extension in extensions:
            if extension.extendee == extendee:
                lines.append(f"{indent}  {field_line(extension, syntax, {}, False, True)}")
        lines.append(f"{indent}}}")
    return lines


def file_option_lines(options: descriptor_pb2.FileOptions) -> list[str]:
    # Only the plain language options the descriptor carries (java_package, go_package, ...).
    lines = []
    for field, value in options.ListFields():
        if field.is_extension or field.type in (F.TYPE_MESSAGE, F.TYPE_GROUP):
            continue
        if field.type == F.TYPE_STRING:
            literal = json.dumps(value)
        elif field.type == F.TYPE_BOOL:
            literal = str(value).lower()
        elif field.type == F.TYPE_ENUM:
            literal = field.enum_type.values_by_number[value].name
        else:
            literal = str(value)
        lines.append(f"option {field.name} = {literal};")
    return lines


def render(file: descriptor_pb2.FileDescriptorProto) -> str:
    syntax = file.syntax or "proto2"  # an unset syntax field means proto2
    if syntax not in ("proto2", "proto3"):
        raise SystemExit(f"syntax {syntax!r} (editions) is not supported by this printer")
    header = [
        f"// {file.name}, reconstructed by tools/validate_proto.py from the descriptor",
        f"// embedded in protovalidate=={version('protovalidate')}"
        " (protovalidate/_gen/buf/validate/validate_pb.py).",
        "// Structure only: rule options on fields (predefined CEL rules, examples) are omitted;",
        "// messages, enums, oneofs, field numbers and the extensions are as in the original.",
        "// Why: the Buf Schema Registry is unreachable from our machines and the protovalidate",
        "// wheel ships no .proto source. Regenerate, never edit: python tools/validate_proto.py",
        "",
        f'syntax = "{syntax}";',
        "",
        f"package {file.package};",
        "",
    ]
    public = set(file.public_dependency)
    weak = set(file.weak_dependency)
    for index, dependency in enumerate(file.dependency):
        modifier = "public " if index in public else "weak " if index in weak else ""
        header.append(f'import {modifier}"{dependency}";')
    header.append("")
    header += file_option_lines(file.options)

    blocks = [extend_blocks(file.extension, syntax, "")]
    scope = f".{file.package}"
    blocks += [message_lines(message, scope, syntax, "") for message in file.message_type]
    blocks += [enum_lines(enum, "") for enum in file.enum_type]
    body = "\n\n".join("\n".join(block) for block in blocks if block)
    return "\n".join(header) + "\n\n" + body + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(load_descriptor()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
