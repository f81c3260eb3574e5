"""The fabric's OAuth2 client credentials: one per role and node, and their registry.

Each client has a secret file (``<client_id>.secret``, 0600, one line: 32
random bytes, urlsafe base64) that its process reads, and an entry in
``clients.json`` (0600) that the token issuer reads: the role the client acts
as, the SHA-256 of its secret (the secrets are random and long, so a plain
hash is as good as a slow one, and the registry holds nothing to replay) and
``not_before``, the time of its last rotation: tokens issued earlier are
revoked.

The secret file is the truth of custody: it is always written first, and a
registry entry that disagrees with it (a rotation cut short) is brought in
line by the next :func:`ensure_client`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persistent_agent.access import pki
from persistent_agent.errors import ConfigError
from persistent_agent.keys.secret_files import read_private, write_private

ROLES = ("agent", "client", "sentinel")
REGISTRY = "clients.json"
VERSION = 1
# Compared against when the id is unknown, so that an unknown id takes as long as a known one.
_NO_HASH = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class Client:
    """One registered client: its role, its secret's hash, and when it was last rotated."""

    role: str
    secret_sha256: str
    not_before: float


@dataclass
class Registry:
    """Every client the issuer knows, by client id."""

    clients: dict[str, Client] = field(default_factory=dict)

    def check(self, client_id: str, secret: str) -> Client | None:
        """The client if *secret* is its current secret; None for any mismatch."""
        client = self.clients.get(client_id)
        expected = client.secret_sha256 if client else _NO_HASH
        matches = hmac.compare_digest(expected, _hash(secret))
        return client if client is not None and matches else None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_path(access_dir: Path, client_id: str) -> Path:
    """Where *client_id*'s secret lives."""
    return access_dir / f"{client_id}.secret"


def valid_client_id(client_id: str) -> bool:
    """Whether *client_id* has the form every client id has."""
    return pki.NAME_FORM.fullmatch(client_id) is not None


def check_client_id(client_id: str) -> None:
    """Refuse an id that could not be a file name and a JWT subject as it is."""
    if not valid_client_id(client_id):
        raise ConfigError(
            f"client id {client_id!r} is not usable: use lower-case letters, digits and '-' "
            "(at most 63, starting with a letter or digit)"
        )


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ConfigError(f"role {role!r} is not one of {', '.join(ROLES)}")


# ---------------------------------------------------------------- the registry file


def load_registry(path: Path) -> Registry:
    """The registry in *path*; a missing or malformed one is one line naming the file."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; {pki.FIX}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror})") from None
    except ValueError:
        raise ConfigError(f"{path} is not valid JSON; {pki.FIX} after moving it aside") from None
    return Registry(_parse(path, raw))


def _parse(path: Path, raw: Any) -> dict[str, Client]:
    if not isinstance(raw, dict) or raw.get("version") != VERSION:
        raise ConfigError(f"{path} is not a version {VERSION} client registry")
    entries = raw.get("clients")
    if not isinstance(entries, dict):
        raise ConfigError(f'{path} has no "clients" object')
    clients = {}
    for client_id, entry in entries.items():
        try:
            check_client_id(client_id)
            clients[client_id] = Client(
                role=entry["role"],
                secret_sha256=entry["secret_sha256"],
                not_before=float(entry["not_before"]),
            )
            _check_role(clients[client_id].role)
            if not re.fullmatch(r"[0-9a-f]{64}", clients[client_id].secret_sha256):
                raise ValueError
        except (KeyError, TypeError, ValueError, ConfigError):
            raise ConfigError(f"{path}: the entry of client {client_id!r} is malformed") from None
    return clients


def _registry_or_empty(path: Path) -> Registry:
    return load_registry(path) if path.exists() else Registry()


def _save(path: Path, registry: Registry) -> None:
    """Replace the registry file atomically (write_private: temp file, os.replace, fsync)."""
    entries = {
        client_id: {
            "role": client.role,
            "secret_sha256": client.secret_sha256,
            "not_before": client.not_before,
        }
        for client_id, client in sorted(registry.clients.items())
    }
    write_private(path, json.dumps({"version": VERSION, "clients": entries}, indent=2) + "\n")


# ---------------------------------------------------------------- secrets


def read_secret(path: Path) -> str:
    """The client secret in *path*, refused if group or others may read it."""
    return read_private(path, "client secret file")


def _new_secret(path: Path) -> str:
    secret = secrets.token_urlsafe(32)
    write_private(path, secret + "\n")
    return secret


def ensure_client(access_dir: Path, client_id: str, role: str) -> Path:
    """Make *client_id*'s secret and registry entry if absent; keep what exists.

    Returns the secret file's path. A client registered under another role is
    refused (one id, one role: the authorizer trusts the role in the token).
    """
    check_client_id(client_id)
    _check_role(role)
    pki.access_directory(access_dir)
    registry_path = access_dir / REGISTRY
    registry = _registry_or_empty(registry_path)
    known = registry.clients.get(client_id)
    if known is not None and known.role != role:
        raise ConfigError(
            f"client {client_id!r} is registered as {known.role!r}, not {role!r}: "
            "use another client id for that role"
        )
    path = secret_path(access_dir, client_id)
    if not path.exists():
        if known is not None:
            raise ConfigError(
                f"{path}: no such file, but {registry_path} has client {client_id!r}: "
                "restore the file from a backup, or rotate the client's secret to make a new one"
            )
        secret = _new_secret(path)
    else:
        secret = read_secret(path)
    if known is None or known.secret_sha256 != _hash(secret):
        # New, or a rotation cut short after its secret file: the file wins, and
        # tokens issued before now (under the old secret) are revoked.
        registry.clients[client_id] = Client(role, _hash(secret), time.time())
        _save(registry_path, registry)
    return path


def rotate(access_dir: Path, client_id: str) -> None:
    """Give *client_id* a new secret and revoke every token issued to it before now.

    The secret file is written first, then the registry (both atomic), so a
    crash between the two leaves a secret the next :func:`ensure_client`
    registers. The client id stays: replica node ids depend on it.
    """
    registry_path = access_dir / REGISTRY
    registry = load_registry(registry_path)
    known = registry.clients.get(client_id)
    if known is None:
        raise ConfigError(f"no client {client_id!r} in {registry_path}; nothing was rotated")
    secret = _new_secret(secret_path(access_dir, client_id))
    registry.clients[client_id] = Client(known.role, _hash(secret), time.time())
    _save(registry_path, registry)


# ---------------------------------------------------------------- all at once


def ensure_access(
    access_dir: Path,
    *,
    clients: Mapping[str, str],
    server_names: Mapping[str, Sequence[str]],
) -> None:
    """Everything the fabric's access needs, made if absent and kept if present.

    The CA, a certificate for each server in *server_names* (name -> extra
    SANs), the issuer's signing key, and a credential for each client in
    *clients* (id -> role). Every input is checked before anything is written.
    A second run with the same arguments changes no file.
    """
    for client_id, role in clients.items():
        check_client_id(client_id)
        _check_role(role)
    registered = _registry_or_empty(access_dir / REGISTRY).clients
    for client_id, role in clients.items():
        if client_id in registered and registered[client_id].role != role:
            ensure_client(access_dir, client_id, role)  # refuses, in one line
    for name, extra in server_names.items():
        pki.subject_names(name, extra)
    pki.ensure_ca(access_dir)
    for name, extra in server_names.items():
        pki.ensure_server_cert(access_dir, name, extra)
    pki.ensure_signing_key(access_dir)
    for client_id, role in clients.items():
        ensure_client(access_dir, client_id, role)
