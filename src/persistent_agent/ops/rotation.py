"""rotate-key: a new master key for both nodes, crash-safely.

Routine rotation re-wraps each node's keyring (and the keyrings of the
backups under backups/) under the new key: no database file is rewritten, so
it takes milliseconds whatever the data size. After a suspected leak of the
master key that is not enough (the old key and an old keyring still open the
files), and ``reencrypt`` also replaces every data key and re-encrypts every
file: exported under the new key, confirmed by reopening, swapped in with an
atomic rename, so that at every instant a database is wholly under its old
key or wholly under its new one.

The new key is written to config/master.key.next before anything else
changes, so it is never lost; config/master.key is replaced by it last. A
keyring records which key wraps it, and a re-encryption in progress keeps
the new data keys beside the old ones (``pending``), so a rerun after a kill
at any point sees what is done and finishes the rest. With a key service the
service rotates its key and each keyring is re-wrapped by its newest version.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from persistent_agent.errors import (
    BackupError,
    ConfigError,
    KeyringError,
    ServicesRunningError,
    WrongKeyError,
)
from persistent_agent.keys.custody import KeySource
from persistent_agent.keys.keyring import Keyring, new_data_key
from persistent_agent.keys.master_key import (
    ENV_VAR,
    FILE_ENV_VAR,
    generate_master_key,
    parse_master_key,
    read_key_file,
    write_key_file,
)
from persistent_agent.keys.secret_files import sync_directory
from persistent_agent.keys.transit import TransitWrapper
from persistent_agent.ops import backup as backups
from persistent_agent.ops import shared_tools
from persistent_agent.ops.config_files import (
    KEY_FILE,
    NEXT_VAR,
    init,
    key_file,
    pending_key_file,
    read_env,
)
from persistent_agent.ops.inspection import refuse_unfinished_restore
from persistent_agent.ops.node_keys import source_of
from persistent_agent.storage import database, lock
from persistent_agent.storage.data_keys import NodeKeys
from persistent_agent.storage.layout import (
    KEYRING_FILE,
    NODE_ROLES,
    database_files,
    env_file,
    namespace_of,
    node_data_dirs,
    sidecars,
)


@dataclass
class RotationResult:
    rewrapped: list[Path] = field(default_factory=list)  # keyrings under the new key
    rekeyed: list[Path] = field(default_factory=list)  # databases re-encrypted
    already_done: list[Path] = field(default_factory=list)
    backups_rewrapped: list[Path] = field(default_factory=list)
    backups_skipped: list[tuple[Path, str]] = field(default_factory=list)
    resumed: bool = False
    key_service: bool = False
    shared_rewrapped: int = 0  # keys of the shared state (encrypted-postgres) re-wrapped


def rekey_file(path: Path, old_key: bytes, new_key: bytes) -> bool:
    """Move one database from data key *old_key* to *new_key*; False if it already was."""
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


def rotate(
    config_dir: Path, data_dir: Path, backups_dir: Path, *, reencrypt: bool = False
) -> RotationResult:
    """Move both nodes to a new master key (and, with *reencrypt*, new data keys).

    Holds both nodes' data-directory locks throughout, so no node runs meanwhile.
    """
    refuse_replicas(data_dir)
    refuse_unfinished_restore(data_dir)
    with lock.holding(node_data_dirs(data_dir), "rotate-key"):
        return _rotate(config_dir, data_dir, backups_dir, reencrypt)


# The demo's replicas (make demo-replicas) start afresh every run: not data.
DEMO_REPLICAS_DIR = "demo-replicas"


def refuse_replicas(data_dir: Path) -> None:
    """Refuse while agent replicas keep data here: rotate-key does not cover them yet.

    Their keyrings and the shared state's keyring in PostgreSQL would stay
    wrapped by the old key, which rotate-key then replaces: a lockout.
    """
    nodes = set(node_data_dirs(data_dir))
    found = sorted(
        keyring.parent
        for keyring in [*data_dir.glob(f"*/{KEYRING_FILE}"), *data_dir.glob(f"*/*/{KEYRING_FILE}")]
        if keyring.parent not in nodes
        and DEMO_REPLICAS_DIR not in keyring.relative_to(data_dir).parts[:1]
    )
    if found:
        raise ConfigError(
            f"{found[0]} holds an agent replica's keyring, and rotate-key does not cover "
            "replicas whose shared state it cannot reach (make start-replicas keeps theirs in "
            "a Docker volume): rotating would lock them out. Nothing was changed "
            "(see docs/replicas.md)"
        )


def _opens(path: Path, key: bytes | None) -> bool:
    if key is None:
        return False
    try:
        with database.opened(path, key, read_only=True):
            return True
    except WrongKeyError:
        return False


def _sources(config_dir: Path) -> tuple[KeySource, KeySource, bool]:
    """The current key, the key being moved to, and whether a rotation was under way."""
    roles = [r for r in NODE_ROLES if env_file(config_dir, r).is_file()]
    if any(read_env(env_file(config_dir, r)).get(NEXT_VAR) for r in roles):
        raise ConfigError(
            f"{NEXT_VAR} is set in config/.env.*: a rotate-key of version 0.1 was interrupted; "
            "finish it with that version before upgrading"
        )
    sources = [source_of(config_dir, role) for role in roles]
    if len({s.wrapper.fingerprint for s in sources}) > 1:
        raise ConfigError(
            "the sentinel and the agent use different keys; rotate-key moves both to one "
            f"key file ({key_file(config_dir)}): give them the same key first"
        )
    current = sources[0]
    if current.master is None:  # a key service: it rotates its own key
        return current, current, False
    named = {read_env(env_file(config_dir, r)).get(FILE_ENV_VAR) for r in roles}
    if named != {KEY_FILE}:
        raise ConfigError(
            f"rotate-key replaces {key_file(config_dir)}, and the nodes' "
            f"{FILE_ENV_VAR} is {', '.join(sorted(n or '(unset)' for n in named))}; "
            f"point both at {KEY_FILE} (make init does) and run it again"
        )
    pending = pending_key_file(config_dir)
    if pending.exists():
        new = read_key_file(pending)
        return current, KeySource.local(new), True
    new = parse_master_key(generate_master_key())
    return current, KeySource.local(new), False


def _rotate(config_dir: Path, data_dir: Path, backups_dir: Path, reencrypt: bool) -> RotationResult:
    # A key still inline in an env file moves to the key file first (what
    # `make init` does), so that from here on the key lives in one file.
    if any(read_env(env_file(config_dir, r)).get(ENV_VAR) for r in NODE_ROLES):
        init(config_dir, data_dir)
    old, new, resumed = _sources(config_dir)
    result = RotationResult(resumed=resumed, key_service=old.master is None)
    dirs = [d for d in node_data_dirs(data_dir) if database_files(d) or (d / KEYRING_FILE).exists()]

    # 0. Every database must open with its key (or, resuming, the key it is
    # moving to) before anything is written: a wrong key changes nothing.
    nodes = {d: _node_keys(d, old, new) for d in dirs}
    for directory, keys in nodes.items():
        # A database the keyring knows but the disk lacks is damage: re-keying
        # would drop its entry, and with it the proof that it existed.
        keys.refuse_lost()
        for path in database_files(directory):
            if not (_opens(path, keys.key_for(path)) or _opens(path, _pending(keys, new, path))):
                raise WrongKeyError(path)
    # The agent's shared state (encrypted-postgres), if any: every replica
    # stopped, on every host, and its keyring open with one of the two keys.
    shared = shared_tools.shared_config(config_dir)
    if shared is not None:
        shared_tools.ensure_stopped(shared, old, new)  # opened with either key

    # 1. The new key on disk, beside the old one, before anything moves to it.
    if isinstance(old.wrapper, TransitWrapper):
        old.wrapper.rotate()  # the service makes a new version of its key
    elif new.master is not None and not resumed:
        write_key_file(pending_key_file(config_dir), new.master.material.hex())

    # 2. Each node: re-wrap, or re-encrypt under new data keys.
    for keys in nodes.values():
        if keys.missing():
            keys.adopt(keys.missing())  # older data: its derived keys join the keyring
        pending = keys.keyring is not None and bool(keys.keyring.pending)
        if keys.source is new and new is not old and not pending:
            result.already_done.append(keys.path)  # moved by the interrupted run
        elif reencrypt or pending:
            _reencrypt(keys, new, result)
        elif keys.keyring is not None:
            keys.keyring = keys.keyring.rewrapped(old.wrapper, new.wrapper, where=keys.path)
            keys.keyring.save(keys.path)
            result.rewrapped.append(keys.path)

    if shared is not None and new is not old:
        result.shared_rewrapped = shared_tools.rewrap(shared, old, new)

    # 3. The backups under backups/ that the old key opens follow (not after a
    # re-encryption: their data keys are the old ones, to be discarded).
    if not reencrypt:
        _rewrap_backups(backups_dir, old, new, result)

    # 4. The new key becomes the key.
    if old.master is not None:
        os.replace(pending_key_file(config_dir), key_file(config_dir))
        sync_directory(config_dir)
    return result


def _node_keys(directory: Path, old: KeySource, new: KeySource) -> NodeKeys:
    """The node's keys under whichever of the two keys its keyring is wrapped by."""
    keyring = Keyring.load(directory / KEYRING_FILE)
    if keyring is not None and keyring.wrapped_by == new.wrapper.fingerprint:
        return NodeKeys(directory, new)
    return NodeKeys(directory, old)


