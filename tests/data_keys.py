"""Keys in tests: the key that opens a database file, the way the tools find it, and a
node's configured master key read or replaced."""

from __future__ import annotations

from pathlib import Path

from persistent_agent.keys.custody import KeySource
from persistent_agent.keys.master_key import FILE_ENV_VAR, MasterKey, write_key_file
from persistent_agent.ops import config_files
from persistent_agent.storage.data_keys import NodeKeys
from persistent_agent.storage.layout import env_file


def data_key(path: Path, key: MasterKey | KeySource) -> bytes:
    """*path*'s data key: from the keyring beside it, or (no entry) derived from the master key."""
    source = KeySource.local(key) if isinstance(key, MasterKey) else key
    return NodeKeys(path.parent, source).key_for(path)


def node_key_text(config_dir: Path, role: str) -> str:
    """The master key *role*'s config gives, as its 64 hex characters."""
    return config_files.node_keys(config_dir)[role]


def set_node_key(config_dir: Path, role: str, key: str) -> None:
    """Give *role* a key file of its own holding *key* (a wrong key, say), as a user could."""
    name = f"{role}-own.key"
    write_key_file(config_dir / name, key)
    config_files.edit_vars(env_file(config_dir, role), {FILE_ENV_VAR: name})
