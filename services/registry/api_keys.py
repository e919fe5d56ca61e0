"""API keys: how they are minted, and the only form of them that is stored."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

KEY_PREFIX = "am_"


@dataclass(frozen=True)
class NewKey:
    secret: str  # shown once, in CreateApiKey's response
    prefix: str  # what tells keys apart in listings
    key_hash: str


def hash_key(key: str) -> str:
    # API keys are 256-bit random strings, so a fast hash is enough: there is
    # nothing to brute-force the way there is with passwords.
    return hashlib.sha256(key.encode()).hexdigest()


def mint_key() -> NewKey:
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    return NewKey(secret, secret[:10], hash_key(secret))
