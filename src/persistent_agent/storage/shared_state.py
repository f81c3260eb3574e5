"""Agent state shared by replicas on several hosts: PostgreSQL, encrypted before it leaves the node.

The server sees only what it needs to serve compare-and-set: per row, an HMAC
of the namespace, an HMAC of the key, a version number and a sealed blob.

* **Keys.** One random data key (AES-256-GCM) and one random HMAC key, made
  by the first replica that starts and stored in ``pa_keyring`` wrapped by the
  master key, as the local keyrings are (``keys.keyring``). A replica whose
  master key does not unwrap them stops before it writes anything.
* **Rows** (``pa_state``). The blob is ``nonce || AES-GCM(data key, {key,
  value})`` with the namespace HMAC, key HMAC and version as associated data:
  a blob copied to another row, or a version edited by hand, does not decrypt.
  A whole row put back to an older valid copy (blob and version together) is
  not detected: that needs a trusted counter outside the database.
* **Versions.** Every write is compare-and-set on the version it read
  (``UPDATE … WHERE version = expected``); a write that lost the race says so
  and the caller reads again.
* **Requests** (``pa_requests``). An idempotent call stores its request id
  (as an HMAC) and, sealed together, its result and a digest of its
  arguments, in the same transaction as the state change, so a retried id
  returns the first result instead of applying twice, and an id reused with
  other arguments is refused. Entries older than
  :data:`~persistent_agent.storage.provider.REQUEST_WINDOW_SECONDS` are pruned.
* **Liveness.** Each replica holds a shared advisory lock for as long as it
  runs; tools that need every replica stopped take it exclusively.

This module is the PostgreSQL backend (``storage.backend.StateBackend``):
the connection pool and outage probe, the compare-and-set SQL and the
keyring bootstrap, and what the operator tools need (``StoredTables``: the
tables as stored, the replicas' lock, restore, re-wrapping the keyring). How
rows and request records are sealed is ``storage.sealing``; nothing else
imports psycopg. ``storage.registry`` opens it by profile name
(:func:`open_backend`).

Connections come from a ``psycopg_pool`` pool that checks each connection
before lending it and reconnects by itself: while the server is down, calls
fail with :class:`SharedStateUnavailableError`, and work again once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from cryptography.exceptions import InvalidTag
from naylence.fame.util.logging import getLogger
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from pydantic import BaseModel

from persistent_agent import settings as declared
from persistent_agent.addresses import loopback
from persistent_agent.errors import (
    ConfigError,
    PersistentAgentError,
    ServicesRunningError,
    SharedRowError,
    SharedStateError,
    SharedStateUnavailableError,
)
from persistent_agent.keys.custody import POSTGRES_DSN_VAR, POSTGRES_PASSWORD_FILE_VAR, KeySource
from persistent_agent.keys.keyring import KeyWrapper
from persistent_agent.keys.master_key import KEY_BYTES
from persistent_agent.keys.secret_files import read_private
from persistent_agent.storage.backend import (
    REQUEST_WINDOW_SECONDS,
    BackendKeyValueStore,
    RecordedRequest,
    Request,
    Row,
    RowStream,
    VersionedStore,
)
from persistent_agent.storage.sealing import KEY_NAMES, KEYRING_FORMAT, StateKeys, keyring_ad

V = TypeVar("V", bound=BaseModel)

# Names other modules and tests import from here (the PostgreSQL backend), kept
# since sealing and the backend protocol moved to modules of their own.
__all__ = [
    "KEYRING_FORMAT",
    "KEY_NAMES",
    "OPEN_TIMEOUT",
    "REPLICAS_LOCK",
    "TABLES",
    "Row",
    "SharedKeyValueStore",
    "SharedState",
    "StateKeys",
    "VersionedStore",
    "check_settings",
    "check_tls",
    "describe",
    "describe_settings",
    "keyring_ad",
    "open_backend",
    "rewrap_keys",
]

logger = getLogger(__name__)
# The pool logs every failed reconnect (four a second while the server is
# down); the replica says once that it is down and once that it is back.
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

KEYRING_TABLE = "pa_keyring"
ROWS_TABLE = "pa_state"
REQUESTS_TABLE = "pa_requests"
# Advisory lock ids (pg_advisory_lock takes a bigint): "pa" + purpose.
SCHEMA_LOCK = 0x7061_0001
REPLICAS_LOCK = 0x7061_0002
CONNECT_TIMEOUT = 5.0
# How long opening waits for the server before it is unavailable (``open``'s timeout).
OPEN_TIMEOUT = 10.0
# How long a call waits for a connection: below the client's per-try timeout,
# so that an outage reaches the caller as its own error, not as a timeout.
CHECKOUT_TIMEOUT = 1.5
# Once a call found the server gone, calls fail at once (rather than each
# waiting out CHECKOUT_TIMEOUT in turn) while a probe tries it this often.
PROBE_INTERVAL = 0.25

TABLES: dict[str, tuple[str, ...]] = {
    KEYRING_TABLE: ("name", "wrapped", "wrapped_by"),
    ROWS_TABLE: ("namespace", "key", "version", "sealed"),
    REQUESTS_TABLE: ("id", "sealed", "created_at"),
}

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS pa_keyring ("
    " name text PRIMARY KEY, wrapped text NOT NULL, wrapped_by text NOT NULL)",
    "CREATE TABLE IF NOT EXISTS pa_state ("
    " namespace bytea NOT NULL, key bytea NOT NULL, version bigint NOT NULL,"
    " sealed bytea NOT NULL, PRIMARY KEY (namespace, key))",
    "CREATE TABLE IF NOT EXISTS pa_requests ("
    " id bytea PRIMARY KEY, sealed bytea NOT NULL,"
    " created_at timestamptz NOT NULL DEFAULT now())",
)


def describe(dsn: str) -> str:
    """The server and database of *dsn*, without user or password, for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "the PostgreSQL server in FAME_STORAGE_POSTGRES_DSN"
    host, port, dbname = info.get("host", "localhost"), info.get("port", "5432"), info.get("dbname")
    return f"PostgreSQL at {host}:{port}" + (f" (database {dbname})" if dbname else "")


