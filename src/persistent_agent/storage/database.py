"""One SQLCipher database file: naming, opening with a key, and the kv table.

The storage provider and every operator tool (verify, inspect, rotate, backup)
open files through here, so there is exactly one place that decides how a key
is applied, what a wrong key looks like, which pragmas a connection gets, how
a file is read without changing it, and which one-line error an SQLite or OS
failure becomes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import sqlcipher3.dbapi2 as sqlcipher

from persistent_agent.errors import (
    DatabaseBusyError,
    DatabaseDamagedError,
    StorageDirectoryError,
    StorageFullError,
    StorageIOError,
    StorageReadOnlyError,
    WrongKeyError,
)
from persistent_agent.keys.secret_files import sync_directory, sync_file

# Every exception sqlcipher3 raises, and what a damaged page raises; callers
# outside this module catch them by these names.
Error = sqlcipher.Error
DatabaseError = sqlcipher.DatabaseError

TABLE = "kv"
SCHEMA_VERSION = 1
# The request ids of idempotent calls (``increment``) and what they did,
# recorded in the same transaction as the state change; made in a database
# only when it first records one.
REQUESTS_TABLE = "requests"
REQUESTS_SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {REQUESTS_TABLE} ("
    " id TEXT PRIMARY KEY,"
    " arguments TEXT,"
    " result TEXT NOT NULL,"
    " created_at REAL NOT NULL"
    ")"
)

# SQLCipher 4's cipher_page_size, which this project never changes: a sound
# database file is always a whole number of these pages, never empty.
PAGE_SIZE = 4096

# Seconds a statement waits for another process's lock before giving up.
BUSY_TIMEOUT = 10.0

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


class _PrivateCopyConnection(sqlcipher.Connection):
    """A connection to a private copy of a database; closing it deletes the copy."""

    copy_dir: Path | None = None

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.copy_dir is not None:
                shutil.rmtree(self.copy_dir, ignore_errors=True)
                self.copy_dir = None


# SQLCipher's "file is not a database" is how both a wrong key and a damaged
# first page look: the HMAC of page 1 does not verify, so nothing is readable.
_UNREADABLE = ("file is not a database", "file is encrypted")

# Result codes (the low byte of sqlcipher3's extended sqlite_errorcode) that
# say something about the disk, the mount or another process, not the file.
_FULL = sqlcipher.SQLITE_FULL
_READONLY = sqlcipher.SQLITE_READONLY
_BUSY = (sqlcipher.SQLITE_BUSY, sqlcipher.SQLITE_LOCKED)
_CANTOPEN = sqlcipher.SQLITE_CANTOPEN
_IO = (sqlcipher.SQLITE_IOERR, sqlcipher.SQLITE_NOLFS, sqlcipher.SQLITE_PROTOCOL)
_DAMAGED = (sqlcipher.SQLITE_CORRUPT, sqlcipher.SQLITE_NOTADB)
_CONDITIONS = (_FULL, _READONLY, *_BUSY, _CANTOPEN, *_IO)
# The file was replaced or unlinked under an open connection: a read-only
# code, but nothing about the file system being read-only.
_READONLY_DBMOVED = sqlcipher.SQLITE_READONLY | (4 << 8)
# For errors that carry no code (sqlcipher3 raises some itself).
_TEXTS = {
    "database or disk is full": _FULL,
    "attempt to write a readonly database": _READONLY,
    "database is locked": sqlcipher.SQLITE_BUSY,
    "database table is locked": sqlcipher.SQLITE_LOCKED,
    "unable to open database file": _CANTOPEN,
    "disk i/o error": sqlcipher.SQLITE_IOERR,
    "database disk image is malformed": sqlcipher.SQLITE_CORRUPT,
    "file is not a database": sqlcipher.SQLITE_NOTADB,
}


def ensure_directory(directory: Path) -> None:
    """Create *directory* owner-only (0700) or explain in one line why not."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageDirectoryError(directory, exc.strerror or str(exc)) from None
    if not directory.is_dir():
        raise StorageDirectoryError(directory, "it is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        if _on_read_only_file_system(directory):
            raise StorageReadOnlyError(directory)
        raise StorageDirectoryError(directory, "it is not writable by this user")


def is_unreadable_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, sqlcipher.DatabaseError) and any(p in text for p in _UNREADABLE)


