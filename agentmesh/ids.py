"""Ids, etags and the time: what every service mints, apart from any storage."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime


def new_id() -> str:
    """A resource id (or etag): 32 hex characters, unguessable, safe in a resource name."""
    return uuid.uuid4().hex


def new_revision_id() -> str:
    """A revision id (AIP-162): short, since it is only unique within one resource."""
    return uuid.uuid4().hex[:12]


def utc_now() -> datetime:
    return datetime.now(UTC)
