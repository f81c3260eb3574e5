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

The fabric's access material (config/access: the CA, the issuer's signing
key, the credentials) goes in sealed, as ``access.sealed``
(ops/access_backup.py), under the same master key; restore puts it back only
where config/access is missing. Backups without it are still valid.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import errno
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from persistent_agent import __version__
from persistent_agent.access.project import access_dir
from persistent_agent.errors import (
    BackupError,
    DatabaseDamagedError,
    KeyringError,
    RestoreInterruptedError,
)
from persistent_agent.keys.custody import KeySource
from persistent_agent.keys.keyring import Keyring, derived_key
from persistent_agent.keys.secret_files import sync_directory, sync_file, write_private
from persistent_agent.ops import access_backup, shared_tools
from persistent_agent.ops.inspection import NodeDatabase, node_databases
from persistent_agent.ops.node_keys import source_of
from persistent_agent.storage import database, lock
from persistent_agent.storage.data_keys import NodeKeys
from persistent_agent.storage.layout import (
    KEYRING_FILE,
    LOCK_FILE,
    NODE_ROLES,
    RESTORE_JOURNAL,
    RESTORE_STAGING_PREFIX,
    all_databases,
    namespace_of,
    node_data_dirs,
    unfinished_restore,
)

MANIFEST = "manifest.json"
FORMAT = 2  # 2: with each node's keyring; 1: keys derived from the master key
FORMATS = (1, 2)


@dataclass(frozen=True)
class RestoreResult:
    restored: int
    set_aside: Path | None  # where replaced data went (restore --force)
    access: str | None = None  # a line on config/access: restored, or kept though it differs


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
    partial = _backups_root(backups_dir) / f".{stamp}.partial"
    _private_dir(partial)
    try:
        _write_backup(sources, partial, access_dir(config_dir))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    dest = backups_dir / stamp
    os.rename(partial, dest)
    return dest


