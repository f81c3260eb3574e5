"""The master key in a key service: Vault or OpenBao's transit engine, through hvac.

The key material never leaves the service: data keys are sent to
``transit/encrypt/<key>`` to be wrapped and to ``transit/decrypt/<key>`` to be
unwrapped, with the keyring's associated data (transit authenticates it with
its AES-GCM keys). ``transit/keys/<key>/rotate`` makes a new version of the
key; rotate-key then re-wraps every keyring with it.

Settings: ``FAME_STORAGE_KEY_SERVICE=vault``, ``VAULT_ADDR``, ``VAULT_CACERT``
(optional), ``FAME_STORAGE_TRANSIT_KEY`` (the key's name) and
``VAULT_TOKEN_FILE`` (the token, in an owner-only file).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import requests
from cryptography.exceptions import InvalidTag

from persistent_agent import settings as registry
from persistent_agent.errors import KeyFileExposedError, KeyServiceError, MasterKeyError

TRANSIT_KEY_VAR = registry.FAME_STORAGE_TRANSIT_KEY.name
ADDR_VAR = registry.VAULT_ADDR.name
CACERT_VAR = registry.VAULT_CACERT.name
TOKEN_FILE_VAR = registry.VAULT_TOKEN_FILE.name
MOUNT = "transit"
TIMEOUT_SECONDS = 10


@dataclass(frozen=True, repr=False)
class TransitWrapper:
    """Wraps data keys with a transit key of a Vault or OpenBao server."""

    addr: str
    key_name: str
    client: hvac.Client

    def __repr__(self) -> str:
        return f"TransitWrapper({self.addr}, {self.key_name})"

    @classmethod
    def from_settings(
        cls, settings: Mapping[str, str | None], *, base: Path | None = None
    ) -> TransitWrapper:
        addr = registry.VAULT_ADDR.raw(settings)
        key_name = registry.FAME_STORAGE_TRANSIT_KEY.raw(settings)
        token_file = registry.VAULT_TOKEN_FILE.raw(settings)
        missing = [
            name
            for name, found in (
                (ADDR_VAR, addr),
                (TRANSIT_KEY_VAR, key_name),
                (TOKEN_FILE_VAR, token_file),
            )
            if found is None
        ]
        if addr is None or key_name is None or token_file is None:
            raise MasterKeyError(
                f"{registry.FAME_STORAGE_KEY_SERVICE.name}=vault needs {', '.join(missing)} as well"
            )
        token = _read_token(_path(token_file, base))
        cacert = registry.VAULT_CACERT.raw(settings)
        verify: bool | str = str(_path(cacert, base)) if cacert else True
        client = hvac.Client(url=addr, token=token, verify=verify, timeout=TIMEOUT_SECONDS)
        wrapper = cls(addr, key_name, client)
        wrapper.check()
        return wrapper

    @property
    def fingerprint(self) -> str:
        return f"transit:{self.key_name}"

    def check(self) -> None:
        """Fail now, in one line, if the service is down or refuses the token or the key:
        a probe is wrapped and unwrapped (what a node needs, and all a narrow policy allows)."""
        probe = b"\0" * 32
        try:
            back = self.unwrap(self.wrap(probe, b"probe"), b"probe")
        except InvalidTag:
            back = b""
        if back != probe:
            raise KeyServiceError(
                f"the key service at {self.addr} did not unwrap what it wrapped with "
                f"transit key {self.key_name!r}; check the key's type (aes256-gcm96)"
            )

    def wrap(self, data_key: bytes, associated_data: bytes) -> str:
        response = self._post(
            f"encrypt/{self.key_name}",
            {"plaintext": _b64(data_key), "associated_data": _b64(associated_data)},
        )
        return str(response["data"]["ciphertext"])

    def unwrap(self, wrapped: str, associated_data: bytes) -> bytes:
        try:
            response = self._post(
                f"decrypt/{self.key_name}",
                {"ciphertext": wrapped, "associated_data": _b64(associated_data)},
            )
        except _Refused:
            raise InvalidTag from None
        return base64.b64decode(response["data"]["plaintext"])

    def rotate(self) -> None:
        """A new version of the transit key; new wraps use it, old ones still unwrap."""
        self._post(f"keys/{self.key_name}/rotate", {})

    def _post(self, path: str, body: dict[str, str]) -> Any:
        return self._call(
            path.split("/")[0], lambda: self.client.adapter.post(f"/v1/{MOUNT}/{path}", json=body)
        )

    def _call(self, what: str, request: Any) -> Any:
        where = f"the key service at {self.addr} ({ADDR_VAR})"
        try:
            return request()
        except hvac.exceptions.Forbidden:
            raise KeyServiceError(
                f"{where} refused the token in {TOKEN_FILE_VAR}: it is wrong, expired or "
                f"revoked, or may not use transit key {self.key_name!r}; no file was changed"
            ) from None
        except hvac.exceptions.InvalidPath:
            raise KeyServiceError(
                f"{where} has no transit key {self.key_name!r} ({TRANSIT_KEY_VAR}); "
                "create it (bao write -f transit/keys/<name>); no file was changed"
            ) from None
        except hvac.exceptions.InvalidRequest as exc:
            if what == "decrypt":
                raise _Refused from None
            raise KeyServiceError(f"{where} refused to {what}: {_first_line(exc)}") from None
        except (hvac.exceptions.VaultError, requests.RequestException) as exc:
            raise KeyServiceError(
                f"{where} cannot be reached or failed ({_first_line(exc)}); no file was changed"
            ) from None


class _Refused(Exception):
    """transit refused a decrypt: the ciphertext or its associated data is not ours."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _path(value: str, base: Path | None) -> Path:
    path = Path(value)
    return path if path.is_absolute() or base is None else base / path


def _read_token(path: Path) -> str:
    try:
        KeyFileExposedError.check(path)
        token = path.read_text().strip()
    except FileNotFoundError:
        raise MasterKeyError(f"{TOKEN_FILE_VAR}={path}: no such file") from None
    except OSError as exc:
        raise MasterKeyError(f"{TOKEN_FILE_VAR}={path}: cannot read it ({exc.strerror})") from None
    if not token:
        raise MasterKeyError(f"{TOKEN_FILE_VAR}={path} is empty")
    return token
