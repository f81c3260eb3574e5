"""The keys of each node as its config says: what the operator tools open data with.

Tools read a node's settings from its env file (config/.env.<role>), the way
the node does at startup, and go through the same function
(keys.custody.key_source); a key service's standard ``VAULT_*`` variables may
also come from the operator's shell.
"""

from __future__ import annotations

from pathlib import Path

from persistent_agent import settings as registry
from persistent_agent.errors import ConfigError, KeyFileExposedError, MasterKeyError
from persistent_agent.keys.custody import SETTINGS, KeySource, key_source
from persistent_agent.keys.master_key import ENV_VAR
from persistent_agent.ops.config_files import read_env
from persistent_agent.storage.data_keys import NodeKeys
from persistent_agent.storage.layout import env_file


def source_of(config_dir: Path, role: str) -> KeySource:
    """What wraps *role*'s data keys, from its env file; one line saying what is wrong."""
    path = env_file(config_dir, role)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; run `make init`")
    values = read_env(path)
    if values.get(ENV_VAR):
        KeyFileExposedError.check(path)
    # The key service's address and files may come from the tool's environment
    # (the env file's values win); the key itself only from the env file.
    vault = (registry.VAULT_ADDR, registry.VAULT_CACERT, registry.VAULT_TOKEN_FILE)
    settings: dict[str, str | None] = {s.name: s.raw() for s in vault}
    settings.update({k: v for k, v in values.items() if k in SETTINGS})
    try:
        return key_source(settings, base=config_dir)
    except MasterKeyError as error:
        raise ConfigError(f"{path}: {error}") from None


def keys_of(config_dir: Path, data_dir: Path, role: str) -> NodeKeys:
    """The data keys of *role*'s databases under *data_dir* (reading them writes nothing)."""
    return NodeKeys(data_dir / role, source_of(config_dir, role))
