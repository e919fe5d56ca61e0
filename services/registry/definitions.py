"""Checks on agent definitions that buf.validate rules cannot express."""

from __future__ import annotations

from typing import Any

import jsonschema
import re2

from agentmesh.errors import InvalidArgument

_REGEX = "GUARDRAIL_IMPLEMENTATION_REGEX"


def _schema_problem(schema: dict[str, Any]) -> str | None:
    # validator_for looks $schema up as a dict key: a non-string one would crash
    # it (TypeError, AttributeError) instead of failing the check.
    if not isinstance(schema.get("$schema", ""), str):
        return "not a valid JSON Schema: $schema must be a string"
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as error:
        return f"not a valid JSON Schema: {error.message}"
    return None


def check_agent(spec: dict[str, Any], prefix: str = "agent") -> None:
    """Raises InvalidArgument for every problem in a definition (JSON form of Agent)."""
    violations: list[tuple[str, str]] = []
    if "outputType" in spec and (problem := _schema_problem(spec["outputType"])):
        violations.append((f"{prefix}.output_type", problem))
    seen: set[str] = set()
    for i, tool in enumerate(spec.get("tools", [])):
        name = tool.get("name", "")
        if name in seen:
            violations.append((f"{prefix}.tools[{i}].name", f"tool name {name!r} is used twice"))
        seen.add(name)
        if "parameters" in tool and (problem := _schema_problem(tool["parameters"])):
            violations.append((f"{prefix}.tools[{i}].parameters", problem))
    for side in ("inputGuardrails", "outputGuardrails"):
        field = "input_guardrails" if side == "inputGuardrails" else "output_guardrails"
        for i, guardrail in enumerate(spec.get(side, [])):
            if guardrail.get("implementation") != _REGEX:
                continue
            pattern = guardrail.get("config", {}).get("pattern")
            where = f"{prefix}.{field}[{i}].config.pattern"
            if not isinstance(pattern, str) or not pattern:
                violations.append((where, "a regex guardrail needs a pattern"))
                continue
            try:
                re2.compile(pattern)
            except re2.error as error:
                detail = error.args[0] if error.args else ""
                if isinstance(detail, bytes):
                    detail = detail.decode(errors="replace")
                violations.append((where, f"not a valid RE2 pattern: {detail}"))
    if violations:
        raise InvalidArgument(violations)
