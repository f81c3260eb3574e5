"""The operator tools' side of the shared state (profile ``encrypted-postgres``).

The tools find the shared state where the agent does: ``config/.env.agent``
with ``FAME_STORAGE_PROFILE=encrypted-postgres``, its DSN and password file
(``FAME_STORAGE_POSTGRES_DSN`` / ``…_PASSWORD_FILE`` in the tools' own
environment win, for replicas configured elsewhere). The key is the agent's.

* ``verify`` / ``inspect``: every row decrypted, read-only; inspect prints it.
* ``backup``: the three tables as stored (still encrypted), in a snapshot
  transaction, into ``shared_state.json`` of the backup directory.
* ``restore``: into an empty shared state only, with every replica stopped.
* ``rotate-key``: the shared keyring re-wrapped, with every replica stopped.
* ``migrate-state``: the agent's local SQLCipher state copied in, once.

"Every replica stopped" is checked across hosts: each running replica holds
the shared advisory lock :data:`REPLICAS_LOCK`, and the tools take it
exclusively (``pg_try_advisory_lock``) for as long as they write.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from persistent_agent.errors import (
    BackupError,
    ServicesRunningError,
    SharedStateError,
)
from persistent_agent.keys.custody import (
    POSTGRES_DSN_VAR,
    POSTGRES_PASSWORD_FILE_VAR,
    KeySource,
)
from persistent_agent.keys.keyring import KeyWrapper
from persistent_agent.keys.secret_files import read_private, write_private
from persistent_agent.ops.config_files import env_file, read_env
from persistent_agent.ops.node_keys import source_of
from persistent_agent.storage.backend import Row, StateBackend
from persistent_agent.storage.sealing import keyring_ad
from persistent_agent.storage.shared_state import (
    REPLICAS_LOCK,
    SharedState,
    check_tls,
    describe,
    rewrap_keys,
)

PROFILE = "encrypted-postgres"
BACKUP_FILE = "shared_state.json"
BACKUP_FORMAT = 1
TABLES = {
    "pa_keyring": ("name", "wrapped", "wrapped_by"),
    "pa_state": ("namespace", "key", "version", "sealed"),
    "pa_requests": ("id", "sealed", "created_at"),
}


@dataclass(frozen=True)
class SharedConfig:
    """Where the shared state is, and the key that opens it."""

    dsn: str
    password: str | None
    source: KeySource

    @property
    def where(self) -> str:
        return describe(self.dsn)


def shared_config(config_dir: Path) -> SharedConfig | None:
    """The agent's shared state, if it is configured for one; else None."""
    path = env_file(config_dir, "agent")
    values = read_env(path) if path.is_file() else {}
    dsn = os.environ.get(POSTGRES_DSN_VAR) or (
        values.get(POSTGRES_DSN_VAR) if values.get("FAME_STORAGE_PROFILE") == PROFILE else None
    )
    if not dsn:
        return None
    check_tls(dsn)
    password_file = os.environ.get(POSTGRES_PASSWORD_FILE_VAR) or values.get(
        POSTGRES_PASSWORD_FILE_VAR
    )
    password = None
    if password_file:
        file = Path(password_file)
        password = read_private(
            file if file.is_absolute() else config_dir / file, POSTGRES_PASSWORD_FILE_VAR
        )
    return SharedConfig(dsn, password, source_of(config_dir, "agent"))


@asynccontextmanager
async def opened(
    config: SharedConfig, source: KeySource | None = None
) -> AsyncIterator[SharedState]:
    """The shared state, read through a replica's code (the keys unwrapped, no lock held)."""
    state = await SharedState.open(
        config.dsn, config.password, source or config.source, max_size=2, hold_replica_lock=False
    )
    try:
        yield state
    finally:
        await state.close()


