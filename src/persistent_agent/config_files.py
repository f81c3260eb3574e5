"""The generated config files (config/.env.*) and the master key inside them.

``make init`` renders each committed ``config/.env.<role>.example`` into
``config/.env.<role>`` with the master key in place of the placeholder. It is
idempotent: an existing key is kept, because a new key would make every
existing database unreadable (the trap the original example documents).
Replacing the key is explicit and refused while encrypted data exists.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from persistent_agent.database import database_files
from persistent_agent.errors import ConfigError, MasterKeyError
from persistent_agent.keys import ENV_VAR, generate_master_key, parse_master_key

ROLES = ("sentinel", "agent", "client")
NODE_ROLES = ("sentinel", "agent")
PLACEHOLDER = "${" + ENV_VAR + "}"
_KEY_LINE = re.compile(rf"^{ENV_VAR}=(.*)$", re.MULTILINE)


@dataclass(frozen=True)
class InitResult:
    """What `init` did, for the one-line report (never the key itself)."""

    key_source: str  # "generated", "kept", "replaced"
    written: tuple[Path, ...]


def env_file(config_dir: Path, role: str) -> Path:
    return config_dir / f".env.{role}"


def template(config_dir: Path, role: str) -> Path:
    return config_dir / f".env.{role}.example"


def node_data_dirs(data_dir: Path) -> list[Path]:
    return [data_dir / role for role in NODE_ROLES]


def read_key(path: Path) -> str | None:
    """The master key written in *path*, or None when the file or line is absent."""
    if not path.is_file():
        return None
    match = _KEY_LINE.search(path.read_text())
    return match.group(1).strip() if match else None


def current_key(config_dir: Path) -> str | None:
    """The one master key the node config files agree on, or None if none has one.

    Two different keys mean someone edited a file by hand; guessing which one
    is right could lock a node out of its data, so that is an error.
    """
    keys = {
        role: key
        for role in NODE_ROLES
        if (key := read_key(env_file(config_dir, role))) and key != PLACEHOLDER
    }
    distinct = set(keys.values())
    if len(distinct) > 1:
        raise ConfigError(
            f"{ENV_VAR} differs between config/.env.sentinel and config/.env.agent; "
            "make them equal by hand (the key that opens data/) and run `make init` again"
        )
    if not distinct:
        return None
    key = distinct.pop()
    try:
        parse_master_key(key)
    except MasterKeyError as error:
        files = " and ".join(f"config/.env.{role}" for role in keys)
        raise ConfigError(f"{files}: {error}") from None
    return key


def write_private(path: Path, text: str) -> None:
    """Write *path* atomically with mode 0600 (it may hold the master key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def set_key(path: Path, key: str) -> None:
    """Replace the master key line of an existing env file, keeping every other line."""
    text = path.read_text()
    if not _KEY_LINE.search(text):
        raise ConfigError(f"{path} has no {ENV_VAR}= line to update")
    write_private(path, _KEY_LINE.sub(f"{ENV_VAR}={key}", text, count=1))


def encrypted_databases(data_dir: Path) -> list[Path]:
    return [db for d in node_data_dirs(data_dir) for db in database_files(d)]


def init(config_dir: Path, data_dir: Path, *, new_key: bool = False) -> InitResult:
    """Create missing config files and data directories; keep an existing key.

    With *new_key*, replace the key everywhere, but only while no encrypted
    database exists: those would become unreadable (use rotate-key instead).
    """
    existing = current_key(config_dir)
    if new_key and existing:
        found = encrypted_databases(data_dir)
        if found:
            raise ConfigError(
                f"refusing a new key: {len(found)} encrypted databases under {data_dir} "
                "would become unreadable; use `make rotate-key` to re-key them, "
                "or `make clean` to discard them"
            )
    key = generate_master_key() if new_key or not existing else existing
    source = "replaced" if new_key and existing else "kept" if existing else "generated"

    written: list[Path] = []
    for role in ROLES:
        target = env_file(config_dir, role)
        if target.exists() and source == "kept":
            continue
        if target.exists() and read_key(target) is not None:
            set_key(target, key)
        elif not target.exists():
            source_template = template(config_dir, role)
            if not source_template.is_file():
                raise ConfigError(f"{source_template} is missing; restore it from git")
            write_private(target, source_template.read_text().replace(PLACEHOLDER, key))
        else:
            continue
        written.append(target)

    for directory in [data_dir, *node_data_dirs(data_dir)]:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
    return InitResult(source, tuple(written))
