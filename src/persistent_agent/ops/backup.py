"""Consistent, encrypted backups of both nodes, and verified restores.

A backup is taken through SQLCipher while the services run: each database is
exported inside one read transaction (a consistent snapshot; live files are
never copied) into a new file encrypted with the same per-database key. A
``manifest.json`` records namespaces, row counts, checksums and a fingerprint
of the master key that opens them. A restore verifies all of that first.
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
from persistent_agent.errors import BackupError, DatabaseDamagedError
from persistent_agent.ops.config_files import node_key, write_private
from persistent_agent.ops.inspection import NodeDatabase, node_databases
from persistent_agent.storage import database, lock
from persistent_agent.storage.layout import all_databases, node_data_dirs, sidecars

MANIFEST = "manifest.json"
FORMAT = 1


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
        node = manifest["nodes"].setdefault(
            db.role, {"key_fingerprint": db.master_key.fingerprint(), "databases": []}
        )
        node["databases"].append(
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
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{backup_dir}: unknown backup format {manifest.get('format')!r}")
    checked = []
    for role, node in manifest["nodes"].items():
        key = node_key(config_dir, role)
        if key.fingerprint() != node["key_fingerprint"]:
            raise BackupError(
                f"{backup_dir} was taken under another master key for {role} "
                f"(fingerprint {node['key_fingerprint']}, configured {key.fingerprint()}); "
                "put that key in config/.env.* to restore it"
            )
        for entry in node["databases"]:
            path = backup_dir / role / entry["file"]
            if not path.is_file() or _sha256(path) != entry["sha256"]:
                raise BackupError(f"{path} is missing or does not match its checksum")
            db = NodeDatabase(role, path, key)
            database.confirm(path, db.key, int(entry["rows"]))
            checked.append(db)
    return checked


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
    set_aside = None
    if existing:
        if not force:
            raise BackupError(
                f"{data_dir} already holds {len(existing)} databases; "
                "restore --force replaces them (they are kept under backups/)"
            )
        set_aside = _private_dir(backups_dir) / f"replaced-{_stamp()}"
        for path in existing:
            role_dir = _private_dir(set_aside / path.parent.name)
            for f in (path, *sidecars(path)):
                if f.exists():
                    shutil.move(f, role_dir / f.name)
    for db in files:
        target = _private_dir(data_dir / db.role) / db.path.name
        tmp = target.with_name(target.name + ".restore")
        # Whatever is at the temporary path (a leftover, or a planted link) is
        # removed, not followed; the copy is created exclusively, owner-only.
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out, open(db.path, "rb") as source:
            shutil.copyfileobj(source, out)
        database.replace_durably(tmp, target)
    return RestoreResult(len(files), set_aside)
