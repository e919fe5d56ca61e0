"""Page tokens (AIP-158): opaque, and good only for the list they came from.

Lists page by keyset over a row sequence that all tenants share. A token that
showed that sequence would tell a caller how much everyone else wrote between two
pages, so it is sealed (agentmesh.sealing: AES-GCM under a key derived from the mesh's
service token, which every replica of every service shares). It is also bound (as
associated data) to the method, the caller and the request's other fields: a token
from one list, one filter or one user is refused by every other, never silently
applied.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from google.protobuf.message import Message

from agentmesh.auth import current_principal
from agentmesh.errors import InvalidArgument
from agentmesh.sealing import Sealer

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_MAX_SEQ = 2**63 - 1  # the largest BIGINT
_VERSION = b"\x01"
_REFUSED = "not a page token this service issued for this list"


def page_size(requested: int) -> int:
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


@dataclass(frozen=True)
class Cursor:
    """Where one List call starts, and how to say where the next one does."""

    after: int  # the row sequence to continue after; 0 for the first page
    size: int
    _pages: Pages
    _binding: bytes

    def next_token(self, last_seq: int) -> str:
        """The token for the page after `last_seq`; empty when there is none (0)."""
        return self._pages.seal(last_seq, self._binding) if last_seq else ""


class Pages:
    """Seals and opens one service's page tokens."""

    def __init__(self, secret: str):
        self._sealer = Sealer(secret, "page tokens")

    def open(self, request: Message) -> Cursor:
        """The cursor for a List request (with `page_token` and `page_size` fields);
        INVALID_ARGUMENT naming page_token for a token not issued for this list."""
        binding = _binding(request)
        token: str = request.page_token  # type: ignore[attr-defined]
        after = self._open(token, binding) if token else 0
        return Cursor(after, page_size(request.page_size), self, binding)  # type: ignore[attr-defined]

    def seal(self, last_seq: int, binding: bytes) -> str:
        sealed = self._sealer.seal_bytes(struct.pack(">Q", last_seq), binding)
        return base64.urlsafe_b64encode(_VERSION + sealed).decode().rstrip("=")

    def _open(self, token: str, binding: bytes) -> int:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            if raw[:1] != _VERSION:
                raise ValueError("version")
            (last_seq,) = struct.unpack(">Q", self._sealer.open_bytes(raw[1:], binding))
        except (ValueError, InvalidTag, struct.error):
            raise InvalidArgument([("page_token", _REFUSED)]) from None
        if not 0 < last_seq <= _MAX_SEQ:  # only issued tokens open, but be sure
            raise InvalidArgument([("page_token", _REFUSED)])
        return last_seq


def _binding(request: Message) -> bytes:
    """What a token is good for: this method's request type, this caller, and every
    field of the request but the page token and size (which may change per page)."""
    scope = type(request)()
    scope.CopyFrom(request)
    scope.ClearField("page_token")
    scope.ClearField("page_size")
    principal = current_principal()
    digest = hashlib.sha256(request.DESCRIPTOR.full_name.encode())
    digest.update(b"\0" + principal.user.encode() + (b"\0admin" if principal.admin else b""))
    digest.update(b"\0" + scope.SerializeToString(deterministic=True))
    return digest.digest()
