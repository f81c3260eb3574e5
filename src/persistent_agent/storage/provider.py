"""The SQLCipher storage provider: the runtime's ``StorageProvider`` protocol
over whole-file encrypted databases, one per namespace.

Unlike the runtime's built-in ``encrypted-sqlite`` provider, every page of
every file is encrypted and authenticated (AES-256 + HMAC-SHA512), so keys,
addresses, node ids and the schema are as unreadable as the values; and a file
that does not decrypt is reported, never renamed or recreated.
"""

from __future__ import annotations

import atexit
import contextlib
import time
from pathlib import Path
from typing import TypeVar

from naylence.fame.storage.key_value_store import KeyValueStore
from naylence.fame.storage.storage_provider import StorageProvider
from naylence.fame.util.logging import getLogger
from pydantic import BaseModel

from persistent_agent.errors import PersistentAgentError, WrongKeyError
from persistent_agent.keys.custody import KeySource
from persistent_agent.keys.master_key import MasterKey
from persistent_agent.storage import database, layout, lock

# Defined with the backend protocol now; still importable from here.
from persistent_agent.storage.backend import REQUEST_WINDOW_SECONDS as REQUEST_WINDOW_SECONDS
from persistent_agent.storage.backend import RecordedRequest as RecordedRequest
from persistent_agent.storage.backend import Request as Request
from persistent_agent.storage.backend import RequestLog as RequestLog
from persistent_agent.storage.backend import dump_value as dump_value
from persistent_agent.storage.data_keys import NodeKeys, wrong_key
from persistent_agent.storage.events import HOOK, Change, committed, observable, observed

V = TypeVar("V", bound=BaseModel)

logger = getLogger(__name__)

# Pruning runs once every this many recorded requests.
_PRUNE_EVERY = 256


@observable
class SQLCipherKeyValueStore(KeyValueStore[V]):
    """A namespace's key-value view, typed by one pydantic model.

    Each call is a single autocommit statement (or, for :meth:`set_recording`,
    one transaction) run to completion before the coroutine returns, so an
    acknowledged write is committed, and the event loop never sees a half-done
    operation (no lock is needed).
    """

    # Built once: these run on every RPC's hot path.
    _UPSERT = (
        f"INSERT INTO {database.TABLE} (key, value, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
    )
    _UPDATE = f"UPDATE {database.TABLE} SET value = ?, updated_at = ? WHERE key = ?"
    _SELECT = f"SELECT value FROM {database.TABLE} WHERE key = ?"
    _DELETE = f"DELETE FROM {database.TABLE} WHERE key = ?"

    def __init__(
        self, conn: database.Connection, model_cls: type[V], path: Path, namespace: str = ""
    ) -> None:
        self._conn = conn
        self.namespace = namespace or layout.namespace_of(path)
        self._model_cls = model_cls
        self._path = path
        self._validate_json = model_cls.model_validate_json
        self._requests_table = False
        self._recorded = 0

    def _execute(self, sql: str, parameters: tuple[object, ...]) -> database.Cursor:
        try:
            return self._conn.execute(sql, parameters)
        except database.Error as exc:
            # A full disk or a lock held too long says so, naming the file
            # (and the storage-events hook tells whoever listens: ``storage.events``).
            raise database.storage_error(exc, self._path) from None

    @observed("set")
    async def set(self, key: str, value: V | None) -> None:
        if value is None:
            # BaseAgent.clear_state() stores None; take it to mean "no value".
            await self._delete(key)
            return
        text = dump_value(self._model_cls, value)
        self._execute(self._UPSERT, (key, text, time.time()))
        if HOOK.recorders:
            await committed(Change(self.namespace, key, text))

    @observed("update")
    async def update(self, key: str, value: V) -> None:
        text = dump_value(self._model_cls, value)
        cursor = self._execute(self._UPDATE, (text, time.time(), key))
        if cursor.rowcount == 0:
            raise KeyError(f"Key '{key}' not found for update.")
        if HOOK.recorders:
            await committed(Change(self.namespace, key, text))

    @observed("get")
    async def get(self, key: str) -> V | None:
        row = self._execute(self._SELECT, (key,)).fetchone()
        return None if row is None else self._validate_json(row[0])

    @observed("delete")
    async def delete(self, key: str) -> None:
        await self._delete(key)

    async def _delete(self, key: str) -> None:
        self._execute(self._DELETE, (key,))
        if HOOK.recorders:
            await committed(Change(self.namespace, key, None))

    @observed("get")
    async def request_record(self, request_id: str) -> RecordedRequest | None:
        """What was recorded for *request_id* (see :meth:`set_recording`), if anything."""
        if not self._has_requests():
            return None
        row = self._execute(
            f"SELECT result, arguments FROM {database.REQUESTS_TABLE} WHERE id = ?",
            (request_id,),
        ).fetchone()
        return None if row is None else RecordedRequest(str(row[0]), row[1])

    @observed("set")
    async def set_recording(self, key: str, value: V, request: Request) -> bool:
        """Store *value* and record *request* in one transaction; False (nothing
        written) when its id is already recorded."""
        text = dump_value(self._model_cls, value)
        now = time.time()
        self._execute("BEGIN IMMEDIATE", ())
        try:
            if not self._has_requests():
                self._execute(database.REQUESTS_SCHEMA, ())
            cursor = self._execute(
                f"INSERT INTO {database.REQUESTS_TABLE} (id, arguments, result, created_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT(id) DO NOTHING",
                (request.id, request.arguments, request.result, now),
            )
            if cursor.rowcount != 1:
                self._execute("ROLLBACK", ())
                return False
            self._execute(self._UPSERT, (key, text, now))
            self._recorded += 1
            if self._recorded % _PRUNE_EVERY == 0:
                self._execute(
                    f"DELETE FROM {database.REQUESTS_TABLE} WHERE created_at < ?",
                    (now - REQUEST_WINDOW_SECONDS,),
                )
            self._execute("COMMIT", ())
        except BaseException:
            with contextlib.suppress(database.Error, PersistentAgentError):
                self._conn.execute("ROLLBACK")
            raise
        self._requests_table = True
        if HOOK.recorders:
            await committed(Change(self.namespace, key, text, request_id=request.id))
        return True

    def _has_requests(self) -> bool:
        # Made by the first recorded request, so that no other file gets it.
        if not self._requests_table:
            self._requests_table = (
                self._execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                    (database.REQUESTS_TABLE,),
                ).fetchone()
                is not None
            )
        return self._requests_table

    @observed("list")
    async def list(self) -> dict[str, V]:
        result: dict[str, V] = {}
        with database.storage_errors(self._path):
            entries = database.rows(self._conn)
        for key, raw in entries:
            try:
                result[key] = self._model_cls.model_validate_json(raw)
            except ValueError:
                # Same contract as the runtime's providers: list() returns what
                # parses. The row itself stays on disk untouched.
                logger.warning("skipped_unparseable_entry", path=str(self._path), key=key)
        return result


