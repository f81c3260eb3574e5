"""What a storage backend of the agent's state is: versioned rows with compare-and-set.

The runtime's ``KeyValueStore`` is last-writer-wins, which is not enough for
state that two writers change (replicas, or two agents on one store): a call
must be able to say "store this only if nobody wrote since I read". A
:class:`StateBackend` is that store, for every namespace at once:

* **Rows** have a version: 0 when absent, and each successful write makes it
  ``expected + 1``. :meth:`StateBackend.write` is compare-and-set on the
  version the caller read; a write that lost the race returns False and
  changes nothing (the caller reads again, or raises
  :class:`~persistent_agent.errors.SharedStateConflictError`).
* **Request records.** A write may carry a :class:`Request`: its id, result
  and argument digest are recorded in the same transaction as the row, and a
  write whose id is already recorded is refused as a whole, so a retried call
  applies once (``node.state``).
* **Integrity.** A backend never serves a row it cannot prove is the one
  written there: a row altered or moved in storage raises a
  :class:`~persistent_agent.errors.PersistentAgentError` naming the row (or
  its file), never returns a value.

This module imports no database driver: the agent (``node.state``), the
providers and the tools type against it, and only the chosen backend's module
loads its driver. ``docs/extending.md`` walks through adding a backend, and
``tests/storage/test_backend_conformance.py`` is what every backend must pass.
"""

from __future__ import annotations

from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Generator,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, Protocol, TypeVar, runtime_checkable

from naylence.fame.storage.key_value_store import KeyValueStore
from naylence.fame.storage.storage_provider import StorageProvider
from pydantic import BaseModel

from persistent_agent.errors import PersistentAgentError
from persistent_agent.keys.keyring import KeyWrapper
from persistent_agent.storage.events import HOOK, Change, committed, observable, observed

V = TypeVar("V", bound=BaseModel)

# How long a request id is remembered: far longer than a client retries one
# call (client.retry.INCREMENT_DEADLINE). Older records are pruned.
REQUEST_WINDOW_SECONDS = 3600


class Request(NamedTuple):
    """An idempotent call, recorded with the state change it made.

    *arguments* is a digest of the call's arguments (``node.state``), so that
    an id sent again with other arguments is refused rather than answered.
    """

    id: str
    result: str  # JSON
    arguments: str | None = None


@dataclass(frozen=True)
class RecordedRequest:
    """What a store recorded for a request id; *arguments* None for records made
    before arguments were recorded (they are answered as before)."""

    result: str
    arguments: str | None


@dataclass(frozen=True)
class Row:
    """One row as written: its namespace and key, its value (JSON text), its version."""

    namespace: str
    key: str
    value: str
    version: int


@runtime_checkable
class RequestLog(Protocol):
    """A store that records request ids with the state change they made."""

    async def request_record(self, request_id: str) -> RecordedRequest | None: ...


class RowStream:
    """The rows of one namespace, streamed: ``async for row in stream`` or ``await stream``.

    Iterating reads the rows as the backend delivers them (a tool walking a
    large namespace holds one row at a time); awaiting collects them into a
    list. Close a stream left half-read with :meth:`aclose` (or
    ``contextlib.aclosing``) so that the backend gives its connection back.
    """

    def __init__(self, source: Callable[[], AsyncIterator[Row]]) -> None:
        self._source = source
        self._iterator: AsyncIterator[Row] | None = None

    def __aiter__(self) -> RowStream:
        return self

    async def __anext__(self) -> Row:
        if self._iterator is None:
            self._iterator = self._source()
        return await self._iterator.__anext__()

    async def aclose(self) -> None:
        closer = getattr(self._iterator, "aclose", None)
        if closer is not None:
            await closer()

    async def collect(self) -> list[Row]:
        return [row async for row in self]

    def __await__(self) -> Generator[Any, None, list[Row]]:
        return self.collect().__await__()


@runtime_checkable
class StateBackend(Protocol):
    """Versioned, compare-and-set rows in namespaces: what a backend implements.

    *where* names the storage for messages ("PostgreSQL at host:5432", a
    directory), never with a password or a key. Every method may raise the
    project's one-line errors: unavailable storage, a damaged or altered row.
    """

    where: str

    async def read(self, namespace: str, key: str) -> Row | None:
        """The row, or None when absent; a row that fails its integrity check raises."""
        ...

    async def write(
        self,
        namespace: str,
        key: str,
        value: str,
        expected: int,
        request: Request | None = None,
    ) -> bool:
        """Store *value* (JSON text) if the row is still at version *expected* (0: absent).

        With *request*, record it in the same transaction. False, with nothing
        changed, when another write (or the same request id) got there first.
        """
        ...

    async def delete(self, namespace: str, key: str) -> None:
        """Remove the row if present (no version check: the runtime's ``delete``)."""
        ...

    def rows(self, namespace: str) -> RowStream:
        """Every row of *namespace*, streamed; any row that fails its check raises.

        In the backend's own order, not necessarily by key: a backend that
        stores HMAC'd names could sort by key only after reading every row.
        """
        ...

    async def all_rows(self) -> list[Row | PersistentAgentError]:
        """Every row of every namespace, or the error each bad one gives (verify, inspect).

        Sorted: rows by (namespace, key), then the errors.
        """
        ...

    async def row_count(self) -> int:
        """How many rows all namespaces hold together (backup, restore)."""
        ...

    async def request_record(
        self, request_id: str, namespace: str | None = None
    ) -> RecordedRequest | None:
        """What was recorded for *request_id*, if a write carried it.

        *namespace* is where that write went: a backend that keeps request
        records per namespace looks there (or, without it, everywhere); one
        that keeps them globally ignores it.
        """
        ...

    async def close(self) -> None:
        """Release connections and locks; the backend is not used afterwards."""
        ...