def _write_backup(sources: list[NodeDatabase], dest: Path, access: Path) -> None:
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
    if access.is_dir():
        # Sealed under the nodes' key (rotate-key keeps both nodes on one key).
        wrapper = min(sources, key=lambda db: db.role).keys.source.wrapper
        sealed = access_backup.seal(access, dest / access_backup.SEALED_FILE, wrapper)
        manifest["access"] = sealed.to_json()
    write_private(dest / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def verify_backup(backup_dir: Path, config_dir: Path) -> list[NodeDatabase]:
    """Check a backup against its manifest and the configured keys; return its files."""
    try:
        return _verify_backup(backup_dir, config_dir)
    except (KeyError, TypeError, AttributeError) as exc:
        raise _malformed(backup_dir, exc) from None


def _malformed(backup_dir: Path, exc: Exception) -> BackupError:
    return BackupError(
        f"{backup_dir / MANIFEST} is malformed (bad or missing {exc}); "
        "it was not written by backup, or was edited"
    )


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
    if "access" in manifest:
        _unseal_access(backup_dir, config_dir, manifest)
    return checked


def _unseal_access(
    backup_dir: Path, config_dir: Path, manifest: dict[str, Any]
) -> dict[str, bytes]:
    """The files of the backup's config/access, checked against the manifest's checksum."""
    entry = manifest["access"]
    path = backup_dir / access_backup.SEALED_FILE
    if _sha256_or_none(path) != entry["sha256"]:
        raise BackupError(f"{path} is missing or does not match its checksum")
    fingerprint = entry["key_fingerprint"]
    sources = [source_of(config_dir, role) for role in manifest["nodes"]]
    wrapper = next((s.wrapper for s in sources if s.wrapper.fingerprint == fingerprint), None)
    if wrapper is None:
        configured = ", ".join(sorted({s.wrapper.fingerprint for s in sources})) or "none"
        raise BackupError(
            f"{backup_dir} needs the master key with fingerprint {fingerprint} for its "
            f"config/access ({path}); the configured key is {configured}. "
            "Configure that key to restore it"
        )
    return access_backup.unseal(path, wrapper)


def _restore_access(backup_dir: Path, config_dir: Path) -> str | None:
    """Put the backup's config/access back if config/access is missing; the line to show."""
    try:
        manifest = json.loads((backup_dir / MANIFEST).read_text())
        if "access" not in manifest:
            return None  # a backup from before the fabric was secured
        files = _unseal_access(backup_dir, config_dir, manifest)
    except ValueError:
        raise BackupError(f"{backup_dir} has no readable {MANIFEST}") from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise _malformed(backup_dir, exc) from None
    sealed = backup_dir / access_backup.SEALED_FILE
    return access_backup.put_back(files, access_dir(config_dir), source=sealed)


def rewrap(backup_dir: Path, old: KeySource, new: KeySource) -> bool:
    """Re-wrap a backup's keyrings and access.sealed from *old* to *new* (rotate-key); False
    if *old* did not make it. A backup from before keyrings gets one, built from its
    derived keys.

    access.sealed and each keyring are replaced atomically, then the manifest; a
    rerun after a kill in between finds them already under *new* and finishes.
    """
    path = backup_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        nodes = manifest["nodes"]
        fingerprints = {node["key_fingerprint"] for node in nodes.values()}
        access = manifest.get("access")
        if access is not None:
            fingerprints.add(access["key_fingerprint"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise BackupError(f"{path} is unreadable or malformed") from None
    moved = new is not old
    if moved and fingerprints == {new.wrapper.fingerprint}:
        return True
    if fingerprints - {old.wrapper.fingerprint, new.wrapper.fingerprint}:
        return False
    if access is not None:  # first: a damaged access.sealed stops it before any keyring moves
        sealed = backup_dir / access_backup.SEALED_FILE
        access_backup.rewrap(sealed, old.wrapper, new.wrapper)
        access["key_fingerprint"] = new.wrapper.fingerprint
        access["sha256"] = _sha256(sealed)
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
    """Put a verified backup in place of data/, all or nothing; replaced data is set aside.

    The backup's config/access is put back only where config/access is missing
    (a fresh machine); an existing one is never overwritten (``access`` says so).

    Holds both nodes' data-directory locks throughout, and those of the new
    directories, which move in with them, so no node runs meanwhile. A restore
    that was interrupted is finished by running it again with the same backup.
    """
    journal = data_dir / RESTORE_JOURNAL
    try:
        if journal.is_file():
            record = _unfinished(journal, backup_dir)
            staging = data_dir / record["staging"]
            with _locked([*node_data_dirs(data_dir), *(staging / r for r in NODE_ROLES)]):
                access = _restore_access(backup_dir, config_dir)
                return replace(_finish(record, data_dir), access=access)
        with lock.holding(node_data_dirs(data_dir), "restore"):
            files = verify_backup(backup_dir, config_dir)
            existing = all_databases(data_dir)
            if existing and not force:
                raise BackupError(
                    f"{data_dir} already holds {len(existing)} databases; "
                    "restore --force replaces them (they are kept under backups/)"
                )
            # config/access first: putting it back where it is missing is harmless even if
            # the data swap then stops, and a rerun finds it done.
            access = _restore_access(backup_dir, config_dir)
            restored = _restore(backup_dir.resolve(), files, data_dir, _backups_root(backups_dir))
            return replace(restored, access=access)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        then = f"; {unfinished_restore(journal)}" if journal.is_file() else ""
        raise BackupError(f"restore stopped: {where}{exc.strerror or exc}{then}") from None


def unfinished(data_dir: Path) -> bool:
    """Whether a restore into *data_dir* was interrupted (running it again finishes it)."""
    return (data_dir / RESTORE_JOURNAL).is_file()


# Restore builds the new node directories in data/.restoring-<time>/<role>/,
# complete and synced, then writes its journal (data/restore-journal.json,
# a copy in every node directory): from then on it only rolls forward, and
# every node and tool refuses those directories until it is done. Each node
# directory is swapped with its new one by one atomic exchange (two renames
# where the system has none); the old one is parked in .restoring-<time>/replaced/
# and then moved to backups/replaced-<time>/. Every step can be redone after a
# kill: which of the two directories is which, the copy in each says.
_PARKED = "replaced"
_NEW, _OLD = "new", "old"


def _restore(
    backup_dir: Path, files: list[NodeDatabase], data_dir: Path, backups_dir: Path
) -> RestoreResult:
    # What a restore killed before its journal left: a partial copy of a
    # backup, never data. Nothing was swapped, so dropping it rolls that back.
    for stale in data_dir.glob(RESTORE_STAGING_PREFIX + "*/"):
        if (stale / _PARKED).exists():  # never so by design; no data is dropped to find out
            raise BackupError(f"{stale / _PARKED} holds replaced data; move it away first")
        shutil.rmtree(stale)
    stamp = _stamp()
    staging = _private_dir(data_dir / (RESTORE_STAGING_PREFIX + stamp))
    record: dict[str, Any] = {
        "backup": str(backup_dir),
        "staging": staging.name,
        "replaced": str((backups_dir / f"replaced-{stamp}").absolute()),
        "restored": len(files),
        "nodes": {},
    }
    for role in NODE_ROLES:
        new = _private_dir(staging / role)
        sources = [db.path for db in files if db.role == role]
        keyring = backup_dir / role / KEYRING_FILE
        if keyring.is_file():
            sources.insert(0, keyring)
        for source in sources:
            _copy_into(source, new / source.name)
        record["nodes"][role] = {source.name: _sha256(new / source.name) for source in sources}
        _mark(new, record, _NEW)
    with _locked([staging / role for role in NODE_ROLES]):
        write_private(data_dir / RESTORE_JOURNAL, json.dumps(record, indent=2) + "\n")
        for role in NODE_ROLES:
            if (data_dir / role).is_dir():
                _mark(data_dir / role, record, _OLD)
        return _finish(record, data_dir)


def _mark(directory: Path, record: dict[str, Any], side: str) -> None:
    """The journal's copy in a node directory, saying whether it is the new one or the old."""
    mark = {"backup": record["backup"], "staging": record["staging"], "side": side}
    write_private(directory / RESTORE_JOURNAL, json.dumps(mark) + "\n")


def _side(directory: Path) -> str | None:
    try:
        side = json.loads((directory / RESTORE_JOURNAL).read_text())["side"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return side if side in (_NEW, _OLD) else None


def _unfinished(journal: Path, backup_dir: Path) -> dict[str, Any]:
    """The journal of an interrupted restore, if *backup_dir* is its backup."""
    try:
        record: dict[str, Any] = json.loads(journal.read_text())
        same = Path(record["backup"]) == backup_dir.resolve()
        if not {"nodes", "staging", "replaced", "restored"} <= record.keys():
            raise KeyError
    except (OSError, ValueError, KeyError, TypeError):
        raise BackupError(f"{journal} is unreadable; it was not written by restore") from None
    if not same:
        raise RestoreInterruptedError(
            unfinished_restore(journal) + f", before restoring {backup_dir}"
        )
    return record


def _finish(record: dict[str, Any], data_dir: Path) -> RestoreResult:
    staging = data_dir / record["staging"]
    parked = staging / _PARKED
    for role, expected in record["nodes"].items():
        node, new = data_dir / role, staging / role
        if _side(new) == _NEW:
            _check_staged(new, expected)
            _private_dir(parked)
            if not node.exists():  # no old one, or parked by a rename before a kill
                os.rename(new, node)
            elif _exchange(node, new):
                os.rename(new, parked / role)  # *new* now names the old directory
            else:
                os.rename(node, parked / role)
                os.rename(new, node)
        elif new.is_dir():  # exchanged, the old one not yet parked
            _private_dir(parked)
            os.rename(new, parked / role)
        if not node.is_dir():
            raise BackupError(f"{node} is missing, and {new} too; {staging} is left as it is")
        sync_directory(data_dir)
    aside = Path(record["replaced"])
    for role in record["nodes"]:
        if (parked / role).is_dir():
            _set_aside(parked / role, aside / role)
    if parked.is_dir():
        parked.rmdir()  # empty now; fails, keeping it, if anything is left in it
    for role in record["nodes"]:
        _drop_journal(data_dir / role)
    _drop_journal(data_dir)  # the last step: from here on, the restore is done
    sync_directory(data_dir)
    shutil.rmtree(staging)
    return RestoreResult(int(record["restored"]), aside if aside.is_dir() else None)


def _drop_journal(directory: Path) -> None:
    """Remove the journal (or its copy) from *directory*, and any temporary file that a
    kill while it was written left (write_private's ``.<name>.*.tmp``)."""
    for leftover in directory.glob(f".{RESTORE_JOURNAL}.*.tmp"):
        leftover.unlink()
    (directory / RESTORE_JOURNAL).unlink(missing_ok=True)


def _check_staged(directory: Path, expected: dict[str, str]) -> None:
    """Refuse to swap in a new directory that no longer holds what restore copied there."""
    for name, digest in expected.items():
        if _sha256_or_none(directory / name) != digest:
            raise BackupError(
                f"{directory / name}, copied there by restore, is missing or changed; "
                "no node directory was swapped with it"
            )


def _set_aside(old: Path, dest: Path) -> None:
    """Move a replaced node directory to backups/replaced-<time>/ (dropped if it held no
    data: only the lock, or nothing); copied when backups/ is on another filesystem."""
    _drop_journal(old)
    (old / LOCK_FILE).unlink(missing_ok=True)  # not data; the node's lock is the new one's
    if not any(old.iterdir()):
        old.rmdir()
        return
    _private_dir(dest.parent)
    if dest.is_dir():  # copied across filesystems by a run that stopped before the removal
        shutil.rmtree(old)
        return
    try:
        os.rename(old, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        partial = dest.with_name(f".{dest.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(old, partial, copy_function=_copy_synced)
        os.rename(partial, dest)
        shutil.rmtree(old)
    sync_directory(dest.parent)


def _copy_synced(source: str, target: str) -> None:
    shutil.copy2(source, target)
    sync_file(Path(target))


@contextlib.contextmanager
def _locked(directories: list[Path]) -> Iterator[None]:
    """Hold the lock of each of *directories* that exists (none is created: a missing node
    directory is one a restore moved away, and must stay missing until it is finished)."""
    keys: list[Path] = []
    try:
        for directory in directories:
            if directory.is_dir():
                keys.append(lock.acquire(directory, "restore"))
        yield
    finally:
        for key in reversed(keys):
            lock.release(key)


# renameat2(2)'s RENAME_EXCHANGE: swaps two directories in one step, so a node
# directory is never missing, not even for an instant (Linux 3.15, glibc 2.28).
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap *a* and *b* atomically; False where the system cannot (then nothing moved)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    sys.audit("persistent_agent.rename_exchange", a, b)
    if renameat2(_AT_FDCWD, bytes(a), _AT_FDCWD, bytes(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _backups_root(backups_dir: Path) -> Path:
    """The backups directory, created owner-only if missing; one line if it cannot be one.

    A symbolic link is used as it is, its target's mode left alone: that
    directory (on another disk, say) was made by someone else. What restore
    and backup put in it stays private anyway, since each backup and each
    replaced-* directory is created 0700 with 0600 files.
    """
    if backups_dir.is_symlink():
        if not backups_dir.is_dir():
            raise BackupError(
                f"{backups_dir} is a symbolic link to {os.readlink(backups_dir)}, which is not "
                "a directory; point it at one, or give --backups-dir another path"
            )
        return backups_dir
    if backups_dir.exists() and not backups_dir.is_dir():
        raise BackupError(
            f"{backups_dir} is a file, not a directory; move it away, or give --backups-dir "
            "another path"
        )
    try:
        return _private_dir(backups_dir)
    except OSError as exc:
        raise BackupError(f"cannot create {backups_dir} ({exc.strerror})") from None


def _copy_into(source: Path, target: Path) -> None:
    tmp = target.with_name(target.name + ".restore")
    # Whatever is at the temporary path (a leftover, or a planted link) is
    # removed, not followed; the copy is created exclusively, owner-only.
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out, open(source, "rb") as handle:
        shutil.copyfileobj(handle, out)
    database.replace_durably(tmp, target)
