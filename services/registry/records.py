"""What the registry's stores take and return: plain records, never protos."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass
class User:
    id: str
    display_name: str
    email: str
    admin: bool
    create_time: datetime


@dataclass
class ApiKey:
    id: str
    user_id: str
    display_name: str
    prefix: str
    create_time: datetime
    expire_time: datetime | None
    secret: str = ""  # only when just created


@dataclass
class Balance:
    user_id: str
    balance: int
    reserved: int


@dataclass
class Reservation:
    id: str
    user_id: str
    amount: int
    expire_time: datetime


@dataclass
class Agent:
    """An agent as of one revision (the current one, unless read as a revision)."""

    id: str
    user_id: str
    # The definition in JSON form: everything a client sets but the name,
    # handoffs and etag.
    definition: dict[str, Any]
    handoffs: list[str]  # target ids, in order
    etag: str
    revision_id: str
    create_time: datetime
    update_time: datetime  # when this revision was made


@dataclass
class Context:
    id: str
    agent_id: str
    display_name: str
    values: dict[str, Any]
    is_default: bool
    create_time: datetime


@dataclass
class Workflow:
    id: str
    user_id: str
    definition: dict[str, Any]  # JSON form: everything a client sets but name and etag
    etag: str
    create_time: datetime
    update_time: datetime


class AgentsNotFound(Exception):
    """Agents a write references do not exist (or are another user's).

    The store knows only ids; the servicer knows which request fields named them.
    """

    def __init__(self, ids: frozenset[str]):
        super().__init__(", ".join(sorted(ids)))
        self.ids = ids