def _code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code
    text = str(exc).lower()
    return next((c for fragment, c in _TEXTS.items() if fragment in text), None)


def _is_condition(exc: BaseException) -> bool:
    """Whether *exc* is about the disk, the mount or a lock rather than the file's content."""
    code = _code(exc)
    return code is not None and (code & 0xFF) in _CONDITIONS


def _on_read_only_file_system(path: Path) -> bool:
    try:
        return bool(os.statvfs(path if path.exists() else path.parent).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _file_system_full(path: Path) -> bool:
    try:
        return os.statvfs(path if path.exists() else path.parent).f_bavail == 0
    except OSError:
        return False


def storage_error(exc: BaseException, path: Path) -> BaseException:
    """The one-line error that *exc*, raised while using *path*, stands for.

    The one place where SQLite's and the OS's failures are read: a full disk,
    a read-only file or mount, a lock held too long and other I/O failures
    each get their own error naming *path*, so that none of them passes for a
    damaged file. Anything else is returned unchanged.
    """
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return StorageFullError(path)
        if exc.errno == errno.EROFS:
            return StorageReadOnlyError(path)
        return exc
    unchanged = exc  # sqlcipher3 is untyped: isinstance() below would make exc Any
    if not isinstance(exc, sqlcipher.Error) or (code := _code(exc)) is None:
        return unchanged
    primary = code & 0xFF
    if primary == _FULL:
        return StorageFullError(path)
    if primary == _READONLY and code != _READONLY_DBMOVED:
        return StorageReadOnlyError(path)
    if primary in _BUSY:
        return DatabaseBusyError(path)
    # "unable to open database file" is all SQLite says about EROFS, ENOSPC
    # and EACCES alike; the file system itself tells them apart.
    if code == _READONLY_DBMOVED:
        return StorageIOError(path, "the file was replaced or deleted while it was open")
    if primary == _CANTOPEN or primary in _IO:
        if _on_read_only_file_system(path):
            return StorageReadOnlyError(path)
        if _file_system_full(path):
            return StorageFullError(path)
        return StorageIOError(path, str(exc))
    if primary in _DAMAGED:
        return DatabaseDamagedError(path, str(exc))
    return unchanged


@contextlib.contextmanager
def storage_errors(path: Path) -> Iterator[None]:
    """Raise what :func:`storage_error` makes of an SQLite or OS error in the block."""
    try:
        yield
    except (sqlcipher.Error, OSError) as exc:
        mapped = storage_error(exc, path)
        if mapped is exc:
            raise
        raise mapped from None


def open_database(
    path: Path,
    key: bytes,
    *,
    create: bool = True,
    read_only: bool = False,
    synchronous: Synchronous = "NORMAL",
    busy_timeout: float = BUSY_TIMEOUT,
    check: bool = False,
) -> Connection:
    """Open *path* with the raw 256-bit *key* and check that the key fits.

    An existing file is first opened the way :func:`_open_read_only` does,
    which changes no byte of any file, sidecars included: a wrong key raises
    :class:`WrongKeyError` there, and with *check* a page that fails either
    integrity check raises :class:`DatabaseDamagedError`, before a read-write
    handle exists. (That handle would replay a WAL left by a crash and fold
    it into the file on close.)

    *read_only* is for the operator tools: the file must exist, and that
    read-only connection is what they get, whatever the key.

    A file that exists but cannot hold a database (empty, cut short) raises
    :class:`DatabaseDamagedError` and is left as it is, never initialised as
    new. A full disk, a read-only mount, a lock held longer than
    *busy_timeout* seconds and other I/O failures raise their own errors
    (:func:`storage_error`).
    """
    with storage_errors(path):
        if not _is_existing_database(path):
            if read_only or not create:
                raise FileNotFoundError(path)
            return _create(path, key, synchronous, busy_timeout)
        conn = _open_read_only(path, key, busy_timeout)
        try:
            if check:
                check_integrity(conn, path)
        except BaseException:
            conn.close()
            raise
        if read_only:
            return conn
        conn.close()
        # SQLite would open it read-only instead and fail at the first write.
        if _on_read_only_file_system(path):
            raise StorageReadOnlyError(path)
        return _open_read_write(path, key, synchronous, busy_timeout, key_proven=True)


def _is_existing_database(path: Path) -> bool:
    """Whether *path* exists; :class:`DatabaseDamagedError` if it cannot be a database.

    SQLite takes an empty file for a new database (and deletes a WAL beside
    it), so a file emptied or cut short by a crash or a full disk would
    otherwise come back as a fresh, empty one.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size == 0:
        raise DatabaseDamagedError(path, "it is empty: 0 bytes")
    if size % PAGE_SIZE:
        raise DatabaseDamagedError(
            path, f"it is {size} bytes long, not a whole number of {PAGE_SIZE}-byte pages"
        )
    return True


def _connect(database: str, busy_timeout: float, **kwargs: Any) -> Connection:
    return cast(
        Connection,
        sqlcipher.connect(
            database,
            timeout=busy_timeout,
            isolation_level=None,
            check_same_thread=False,
            **kwargs,
        ),
    )


def _unlock(conn: Connection, key: bytes, path: Path, *, key_proven: bool) -> None:
    """Apply *key* to *conn* and read page 1, which proves it."""
    # SQLCipher logs failed key checks to stderr itself; the error we raise
    # says it once, in our words. This must precede PRAGMA key to cover it.
    conn.execute("PRAGMA cipher_log_level = NONE")
    # PRAGMA key must be the first statement that touches the file: it only
    # sets the key, and the first read (below) is what decrypts page 1.
    conn.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlcipher.DatabaseError as exc:
        if is_unreadable_error(exc) and not key_proven:
            raise WrongKeyError(path) from None
        if _is_condition(exc):
            raise  # the caller's storage_errors() names it
        raise DatabaseDamagedError(path, str(exc)) from None


def _open_read_only(path: Path, key: bytes, busy_timeout: float) -> Connection:
    """Open existing *path* for reading, changing no byte of any file, whatever the key.

    Which way depends on what lies beside the file:

    - ``-wal`` and ``-shm``: a node has it open, or was killed. With
      ``mode=ro&readonly_shm=1`` SQLite uses a live writer's ``-shm``
      read-only, under its usual locks (the writer is neither disturbed nor
      raced), and with no live writer reads the WAL into private memory. It
      sees every committed write either way, writes no file and never
      checkpoints. (A read-write handle rebuilds the ``-shm``, and folds the
      WAL into the file and deletes it on close; plain ``mode=ro`` rebuilds
      the ``-shm`` too; a private copy of a live database could be torn.)
    - Nothing: there is no WAL to replay, and no WAL-mode connection is open
      (one always has its ``-wal``), so ``immutable=1`` reads the main file
      alone. A node starting meanwhile writes to a new WAL; only a
      checkpoint, long after, writes to the file. (``mode=ro`` would create
      ``-wal`` and ``-shm`` and leave them behind.)
    - A ``-wal`` without its ``-shm``, or a ``-journal``: SQLite has to write
      to recover those, so it recovers a private copy instead, in an
      owner-only temporary directory deleted on close. The copy holds only
      encrypted pages, as the originals do.

    tests/storage/test_crash_leftovers.py checks each way, byte for byte.
    """
    wal, shm, journal = (path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal"))
    uri = "file:" + urllib.parse.quote(str(path))
    if wal.exists() and shm.exists():
        conn = _connect(uri + "?mode=ro&readonly_shm=1", busy_timeout, uri=True)
    elif wal.exists() or journal.exists():
        conn = _open_private_copy(path, [f for f in (wal, journal) if f.exists()], busy_timeout)
    else:
        conn = _connect(uri + "?immutable=1", busy_timeout, uri=True)
    try:
        _unlock(conn, key, path, key_proven=False)
        conn.execute("PRAGMA query_only = 1")
    except BaseException:
        conn.close()
        raise
    return conn


def _open_private_copy(path: Path, sidecars: list[Path], busy_timeout: float) -> Connection:
    copy_dir = Path(tempfile.mkdtemp(prefix="persistent-agent-"))  # created 0700
    try:
        with storage_errors(copy_dir):
            # The file before its journal: a page rewritten while we copy the
            # file has its original in the journal we copy afterwards.
            for source in (path, *sidecars):
                shutil.copyfile(source, copy_dir / source.name)
        conn = sqlcipher.connect(
            str(copy_dir / path.name),
            timeout=busy_timeout,
            isolation_level=None,
            check_same_thread=False,
            factory=_PrivateCopyConnection,
        )
    except BaseException:
        shutil.rmtree(copy_dir, ignore_errors=True)
        raise
    conn.copy_dir = copy_dir
    return cast(Connection, conn)


def _create(path: Path, key: bytes, synchronous: Synchronous, busy_timeout: float) -> Connection:
    # SQLite gives -wal and -shm the mode of the main file, so creating it
    # 0600 here keeps every file of the database owner-only. O_EXCL makes
    # sure the file removed below is one this call created.
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    try:
        return _open_read_write(path, key, synchronous, busy_timeout, key_proven=False)
    except BaseException:
        # The first write failed (disk full, say). Left empty, the file would
        # be reported as damaged from then on; it holds nothing, so it goes.
        with contextlib.suppress(OSError):
            if path.stat().st_size == 0:
                path.unlink()
        raise


def _open_read_write(
    path: Path, key: bytes, synchronous: Synchronous, busy_timeout: float, *, key_proven: bool
) -> Connection:
    conn = _connect(str(path), busy_timeout)
    try:
        _unlock(conn, key, path, key_proven=key_proven)
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
    so damaged that the checks cannot even run is reported, not raised. A
    lock, the disk or the mount failing them is raised: it says nothing
    about the file.
    """
    try:
        problems = [str(row[0]) for row in conn.execute("PRAGMA cipher_integrity_check")]
        rows = [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
    except sqlcipher.DatabaseError as exc:
        if _is_condition(exc):
            raise
        return [str(exc)]
    if rows != ["ok"]:
        problems.extend(rows)
    return problems


def check_integrity(conn: Connection, path: Path) -> None:
    """Raise :class:`DatabaseDamagedError` naming *path* if any page fails its checks."""
    with storage_errors(path):
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
    with storage_errors(path), opened(path, key, read_only=True, check=True) as conn:
        return row_count(conn)


def confirm(path: Path, key: bytes, expected_rows: int) -> None:
    """*path* opens with *key*, passes both checks and holds *expected_rows* entries."""
    found = checked_rows(path, key)
    if found != expected_rows:
        raise DatabaseDamagedError(path, f"holds {found} entries, expected {expected_rows}")


def sync_created(path: Path) -> None:
    """Make a newly created *path* durable: its bytes, and its name in the directory.

    Its keyring entry stops being a reservation after this, and from then
    on a missing file is reported as damage, so the file must not vanish
    with a power cut that the keyring survives.
    """
    sync_file(path)
    sync_directory(path.parent)


def replace_durably(source: Path, target: Path) -> None:
    """fsync *source*, rename it over *target* atomically, fsync the directory."""
    with open(source, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(source, target)
    sync_directory(target.parent)


def rows(conn: Connection) -> list[tuple[str, str]]:
    """Every (key, value JSON) pair of the kv table, ordered by key."""
    query = f"SELECT key, value FROM {TABLE} ORDER BY key"
    return [(str(k), str(v)) for k, v in conn.execute(query)]