# What a connection to PostgreSQL must ask for once it leaves this machine:
# TLS, a certificate chain to a CA the DSN names, and the host name checked.
VERIFIED_SSLMODE = "verify-full"


def check_tls(dsn: str) -> None:
    """Refuse, in one line and before connecting, a DSN that would reach PostgreSQL
    across a network without verifying the server.

    A host that is not this machine's own needs ``sslmode=verify-full`` and a CA
    (``sslrootcert=<file>``, or ``system`` for the public roots; the ``PGSSLMODE`` and
    ``PGSSLROOTCERT`` variables count as well). Loopback and Unix sockets may use
    any mode: nothing crosses a network there.
    """
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise ConfigError(
            "FAME_STORAGE_POSTGRES_DSN is not a valid PostgreSQL connection string"
        ) from None
    mode = str(info.get("sslmode") or declared.PGSSLMODE.raw() or "prefer")
    if mode == VERIFIED_SSLMODE:
        if not (info.get("sslrootcert") or declared.PGSSLROOTCERT.raw()):
            raise ConfigError(
                f"FAME_STORAGE_POSTGRES_DSN asks for sslmode={VERIFIED_SSLMODE} but names no "
                "CA: add sslrootcert=<the CA's certificate file> (or sslrootcert=system)"
            )
        return
    hosts = str(info.get("hostaddr") or info.get("host") or declared.PGHOST.raw() or "")
    remote = [h for h in hosts.split(",") if h and not h.startswith("/") and not loopback(h)]
    if remote:
        raise ConfigError(
            f"FAME_STORAGE_POSTGRES_DSN reaches {remote[0]} with sslmode={mode}, which does "
            f"not verify the server; add sslmode={VERIFIED_SSLMODE} and "
            "sslrootcert=<the CA's certificate file> (see docs/replicas.md)"
        )


# ---------------------------------------------------------------- for the operator tools