def _pending(keys: NodeKeys, new: KeySource, path: Path) -> bytes | None:
    if keys.keyring is None:
        return None
    return keys.keyring.unwrap_pending(new.wrapper, namespace_of(path), where=keys.path)


def _reencrypt(keys: NodeKeys, new: KeySource, result: RotationResult) -> None:
    """New data keys for every database of a node, each file re-encrypted under its new key."""
    keyring = keys.keyring or keys.empty_keyring()
    paths = database_files(keys.directory)
    if not keyring.pending:
        # The new keys are saved (wrapped by the new master key) before any file moves.
        keyring = keyring.with_pending(
            new.wrapper, {namespace_of(p): new_data_key() for p in paths}
        )
        keyring.save(keys.path)
        keys.keyring = keyring
    for path in paths:
        target = _pending(keys, new, path)
        if target is None:
            raise KeyringError(f"{keys.path} has no new key for {path}; restore it from a backup")
        if rekey_file(path, keys.key_for(path), target):
            result.rekeyed.append(path)
        else:
            result.already_done.append(path)
    promoted = keyring.promoted()
    promoted.save(keys.path)
    keys.keyring = promoted
    result.rewrapped.append(keys.path)


def _rewrap_backups(
    backups_dir: Path, old: KeySource, new: KeySource, result: RotationResult
) -> None:
    if not backups_dir.is_dir():
        return
    for manifest in sorted(backups_dir.glob(f"*/{backups.MANIFEST}")):
        directory = manifest.parent
        try:
            done = backups.rewrap(directory, old, new)
        except (KeyringError, BackupError) as error:
            result.backups_skipped.append((directory, str(error)))
            continue
        if done:
            result.backups_rewrapped.append(directory)
        else:
            result.backups_skipped.append((directory, "made under another master key"))
