"""The master key: how it is written, read and checked.

The master key is 256 random bits written as 64 hex characters, kept in a
key file (``FAME_STORAGE_MASTER_KEY_FILE``, owner-only) or, as the original
example does, in ``FAME_STORAGE_MASTER_KEY``. :func:`load_master_key` is the
one way nodes and tools read it. It wraps each database's data key
(keys/keyring.py); no database is encrypted with it directly.

Standard library only: ``make init`` runs this on a bare host Python.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from persistent_agent import settings
from persistent_agent.errors import KeyFileExposedError, MasterKeyError
from persistent_agent.keys.secret_files import write_private

KEY_BYTES = 32
ENV_VAR = settings.FAME_STORAGE_MASTER_KEY.name
FILE_ENV_VAR = settings.FAME_STORAGE_MASTER_KEY_FILE.name
# Set by rotate-key before version 0.2 while it ran; a config that still has it
# was interrupted there.
NEXT_ENV_VAR = settings.FAME_STORAGE_MASTER_KEY_NEXT.name
# Set instead of the two above when a key service holds the key (keys/custody.py).
KEY_SERVICE_VAR = settings.FAME_STORAGE_KEY_SERVICE.name

_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True, repr=False)
class MasterKey:
    """A validated 256-bit master key. Its repr never shows the key."""

    material: bytes

    def __repr__(self) -> str:
        return "MasterKey(<redacted>)"

    def fingerprint(self) -> str:
        """A short, non-reversible tag to tell keys apart in messages and manifests."""
        return hashlib.sha256(b"fingerprint:" + self.material).hexdigest()[:12]


def parse_master_key(text: str | None, *, source: str = ENV_VAR) -> MasterKey:
    """Validate *text* as a master key; the error names *source*, never the key."""
    if text is None or not text.strip():
        raise MasterKeyError(
            f"{source} is not set; run `make init` to generate a key and config/.env.*"
        )
    candidate = text.strip()
    if not _HEX_KEY.fullmatch(candidate):
        raise MasterKeyError(
            f"{source} must be 64 hex characters (a 256-bit key), got {len(candidate)} "
            "characters; run `make init` to generate one"
        )
    return MasterKey(bytes.fromhex(candidate))


def read_key_file(path: Path) -> MasterKey:
    """The key in file *path*: one line of 64 hex characters, readable by its owner only."""
    source = f"{FILE_ENV_VAR}={path}"
    try:
        KeyFileExposedError.check(path)
        text = path.read_text()
    except FileNotFoundError:
        raise MasterKeyError(f"{source}: no such file; run `make init`") from None
    except OSError as exc:
        raise MasterKeyError(f"{source}: cannot read it ({exc.strerror})") from None
    if text.count("\n") > 1 or (text.count("\n") == 1 and not text.endswith("\n")):
        raise MasterKeyError(f"{source} must hold one line, the key, and nothing else")
    return parse_master_key(text, source=f"the key in {path}")


def load_master_key(inline: str | None, file: str | None, *, base: Path | None = None) -> MasterKey:
    """The master key from ``FAME_STORAGE_MASTER_KEY`` or ``…_FILE`` (exactly one of them).

    A relative *file* is taken from *base* (the directory of the env file that
    names it) when given. Whatever is refused says why, never the key.
    """
    if inline and file:
        raise MasterKeyError(f"both {ENV_VAR} and {FILE_ENV_VAR} are set; set only one of them")
    if file:
        path = Path(file)
        return read_key_file(path if path.is_absolute() or base is None else base / path)
    return parse_master_key(inline)


def generate_master_key() -> str:
    """A fresh master key, as the 64 hex characters written to key files."""
    return secrets.token_hex(KEY_BYTES)


def write_key_file(path: Path, key: str) -> None:
    """Write *key* to *path* atomically, owner-only (0600), synced to disk."""
    write_private(path, key + "\n")