@asynccontextmanager
async def replicas_stopped(config: SharedConfig) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A connection holding the replicas lock exclusively: no replica runs, on any host."""
    try:
        conn = await psycopg.AsyncConnection.connect(
            config.dsn, password=config.password, autocommit=True, connect_timeout=5
        )
    except psycopg.OperationalError as exc:
        raise SharedStateError(
            f"cannot connect to {config.where}: {str(exc).strip().splitlines()[0]}"
        ) from None
    async with conn:
        cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (REPLICAS_LOCK,))
        found = await cur.fetchone()
        if not found or not found[0]:
            raise ServicesRunningError(
                f"agent replicas are running against {config.where} (they hold its replicas "
                "lock); stop every replica, on every host, then run this again"
            )
        yield conn


def ensure_stopped(config: SharedConfig) -> None:
    """Raise ServicesRunningError if any replica runs against *config*, on any host."""

    async def work() -> None:
        async with replicas_stopped(config):
            pass

    asyncio.run(work())


# ---------------------------------------------------------------- verify, inspect


async def backend_verify_lines(backend: StateBackend) -> tuple[list[str], int]:
    """One line per row of any backend (ok or its error) and the number of failures."""
    rows = await backend.all_rows()
    lines = [
        f"shared {row.namespace}/{row.key} (version {row.version}): ok"
        if isinstance(row, Row)
        else f"shared FAIL: {row}"
        for row in rows
    ]
    return lines, sum(1 for row in rows if not isinstance(row, Row))


async def backend_inspect_lines(backend: StateBackend) -> list[str]:
    """Every row of any backend with its value (the operator asked to see them)."""
    rows = await backend.all_rows()
    lines = [f"== shared state in {backend.where}: {len(rows)} rows"]
    for row in rows:
        if isinstance(row, Row):
            lines.append(f"{row.namespace}/{row.key} (version {row.version}): {row.value}")
        else:
            lines.append(f"FAIL: {row}")
    return lines


def verify_lines(config: SharedConfig) -> tuple[list[str], int]:
    """One line per row (ok or its error) and the number of failures."""

    async def work() -> tuple[list[str], int]:
        async with opened(config) as state:
            return await backend_verify_lines(state)

    return asyncio.run(work())


def inspect_lines(config: SharedConfig) -> list[str]:
    async def work() -> list[str]:
        async with opened(config) as state:
            return await backend_inspect_lines(state)

    return asyncio.run(work())


# ---------------------------------------------------------------- rotate-key


def check_key(config: SharedConfig, *sources: KeySource) -> KeySource:
    """The first of *sources* that opens the shared keyring (writes nothing), or its error."""

    async def work() -> KeySource:
        error: SharedStateError | None = None
        for source in sources:
            try:
                async with opened(config, source):
                    return source
            except SharedStateError as refused:
                error = error or refused
        assert error is not None  # noqa: S101 - sources is never empty
        raise error

    return asyncio.run(work())


def rewrap(config: SharedConfig, old: KeyWrapper, new: KeyWrapper) -> int:
    """Re-wrap the shared keys from *old* to *new*, with every replica stopped."""

    async def work() -> int:
        async with replicas_stopped(config) as conn:
            return await rewrap_keys(conn, old, new)

    return asyncio.run(work())


# ---------------------------------------------------------------- backup, restore


def _encode(value: Any) -> Any:
    if isinstance(value, bytes | memoryview):
        return {"hex": bytes(value).hex()}
    if hasattr(value, "isoformat"):
        return {"time": value.isoformat()}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and "hex" in value:
        return bytes.fromhex(value["hex"])
    if isinstance(value, dict) and "time" in value:
        return value["time"]
    return value


def backup(config: SharedConfig, dest: Path) -> int:
    """The shared state's tables as stored (encrypted) into *dest*/shared_state.json; rows."""

    async def work() -> dict[str, list[list[Any]]]:
        async with opened(config):  # the key must open it: a backup nobody can restore is none
            pass
        async with (
            await psycopg.AsyncConnection.connect(
                config.dsn, password=config.password, autocommit=True
            ) as conn,
            conn.transaction(),
        ):
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            tables: dict[str, list[list[Any]]] = {}
            for table, columns in TABLES.items():
                cur = await conn.execute(
                    f"SELECT {', '.join(columns)} FROM {table}"  # noqa: S608 - fixed names
                )
                tables[table] = [[_encode(v) for v in row] for row in await cur.fetchall()]
        return tables

    tables = asyncio.run(work())
    document = {
        "format": BACKUP_FORMAT,
        "wrapped_by": config.source.wrapper.fingerprint,
        "tables": tables,
    }
    write_private(dest / BACKUP_FILE, json.dumps(document, separators=(",", ":")))
    return len(tables["pa_state"])


def restore(config: SharedConfig, source_dir: Path) -> int:
    """Load a backup's shared state into an empty shared state, every replica stopped; rows."""
    path = source_dir / BACKUP_FILE
    try:
        document = json.loads(path.read_text())
        tables = document["tables"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"{path} is not a shared-state backup ({exc})") from None
    if document.get("wrapped_by") != config.source.wrapper.fingerprint:
        raise BackupError(
            f"{path} was made under master key {document.get('wrapped_by')}; the configured "
            f"key is {config.source.wrapper.fingerprint} (nothing was changed)"
        )

    async def work() -> int:
        async with opened(config) as state:  # makes the tables on an empty database
            if await state.row_count():
                raise BackupError(
                    f"the shared state in {config.where} is not empty; restore it into an "
                    "empty database (nothing was changed)"
                )
        async with replicas_stopped(config) as conn, conn.transaction():
            await conn.execute("DELETE FROM pa_keyring")
            for table, columns in TABLES.items():
                for row in tables.get(table, []):
                    await conn.execute(
                        f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608 - fixed names
                        f"VALUES ({', '.join(['%s'] * len(columns))})",
                        [_decode(v) for v in row],
                    )
        async with opened(config) as state:  # the restored keyring opens with our key
            return await state.row_count()

    return asyncio.run(work())


def rewrap_backup(backup_dir: Path, old: KeyWrapper, new: KeyWrapper) -> None:
    """Re-wrap the shared keys kept in a backup (rotate-key); no-op without one, or when done."""
    path = backup_dir / BACKUP_FILE
    if not path.is_file():
        return
    document = json.loads(path.read_text())
    if document.get("wrapped_by") == new.fingerprint:
        return
    rows = []
    for name, wrapped, wrapped_by in document["tables"]["pa_keyring"]:
        key = old.unwrap(wrapped, keyring_ad(name, wrapped_by))
        rows.append([name, new.wrap(key, keyring_ad(name, new.fingerprint)), new.fingerprint])
    document["tables"]["pa_keyring"] = rows
    document["wrapped_by"] = new.fingerprint
    write_private(path, json.dumps(document, separators=(",", ":")))


# ---------------------------------------------------------------- migrate-state


def migrate(config: SharedConfig, rows: dict[str, str], namespace: str) -> int:
    """Copy *rows* (key -> value JSON) of *namespace* into an empty shared namespace, once."""

    async def work() -> int:
        async with opened(config) as state, replicas_stopped(config):
            async with contextlib.aclosing(state.rows(namespace)) as held:
                async for _ in held:  # one row is enough to refuse
                    raise SharedStateError(
                        f"the shared state in {config.where} already holds {namespace}; "
                        "migrate-state runs once, into an empty one (nothing was changed)"
                    )
            for key, value in rows.items():
                if not await state.write(namespace, key, value, 0):
                    raise SharedStateError(f"{namespace}/{key} appeared while migrating")
        return len(rows)

    return asyncio.run(work())
