"""Envelope encryption: per-database data keys, stored only wrapped by the master key.

Each database is encrypted with its own random 256-bit data key (the raw key
SQLCipher uses). A node's keyring file holds its data keys wrapped with
AES-256-GCM under a key-encryption key derived from the master key (or, with a
key service, wrapped by the service). The associated data binds each wrapped
key to the keyring format, the node, the namespace and the wrapping key's
fingerprint, so a wrapped key copied to another entry or keyring does not
unwrap. Rotating the master key re-wraps a few hundred bytes; no database
file is rewritten.

Data written before keyrings existed used keys derived from the master key
with HKDF (:func:`derived_key`); a keyring adopts those keys as they are.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from persistent_agent.errors import KeyringError
from persistent_agent.keys.master_key import KEY_BYTES, MasterKey
from persistent_agent.keys.secret_files import write_private

FORMAT = 1
NONCE_BYTES = 12
# Versioned salts: a future change of scheme can coexist with old files.
_DERIVED_KEY_SALT = b"persistent-agent/sqlcipher/v1"
_WRAPPING_KEY_SALT = b"persistent-agent/keyring/v1"


def hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    """HKDF-SHA256 (RFC 5869), from the ``cryptography`` package."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def derived_key(master: MasterKey, namespace: str) -> bytes:
    """The data key of *namespace* under the scheme before keyrings (0.1): HKDF of the master key.

    Only read, to adopt databases written then; new databases get random keys.
    """
    return hkdf_sha256(master.material, salt=_DERIVED_KEY_SALT, info=namespace.encode("utf-8"))


def new_data_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


class KeyWrapper(Protocol):
    """What wraps and unwraps data keys: the local master key, or a key service."""

    @property
    def fingerprint(self) -> str:
        """A stable, non-secret name for the wrapping key, stored in keyrings."""

    def wrap(self, data_key: bytes, associated_data: bytes) -> str: ...

    def unwrap(self, wrapped: str, associated_data: bytes) -> bytes:
        """The data key, or :class:`InvalidTag` when it is not ours to unwrap."""


@dataclass(frozen=True, repr=False)
class LocalWrapper:
    """AES-256-GCM under a key-encryption key derived from the master key."""

    master: MasterKey
    _aead: AESGCM = field(init=False, compare=False)

    def __post_init__(self) -> None:
        kek = hkdf_sha256(self.master.material, salt=_WRAPPING_KEY_SALT, info=b"wrap data keys")
        object.__setattr__(self, "_aead", AESGCM(kek))

    def __repr__(self) -> str:
        return f"LocalWrapper({self.fingerprint})"

    @property
    def fingerprint(self) -> str:
        return self.master.fingerprint()

    def wrap(self, data_key: bytes, associated_data: bytes) -> str:
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, data_key, associated_data)
        return base64.b64encode(nonce + sealed).decode("ascii")

    def unwrap(self, wrapped: str, associated_data: bytes) -> bytes:
        try:
            blob = base64.b64decode(wrapped, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidTag from None
        return self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], associated_data)


def _associated_data(node: str, namespace: str, fingerprint: str) -> bytes:
    return json.dumps(
        ["persistent-agent keyring", FORMAT, node, namespace, fingerprint], separators=(",", ":")
    ).encode("utf-8")