class SQLCipherStorageProvider(StorageProvider):
    """Hands out namespaced stores, one SQLCipher file and connection each.

    Connections stay open for the provider's lifetime: opening one costs a key
    check and pragmas, which per operation would dominate every RPC.
    """

    def __init__(
        self,
        db_directory: Path,
        key_source: KeySource | MasterKey,
        *,
        synchronous: database.Synchronous = "NORMAL",
        busy_timeout: float = database.BUSY_TIMEOUT,
    ) -> None:
        self._directory = Path(db_directory)
        self._synchronous: database.Synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._connections: dict[str, database.Connection] = {}
        database.ensure_directory(self._directory)
        # One writer per directory, for as long as this provider lives.
        self._lock: Path | None = lock.acquire(self._directory, "a persistent-agent node")
        atexit.register(self.close)
        # Unlock and check every existing database now, so a wrong key or a
        # damaged page stops the node at startup, naming the file, before
        # anything is served or written, not at the first RPC that reads it;
        # open_database does both before it opens anything for writing.
        # Databases from before keyrings open with their derived keys, and
        # only once all of them did are those keys adopted into the keyring.
        try:
            if isinstance(key_source, MasterKey):
                key_source = KeySource.local(key_source)
            self.key_source = key_source
            self._keys = NodeKeys(self._directory, key_source)
            self._keys.refuse_pending()
            # A database the keyring proves existed but the disk lacks was
            # deleted or moved: refused like a damaged file, before any write.
            self._keys.refuse_lost()
            for path in layout.database_files(self._directory):
                self._connection(path, check=True)
            if missing := self._keys.missing():
                self._keys.adopt(missing)
            # A creation a crash cut short after its file appeared.
            with database.storage_errors(self._keys.path):
                self._keys.confirm()
        except BaseException:
            self.close()
            raise

    @property
    def db_directory(self) -> Path:
        return self._directory

    def _connection(self, path: Path, *, check: bool = False) -> database.Connection:
        if path.name not in self._connections:
            # A new database gets a random data key, saved in the keyring
            # (reserved) before the file exists, and confirmed once it does.
            new = not path.exists()
            if new:
                with database.storage_errors(self._keys.path):
                    key = self._keys.key_for_new(path)
            else:
                key = self._keys.key_for(path)
            try:
                self._connections[path.name] = database.open_database(
                    path,
                    key,
                    create=new,
                    synchronous=self._synchronous,
                    busy_timeout=self._busy_timeout,
                    check=check,
                )
            except WrongKeyError:
                raise wrong_key(path, self._keys) from None
            if new:
                with database.storage_errors(path):
                    database.sync_created(path)
                with database.storage_errors(self._keys.path):
                    self._keys.confirm()
        return self._connections[path.name]

    def connection(self, path: Path) -> database.Connection:
        """The open connection to *path*, a database file of this directory, opened
        (and created) as the stores' are: for ``storage.sqlcipher_backend``."""
        return self._connection(path)

    async def get_kv_store(self, model_cls: type[V], namespace: str) -> KeyValueStore[V]:
        path = self._directory / layout.file_name(namespace)
        return SQLCipherKeyValueStore(self._connection(path), model_cls, path, namespace)

    def close(self) -> None:
        """Close every connection; SQLite checkpoints the WAL on the last close."""
        connections, self._connections = self._connections, {}
        for conn in connections.values():
            conn.close()
        held, self._lock = self._lock, None
        if held is not None:
            lock.release(held)
