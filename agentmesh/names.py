"""Resource names, parsed and built from the contract's google.api.resource patterns.

`ResourceName.of(registry_pb2.Agent)` reads `pattern: "agents/{agent}"` from the
message's options, so a name's shape is written once: in the proto.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from google.api import resource_pb2
from google.protobuf.message import Message

# The id segment every name accepts: generated ids and client-chosen ones (AIP-122).
ID = r"[A-Za-z0-9_-]{1,64}"


@dataclass(frozen=True)
class ResourceName:
    """One resource pattern, e.g. "agents/{agent}/contexts/{context}"."""

    pattern: str
    _regex: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        regex = re.sub(r"\\\{[a-z_]+\\\}", f"({ID})", re.escape(self.pattern))
        object.__setattr__(self, "_regex", re.compile(regex))

    @classmethod
    def of(cls, message: type[Message]) -> ResourceName:
        options = message.DESCRIPTOR.GetOptions()
        return cls(options.Extensions[resource_pb2.resource].pattern[0])

    @property
    def collection(self) -> str:
        """The first segment: "agents" for "agents/{agent}"."""
        return self.pattern.split("/", 1)[0]

    def format(self, *ids: str) -> str:
        parts = iter(ids)
        return re.sub(r"\{[a-z_]+\}", lambda _: next(parts), self.pattern)

    def match(self, name: str) -> tuple[str, ...] | None:
        """The ids in a name of this pattern, or None for a name of another shape."""
        found = self._regex.fullmatch(name)
        return found.groups() if found else None

    def parse(self, name: str) -> tuple[str, ...]:
        """The ids in a name already validated against this pattern."""
        ids = self.match(name)
        if ids is None:
            raise ValueError(f"{name!r} is not a name of the form {self.pattern}")
        return ids

    def id(self, name: str) -> str:
        """The last id in a validated name: "a1" for "agents/a1"."""
        return self.parse(name)[-1]
