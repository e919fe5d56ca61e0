"""Text templates over JSON values: `{{ input }}`, `{{ steps.classify.output.category }}`.

Deliberately tiny: a placeholder is a dotted path looked up in dicts (and list
indexes), nothing is evaluated, and a missing path is an error that names it,
never a silent empty string.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)*)\s*\}\}")


class TemplateError(ValueError):
    """A placeholder names a value that is not there."""


def placeholders(template: str) -> list[str]:
    """The dotted paths a template refers to, in order."""
    return PLACEHOLDER.findall(template)


def lookup(variables: Mapping[str, Any], path: str) -> Any:
    value: Any = variables
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise TemplateError(f"{{{{ {path} }}}} names nothing: there is no {part!r}")
    return value


def render(template: str, variables: Mapping[str, Any]) -> str:
    """The template with each placeholder replaced: strings as they are, other
    values as JSON."""

    def value_of(match: re.Match) -> str:
        value = lookup(variables, match.group(1))
        return value if isinstance(value, str) else json.dumps(value)

    return PLACEHOLDER.sub(value_of, template)
