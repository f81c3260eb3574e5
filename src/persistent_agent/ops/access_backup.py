"""The fabric's access material in a backup: config/access, sealed under the master key.

config/access holds what lets processes into the fabric: the CA and its key,
the servers' keys, the issuer's signing key, each client's secret. A backup
without it restores data that no credential can reach, so it goes in too. No
plaintext secret is ever written under backups/, so the directory goes in as
one file, ``access.sealed``: its files (name -> bytes) encrypted with
AES-256-GCM under a fresh data key, and that key wrapped by the master key's
:class:`~persistent_agent.keys.keyring.KeyWrapper`, as a keyring's keys are.
So a key service works too, and rotate-key re-wraps the data key (a few
hundred bytes), never the content. The wrap's associated data names this
purpose and the wrapping key's fingerprint: a keyring's wrapped key moved in
here, or this one moved into a keyring, does not unwrap.

Restore puts the directory back only where it is missing (a fresh machine):
an existing one may hold newer credentials, and overwriting it would lock out
the processes that hold them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from persistent_agent.errors import BackupError
from persistent_agent.keys.keyring import NONCE_BYTES, KeyWrapper, new_data_key
from persistent_agent.keys.master_key import KEY_BYTES
from persistent_agent.keys.secret_files import sync_directory, write_file, write_private

SEALED_FILE = "access.sealed"
FORMAT = 1
PURPOSE = "persistent-agent access backup"
# Where restore builds the directory before it takes its name, beside it.
_STAGING = ".access.restoring"
PUBLIC_SUFFIX = ".crt"  # certificates: anyone may read them (0644); all else 0600


@dataclass(frozen=True)
class Sealed:
    """What the manifest records of a sealed directory: nothing secret."""

    sha256: str
    key_fingerprint: str
    files: int

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "key_fingerprint": self.key_fingerprint, "files": self.files}


# ---------------------------------------------------------------- the directory


def read_directory(directory: Path) -> dict[str, bytes]:
    """Every regular file of *directory* by name (links, subdirectories and the temp files
    a crash left behind are not access material)."""
    files = {}
    for path in sorted(directory.iterdir()):
        if stat.S_ISREG(path.lstat().st_mode) and not _leftover(path.name):
            files[path.name] = path.read_bytes()
    return files


def _leftover(name: str) -> bool:
    """A temp file of an atomic write (keys/secret_files.py) that a crash cut short."""
    return name.startswith(".") and name.endswith(".tmp")


def mode_of(name: str) -> int:
    """The mode a restored file gets: certificates 0644, everything else owner-only.

    Taken from the name, not from the backup, so no secret is ever put back readable.
    """
    return 0o644 if name.endswith(PUBLIC_SUFFIX) else 0o600


# ---------------------------------------------------------------- sealing


def _wrap_ad(fingerprint: str) -> bytes:
    return json.dumps([PURPOSE, FORMAT, "data key", fingerprint], separators=(",", ":")).encode()


def _content_ad() -> bytes:
    return json.dumps([PURPOSE, FORMAT, "files"], separators=(",", ":")).encode()


def seal(directory: Path, target: Path, wrapper: KeyWrapper) -> Sealed:
    """Write *directory*'s files to *target*, encrypted; what the manifest records of it."""
    files = read_directory(directory)
    payload = json.dumps({name: base64.b64encode(data).decode() for name, data in files.items()})
    data_key = new_data_key()
    nonce = secrets.token_bytes(NONCE_BYTES)
    sealed = AESGCM(data_key).encrypt(nonce, payload.encode(), _content_ad())
    document = {
        "format": FORMAT,
        "purpose": PURPOSE,
        "wrapped_by": wrapper.fingerprint,
        "data_key": wrapper.wrap(data_key, _wrap_ad(wrapper.fingerprint)),
        "sealed": base64.b64encode(nonce + sealed).decode(),
    }
    write_private(target, json.dumps(document, indent=2) + "\n")
    return Sealed(_sha256(target), wrapper.fingerprint, len(files))


def unseal(path: Path, wrapper: KeyWrapper) -> dict[str, bytes]:
    """The files sealed in *path*; one line naming it if it does not open with *wrapper*."""
    document = _load(path)
    data_key = _data_key(path, document, wrapper)
    try:
        blob = base64.b64decode(document["sealed"], validate=True)
        payload = AESGCM(data_key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], _content_ad())
        files = json.loads(payload)
        return {_name(path, n): base64.b64decode(v, validate=True) for n, v in files.items()}
    except (InvalidTag, binascii.Error, ValueError, TypeError, AttributeError):
        raise _damaged(path) from None


def rewrap(path: Path, old: KeyWrapper, new: KeyWrapper) -> None:
    """Wrap the data key of *path* by *new* instead of *old* (rotate-key), atomically.

    A rerun after a kill finds it already under *new* and leaves it; with a
    key service (*old* is *new*) it is re-wrapped by the key's newest version.
    """
    document = _load(path)
    if new is not old and document["wrapped_by"] == new.fingerprint:
        return
    data_key = _data_key(path, document, old)
    document["data_key"] = new.wrap(data_key, _wrap_ad(new.fingerprint))
    document["wrapped_by"] = new.fingerprint
    write_private(path, json.dumps(document, indent=2) + "\n")


def _load(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        raise _damaged(path) from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise _damaged(path)
    if not all(isinstance(document.get(k), str) for k in ("wrapped_by", "data_key", "sealed")):
        raise _damaged(path)
    return document


def _data_key(path: Path, document: dict[str, Any], wrapper: KeyWrapper) -> bytes:
    if document["wrapped_by"] != wrapper.fingerprint:
        raise BackupError(
            f"{path} is wrapped by master key {document['wrapped_by']}, not by the "
            f"configured {wrapper.fingerprint}; configure that key to open it"
        )
    try:
        key = wrapper.unwrap(document["data_key"], _wrap_ad(wrapper.fingerprint))
    except InvalidTag:
        key = b""
    if len(key) != KEY_BYTES:
        raise _damaged(path)
    return key


def _name(path: Path, name: object) -> str:
    """A file name fit for config/access: a bare name, never a path out of it."""
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name:
        raise _damaged(path)
    return name


def _damaged(path: Path) -> BackupError:
    return BackupError(
        f"{path} does not open: it was damaged or edited, or is not a sealed "
        "config/access; take a new backup (make backup)"
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- restoring


def put_back(files: dict[str, bytes], directory: Path, *, source: Path) -> str | None:
    """Make *directory* hold *files* if it is missing (or empty); a line saying what was done,
    or, when it exists and holds something else, that it was kept. None if it matches."""
    if directory.is_dir() and any(directory.iterdir()):
        if read_directory(directory) == files:
            return None
        return (
            f"{directory} exists and differs from the backup's copy; it was kept as it is "
            f"(the backup's is sealed in {source})"
        )
    staging = directory.with_name(_STAGING)
    shutil.rmtree(staging, ignore_errors=True)  # a restore killed while building it
    staging.mkdir(mode=0o700, parents=True)
    os.chmod(staging, 0o700)
    for name, data in files.items():
        write_file(staging / name, data, mode_of(name))
    os.rename(staging, directory)  # replaces an empty directory; fails on a non-empty one
    sync_directory(directory.parent)
    return f"{directory} restored from the backup ({len(files)} files)"