class _ToolSide:
    """What backup, restore and rotate-key need of the shared state beyond rows
    (``storage.backend.StoredTables``); mixed into :class:`SharedState`."""

    _dsn: str
    _connect_kwargs: dict[str, Any]
    _pool: AsyncConnectionPool
    where: str

    async def stored(self) -> AsyncGenerator[tuple[str, tuple[Any, ...]]]:
        """Every table's records as stored (sealed), table by table, from one snapshot,
        streamed from the server: a large state is never held in memory."""
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            for table, columns in TABLES.items():
                cursor = conn.cursor()
                async for record in cursor.stream(
                    f"SELECT {', '.join(columns)} FROM {table}"  # noqa: S608 - fixed names
                ):
                    yield table, tuple(record)

    @contextlib.asynccontextmanager
    async def writers_stopped(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection of its own holding the replicas lock exclusively: no replica
        runs, on any host, while it is held (released when the connection closes)."""
        try:
            conn = await psycopg.AsyncConnection.connect(self._dsn, **self._connect_kwargs)
        except psycopg.OperationalError as exc:
            raise SharedStateError(
                f"cannot connect to {self.where}: {str(exc).strip().splitlines()[0]}"
            ) from None
        async with conn:
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (REPLICAS_LOCK,))
            found = await cur.fetchone()
            if not found or not found[0]:
                raise ServicesRunningError(
                    f"agent replicas are running against {self.where} (they hold its replicas "
                    "lock); stop every replica, on every host, then run this again"
                )
            yield conn

    async def load(self, records: Iterable[tuple[str, Sequence[Any]]]) -> None:
        """Put *records* (``stored``'s, from a backup) into this empty shared state, the
        keyring included, in one transaction with every replica stopped."""
        async with self.writers_stopped() as conn, conn.transaction():
            await conn.execute("DELETE FROM pa_keyring")
            for table, values in records:
                columns = TABLES.get(table)
                if columns is None or len(values) != len(columns):
                    raise SharedStateError(f"a backup record of {table!r} does not fit its table")
                await conn.execute(
                    f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608 - fixed names
                    f"VALUES ({', '.join(['%s'] * len(columns))})",
                    list(values),
                )

    async def rewrap(self, old: KeyWrapper, new: KeyWrapper) -> int:
        """Re-wrap the shared keys from *old* to *new*, with every replica stopped."""
        async with self.writers_stopped() as conn:
            return await rewrap_keys(conn, old, new)


class _Lost(Exception):
    """A compare-and-set lost its race (rolls the transaction back)."""


class SharedState(_ToolSide):
    """The shared state in one PostgreSQL database, for one replica."""

    # What backup, restore and rotate-key see (``storage.backend.StoredTables``):
    # the tables as stored, still sealed, each with its columns.
    tables: dict[str, tuple[str, ...]] = TABLES
    rows_table = ROWS_TABLE

    def __init__(self, pool: AsyncConnectionPool, keys: StateKeys, where: str) -> None:
        self._pool = pool
        self._dsn = ""
        self._connect_kwargs: dict[str, Any] = {}
        self._keys = keys
        self.where = where
        self._writes = 0
        self._liveness: asyncio.Task[None] | None = None
        self._outage: str | None = None  # why calls fail now, until the probe gets through
        self._probe: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ opening

    @classmethod
    async def open(
        cls,
        dsn: str,
        password: str | None,
        source: KeySource,
        *,
        max_size: int = 4,
        hold_replica_lock: bool = True,
        timeout: float = OPEN_TIMEOUT,
    ) -> SharedState:
        """Connect, make the tables and keys if this is the first replica, unwrap the keys.

        Fails with one line, before writing anything, when the server cannot
        be reached within *timeout* seconds or the master key is not the one
        the shared keys were made with.
        """
        if timeout <= 0:
            raise ConfigError(f"the shared state's open timeout must be positive, not {timeout}")
        check_tls(dsn)
        where = describe(dsn)
        # libpq counts connect_timeout in whole seconds, and takes less than 2 as 2.
        connect = max(2, min(int(CONNECT_TIMEOUT), math.ceil(timeout)))
        kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": connect}
        if password is not None:
            kwargs["password"] = password
        pool = AsyncConnectionPool(
            dsn,
            kwargs=kwargs,
            min_size=1,
            max_size=max_size,
            timeout=CHECKOUT_TIMEOUT,
            reconnect_timeout=365 * 24 * 3600,  # never give up: the server comes back
            check=AsyncConnectionPool.check_connection,
            open=False,
            name="persistent-agent-shared-state",
        )
        try:
            await pool.open(wait=True, timeout=timeout)
        except PoolTimeout:
            await pool.close()
            raise SharedStateUnavailableError(
                f"{SharedStateUnavailableError.PREFIX}: cannot connect to {where} "
                f"within {timeout:g}s; is the server running, and are "
                "FAME_STORAGE_POSTGRES_DSN and the password file right?"
            ) from None
        try:
            keys = await _load_keys(pool, source.wrapper, where)
        except BaseException:
            await pool.close()
            raise
        state = cls(pool, keys, where)
        state._dsn, state._connect_kwargs = dsn, kwargs
        if hold_replica_lock:
            state._liveness = asyncio.create_task(state._hold_replica_lock(kwargs, dsn))
        return state

    async def close(self) -> None:
        for task in (self._liveness, self._probe):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._liveness = self._probe = None
        await self._pool.close()

    async def _hold_replica_lock(self, kwargs: dict[str, Any], dsn: str) -> None:
        """Hold the shared replicas lock on a connection of its own; retake it after an outage."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(dsn, **kwargs) as conn:
                    await conn.execute("SELECT pg_advisory_lock_shared(%s)", (REPLICAS_LOCK,))
                    while True:
                        await asyncio.sleep(2.0)
                        await conn.execute("SELECT 1")
            except psycopg.Error:
                await asyncio.sleep(1.0)

    # ------------------------------------------------------------ access

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if self._outage is not None:
            raise SharedStateUnavailableError(self._outage)
        try:
            async with self._pool.connection() as conn:
                yield conn
        except PoolTimeout:
            raise self._unavailable(
                f"does not answer (no connection within {CHECKOUT_TIMEOUT:g}s)"
            ) from None
        except psycopg.OperationalError as exc:
            text = str(exc).strip()
            raise self._unavailable(
                f"failed ({text.splitlines()[0] if text else type(exc).__name__})"
            ) from None

    def _unavailable(self, what: str) -> SharedStateUnavailableError:
        self._outage = (
            f"{SharedStateUnavailableError.PREFIX}: {self.where} {what}; the replica "
            "reconnects by itself once it is back"
        )
        if self._probe is None or self._probe.done():
            logger.warning("shared_state_unavailable", where=self.where, detail=what)
            self._probe = asyncio.create_task(self._probe_until_back())
        return SharedStateUnavailableError(self._outage)

    async def _probe_until_back(self) -> None:
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            try:
                async with self._pool.connection(timeout=CHECKOUT_TIMEOUT) as conn:
                    await conn.execute("SELECT 1")
            except (PoolTimeout, psycopg.Error):
                continue
            self._outage = None
            logger.warning("shared_state_back", where=self.where)
            return

    def _names(self, namespace: str, key: str) -> tuple[bytes, bytes]:
        return self._keys.names(namespace, key)

    def _open_row(
        self,
        ns_mac: bytes,
        key_mac: bytes,
        version: int,
        sealed: bytes,
        expected: tuple[str, str | None] | None = None,
    ) -> Row:
        """Decrypt one row (``sealing``); *expected* is what the caller asked for."""
        return self._keys.open_row(ns_mac, key_mac, version, sealed, self.where, expected)

    async def read(self, namespace: str, key: str) -> Row | None:
        ns_mac, key_mac = self._names(namespace, key)
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT version, sealed FROM pa_state WHERE namespace = %s AND key = %s",
                (ns_mac, key_mac),
            )
            found = await cur.fetchone()
        if found is None:
            return None
        version, sealed = found
        return self._open_row(ns_mac, key_mac, version, sealed, (namespace, key))

    async def write(
        self,
        namespace: str,
        key: str,
        value: str,
        expected: int,
        request: Request | None = None,
    ) -> bool:
        """Store *value* if the row is still at version *expected* (0: absent).

        With *request*, also record its result and arguments under its id,
        in the same transaction. False when another write (or the same request
        id) got there first; nothing is changed then.
        """
        ns_mac, key_mac = self._names(namespace, key)
        version = expected + 1
        sealed = self._keys.seal_row(namespace, key, value, version)
        try:
            async with self._connection() as conn, conn.transaction():
                if expected == 0:
                    cur = await conn.execute(
                        "INSERT INTO pa_state (namespace, key, version, sealed) "
                        "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                        (ns_mac, key_mac, version, sealed),
                    )
                else:
                    cur = await conn.execute(
                        "UPDATE pa_state SET version = %s, sealed = %s "
                        "WHERE namespace = %s AND key = %s AND version = %s",
                        (version, sealed, ns_mac, key_mac, expected),
                    )
                if cur.rowcount != 1:
                    raise _Lost
                if request is not None:
                    cur = await conn.execute(
                        "INSERT INTO pa_requests (id, sealed) VALUES (%s, %s) "
                        "ON CONFLICT DO NOTHING",
                        self._keys.seal_request(request),
                    )
                    if cur.rowcount != 1:
                        raise _Lost
                    self._writes += 1
                    if self._writes % 256 == 0:
                        await conn.execute(
                            "DELETE FROM pa_requests "
                            "WHERE created_at < now() - make_interval(secs => %s)",
                            (REQUEST_WINDOW_SECONDS,),
                        )
        except _Lost:
            return False
        return True

    async def request_record(
        self, request_id: str, namespace: str | None = None
    ) -> RecordedRequest | None:
        """What was recorded for *request_id*, if a call with it was applied.

        Request ids are global here (*namespace* is not needed). Records from
        before arguments were recorded hold the result alone.
        """
        id_mac = self._keys.mac("request", request_id)
        async with self._connection() as conn:
            cur = await conn.execute("SELECT sealed FROM pa_requests WHERE id = %s", (id_mac,))
            found = await cur.fetchone()
        if found is None:
            return None
        return self._keys.open_request(request_id, found[0], self.where)

    async def delete(self, namespace: str, key: str) -> None:
        ns_mac, key_mac = self._names(namespace, key)
        async with self._connection() as conn:
            await conn.execute(
                "DELETE FROM pa_state WHERE namespace = %s AND key = %s", (ns_mac, key_mac)
            )

    def rows(self, namespace: str) -> RowStream:
        """Every row of *namespace*, decrypted as it streams in; a row that does not
        decrypt raises. ``await`` it for a list."""
        return RowStream(lambda: self._stream(namespace))

    async def _stream(self, namespace: str) -> AsyncIterator[Row]:
        ns_mac = self._keys.mac("namespace", namespace)
        async with self._connection() as conn:
            cursor = conn.cursor()
            async for key_mac, version, sealed in cursor.stream(
                "SELECT key, version, sealed FROM pa_state WHERE namespace = %s ORDER BY key",
                (ns_mac,),
            ):
                yield self._open_row(ns_mac, bytes(key_mac), version, sealed, (namespace, None))

    async def all_rows(self) -> list[Row | PersistentAgentError]:
        """Every row of every namespace, decrypted, or the error that row gives (for verify)."""
        async with self._connection() as conn:
            cur = await conn.execute("SELECT namespace, key, version, sealed FROM pa_state")
            found = await cur.fetchall()
        opened: list[Row | PersistentAgentError] = []
        for ns_mac, key_mac, version, sealed in found:
            try:
                opened.append(self._open_row(bytes(ns_mac), bytes(key_mac), version, sealed))
            except SharedRowError as error:
                opened.append(error)
        return sorted(
            opened, key=lambda r: (0, r.namespace, r.key) if isinstance(r, Row) else (1, str(r), "")
        )

    async def row_count(self) -> int:
        async with self._connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM pa_state")
            found = await cur.fetchone()
        return int(found[0]) if found else 0


# ---------------------------------------------------------------- the registry's view
# (``storage.registry``: how the node and the tools open this backend by profile)


def check_settings(settings: Mapping[str, str]) -> None:
    """Refuse settings that cannot work, before connecting: no DSN, or one without TLS."""
    dsn = settings.get(POSTGRES_DSN_VAR, "")
    if not dsn:
        raise ConfigError(
            f"{POSTGRES_DSN_VAR} is not set; the encrypted-postgres profile keeps the agent's "
            "state in PostgreSQL (see docs/replicas.md)"
        )
    check_tls(dsn)
    if password_file := settings.get(POSTGRES_PASSWORD_FILE_VAR):
        read_private(Path(password_file), POSTGRES_PASSWORD_FILE_VAR)


def describe_settings(settings: Mapping[str, str]) -> str:
    return describe(settings.get(POSTGRES_DSN_VAR, ""))


async def open_backend(
    settings: Mapping[str, str],
    source: KeySource,
    *,
    replica: bool = True,
    timeout: float = OPEN_TIMEOUT,
) -> SharedState:
    """The shared state its settings name; a replica holds the replicas lock, a tool not."""
    check_settings(settings)
    password_file = settings.get(POSTGRES_PASSWORD_FILE_VAR)
    password = (
        read_private(Path(password_file), POSTGRES_PASSWORD_FILE_VAR) if password_file else None
    )
    return await SharedState.open(
        settings[POSTGRES_DSN_VAR],
        password,
        source,
        max_size=4 if replica else 2,
        hold_replica_lock=replica,
        timeout=timeout,
    )


async def _load_keys(pool: AsyncConnectionPool, wrapper: KeyWrapper, where: str) -> StateKeys:
    """The shared keys: read and unwrapped, or made once by the first replica.

    An existing keyring is checked before anything is written, so a replica
    with the wrong master key writes nothing at all.
    """
    try:
        async with pool.connection() as conn:
            existing = await _keyring(conn)
            if not existing:
                async with conn.transaction():
                    # Concurrent first starts: one makes the tables, the others wait here.
                    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                    # Rows with no keyring: the keys they were sealed with are gone,
                    # and new ones would hide that (raised inside: nothing is written).
                    if not await _keyring(conn) and (held := await _rows_held(conn)):
                        raise SharedStateError(
                            f"the shared state in {where} holds rows ({held}) but no keyring "
                            "(pa_keyring is empty or gone), so they cannot be read; restore "
                            "pa_keyring from a backup of that database (pg_dump); nothing "
                            "was written"
                        )
                    for statement in _SCHEMA:
                        await conn.execute(statement)
                    for name in KEY_NAMES:
                        fresh = secrets.token_bytes(KEY_BYTES)
                        await conn.execute(
                            "INSERT INTO pa_keyring (name, wrapped, wrapped_by) "
                            "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                            (
                                name,
                                wrapper.wrap(fresh, keyring_ad(name, wrapper.fingerprint)),
                                wrapper.fingerprint,
                            ),
                        )
                existing = await _keyring(conn)
    except psycopg.OperationalError as exc:
        raise SharedStateUnavailableError(
            f"{SharedStateUnavailableError.PREFIX}: {where} failed while loading the shared "
            f"keys ({str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r})"
        ) from None
    unwrapped: dict[str, bytes] = {}
    for name in KEY_NAMES:
        if name not in existing:
            raise SharedStateError(
                f"the shared keyring in {where} has no '{name}' key; it is damaged: "
                "restore pa_keyring from a backup of that database (pg_dump); nothing "
                "was written"
            )
        wrapped, wrapped_by = existing[name]
        if wrapped_by != wrapper.fingerprint:
            raise SharedStateError(
                f"the shared state in {where} was made under master key {wrapped_by}; this "
                f"replica's key is {wrapper.fingerprint}. Give every replica the same key "
                "(config/master.key); nothing was written"
            )
        try:
            unwrapped[name] = wrapper.unwrap(wrapped, keyring_ad(name, wrapped_by))
        except InvalidTag:
            raise SharedStateError(
                f"the shared '{name}' key in {where} does not unwrap with this replica's master "
                "key; the keyring was altered or copied from elsewhere; nothing was written"
            ) from None
    return StateKeys(unwrapped["data"], unwrapped["hmac"])


