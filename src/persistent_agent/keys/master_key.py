"""The master key: how it is written, checked, and turned into per-database keys.

The master key is 256 random bits written as 64 hex characters. Each database
gets its own raw SQLCipher key, derived with HKDF-SHA256 (RFC 5869) from the
master key with the namespace as ``info``. Handing SQLCipher a raw key skips
its per-open PBKDF2 (about 0.1 s here), and a key that leaks from one database
says nothing about the others or about the master key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from persistent_agent.errors import MasterKeyError

KEY_BYTES = 32
ENV_VAR = "FAME_STORAGE_MASTER_KEY"
NEXT_ENV_VAR = ENV_VAR + "_NEXT"  # the key an unfinished rotate-key is moving to

# Versioned so that a future change of derivation can coexist with old files.
_HKDF_SALT = b"persistent-agent/sqlcipher/v1"
_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True, repr=False)
class MasterKey:
    """A validated 256-bit master key. Its repr never shows the key."""

    material: bytes

    def __repr__(self) -> str:
        return "MasterKey(<redacted>)"

    def database_key(self, namespace: str) -> bytes:
        """The raw 256-bit SQLCipher key for the database of *namespace*."""
        return hkdf_sha256(self.material, salt=_HKDF_SALT, info=namespace.encode("utf-8"))

    def fingerprint(self) -> str:
        """A short, non-reversible tag to tell keys apart in messages."""
        return hashlib.sha256(b"fingerprint:" + self.material).hexdigest()[:12]


def parse_master_key(text: str | None) -> MasterKey:
    """Validate *text* as a master key; the error message never echoes it."""
    if text is None or not text.strip():
        raise MasterKeyError(
            f"{ENV_VAR} is not set; run `make init` to generate config/.env.* with a key"
        )
    candidate = text.strip()
    if not _HEX_KEY.fullmatch(candidate):
        raise MasterKeyError(
            f"{ENV_VAR} must be 64 hex characters (a 256-bit key), got {len(candidate)} "
            "characters; run `make init` to generate one"
        )
    return MasterKey(bytes.fromhex(candidate))


def generate_master_key() -> str:
    """A fresh master key, as the 64 hex characters written to config files."""
    return secrets.token_hex(KEY_BYTES)


def hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    """HKDF-SHA256 extract-then-expand, as RFC 5869 defines it."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]
