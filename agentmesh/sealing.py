"""Secrets a service keeps in order to use them again, sealed for storage.

AES-GCM under a key HKDF derives from the mesh's service token, which every replica
of every service shares, so what one service seals another can open. Each purpose
gets a key of its own: a secret sealed for one purpose never opens as another's.
Each sealed value is bound (as associated data) to its owner, the name of what it
belongs to: copied to another owner's row, it does not open.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# The registry seals an MCP tool's authorization; the runner opens it to connect.
MCP_AUTHORIZATIONS = "mcp authorizations"
_NONCE = 12


class Unsealable(ValueError):
    """A sealed value that does not open: another owner's, another purpose's, sealed
    under another service token, or not a sealed value at all."""


class Sealer:
    def __init__(self, secret: str, purpose: str):
        key = HKDF(SHA256(), 32, salt=None, info=f"agentmesh {purpose} v1".encode()).derive(
            secret.encode()
        )
        self._aead = AESGCM(key)

    def seal(self, secret: str, owner: str) -> bytes:
        return self.seal_bytes(secret.encode(), owner.encode())

    def open(self, sealed: bytes, owner: str) -> str:
        """The secret; cryptography's InvalidTag if it was not sealed for this owner
        and purpose under this service token."""
        return self.open_bytes(sealed, owner.encode()).decode()

    def seal_bytes(self, data: bytes, owner: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, data, owner)

    def open_bytes(self, sealed: bytes, owner: bytes) -> bytes:
        """InvalidTag as open; ValueError for what is too short to be sealed."""
        return self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], owner)

    def seal_text(self, secret: str, owner: str) -> str:
        """seal, as base64 text: for a secret stored inside a JSON document."""
        return base64.b64encode(self.seal(secret, owner)).decode()

    def open_text(self, sealed: str, owner: str) -> str:
        """open of what seal_text made; Unsealable if it does not open."""
        try:
            return self.open(base64.b64decode(sealed, validate=True), owner)
        except (InvalidTag, ValueError):  # ValueError: not base64, too short, not UTF-8
            raise Unsealable("the sealed value does not open here") from None
