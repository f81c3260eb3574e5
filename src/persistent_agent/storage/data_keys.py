"""Which key opens which database of a node: its keyring, and adopting older data.

A node directory holds its databases and one keyring (``keyring.json``) with
their data keys, wrapped by the master key (keys/keyring.py). A database with
no keyring entry was written before keyrings: its key is the one derived from
the master key, and the keyring adopts it as it is (the first start or
rotate-key does that), so upgrading rewrites no database file.

A keyring entry also proves that its file existed: a new database's key is
saved *reserved* before the file is created, and the reservation is dropped
once the file is on disk. A file missing for an entry that is not reserved
was deleted or moved, and is reported as damage, never created anew; a
reserved entry without its file is a creation that a crash cut short, and
the file is created with the key already saved.
"""

from __future__ import annotations

from pathlib import Path

from persistent_agent.errors import DatabaseDamagedError, KeyringError, WrongKeyError
from persistent_agent.keys.custody import KeySource
from persistent_agent.keys.keyring import Keyring, derived_key, new_data_key
from persistent_agent.storage.layout import (
    KEYRING_FILE,
    database_files,
    database_path,
    namespace_of,
)


class NodeKeys:
    """The data keys of the databases in *directory*, unwrapped with *source*.

    Reading never writes; :meth:`adopt` and :meth:`create` save the keyring
    (atomically) and say so in their names.
    """

    def __init__(self, directory: Path, source: KeySource) -> None:
        self.directory = directory
        self.source = source
        self.path = directory / KEYRING_FILE
        self.keyring = Keyring.load(self.path)
        if self.keyring is not None:
            self.keyring.check_wrapper(source.wrapper, self.path)

    @property
    def fingerprint(self) -> str:
        return self.source.wrapper.fingerprint

    def refuse_pending(self) -> None:
        """Fail when a ``rotate-key REENCRYPT=1`` stopped half-way through this node."""
        if self.keyring is not None and self.keyring.pending:
            raise KeyringError(
                f"a `make rotate-key REENCRYPT=1` was interrupted ({self.path} holds keys it "
                "was moving to); run `make rotate-key REENCRYPT=1` again to finish it"
            )

    def key_for(self, path: Path) -> bytes:
        """The data key of an existing database *path* (from the keyring, or derived)."""
        namespace = namespace_of(path)
        if self.keyring is not None:
            key = self.keyring.unwrap(self.source.wrapper, namespace, where=self.path)
            if key is not None:
                return key
        if self.source.master is None:
            raise KeyringError(
                f"{path} has no entry in {self.path}, and with a key service there is no "
                "derived key to try; restore the keyring from a backup"
            )
        return derived_key(self.source.master, namespace)

    def missing(self) -> list[Path]:
        """Databases with no keyring entry: written before keyrings, or a keyring lost."""
        known = self.keyring.keys if self.keyring is not None else {}
        return [p for p in database_files(self.directory) if namespace_of(p) not in known]

    def lost(self) -> list[Path]:
        """Databases the keyring proves existed (entries not reserved) that are not on disk."""
        return _lost(self.directory, self.keyring)

    def refuse_lost(self) -> None:
        """Fail, naming the first one, when a database the keyring knows is not on disk."""
        if lost := self.lost():
            raise lost_error(lost[0], self.path)

    def key_for_new(self, path: Path) -> bytes:
        """The key to create *path* (not on disk) with: a new random one, saved reserved
        before it is used, or the one a creation cut short by a crash reserved.

        An entry that is not reserved means the file existed: that is damage.
        """
        namespace = namespace_of(path)
        if self.keyring is not None and namespace in self.keyring.keys:
            if namespace not in self.keyring.reserved:
                raise lost_error(path, self.path)
            return self.key_for(path)
        key = new_data_key()
        keyring = self.keyring or self.empty_keyring()
        self._save(keyring.with_key(self.source.wrapper, namespace, key, reserve=True))
        return key

    def confirm(self) -> None:
        """Drop the reservations of the databases now on disk (saving only if any)."""
        if self.keyring is None:
            return
        created = {
            namespace
            for namespace in self.keyring.reserved
            if database_path(self.directory, namespace).exists()
        }
        if created:
            self._save(self.keyring.confirmed(created))

    def empty_keyring(self) -> Keyring:
        return Keyring(node=self.directory.name, wrapped_by=self.fingerprint)

    def adopt(self, paths: list[Path]) -> None:
        """Put the derived keys of *paths* in the keyring (each proven to open it already)."""
        keyring = self.keyring or self.empty_keyring()
        for path in paths:
            keyring = keyring.with_key(self.source.wrapper, namespace_of(path), self.key_for(path))
        self._save(keyring)

    def _save(self, keyring: Keyring) -> None:
        keyring.save(self.path)
        self.keyring = keyring


def _lost(directory: Path, keyring: Keyring | None) -> list[Path]:
    if keyring is None:
        return []
    return [
        path
        for namespace in sorted(keyring.keys)
        if namespace not in keyring.reserved
        and not (path := database_path(directory, namespace)).exists()
    ]


def lost_error(path: Path, keyring_path: Path) -> DatabaseDamagedError:
    return DatabaseDamagedError(
        path,
        f"the file is missing, but {keyring_path} holds its data key, so it existed: it was "
        "deleted or moved; put it back, or restore a backup (make restore)",
    )


def lost_databases(directory: Path) -> list[DatabaseDamagedError]:
    """What is wrong with each database of *directory* that its keyring knows and the disk
    lacks; reads the keyring only (no key needed), :class:`KeyringError` if it is damaged."""
    keyring_path = directory / KEYRING_FILE
    return [lost_error(p, keyring_path) for p in _lost(directory, Keyring.load(keyring_path))]


def wrong_key(path: Path, keys: NodeKeys) -> KeyringError | WrongKeyError:
    """The error for a database that its key does not open, pointing at what is missing."""
    if keys.keyring is None and path.exists():
        return KeyringError(
            f"cannot decrypt {path}: the key derived from the configured master key "
            f"({keys.fingerprint}) does not open it, and there is no keyring ({keys.path}) "
            "with its data key; configure the key it was written with, or put the keyring "
            "back from a backup; no file was changed"
        )
    return WrongKeyError(path)