@dataclass(frozen=True)
class Keyring:
    """A node's wrapped data keys, as stored in its keyring file.

    *pending* holds the replacement keys of an unfinished ``rotate-key
    REENCRYPT=1``, wrapped by *pending_wrapped_by*.

    *reserved* names the entries of *keys* whose database file is not known
    to exist yet: a new key is saved (reserved) before its file is created,
    and the reservation is dropped once the file is on disk. An entry that is
    not reserved therefore proves that its file existed, so a missing file is
    damage, while a reserved one is a creation a crash cut short.
    """

    node: str
    wrapped_by: str
    keys: Mapping[str, str] = field(default_factory=dict)
    pending: Mapping[str, str] = field(default_factory=dict)
    pending_wrapped_by: str | None = None
    reserved: frozenset[str] = frozenset()

    # ---- reading and writing the file

    @classmethod
    def load(cls, path: Path) -> Keyring | None:
        """The keyring in *path*, None when there is none, or one line saying it is damaged."""
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise KeyringError(f"cannot read the keyring {path} ({exc.strerror})") from None
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise KeyringError(f"{path}: unknown keyring format {data.get('format')!r}")
            return cls(
                node=_text(data["node"]),
                wrapped_by=_text(data["wrapped_by"]),
                keys=_entries(data["keys"]),
                pending=_entries(data.get("pending", {})),
                pending_wrapped_by=data.get("pending_wrapped_by"),
                reserved=frozenset(_names(data.get("reserved", []))),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            raise KeyringError(
                f"the keyring {path} is damaged (not the JSON this project writes); "
                "it holds the wrapped keys of every database beside it: restore it from a "
                "backup (backups/<time>/<node>/keyring.json)"
            ) from None

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "format": FORMAT,
            "node": self.node,
            "wrapped_by": self.wrapped_by,
            "keys": dict(sorted(self.keys.items())),
        }
        if self.pending:
            data["pending"] = dict(sorted(self.pending.items()))
            data["pending_wrapped_by"] = self.pending_wrapped_by
        if reserved := sorted(self.reserved & set(self.keys)):
            data["reserved"] = reserved
        return json.dumps(data, indent=2) + "\n"

    def save(self, path: Path) -> None:
        """Write atomically, owner-only, synced (keys/secret_files.py)."""
        write_private(path, self.to_json())

    # ---- keys

    def unwrap(self, wrapper: KeyWrapper, namespace: str, *, where: Path) -> bytes | None:
        """The data key of *namespace*, or None when the keyring has no entry for it."""
        if namespace not in self.keys:
            return None
        self.check_wrapper(wrapper, where)
        return _unwrap(wrapper, self.keys[namespace], self.node, namespace, where)

    def unwrap_pending(self, wrapper: KeyWrapper, namespace: str, *, where: Path) -> bytes | None:
        if namespace not in self.pending or self.pending_wrapped_by != wrapper.fingerprint:
            return None
        return _unwrap(wrapper, self.pending[namespace], self.node, namespace, where)

    def check_wrapper(self, wrapper: KeyWrapper, where: Path) -> None:
        if self.wrapped_by != wrapper.fingerprint:
            raise KeyringError(
                f"the keyring {where} was made under master key {self.wrapped_by}, but the "
                "configured key (FAME_STORAGE_MASTER_KEY_FILE or FAME_STORAGE_MASTER_KEY) is "
                f"{wrapper.fingerprint}; configure that key, or if a `make rotate-key` was "
                "interrupted, run it again; no file was changed"
            )

    def with_key(
        self, wrapper: KeyWrapper, namespace: str, data_key: bytes, *, reserve: bool = False
    ) -> Keyring:
        """*data_key* as the entry of *namespace*; with *reserve*, for a file not created yet."""
        wrapped = wrapper.wrap(
            data_key, _associated_data(self.node, namespace, wrapper.fingerprint)
        )
        reserved = self.reserved | {namespace} if reserve else self.reserved - {namespace}
        return replace(self, keys={**self.keys, namespace: wrapped}, reserved=reserved)

    def confirmed(self, namespaces: set[str]) -> Keyring:
        """The reservations of *namespaces* dropped: their files now exist."""
        return replace(self, reserved=self.reserved - namespaces)

    def rewrapped(self, old: KeyWrapper, new: KeyWrapper, *, where: Path) -> Keyring:
        """Every key unwrapped with *old* and wrapped again by *new* (pending keys dropped)."""
        self.check_wrapper(old, where)
        fresh = Keyring(self.node, new.fingerprint)
        for namespace in self.keys:
            data_key = _unwrap(old, self.keys[namespace], self.node, namespace, where)
            fresh = fresh.with_key(new, namespace, data_key, reserve=namespace in self.reserved)
        return fresh

    def with_pending(self, wrapper: KeyWrapper, data_keys: Mapping[str, bytes]) -> Keyring:
        pending = {
            namespace: wrapper.wrap(
                key, _associated_data(self.node, namespace, wrapper.fingerprint)
            )
            for namespace, key in data_keys.items()
        }
        return replace(self, pending=pending, pending_wrapped_by=wrapper.fingerprint)

    def promoted(self) -> Keyring:
        """The pending keys become the keys (the end of a re-encryption)."""
        if self.pending_wrapped_by is None:
            raise KeyringError("a keyring with no pending keys cannot be promoted")
        return Keyring(self.node, self.pending_wrapped_by, dict(self.pending))


def _unwrap(wrapper: KeyWrapper, wrapped: str, node: str, namespace: str, where: Path) -> bytes:
    try:
        key = wrapper.unwrap(wrapped, _associated_data(node, namespace, wrapper.fingerprint))
    except InvalidTag:
        key = b""
    if len(key) != KEY_BYTES:
        raise KeyringError(
            f"the keyring {where} has an entry for {namespace} that does not unwrap with "
            f"master key {wrapper.fingerprint}: it was damaged, edited, or copied from "
            "another node or namespace; restore the keyring from a backup"
        )
    return key


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(value)
    return value


def _names(value: object) -> list[str]:
    if not isinstance(value, list):
        raise TypeError(value)
    return [_text(v) for v in value]


def _entries(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise TypeError(value)
    return {_text(k): _text(v) for k, v in value.items()}
