"""Read every database with its node's key: `verify` and `inspect`.

They are how an operator looks at data without risking it, so both leave
every file exactly as they found it, sidecars included, whether the key is
right or wrong, while a node runs and writes, and after a node was killed
(``database.open_database(read_only=True)`` says how). Nothing decrypted is
ever written to disk; `inspect` prints to stdout only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from persistent_agent.errors import KeyringError, PersistentAgentError, WrongKeyError
from persistent_agent.ops.config_files import pending_key_file
from persistent_agent.ops.node_keys import keys_of
from persistent_agent.storage import database, layout
from persistent_agent.storage.data_keys import NodeKeys, lost_databases, wrong_key
from persistent_agent.storage.layout import (
    KEYRING_FILE,
    NODE_ROLES,
    database_files,
    file_name,
    foreign_files,
    namespace_of,
    node_data_dirs,
)


@dataclass(frozen=True)
class NodeDatabase:
    role: str
    path: Path
    keys: NodeKeys  # the node's keyring (or the derived keys of older data)

    @property
    def namespace(self) -> str:
        return namespace_of(self.path)

    @property
    def key(self) -> bytes:
        return self.keys.key_for(self.path)


@dataclass(frozen=True)
class Report:
    """The outcome of checking one file: entries counted, or what is wrong."""

    path: Path
    entries: int | None
    problem: str | None

    def line(self) -> str:
        if self.problem:
            return f"FAIL  {self.path}: {self.problem}"
        return f"ok    {self.path} ({self.entries} entries)"


def refuse_unfinished_restore(data_dir: Path) -> None:
    """Refuse to read data/ while a restore into it is unfinished, with the line that says
    how to finish it: until then a node directory may be the old one, the new one, or
    missing."""
    for directory in node_data_dirs(data_dir):
        layout.refuse_unfinished_restore(directory)


def refuse_interrupted_rotation(config_dir: Path, data_dir: Path) -> None:
    """Fail with the line a node gives when a rotate-key stopped half-way through its
    directory: a re-encryption's keyring holding the keys it was moving to, or (while the
    new key still waits in config/master.key.next) a keyring already under the new key."""
    rotating = pending_key_file(config_dir).exists()
    moved: KeyringError | None = None
    for role in NODE_ROLES:
        if not (data_dir / role / KEYRING_FILE).is_file():
            continue
        try:
            keys = keys_of(config_dir, data_dir, role)
        except KeyringError as error:  # damaged, or under another key: see verify's lines
            moved = moved or (error if rotating else None)
            continue
        keys.refuse_pending()
    if moved is not None:
        raise moved


def node_databases(config_dir: Path, data_dir: Path) -> list[NodeDatabase]:
    """Every database of both nodes, with the keys its node's config and keyring give."""
    refuse_unfinished_restore(data_dir)
    found = []
    for role in NODE_ROLES:
        paths = database_files(data_dir / role)
        if paths:
            keys = keys_of(config_dir, data_dir, role)
            found += [NodeDatabase(role, path, keys) for path in paths]
    return found


def namespace_rows(config_dir: Path, data_dir: Path, role: str, namespace: str) -> dict[str, str]:
    """Every (key, value JSON) of one namespace of *role*'s local files, read-only.

    No file for it means no rows.
    """
    refuse_unfinished_restore(data_dir)
    path = data_dir / role / file_name(namespace)
    if not path.is_file():
        return {}
    db = NodeDatabase(role, path, keys_of(config_dir, data_dir, role))
    with database.storage_errors(db.path), _opened(db) as conn:
        return dict(database.rows(conn))


@contextlib.contextmanager
def _opened(db: NodeDatabase) -> Iterator[database.Connection]:
    """*db* opened read-only; a key that does not fit says what is missing."""
    try:
        with database.opened(db.path, db.key, read_only=True) as conn:
            yield conn
    except WrongKeyError:
        raise wrong_key(db.path, db.keys) from None


def check(db: NodeDatabase) -> Report:
    """Open *db* read-only and run both integrity checks."""
    try:
        with (
            database.storage_errors(db.path),
            _opened(db) as conn,
        ):
            problems = database.integrity_problems(conn)
            if problems:
                return Report(db.path, None, "; ".join(problems[:3]))
            count = database.row_count(conn)
    except PersistentAgentError as error:
        return Report(db.path, None, str(error))
    except database.DatabaseError as error:
        return Report(db.path, None, str(error))
    return Report(db.path, int(count), None)


def verify(config_dir: Path, data_dir: Path) -> list[Report]:
    """Every database checked, then every file in a node's directory that is not ours.

    A stray file is flagged, not judged: a plaintext database written by
    another storage profile, a leftover of an interrupted operation, or
    something put there by hand. verify touches none of them.

    An unfinished restore or key rotation stops it with the one line a node
    gives, which says how to finish it: file by file, every file it already
    moved would fail as undecryptable, and none of those lines names the fix.
    """
    refuse_unfinished_restore(data_dir)
    refuse_interrupted_rotation(config_dir, data_dir)
    reports = []
    for role in NODE_ROLES:
        paths = database_files(data_dir / role)
        try:
            keys = keys_of(config_dir, data_dir, role) if paths else None
        except KeyringError as error:  # damaged, or wrapped by another key: every file fails
            reports += [Report(path, None, str(error)) for path in paths]
            continue
        reports += [check(NodeDatabase(role, path, keys)) for path in paths if keys]
    reports += _lost(data_dir)
    for directory in node_data_dirs(data_dir):
        reports += [
            Report(path, None, "not a file of persistent-agent (left as it is)")
            for path in foreign_files(directory)
        ]
    return reports


def _lost(data_dir: Path) -> list[Report]:
    """A database that its node's keyring proves existed, missing from the disk."""
    reports = []
    for directory in node_data_dirs(data_dir):
        with contextlib.suppress(KeyringError):  # a damaged keyring fails its node's files
            reports += [Report(e.path, None, str(e)) for e in lost_databases(directory)]
    return reports


def inspect(config_dir: Path, data_dir: Path) -> Iterator[str]:
    """Lines describing every database: a header, then ``key<TAB>value JSON`` rows."""
    for db in node_databases(config_dir, data_dir):
        with (
            database.storage_errors(db.path),
            _opened(db) as conn,
        ):
            entries = database.rows(conn)
        yield f"== {db.path}  [{db.role}, namespace {db.namespace}, {len(entries)} entries]"
        for key, value in entries:
            yield f"{key}\t{value}"
