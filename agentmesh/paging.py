"""Opaque page tokens over a monotonically increasing row sequence (keyset paging)."""

from __future__ import annotations

import base64

from agentmesh.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_MAX_SEQ = 2**63 - 1  # the largest BIGINT


def page_size(requested: int) -> int:
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def next_page_token(last_seq: int) -> str:
    """The token for the page after `last_seq`; empty when there is none (last_seq 0)."""
    if not last_seq:
        return ""
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
        last_seq = int(seq)
        # Issued tokens hold a row sequence; anything else (negative, or too big
        # for a database integer) would fail deep in the query instead of here.
        if not 0 < last_seq <= _MAX_SEQ:
            raise ValueError(seq)
        return last_seq
    except ValueError:
        raise InvalidArgument([(field, "not a page token this service issued")]) from None
