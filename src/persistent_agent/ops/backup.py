"""Consistent, encrypted backups of both nodes, and verified restores.

A backup is taken through SQLCipher while the services run: each database is
exported inside one read transaction (a consistent snapshot; live files are
never copied) into a new file encrypted with the same data key, and each node's
keyring goes with it. A ``manifest.json`` records namespaces, row counts,
checksums and the fingerprint of the master key that wraps the keyring; it
is what restore asks for. rotate-key re-wraps the keyrings of the backups
under backups/, so those restore with the current key. A restore verifies all
of that first. Backups made before keyrings (format 1) restore with the key
that made them.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persistent_agent import __version__
from persistent_agent.errors import BackupError, DatabaseDamagedError, KeyringError
from persistent_agent.keys.custody import KeySource
from persistent_agent.keys.keyring import Keyring, derived_key
from persistent_agent.keys.secret_files import write_private
from persistent_agent.ops import shared_tools
from persistent_agent.ops.inspection import NodeDatabase, node_databases
from persistent_agent.ops.node_keys import source_of
from persistent_agent.storage import database, lock
from persistent_agent.storage.data_keys import NodeKeys
from persistent_agent.storage.layout import (
    KEYRING_FILE,
    all_databases,
    namespace_of,
    node_data_dirs,
    sidecars,
)

MANIFEST = "manifest.json"
FORMAT = 2  # 2: with each node's keyring; 1: keys derived from the master key
FORMATS = (1, 2)


@dataclass(frozen=True)
class RestoreResult:
    restored: int
    set_aside: Path | None  # where replaced data went (restore --force)


def _stamp() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%fZ")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def backup(config_dir: Path, data_dir: Path, backups_dir: Path) -> Path:
    """Snapshot every database into ``backups_dir/<UTC time>/``; return that directory."""
    sources = node_databases(config_dir, data_dir)
    if not sources:
        raise BackupError(f"nothing to back up: no encrypted databases under {data_dir}")
    stamp = _stamp()
    # Built under a hidden name, renamed into place only once complete: a
    # failed backup leaves no directory that looks like a backup.
    partial = _private_dir(backups_dir) / f".{stamp}.partial"
    _private_dir(partial)
    try:
        _write_backup(sources, partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    dest = backups_dir / stamp
    os.rename(partial, dest)
    return dest


def _write_backup(sources: list[NodeDatabase], dest: Path) -> None:
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(),
        "persistent_agent": __version__,
        "nodes": {},
    }
    # Each node's keyring as it is, plus the keys of older databases it has
    # not adopted yet (the live keyring is not written).
    for role in sorted({db.role for db in sources}):
        keys = next(db.keys for db in sources if db.role == role)
        keyring = keys.keyring or keys.empty_keyring()
        for path in keys.missing():
            keyring = keyring.with_key(keys.source.wrapper, namespace_of(path), keys.key_for(path))
        target = _private_dir(dest / role) / KEYRING_FILE
        keyring.save(target)
        manifest["nodes"][role] = {
            "key_fingerprint": keys.fingerprint,
            "keyring_sha256": _sha256(target),
            "databases": [],
        }
    for db in sources:
        target = _private_dir(dest / db.role) / db.path.name
        try:
            with database.opened(db.path, db.key, create=False) as conn:
                rows = database.export(conn, target, db.key)
        except database.DatabaseError as exc:
            # A full or read-only backups disk is the target's problem; a page
            # that fails its HMAC mid-export is the source's.
            mapped = database.storage_error(exc, target)
            if mapped is exc or isinstance(mapped, DatabaseDamagedError):
                raise DatabaseDamagedError(db.path, str(exc)) from None
            raise mapped from None
        database.confirm(target, db.key, rows)
        manifest["nodes"][db.role]["databases"].append(
            {
                "file": db.path.name,
                "namespace": db.namespace,
                "rows": rows,
                "sha256": _sha256(target),
            }
        )
    write_private(dest / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def verify_backup(backup_dir: Path, config_dir: Path) -> list[NodeDatabase]:
    """Check a backup against its manifest and the configured keys; return its files."""
    try:
        return _verify_backup(backup_dir, config_dir)
    except (KeyError, TypeError, AttributeError) as exc:
        raise BackupError(
            f"{backup_dir / MANIFEST} is malformed (bad or missing {exc}); "
            "it was not written by backup, or was edited"
        ) from None


def _verify_backup(backup_dir: Path, config_dir: Path) -> list[NodeDatabase]:
    try:
        manifest = json.loads((backup_dir / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"{backup_dir} has no readable {MANIFEST} ({exc})") from None
    if manifest.get("format") not in FORMATS:
        raise BackupError(f"{backup_dir}: unknown backup format {manifest.get('format')!r}")
    checked = []
    for role, node in manifest["nodes"].items():
        source = source_of(config_dir, role)
        if source.wrapper.fingerprint != node["key_fingerprint"]:
            raise BackupError(
                f"{backup_dir} needs the master key with fingerprint {node['key_fingerprint']} "
                f"for {role} (the key that was current when it was made, or at the last "
                f"rotate-key that re-wrapped it); the configured key is "
                f"{source.wrapper.fingerprint}. Configure that key to restore it"
            )
        keyring_path = backup_dir / role / KEYRING_FILE
        if "keyring_sha256" in node and _sha256_or_none(keyring_path) != node["keyring_sha256"]:
            raise BackupError(f"{keyring_path} is missing or does not match its checksum")
        try:
            keys = NodeKeys(backup_dir / role, source)
        except KeyringError as error:
            raise BackupError(f"{backup_dir}: {error}") from None
        for entry in node["databases"]:
            path = backup_dir / role / entry["file"]
            if not path.is_file() or _sha256(path) != entry["sha256"]:
                raise BackupError(f"{path} is missing or does not match its checksum")
            db = NodeDatabase(role, path, keys)
            database.confirm(path, db.key, int(entry["rows"]))
            checked.append(db)
    return checked


def rewrap(backup_dir: Path, old: KeySource, new: KeySource) -> bool:
    """Re-wrap a backup's keyrings from *old* to *new* (rotate-key); False if *old* did not
    make it. A backup from before keyrings gets one, built from its derived keys.

    Each keyring is replaced atomically, then the manifest; a rerun after a
    kill in between finds the keyring already under *new* and finishes.
    """
    path = backup_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        nodes = manifest["nodes"]
        fingerprints = {node["key_fingerprint"] for node in nodes.values()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise BackupError(f"{path} is unreadable or malformed") from None
    moved = new is not old
    if moved and fingerprints == {new.wrapper.fingerprint}:
        return True
    if fingerprints - {old.wrapper.fingerprint, new.wrapper.fingerprint}:
        return False
    for role, node in nodes.items():
        keyring_path = backup_dir / role / KEYRING_FILE
        keyring = Keyring.load(keyring_path)
        if keyring is None:
            if old.master is None:
                return False  # no keyring, and no key to derive the old keys from
            keyring = Keyring(node=role, wrapped_by=new.wrapper.fingerprint)
            for entry in node["databases"]:
                namespace = namespace_of(Path(entry["file"]))
                keyring = keyring.with_key(
                    new.wrapper, namespace, derived_key(old.master, namespace)
                )
            keyring.save(keyring_path)
        elif not moved or keyring.wrapped_by != new.wrapper.fingerprint:
            keyring.rewrapped(old.wrapper, new.wrapper, where=keyring_path).save(keyring_path)
        node["key_fingerprint"] = new.wrapper.fingerprint
        node["keyring_sha256"] = _sha256(keyring_path)
    shared_tools.rewrap_backup(backup_dir, old.wrapper, new.wrapper)
    manifest["format"] = FORMAT
    write_private(path, json.dumps(manifest, indent=2) + "\n")
    return True


def _sha256_or_none(path: Path) -> str | None:
    return _sha256(path) if path.is_file() else None


def restore(
    backup_dir: Path, config_dir: Path, data_dir: Path, backups_dir: Path, *, force: bool = False
) -> RestoreResult:
    """Put a verified backup in place of data/; existing data is set aside, never dropped.

    Holds both nodes' data-directory locks throughout, so no node runs meanwhile.
    """
    with lock.holding(node_data_dirs(data_dir), "restore"):
        return _restore(verify_backup(backup_dir, config_dir), data_dir, backups_dir, force)


def _restore(
    files: list[NodeDatabase], data_dir: Path, backups_dir: Path, force: bool
) -> RestoreResult:
    existing = all_databases(data_dir)
    if existing and not force:
        raise BackupError(
            f"{data_dir} already holds {len(existing)} databases; "
            "restore --force replaces them (they are kept under backups/)"
        )
    # Keyrings go aside with the databases (or alone, when those were lost).
    existing += [k for d in node_data_dirs(data_dir) if (k := d / KEYRING_FILE).exists()]
    set_aside = None
    if existing:
        set_aside = _private_dir(backups_dir) / f"replaced-{_stamp()}"
        for path in existing:
            role_dir = _private_dir(set_aside / path.parent.name)
            for f in (path, *sidecars(path)):
                if f.exists():
                    shutil.move(f, role_dir / f.name)
    # The keyrings first: a database in place is then always openable.
    keyrings = {db.keys.path for db in files if db.keys.path.is_file()}
    for path in sorted(keyrings):
        _copy_into(path, _private_dir(data_dir / path.parent.name) / KEYRING_FILE)
    for db in files:
        _copy_into(db.path, _private_dir(data_dir / db.role) / db.path.name)
    return RestoreResult(len(files), set_aside)


def _copy_into(source: Path, target: Path) -> None:
    tmp = target.with_name(target.name + ".restore")
    # Whatever is at the temporary path (a leftover, or a planted link) is
    # removed, not followed; the copy is created exclusively, owner-only.
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out, open(source, "rb") as handle:
        shutil.copyfileobj(handle, out)
    database.replace_durably(tmp, target)
