"""The ``encrypted-sqlite`` profile's files as a ``StateBackend`` (``storage.backend``).

Rows are the ``kv`` rows of the node's SQLCipher files (one file per
namespace, ``storage.provider``), and request records the ``requests`` table
of the file the write went to: the very tables and bytes the provider writes,
so nothing on disk changes with the access path.

**Versions without a version column.** The files hold no version, and adding
one would change their format. None is needed: one process writes a data
directory (``storage.lock``), so versions are kept here, in memory, per row:
the version this backend gave the row and a digest of the value it held
then. A row read with another value than remembered (written by another path
of the same process, such as the runtime's plain ``set``) gets the next
version, so a compare-and-set on the earlier one fails as it should. A row
first seen after opening is version 1. Versions therefore restart at 1 when
the backend is reopened; within one backend they only grow. Use one backend
per provider (two would remember separately).

**Integrity** is SQLCipher's: every page is authenticated, the provider checks
every file when it opens, and a page altered since is reported as
:class:`~persistent_agent.errors.DatabaseDamagedError` naming the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

from persistent_agent.errors import PersistentAgentError
from persistent_agent.keys.custody import KeySource
from persistent_agent.keys.master_key import MasterKey
from persistent_agent.storage import database, layout
from persistent_agent.storage.backend import (
    REQUEST_WINDOW_SECONDS,
    RecordedRequest,
    Request,
    Row,
    RowStream,
)
from persistent_agent.storage.provider import SQLCipherStorageProvider

# Pruning of old request records runs once every this many recorded requests.
_PRUNE_EVERY = 256

_SELECT = f"SELECT value FROM {database.TABLE} WHERE key = ?"  # noqa: S608 - our table
_UPSERT = (
    f"INSERT INTO {database.TABLE} (key, value, updated_at) VALUES (?, ?, ?) "  # noqa: S608
    "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
)
_DELETE = f"DELETE FROM {database.TABLE} WHERE key = ?"  # noqa: S608 - our table
_RECORD = (
    f"INSERT INTO {database.REQUESTS_TABLE} (id, arguments, result, created_at) "  # noqa: S608
    "VALUES (?, ?, ?, ?) ON CONFLICT(id) DO NOTHING"
)
_LOOKUP = f"SELECT result, arguments FROM {database.REQUESTS_TABLE} WHERE id = ?"  # noqa: S608
_PRUNE = f"DELETE FROM {database.REQUESTS_TABLE} WHERE created_at < ?"  # noqa: S608
_KEYS = f"SELECT key FROM {database.TABLE} ORDER BY key"  # noqa: S608 - our table
_HAS_REQUESTS = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


class SQLCipherBackend:
    """Versioned, compare-and-set rows over one node's SQLCipher files.

    Every method runs its statements to completion without awaiting, so the
    event loop never sees half of a compare-and-set; each write is one
    ``BEGIN IMMEDIATE`` transaction.
    """

    def __init__(self, provider: SQLCipherStorageProvider, *, owned: bool = False) -> None:
        self._provider = provider
        self._owned = owned
        self.where = str(provider.db_directory)
        # (namespace, key) -> (version, digest of the value it had then)
        self._versions: dict[tuple[str, str], tuple[int, bytes]] = {}
        self._recorded = 0

    @classmethod
    def open(cls, db_directory: Path, key_source: KeySource | MasterKey) -> SQLCipherBackend:
        """A backend over its own provider for *db_directory* (takes the directory's lock)."""
        return cls(SQLCipherStorageProvider(db_directory, key_source), owned=True)

    # ------------------------------------------------------------ files

    def _path(self, namespace: str) -> Path:
        return self._provider.db_directory / layout.file_name(namespace)

    def _conn(self, namespace: str) -> tuple[database.Connection, Path]:
        path = self._path(namespace)
        return self._provider.connection(path), path

    def _version(
        self, conn: database.Connection, namespace: str, key: str
    ) -> tuple[str | None, int]:
        """The row's value and version now (see the module docstring), remembered."""
        found = conn.execute(_SELECT, (key,)).fetchone()
        if found is None:
            self._versions.pop((namespace, key), None)
            return None, 0
        value = str(found[0])
        digest = _digest(value)
        known = self._versions.get((namespace, key))
        if known is None:
            version = 1
        elif known[1] == digest:
            version = known[0]
        else:
            version = known[0] + 1
        self._versions[(namespace, key)] = (version, digest)
        return value, version

    # ------------------------------------------------------------ the protocol

    async def read(self, namespace: str, key: str) -> Row | None:
        conn, path = self._conn(namespace)
        with database.storage_errors(path):
            value, version = self._version(conn, namespace, key)
        return None if value is None else Row(namespace, key, value, version)

    async def write(
        self,
        namespace: str,
        key: str,
        value: str,
        expected: int,
        request: Request | None = None,
    ) -> bool:
        conn, path = self._conn(namespace)
        now = time.time()
        with database.storage_errors(path):
            conn.execute("BEGIN IMMEDIATE")
            try:
                _, current = self._version(conn, namespace, key)
                if current != expected or (
                    request is not None and not self._record(conn, request, now)
                ):
                    conn.execute("ROLLBACK")
                    return False
                conn.execute(_UPSERT, (key, value, now))
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(database.Error, PersistentAgentError):
                    conn.execute("ROLLBACK")
                raise
        self._versions[(namespace, key)] = (expected + 1, _digest(value))
        return True

    def _record(self, conn: database.Connection, request: Request, now: float) -> bool:
        """Record *request* in the open transaction; False when its id is recorded already."""
        conn.execute(database.REQUESTS_SCHEMA)
        cursor = conn.execute(_RECORD, (request.id, request.arguments, request.result, now))
        if cursor.rowcount != 1:
            return False
        self._recorded += 1
        if self._recorded % _PRUNE_EVERY == 0:
            conn.execute(_PRUNE, (now - REQUEST_WINDOW_SECONDS,))
        return True

    async def delete(self, namespace: str, key: str) -> None:
        conn, path = self._conn(namespace)
        with database.storage_errors(path):
            conn.execute(_DELETE, (key,))
        self._versions.pop((namespace, key), None)

    def rows(self, namespace: str) -> RowStream:
        return RowStream(lambda: self._stream(namespace))

    async def _stream(self, namespace: str) -> AsyncIterator[Row]:
        conn, path = self._conn(namespace)
        with database.storage_errors(path):
            keys = [str(k) for (k,) in conn.execute(_KEYS)]
        for key in keys:
            row = await self.read(namespace, key)
            if row is not None:  # deleted since the listing
                yield row

    async def all_rows(self) -> list[Row | PersistentAgentError]:
        """Every file's rows, under the namespace its file name gives; a file that fails
        its checks is one error."""
        found: list[Row | PersistentAgentError] = []
        for path in layout.database_files(self._provider.db_directory):
            namespace = layout.namespace_of(path)
            try:
                with database.storage_errors(path):
                    conn = self._provider.connection(path)
                    database.check_integrity(conn, path)
                    for key, value in database.rows(conn):
                        _, version = self._version(conn, namespace, key)
                        found.append(Row(namespace, key, value, version))
            except PersistentAgentError as error:
                found.append(error)
        return sorted(
            found,
            key=lambda r: (0, r.namespace, r.key) if isinstance(r, Row) else (1, str(r), ""),
        )

    async def row_count(self) -> int:
        total = 0
        for path in layout.database_files(self._provider.db_directory):
            with database.storage_errors(path):
                total += database.row_count(self._provider.connection(path))
        return total

    async def request_record(
        self, request_id: str, namespace: str | None = None
    ) -> RecordedRequest | None:
        paths = (
            [self._path(namespace)]
            if namespace is not None
            else layout.database_files(self._provider.db_directory)
        )
        for path in paths:
            if not path.exists():
                continue
            with database.storage_errors(path):
                conn = self._provider.connection(path)
                if conn.execute(_HAS_REQUESTS, (database.REQUESTS_TABLE,)).fetchone() is None:
                    continue
                found = conn.execute(_LOOKUP, (request_id,)).fetchone()
            if found is not None:
                return RecordedRequest(str(found[0]), found[1])
        return None

    async def close(self) -> None:
        self._versions.clear()
        if self._owned:
            self._provider.close()
