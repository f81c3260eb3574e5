"""Where things live on disk: database file names, the node data directories and
each process's config file.

Kept free of third-party imports so that ``scripts/gen_master_key.py`` (and
with it ``make init``) runs on any Python 3.9+, before the project is
installed, e.g. on a machine that only runs the Docker demo.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from persistent_agent.errors import RestoreInterruptedError

DB_SUFFIX = "_encrypted_value.db"
SIDECAR_SUFFIXES = ("-wal", "-shm")
NODE_ROLES = ("sentinel", "agent")
# The one-writer lock in every node data directory (see storage/lock.py).
LOCK_FILE = "persistent-agent.lock"
# The node's data keys, wrapped by the master key (see storage/data_keys.py).
KEYRING_FILE = "keyring.json"
# A restore in progress (ops/backup.py): its journal, in the data directory and
# in every node directory it swaps, and the directory it builds the new node
# directories in, beside the old ones (``data/.restoring-<time>/``).
RESTORE_JOURNAL = "restore-journal.json"
RESTORE_STAGING_PREFIX = ".restoring-"

_SAFE_NAMESPACE = re.compile(r"[^A-Za-z0-9._-]+")


def file_name(namespace: str) -> str:
    """The file name for *namespace*: ``<namespace>_encrypted_value.db``.

    Characters outside ``[A-Za-z0-9._-]`` become ``_``; when that changes the
    name, a short hash of the original keeps two namespaces from colliding.
    """
    safe = _SAFE_NAMESPACE.sub("_", namespace)[:120] or "ns"
    if safe != namespace:
        safe += "-" + hashlib.sha256(namespace.encode("utf-8")).hexdigest()[:8]
    return safe + DB_SUFFIX


def namespace_of(path: Path) -> str:
    """The (sanitised) namespace a database file belongs to."""
    return path.name[: -len(DB_SUFFIX)] if path.name.endswith(DB_SUFFIX) else path.name


def database_path(directory: Path, namespace: str) -> Path:
    """The file in *directory* of a (sanitised) *namespace*: the inverse of :func:`namespace_of`."""
    return directory / (namespace + DB_SUFFIX)


def database_files(directory: Path) -> list[Path]:
    """Every encrypted database in *directory*, sorted by name."""
    if not directory.is_dir():
        return []
    return sorted(directory.glob("*" + DB_SUFFIX))


def sidecars(path: Path) -> list[Path]:
    """The -wal and -shm files SQLite may keep next to *path*."""
    return [path.with_name(path.name + suffix) for suffix in SIDECAR_SUFFIXES]


def is_ours(name: str) -> bool:
    """Whether a file named *name* in a node's data directory is one this project writes:
    a database, a sidecar SQLite keeps beside one, the keyring, the one-writer lock, or
    the journal of a restore in progress."""
    base = name.removesuffix("-journal")
    for suffix in SIDECAR_SUFFIXES:
        base = base.removesuffix(suffix)
    return base.endswith(DB_SUFFIX) or name in (LOCK_FILE, KEYRING_FILE, RESTORE_JOURNAL)


def foreign_files(directory: Path) -> list[Path]:
    """Everything in *directory* that is not ours (see :func:`is_ours`), sorted."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_dir() or not is_ours(p.name))


def env_file(config_dir: Path, role: str) -> Path:
    """config/.env.<role>: the settings of one process (``make init`` writes it)."""
    return config_dir / f".env.{role}"


def node_data_dirs(data_dir: Path) -> list[Path]:
    """data/sentinel and data/agent: one storage directory per node."""
    return [data_dir / role for role in NODE_ROLES]


def all_databases(data_dir: Path) -> list[Path]:
    """Every encrypted database of both nodes."""
    return [db for d in node_data_dirs(data_dir) for db in database_files(d)]


def restore_journal(node_dir: Path) -> Path | None:
    """The journal of an unfinished restore that swaps *node_dir*, if there is one.

    It is looked for in the node directory and in the data directory above it:
    a container sees only its own node directory, and a local node started
    while restore swaps directories may find its own missing for an instant.
    """
    for journal in (node_dir / RESTORE_JOURNAL, node_dir.parent / RESTORE_JOURNAL):
        if journal.is_file():
            return journal
    return None


def unfinished_restore(journal: Path) -> str:
    """The one line that says how to finish the restore that *journal* records."""
    try:
        backup = json.loads(journal.read_text())["backup"]
    except (OSError, ValueError, KeyError, TypeError):
        backup = "<the same backup>"
    return (
        f"a restore of {backup} was interrupted; run `make restore BACKUP={backup} FORCE=1` "
        "again to finish it"
    )


def refuse_unfinished_restore(node_dir: Path) -> None:
    """Refuse to use *node_dir* while a restore that swaps it is unfinished: it may be
    missing, or be the old directory or the new one, until that restore is run again."""
    journal = restore_journal(node_dir)
    if journal is not None:
        raise RestoreInterruptedError(unfinished_restore(journal))
