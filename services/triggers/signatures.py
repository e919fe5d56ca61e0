"""Webhook secrets and signatures, the Standard Webhooks way (standardwebhooks.com).

A secret is "whsec_" and 32 random bytes in base64; those bytes key an
HMAC-SHA256 over "{webhook-id}.{webhook-timestamp}.{body}", sent as
`webhook-signature: v1,<base64>`. The service must sign with secrets it keeps,
so they are stored sealed (AES-GCM under a key derived from the service token,
bound to the resource they belong to), never in the clear, and shown to their
owner once, when made.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

from agentmesh.sealing import Sealer

PREFIX = "whsec_"
# What a webhook-id may be: it becomes part of a run's request id.
WEBHOOK_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(PREFIX))


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header's value for one request."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, webhook_id: str, timestamp: int, body: bytes, header: str) -> bool:
    """Whether any v1 signature in the header (space-separated, as a sender rotating
    its secret sends several) is this request's."""
    expected = sign(secret, webhook_id, timestamp, body).encode()
    return any(hmac.compare_digest(expected, given.encode()) for given in header.split())


def webhook_sealer(service_token: str) -> Sealer:
    """Seals webhook secrets, each bound to the name of the trigger or webhook it
    belongs to: a sealed secret copied to another row does not open there."""
    return Sealer(service_token, "webhook secrets")
