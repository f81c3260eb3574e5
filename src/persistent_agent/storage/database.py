"""One SQLCipher database file: naming, opening with a key, and the kv table.

The storage provider and every operator tool (verify, inspect, rotate, backup)
open files through here, so there is exactly one place that decides how a key
is applied, what a wrong key looks like, and which pragmas a connection gets.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import sqlcipher3.dbapi2 as sqlcipher

from persistent_agent.errors import DatabaseDamagedError, StorageDirectoryError, WrongKeyError

# What a damaged page raises; callers outside this module catch it by this name.
DatabaseError = sqlcipher.DatabaseError

TABLE = "kv"
SCHEMA_VERSION = 1

Synchronous = Literal["NORMAL", "FULL"]


class Cursor(Protocol):
    """What this project uses of a DB-API cursor."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """What this project uses of a sqlcipher3 connection (the module is untyped)."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...

    def close(self) -> None: ...


# SQLCipher's "file is not a database" is how both a wrong key and a damaged
# first page look: the HMAC of page 1 does not verify, so nothing is readable.
_UNREADABLE = ("file is not a database", "file is encrypted")


def ensure_directory(directory: Path) -> None:
    """Create *directory* owner-only (0700) or explain in one line why not."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageDirectoryError(directory, exc.strerror or str(exc)) from None
    if not directory.is_dir():
        raise StorageDirectoryError(directory, "it is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StorageDirectoryError(directory, "it is not writable by this user")


def is_unreadable_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, sqlcipher.DatabaseError) and any(p in text for p in _UNREADABLE)


def open_database(
    path: Path,
    key: bytes,
    *,
    create: bool = True,
    read_only: bool = False,
    synchronous: Synchronous = "NORMAL",
) -> Connection:
    """Open *path* with the raw 256-bit *key* and check that the key fits.

    A wrong key raises :class:`WrongKeyError` and leaves the file exactly as it
    was: nothing is written before the key has been proven on page 1.

    *read_only* is for the operator tools: the file must exist, the schema is
    not touched and the connection refuses writes (``query_only``). It is
    still a read-write handle on the file, so that closing it, as the last
    connection, cleans up the WAL instead of leaving empty sidecars behind.
    """
    exists = path.exists() and path.stat().st_size > 0
    if not exists and (read_only or not create):
        raise FileNotFoundError(path)
    if not exists:
        # SQLite gives -wal and -shm the mode of the main file, so creating it
        # 0600 here keeps every file of the database owner-only.
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))

    conn = cast(
        Connection,
        sqlcipher.connect(str(path), isolation_level=None, check_same_thread=False),
    )
    try:
        # SQLCipher logs failed key checks to stderr itself; the error we raise
        # says it once, in our words. This must precede PRAGMA key to cover it.
        conn.execute("PRAGMA cipher_log_level = NONE")
        # PRAGMA key must be the first statement that touches the file: it only
        # sets the key, and the first read (below) is what decrypts page 1.
        conn.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlcipher.DatabaseError as exc:
            if is_unreadable_error(exc) and exists:
                raise WrongKeyError(path) from None
            raise DatabaseDamagedError(path, str(exc)) from None
        conn.execute("PRAGMA busy_timeout = 10000")
        if read_only:
            conn.execute("PRAGMA query_only = 1")
        else:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {synchronous}")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {TABLE} ("
                " key TEXT PRIMARY KEY,"
                " value TEXT NOT NULL,"
                " updated_at REAL NOT NULL DEFAULT (unixepoch('subsec'))"
                ")"
            )
            if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.close()
        raise
    return conn


@contextlib.contextmanager
def opened(path: Path, key: bytes, **kwargs: Any) -> Iterator[Connection]:
    """:func:`open_database` as a context manager that always closes."""
    conn = open_database(path, key, **kwargs)
    try:
        yield conn
    finally:
        conn.close()


def integrity_problems(conn: Connection) -> list[str]:
    """Run SQLCipher's page HMAC check and SQLite's structural check.

    Returns what they report (an empty list when the file is sound); a page
    so damaged that the checks cannot even run is reported, not raised.
    """
    try:
        problems = [str(row[0]) for row in conn.execute("PRAGMA cipher_integrity_check")]
        rows = [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
    except sqlcipher.DatabaseError as exc:
        return [str(exc)]
    if rows != ["ok"]:
        problems.extend(rows)
    return problems


def check_integrity(conn: Connection, path: Path) -> None:
    """Raise :class:`DatabaseDamagedError` naming *path* if any page fails its checks."""
    problems = integrity_problems(conn)
    if problems:
        raise DatabaseDamagedError(path, "; ".join(problems[:3]))


def row_count(conn: Connection) -> int:
    return int(conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0])


def export(conn: Connection, target: Path, key: bytes) -> int:
    """Copy the open database *conn* into new file *target* under *key*; return rows.

    This is how backups and key rotation copy a database: through SQLCipher,
    never by copying a live file. ATTACH must happen outside a transaction;
    the export and the count then run in one, so they describe one snapshot.
    """
    os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    conn.execute("ATTACH DATABASE ? AS target KEY ?", (str(target), f"x'{key.hex()}'"))
    try:
        conn.execute("BEGIN")
        try:
            count = row_count(conn)
            conn.execute("SELECT sqlcipher_export('target')")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.execute("DETACH DATABASE target")
    return count


def checked_rows(path: Path, key: bytes) -> int:
    """Reopen *path* with *key*, require both integrity checks to pass, count its rows."""
    with opened(path, key, read_only=True) as conn:
        check_integrity(conn, path)
        return row_count(conn)


def confirm(path: Path, key: bytes, expected_rows: int) -> None:
    """*path* opens with *key*, passes both checks and holds *expected_rows* entries."""
    found = checked_rows(path, key)
    if found != expected_rows:
        raise DatabaseDamagedError(path, f"holds {found} entries, expected {expected_rows}")


def replace_durably(source: Path, target: Path) -> None:
    """fsync *source*, rename it over *target* atomically, fsync the directory."""
    with open(source, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(source, target)
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rows(conn: Connection) -> list[tuple[str, str]]:
    """Every (key, value JSON) pair of the kv table, ordered by key."""
    query = f"SELECT key, value FROM {TABLE} ORDER BY key"
    return [(str(k), str(v)) for k, v in conn.execute(query)]
