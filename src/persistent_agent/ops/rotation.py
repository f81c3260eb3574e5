"""rotate-key: move every database of both nodes to a new master key, crash-safely.

The new key is written to the config files (as FAME_STORAGE_MASTER_KEY_NEXT)
before any database changes, so it is never lost. Each database is then
exported into a new file under the new key, confirmed by reopening it, and
swapped in with an atomic rename: at every instant a database is wholly
under the old key or wholly under the new one, whereas an in-place
``PRAGMA rekey`` killed half-way could leave neither. Only when all of a
node's files open with the new key does its config switch over. Killed at any
point, running it again finishes the job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from persistent_agent.errors import ConfigError, ServicesRunningError, WrongKeyError
from persistent_agent.keys.master_key import (
    ENV_VAR,
    MasterKey,
    generate_master_key,
    parse_master_key,
)
from persistent_agent.ops.config_files import NEXT_VAR, edit_vars, env_file, node_key, read_var
from persistent_agent.storage import database, lock
from persistent_agent.storage.layout import (
    NODE_ROLES,
    database_files,
    namespace_of,
    node_data_dirs,
    sidecars,
)


@dataclass
class RotationResult:
    rekeyed: list[Path] = field(default_factory=list)
    already_done: list[Path] = field(default_factory=list)
    resumed: bool = False


def _pending_key(config_dir: Path) -> tuple[str | None, bool]:
    """The key an interrupted rotation was moving to, if any."""
    pending = {
        value for role in NODE_ROLES if (value := read_var(env_file(config_dir, role), NEXT_VAR))
    }
    if len(pending) > 1:
        raise ConfigError(f"{NEXT_VAR} differs between the node config files; fix it by hand")
    return (pending.pop(), True) if pending else (None, False)


def rekey_file(path: Path, old: MasterKey, new: MasterKey) -> bool:
    """Move one database from *old* to *new*; False if it already was under *new*."""
    namespace = namespace_of(path)
    old_key, new_key = old.database_key(namespace), new.database_key(namespace)
    try:
        conn = database.open_database(path, old_key, create=False)
    except WrongKeyError:
        # An interrupted run may have swapped this file in already.
        database.checked_rows(path, new_key)
        return False
    tmp = path.with_name(path.name + ".rekey")
    tmp.unlink(missing_ok=True)
    try:
        database.check_integrity(conn, path)
        rows = database.export(conn, tmp, new_key)
        # Fold the WAL into the file and remove it: frames under the old key
        # must not outlive the file they belong to.
        conn.execute("PRAGMA journal_mode = DELETE")
    finally:
        conn.close()
    leftovers = [s for s in sidecars(path) if s.exists()]
    if leftovers:
        raise ServicesRunningError(
            f"{leftovers[0]} is still there after closing {path}; is a node running?"
        )
    database.confirm(tmp, new_key, rows)
    database.replace_durably(tmp, path)
    return True


def _opens(path: Path, key: MasterKey | None) -> bool:
    if key is None:
        return False
    try:
        with database.opened(path, key.database_key(namespace_of(path)), read_only=True):
            return True
    except WrongKeyError:
        return False


def rotate(config_dir: Path, data_dir: Path) -> RotationResult:
    """Re-key every database of both nodes to one new master key.

    Holds both nodes' data-directory locks throughout, so no node runs meanwhile.
    """
    with lock.holding(node_data_dirs(data_dir), "rotate-key"):
        return _rotate(config_dir, data_dir)


def _rotate(config_dir: Path, data_dir: Path) -> RotationResult:
    pending, resumed = _pending_key(config_dir)
    new_text = pending or generate_master_key()
    new = parse_master_key(new_text)
    result = RotationResult(resumed=resumed)
    roles = [r for r in NODE_ROLES if env_file(config_dir, r).is_file()]
    olds = {role: node_key(config_dir, role) for role in roles}

    # 0. Every database must open with its node's key (or, resuming, the new
    # one) before anything is written: a wrong key changes nothing.
    for role in roles:
        for path in database_files(data_dir / role):
            if not (_opens(path, olds[role]) or (resumed and _opens(path, new))):
                raise WrongKeyError(path)

    # 1. Record the new key beside the old one before touching any database.
    for role in roles:
        if olds[role] != new and read_var(env_file(config_dir, role), NEXT_VAR) != new_text:
            edit_vars(env_file(config_dir, role), {NEXT_VAR: new_text})

    # 2. Move each database; 3. switch each node's config once all its files moved.
    for role in roles:
        if olds[role] != new:
            for path in database_files(data_dir / role):
                done = rekey_file(path, olds[role], new)
                (result.rekeyed if done else result.already_done).append(path)
        edit_vars(env_file(config_dir, role), {ENV_VAR: new_text, NEXT_VAR: None})
    return result