async def _rows_held(conn: psycopg.AsyncConnection[Any]) -> str:
    """How many rows pa_state and pa_requests hold ("3 in pa_state"), or "" when none."""
    held = []
    for table in (ROWS_TABLE, REQUESTS_TABLE):
        cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
        found = await cur.fetchone()
        if found and found[0]:
            cur = await conn.execute(f"SELECT count(*) FROM {table}")  # noqa: S608 - our name
            count = await cur.fetchone()
            if count and count[0]:
                held.append(f"{count[0]} in {table}")
    return ", ".join(held)


async def _keyring(conn: psycopg.AsyncConnection[Any]) -> dict[str, tuple[str, str]]:
    """The keyring's rows, or {} before the first replica made the tables."""
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (KEYRING_TABLE,))
    found = await cur.fetchone()
    if not found or not found[0]:
        return {}
    cur = await conn.execute("SELECT name, wrapped, wrapped_by FROM pa_keyring")
    return {name: (wrapped, by) for name, wrapped, by in await cur.fetchall()}


async def rewrap_keys(conn: psycopg.AsyncConnection[Any], old: KeyWrapper, new: KeyWrapper) -> int:
    """Re-wrap the shared keys from *old* to *new* in one transaction; returns how many."""
    async with conn.transaction():
        cur = await conn.execute("SELECT name, wrapped, wrapped_by FROM pa_keyring FOR UPDATE")
        entries = await cur.fetchall()
        for name, wrapped, wrapped_by in entries:
            if wrapped_by == new.fingerprint:
                continue
            key = old.unwrap(wrapped, keyring_ad(name, wrapped_by))
            await conn.execute(
                "UPDATE pa_keyring SET wrapped = %s, wrapped_by = %s WHERE name = %s",
                (new.wrap(key, keyring_ad(name, new.fingerprint)), new.fingerprint, name),
            )
    return len(entries)


# ---------------------------------------------------------------- the runtime's view


class SharedKeyValueStore(BackendKeyValueStore[V]):
    """A namespace of the shared state, as the runtime's ``KeyValueStore``
    (:class:`~persistent_agent.storage.backend.BackendKeyValueStore` over PostgreSQL)."""

    def __init__(self, state: SharedState, model_cls: type[V], namespace: str) -> None:
        super().__init__(state, model_cls, namespace)
