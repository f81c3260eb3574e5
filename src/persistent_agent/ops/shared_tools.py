"""The operator tools' side of the agent's state in a storage backend (``storage.registry``).

The tools find the backend where the agent does: ``config/.env.agent`` with
``FAME_STORAGE_PROFILE`` naming a registered backend (``encrypted-postgres``),
and that backend's settings (``FAME_STORAGE_POSTGRES_DSN`` / ``…_PASSWORD_FILE``
in the tools' own environment win, for replicas configured elsewhere). The
key is the agent's. Everything here talks to the backend protocol
(``storage.backend``: ``StateBackend``, and ``StoredTables`` for what backup,
restore and rotate-key need), never to a database driver:

* ``verify`` / ``inspect``: every row decrypted, read-only; inspect prints it.
* ``backup``: the backend's tables as stored (still encrypted), from one
  snapshot, streamed into ``shared_state.json`` of the backup directory.
* ``restore``: into an empty backend only, with every replica stopped.
* ``rotate-key``: the backend's keyring re-wrapped, with every replica stopped.
* ``migrate-state``: the agent's local SQLCipher state copied in, once.

"Every replica stopped" is the backend's to check, across hosts
(``StoredTables.writers_stopped``: for PostgreSQL, the replicas' advisory lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from persistent_agent import settings as declared
from persistent_agent.errors import (
    BackupError,
    SharedStateError,
)
from persistent_agent.keys.custody import KeySource
from persistent_agent.keys.keyring import KeyWrapper
from persistent_agent.keys.secret_files import replacing, write_private
from persistent_agent.ops.config_files import read_env
from persistent_agent.ops.node_keys import source_of
from persistent_agent.storage import registry
from persistent_agent.storage.backend import Row, StateBackend, StoredTables
from persistent_agent.storage.layout import env_file
from persistent_agent.storage.sealing import keyring_ad

BACKUP_FILE = "shared_state.json"
BACKUP_FORMAT = 1
# The PostgreSQL backend's tables, as its backups hold them (kept importable).
TABLES = {
    "pa_keyring": ("name", "wrapped", "wrapped_by"),
    "pa_state": ("namespace", "key", "version", "sealed"),
    "pa_requests": ("id", "sealed", "created_at"),
}
# How long a tool waits for the backend before it says it is unavailable.
OPEN_TIMEOUT = 10.0


@dataclass(frozen=True)
class SharedConfig:
    """Which backend holds the agent's state, its settings, and the key that opens it."""

    profile: str
    settings: dict[str, str] = field(repr=False)  # a DSN may hold a password
    source: KeySource = field(repr=False)

    @property
    def where(self) -> str:
        return registry.backend_module(self.profile).describe_settings(self.settings)


def shared_config(config_dir: Path) -> SharedConfig | None:
    """The agent's state backend, if it is configured for one; else None."""
    path = env_file(config_dir, "agent")
    values = read_env(path) if path.is_file() else {}
    for profile in registry.profiles():
        entry = registry.BACKENDS[profile]
        own = entry.values()
        # FAME_STORAGE_PROFILE in the env file selects it; so does its first setting,
        # if it has any, in the tools' own environment (replicas configured
        # elsewhere). Its values there win.
        names = entry.names()
        chosen = declared.FAME_STORAGE_PROFILE.raw(values) == profile
        if not chosen and not (names and own[names[0]]):
            continue
        settings = {}
        for name, value in entry.values(values).items():
            value = own[name] or value
            if value and name.endswith("_FILE") and not Path(value).is_absolute():
                value = str(config_dir / value)
            settings[name] = value
        registry.backend_module(profile).check_settings(settings)
        return SharedConfig(profile, settings, source_of(config_dir, "agent"))
    return None


@asynccontextmanager
async def opened(
    config: SharedConfig, source: KeySource | None = None
) -> AsyncIterator[StateBackend]:
    """The backend, opened as a tool does (its keys unwrapped, no replica's lock held)."""
    backend = await registry.backend_module(config.profile).open_backend(
        config.settings, source or config.source, replica=False, timeout=OPEN_TIMEOUT
    )
    try:
        yield backend
    finally:
        await backend.close()


def _tables(backend: StateBackend) -> StoredTables:
    """*backend* as the tools' backup, restore and rotate-key need it."""
    if not isinstance(backend, StoredTables):
        raise SharedStateError(
            f"the state backend in {backend.where} cannot be backed up, restored or "
            "re-keyed (it does not provide storage.backend.StoredTables)"
        )
    return backend


def ensure_stopped(config: SharedConfig, *sources: KeySource) -> None:
    """Raise ServicesRunningError if any replica runs against *config*, on any host.

    Opened with the first of *sources* (default: the configured key) that opens it.
    """
    source = check_key(config, *sources) if sources else config.source

    async def work() -> None:
        async with opened(config, source) as backend, _tables(backend).writers_stopped():
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


def rewrap(config: SharedConfig, old: KeySource, new: KeySource) -> int:
    """Re-wrap the backend's keys from *old* to *new*, with every replica stopped.

    Opened with whichever of the two keys opens it now (a rotation cut short
    may have re-wrapped them already: then nothing is left to do).
    """

    source = check_key(config, old, new) if new is not old else old

    async def work() -> int:
        async with opened(config, source) as backend:
            return await _tables(backend).rewrap(old.wrapper, new.wrapper)

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