@runtime_checkable
class StoredTables(Protocol):
    """What the operator tools' backup, restore and rotate-key need of a backend too.

    A backup is the backend's records *as stored* (sealed, never decrypted), so
    that restoring it needs the same master key and nothing else; the
    operator tools (``ops.shared_tools``) write them to ``shared_state.json``.
    """

    # Each table's columns, in backup order; the first is the keyring, with the
    # columns (name, wrapped, wrapped_by): rotate-key re-wraps it in backups too.
    tables: Mapping[str, tuple[str, ...]]
    rows_table: str  # the table whose records are the agent's rows

    def stored(self) -> AsyncGenerator[tuple[str, tuple[Any, ...]]]:
        """Every record as (table, values), table by table, from one consistent
        snapshot, streamed (values: str, int, bytes or datetime)."""
        ...

    def writers_stopped(self) -> AbstractAsyncContextManager[object]:
        """Held while no node writes to the backend, on any host; raises
        :class:`~persistent_agent.errors.ServicesRunningError` if one runs."""
        ...

    async def load(self, records: Iterable[tuple[str, Sequence[Any]]]) -> None:
        """Put a backup's records into this empty backend (its keyring too), at once."""
        ...

    async def rewrap(self, old: KeyWrapper, new: KeyWrapper) -> int:
        """Re-wrap the backend's keys from master key *old* to *new*; how many keys."""
        ...


@runtime_checkable
class VersionedStore(Protocol):
    """One namespace of a :class:`StateBackend`, as the agent's state uses it (``node.state``)."""

    async def read_versioned(self, key: str) -> tuple[str | None, int]: ...

    async def write_versioned(
        self, key: str, value: str, expected: int, request: Request | None = None
    ) -> bool: ...

    async def request_record(self, request_id: str) -> RecordedRequest | None: ...


def dump_value(model_cls: type[V], value: V) -> str:
    """*value* as the JSON a store keeps, validated through *model_cls* first.

    Foreign objects are validated through our model rather than stored in
    whatever shape they happen to have. Every store (local or shared) writes this.
    """
    if not isinstance(value, model_cls):
        source = value.model_dump() if isinstance(value, BaseModel) else value
        value = model_cls.model_validate(source)
    return value.model_dump_json(by_alias=True)


@observable
class BackendKeyValueStore(KeyValueStore[V], Generic[V]):
    """A namespace of any :class:`StateBackend`, as the runtime's ``KeyValueStore``.

    It is also a :class:`VersionedStore`, which is what the agent's
    transactions use. The plain ``set`` is last-writer-wins (it retries its
    own compare-and-set). Every call goes through the storage-events hook
    (``storage.events``), so a backend gets both streams without code of its own.
    """

    def __init__(self, backend: StateBackend, model_cls: type[V], namespace: str) -> None:
        self._backend = backend
        self._model_cls = model_cls
        self.namespace = namespace

    async def _read(self, key: str) -> tuple[str | None, int]:
        row = await self._backend.read(self.namespace, key)
        return (None, 0) if row is None else (row.value, row.version)

    async def _write(
        self, key: str, value: str, expected: int, request: Request | None = None
    ) -> bool:
        if not await self._backend.write(self.namespace, key, value, expected, request):
            return False
        if HOOK.recorders:
            await committed(
                Change(
                    self.namespace,
                    key,
                    value,
                    expected + 1,
                    None if request is None else request.id,
                )
            )
        return True

    @observed("get")
    async def read_versioned(self, key: str) -> tuple[str | None, int]:
        return await self._read(key)

    @observed("set")
    async def write_versioned(
        self, key: str, value: str, expected: int, request: Request | None = None
    ) -> bool:
        return await self._write(key, value, expected, request)

    @observed("get")
    async def request_record(self, request_id: str) -> RecordedRequest | None:
        return await self._backend.request_record(request_id, self.namespace)

    @observed("set")
    async def set(self, key: str, value: V | None) -> None:
        if value is None:
            await self._delete(key)
            return
        text = dump_value(self._model_cls, value)
        while True:
            _, version = await self._read(key)
            if await self._write(key, text, version):
                return

    @observed("update")
    async def update(self, key: str, value: V) -> None:
        text = dump_value(self._model_cls, value)
        while True:
            _, version = await self._read(key)
            if version == 0:
                raise KeyError(f"Key '{key}' not found for update.")
            if await self._write(key, text, version):
                return

    @observed("get")
    async def get(self, key: str) -> V | None:
        text, _ = await self._read(key)
        return None if text is None else self._model_cls.model_validate_json(text)

    @observed("delete")
    async def delete(self, key: str) -> None:
        await self._delete(key)

    async def _delete(self, key: str) -> None:
        await self._backend.delete(self.namespace, key)
        if HOOK.recorders:
            await committed(Change(self.namespace, key, None))

    @observed("list")
    async def list(self) -> dict[str, V]:
        return {
            row.key: self._model_cls.model_validate_json(row.value)
            async for row in self._backend.rows(self.namespace)
        }


class BackendStorageProvider(StorageProvider):
    """Every namespace of the runtime's storage in one :class:`StateBackend`.

    What a new backend needs to be served as a storage profile of its own (see
    ``docs/extending.md``); the ``encrypted-postgres`` profile instead keeps a
    replica's own namespaces in local files (``storage.shared_provider``).
    """

    def __init__(self, backend: StateBackend) -> None:
        self.backend = backend

    async def get_kv_store(self, model_cls: type[V], namespace: str) -> KeyValueStore[V]:
        return BackendKeyValueStore(self.backend, model_cls, namespace)

    async def close(self) -> None:
        await self.backend.close()
