"""Sealing rows for a server that must not read them: AES-GCM with associated data, HMAC'd names.

A backend whose server is not trusted with the state (PostgreSQL today, an
object store or Redis tomorrow) stores, per row, an HMAC of the namespace, an
HMAC of the key, a version number and a sealed blob, and per request record
an HMAC of its id and a sealed blob. How those bytes are made and checked is
here, with no database import, so that every such backend seals the same way
and none can get it subtly wrong:

* **Blobs** are ``nonce || AES-GCM(data key, plaintext)``. A row's associated
  data binds its namespace HMAC, key HMAC and version, so a blob copied to
  another row, or a version edited by hand, does not decrypt; and the
  decrypted namespace and key must hash back to the row's HMACs.
* **Request records** are bound to their id's HMAC; records made before
  argument digests were kept (the result alone) have associated data of their
  own and still open.
* **Keyring entries** (the data and HMAC keys wrapped by the master key) are
  bound to their name and the wrapping key's fingerprint.

These byte layouts are an on-disk format: changing one makes every stored row
unreadable, so each is spelt out once, below.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from persistent_agent.errors import SharedRowError
from persistent_agent.keys.keyring import NONCE_BYTES
from persistent_agent.storage.backend import RecordedRequest, Request, Row

KEYRING_FORMAT = 1
# The names of the two shared keys in a keyring.
KEY_NAMES = ("data", "hmac")


def keyring_ad(name: str, fingerprint: str) -> bytes:
    """A keyring entry's associated data: its name and the master key that wraps it."""
    return json.dumps(
        ["persistent-agent shared keyring", KEYRING_FORMAT, name, fingerprint],
        separators=(",", ":"),
    ).encode("utf-8")


@dataclass(frozen=True, repr=False)
class StateKeys:
    """The unwrapped shared keys: AES-256-GCM for blobs, HMAC-SHA256 for names."""

    data_key: bytes
    hmac_key: bytes
    _aead: AESGCM = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_aead", AESGCM(self.data_key))

    def __repr__(self) -> str:
        return "StateKeys(…)"

    def mac(self, kind: str, *parts: str) -> bytes:
        message = json.dumps([kind, *parts], separators=(",", ":")).encode("utf-8")
        return hmac.new(self.hmac_key, message, hashlib.sha256).digest()

    def seal(self, plaintext: bytes, associated_data: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, associated_data)

    def open(self, sealed: bytes, associated_data: bytes) -> bytes:
        return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated_data)

    # ------------------------------------------------------------ rows

    def names(self, namespace: str, key: str) -> tuple[bytes, bytes]:
        """The HMACs a row of *namespace*/*key* is stored under."""
        return self.mac("namespace", namespace), self.mac("key", namespace, key)

    def seal_row(self, namespace: str, key: str, value: str, version: int) -> bytes:
        """The sealed blob of a row at *version*."""
        ns_mac, key_mac = self.names(namespace, key)
        plaintext = json.dumps(
            {"namespace": namespace, "key": key, "value": value}, separators=(",", ":")
        ).encode()
        return self.seal(plaintext, row_ad(ns_mac, key_mac, version))

    def open_row(
        self,
        ns_mac: bytes,
        key_mac: bytes,
        version: int,
        sealed: bytes,
        where: str,
        expected: tuple[str, str | None] | None = None,
    ) -> Row:
        """Decrypt one stored row; its namespace and key must be the ones its HMACs name.

        *where* names the storage and *expected* (namespace, key or None) what
        the caller asked for, both for messages: a row that fails raises
        :class:`SharedRowError` naming it, with no value in the text.
        """
        ns_mac, key_mac = bytes(ns_mac), bytes(key_mac)
        name = row_name(expected, key_mac)
        try:
            plain = json.loads(self.open(bytes(sealed), row_ad(ns_mac, key_mac, version)))
            namespace, key, value = plain["namespace"], plain["key"], plain["value"]
        except (InvalidTag, ValueError, KeyError, TypeError):
            raise SharedRowError(
                f"row {name} (version {version}) in {where} does not decrypt: it was "
                "altered, or copied from another row or version; nothing was changed"
            ) from None
        if (
            self.mac("namespace", namespace) != ns_mac
            or self.mac("key", namespace, key) != key_mac
            or (expected is not None and expected[1] is not None and key != expected[1])
        ):
            raise SharedRowError(
                f"row {name} in {where} holds another row's value; nothing was changed"
            )
        return Row(namespace, key, value, version)

    # ------------------------------------------------------------ request records

    def seal_request(self, request: Request) -> tuple[bytes, bytes]:
        """(id HMAC, sealed record) of *request*: its result and argument digest."""
        id_mac = self.mac("request", request.id)
        record = json.dumps(
            {"result": request.result, "arguments": request.arguments},
            separators=(",", ":"),
        ).encode()
        return id_mac, self.seal(record, request_ad_v2(id_mac))

    def open_request(self, request_id: str, sealed: bytes, where: str) -> RecordedRequest:
        """Decrypt the record of *request_id*, in either format; SharedRowError if it fails."""
        id_mac = self.mac("request", request_id)
        sealed = bytes(sealed)
        try:
            record = json.loads(self.open(sealed, request_ad_v2(id_mac)))
            return RecordedRequest(str(record["result"]), record["arguments"])
        except InvalidTag:
            pass
        try:
            return RecordedRequest(self.open(sealed, request_ad(id_mac)).decode(), None)
        except InvalidTag:
            raise SharedRowError(
                f"the recorded result of request {request_id} in {where} does not "
                "decrypt: it was altered or copied; nothing was changed"
            ) from None


def row_ad(namespace_mac: bytes, key_mac: bytes, version: int) -> bytes:
    """A row's associated data: both its names and its version."""
    return b"pa-state\x00" + namespace_mac + key_mac + version.to_bytes(8, "big")


def request_ad(id_mac: bytes) -> bytes:
    """A request record's associated data before arguments were recorded (result only)."""
    return b"pa-request\x00" + id_mac


def request_ad_v2(id_mac: bytes) -> bytes:
    """A request record that holds ``{"result": …, "arguments": digest}``."""
    return b"pa-request-v2\x00" + id_mac


def row_name(expected: tuple[str, str | None] | None, key_mac: bytes) -> str:
    """How a message names a row: namespace/key when known, else its key HMAC's start."""
    unnamed = f"<key {key_mac.hex()[:12]}…>"
    if expected is None:
        return unnamed
    namespace, key = expected
    return f"{namespace}/{key if key is not None else unnamed}"
