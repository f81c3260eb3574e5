"""Where a node's key comes from: the one function that nodes and tools call.

Either a local master key (``FAME_STORAGE_MASTER_KEY_FILE``, or
``FAME_STORAGE_MASTER_KEY`` as in the original example), or a key service
that never lets the key out (``FAME_STORAGE_KEY_SERVICE=vault``: Vault or
OpenBao transit). Both give a :class:`~persistent_agent.keys.keyring.KeyWrapper`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from persistent_agent import settings as registry
from persistent_agent.errors import MasterKeyError
from persistent_agent.keys.keyring import KeyWrapper, LocalWrapper
from persistent_agent.keys.master_key import (
    ENV_VAR,
    FILE_ENV_VAR,
    KEY_SERVICE_VAR,
    MasterKey,
    load_master_key,
)

KEY_SERVICES = registry.FAME_STORAGE_KEY_SERVICE.choices

# Every setting that says where the key is; nodes read them from their
# environment, tools from the nodes' env files.
SETTINGS = (
    ENV_VAR,
    FILE_ENV_VAR,
    KEY_SERVICE_VAR,
    registry.FAME_STORAGE_TRANSIT_KEY.name,
    registry.VAULT_ADDR.name,
    registry.VAULT_CACERT.name,
    registry.VAULT_TOKEN_FILE.name,
)
# The shared state of the encrypted-postgres profile (storage/shared_state.py):
# where the server is, and the file holding its password.
POSTGRES_DSN_VAR = registry.FAME_STORAGE_POSTGRES_DSN.name
POSTGRES_PASSWORD_FILE_VAR = registry.FAME_STORAGE_POSTGRES_PASSWORD_FILE.name
# The settings that name files: relative to the env file that sets them.
PATH_SETTINGS = tuple(
    s.name
    for s in (
        registry.FAME_STORAGE_MASTER_KEY_FILE,
        registry.VAULT_CACERT,
        registry.VAULT_TOKEN_FILE,
        registry.FAME_STORAGE_POSTGRES_PASSWORD_FILE,
    )
)


@dataclass(frozen=True)
class KeySource:
    """What wraps a node's data keys, and the master key itself when it is local.

    *master* is None with a key service; only a local key can also open data
    written before keyrings (whose keys were derived from it).
    """

    wrapper: KeyWrapper
    master: MasterKey | None

    @classmethod
    def local(cls, master: MasterKey) -> KeySource:
        """A local master key wrapping the data keys itself."""
        return cls(LocalWrapper(master), master)


def key_source(settings: Mapping[str, str | None], *, base: Path | None = None) -> KeySource:
    """The key of a node configured by *settings* (its environment, or its env file).

    Relative paths are taken from *base* when given (the env file's directory).
    """
    service = registry.FAME_STORAGE_KEY_SERVICE.raw(settings)
    if service is None:
        master = load_master_key(
            registry.FAME_STORAGE_MASTER_KEY.raw(settings),
            registry.FAME_STORAGE_MASTER_KEY_FILE.raw(settings),
            base=base,
        )
        return KeySource.local(master)
    if service not in KEY_SERVICES:
        raise MasterKeyError(
            f"{KEY_SERVICE_VAR}={service!r} is not a key service this project knows; "
            f"use {' or '.join(KEY_SERVICES)}, or unset it to use a local master key"
        )
    local = [
        s.name
        for s in (registry.FAME_STORAGE_MASTER_KEY, registry.FAME_STORAGE_MASTER_KEY_FILE)
        if s.is_set(settings)
    ]
    if local:
        raise MasterKeyError(
            f"both {KEY_SERVICE_VAR}={service} and {local[0]} are set; the key comes from "
            "one place: unset one of them"
        )
    from persistent_agent.keys.transit import TransitWrapper

    return KeySource(TransitWrapper.from_settings(settings, base=base), None)
