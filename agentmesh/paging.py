"""Opaque page tokens over a monotonically increasing row sequence (keyset paging)."""

from __future__ import annotations

import base64

from agentmesh.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_page_token(last_seq: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{last_seq}".encode()).decode().rstrip("=")


def decode_page_token(token: str, field: str = "page_token") -> int:
    """The sequence to continue after; 0 for the first page."""
    if not token:
        return 0
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        version, _, seq = raw.partition(":")
        if version != "v1":
            raise ValueError(version)
        return int(seq)
    except ValueError:
        raise InvalidArgument([(field, "not a page token this service issued")]) from None