class _BackupWriter:
    """``shared_state.json`` written as the records stream in, never whole in memory:
    ``{"format":1,"wrapped_by":…,"tables":{"<table>":[[…],…],…}}``, compact."""

    def __init__(self, handle: IO[str], tables: list[str]) -> None:
        self._handle = handle
        self._pending = list(tables)
        self._current: str | None = None
        self._first = True

    def start(self, wrapped_by: str) -> None:
        self._handle.write(
            f'{{"format":{BACKUP_FORMAT},"wrapped_by":{json.dumps(wrapped_by)},"tables":{{'
        )

    def _open(self, table: str) -> None:
        while self._current != table:
            if self._current is not None:
                self._handle.write("],")
            if not self._pending:
                raise SharedStateError(f"the backend streamed records of unknown table {table!r}")
            self._current = self._pending.pop(0)
            self._handle.write(f"{json.dumps(self._current)}:[")
            self._first = True

    def record(self, table: str, values: tuple[Any, ...]) -> None:
        self._open(table)
        self._handle.write(("" if self._first else ",") + _dumps([_encode(v) for v in values]))
        self._first = False

    def finish(self) -> None:
        if self._pending:
            self._open(self._pending[-1])
        if self._current is not None:
            self._handle.write("]")
        self._handle.write("}}")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


@contextlib.contextmanager
def _private_file(path: Path) -> Iterator[IO[str]]:
    """A new owner-only text file that takes *path*'s name, synced, only once written whole."""
    with replacing(path, 0o600) as raw:
        handle = io.TextIOWrapper(raw, encoding="utf-8")
        try:
            yield handle
        finally:
            handle.detach()  # flushes; the binary handle is replacing()'s to sync and close


def backup(config: SharedConfig, dest: Path) -> int:
    """The backend's tables as stored (encrypted), streamed into *dest*/shared_state.json;
    returns how many of the agent's rows it holds."""

    async def work() -> int:
        # Opened with the key: a backup nobody can restore is none.
        async with opened(config) as backend:
            tables = _tables(backend)
            rows = 0
            with _private_file(dest / BACKUP_FILE) as handle:
                writer = _BackupWriter(handle, list(tables.tables))
                writer.start(config.source.wrapper.fingerprint)
                async with contextlib.aclosing(tables.stored()) as records:
                    async for table, values in records:
                        writer.record(table, values)
                        rows += table == tables.rows_table
                writer.finish()
            return rows

    return asyncio.run(work())


def restore(config: SharedConfig, source_dir: Path) -> int:
    """Load a backup's shared state into an empty backend, every replica stopped; rows."""
    path = source_dir / BACKUP_FILE
    try:
        document = json.loads(path.read_text())
        tables = document["tables"]
        if not isinstance(tables, dict):
            raise TypeError("tables is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"{path} is not a shared-state backup ({exc})") from None
    if document.get("wrapped_by") != config.source.wrapper.fingerprint:
        raise BackupError(
            f"{path} was made under master key {document.get('wrapped_by')}; the configured "
            f"key is {config.source.wrapper.fingerprint} (nothing was changed)"
        )

    async def work() -> int:
        async with opened(config) as backend:  # makes the tables on an empty database
            if await backend.row_count():
                raise BackupError(
                    f"the shared state in {config.where} is not empty; restore it into an "
                    "empty database (nothing was changed)"
                )
            target = _tables(backend)
            await target.load(
                (table, [_decode(v) for v in values])
                for table in target.tables
                for values in tables.get(table, [])
            )
        async with opened(config) as backend:  # the restored keyring opens with our key
            return await backend.row_count()

    return asyncio.run(work())


def rewrap_backup(backup_dir: Path, old: KeyWrapper, new: KeyWrapper) -> None:
    """Re-wrap the shared keys kept in a backup (rotate-key); no-op without one, or when done.

    The keyring is the backup's first table (``StoredTables``: name, wrapped,
    wrapped_by), whichever backend wrote it.
    """
    path = backup_dir / BACKUP_FILE
    if not path.is_file():
        return
    document = json.loads(path.read_text())
    if document.get("wrapped_by") == new.fingerprint:
        return
    keyring = next(iter(document["tables"]))
    rows = []
    for name, wrapped, wrapped_by in document["tables"][keyring]:
        key = old.unwrap(wrapped, keyring_ad(name, wrapped_by))
        rows.append([name, new.wrap(key, keyring_ad(name, new.fingerprint)), new.fingerprint])
    document["tables"][keyring] = rows
    document["wrapped_by"] = new.fingerprint
    write_private(path, json.dumps(document, separators=(",", ":")))


# ---------------------------------------------------------------- migrate-state


def migrate(config: SharedConfig, rows: dict[str, str], namespace: str) -> int:
    """Copy *rows* (key -> value JSON) of *namespace* into an empty shared namespace, once."""

    async def work() -> int:
        async with opened(config) as state, _tables(state).writers_stopped():
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
