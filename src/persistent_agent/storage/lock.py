"""One writer per data directory: a lock that a node holds for its lifetime.

Two nodes on one data directory would both serve, each from its own cached
state, and overwrite each other's writes. So a node (through its storage
provider), ``restore`` and ``rotate-key`` hold ``flock(LOCK_EX | LOCK_NB)`` on
a dedicated lock file in the directory, which names the holder (pid, host,
what it is). A second one stops at once with one line naming both.

Why these choices:

- A dedicated file, never the SQLite files: locks of the fcntl family on a
  database would be dropped whenever any handle on it is closed, and SQLite
  uses those locks itself.
- ``flock``: it belongs to the open file, so the kernel drops it when the
  holder dies, even by kill -9 (no stale lock to clean up), and it holds
  across containers that bind-mount the same directory.
- The file is never deleted, since deleting it would let a second holder lock
  a new file while the first still holds the old one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

from persistent_agent.errors import ServicesRunningError
from persistent_agent.storage.layout import LOCK_FILE

# Held locks of this process, by directory: a process may open the same
# directory twice (two providers), and a second flock on a new file handle
# would block against its own first one.
_held: dict[Path, tuple[int, int]] = {}


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "another process"


def acquire(directory: Path, purpose: str) -> Path:
    """Lock *directory* for this process, as *purpose* (e.g. "persistent-agent node").

    Raises :class:`ServicesRunningError` naming the directory and the holder
    when another process has it. Returns the resolved directory, to release.
    """
    key = directory.resolve()
    if key in _held:
        fd, count = _held[key]
        _held[key] = (fd, count + 1)
        return key
    path = key / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise ServicesRunningError(
            f"{directory} is in use by {holder}; stop it first (make stop, or make local-stop)"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} ({purpose})\n".encode(), 0)
    _held[key] = (fd, 1)
    return key


def release(key: Path) -> None:
    """Undo one :func:`acquire` of *key*; the last one unlocks."""
    fd, count = _held.pop(key, (-1, 0))
    if count > 1:
        _held[key] = (fd, count - 1)
    elif fd >= 0:
        os.close(fd)  # closing the only handle releases the flock


@contextlib.contextmanager
def holding(directories: Iterable[Path], purpose: str) -> Iterator[None]:
    """Hold the lock of every directory (created owner-only if missing) for a block."""
    keys: list[Path] = []
    try:
        for directory in directories:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            keys.append(acquire(directory, purpose))
        yield
    finally:
        for key in reversed(keys):
            release(key)
