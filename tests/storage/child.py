"""Second processes for storage and ops tests: real processes on real files.

Crashes, live writers, held locks, full disks and read-only mounts only
happen to (or between) processes, so tests start one of these with
``python -m tests.storage.child COMMAND TARGET`` from the repository root,
with the master key in ``FAME_STORAGE_MASTER_KEY`` as a node gets it. Each
prints one line once it is in the state a test waits for:

- ``crash DB``: open DB through ``database.open_database``, write
  ``CRASH_ROWS`` rows ``crash-<n>``, print ``written`` and wait, to be killed
  with SIGKILL; that leaves ``-wal`` and ``-shm`` beside DB, as a node killed
  mid-work does.
- ``write DB``: keep overwriting 200 keys; print ``writing`` once it has
  written; for each line NAME on stdin, write key NAME and print
  ``wrote NAME``.
- ``lock DB``: open DB, ``BEGIN EXCLUSIVE`` and write a row, print ``locked``
  and keep the transaction open until killed. ``lock-rollback DB`` first
  switches DB to a rollback journal, as rotate-key does and as backups are
  written, so that the lock also keeps readers out.
- ``full DIR`` and ``read-only DIR`` mount over DIR, so they run inside
  ``unshare -m`` (the mounts end with the child); they print one JSON object
  per case tried, saying what it returned or raised, and the files then in DIR.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import select
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from persistent_agent.keys.master_key import MasterKey, parse_master_key
from persistent_agent.storage import database, layout
from persistent_agent.storage.provider import SQLCipherStorageProvider

from ..data_keys import data_key

CRASH_ROWS = 40
_UPSERT = "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)"


class Item(BaseModel):
    text: str


def argv(command: str, target: Path) -> list[str]:
    """The command line that runs *command* on *target* in a new interpreter."""
    return [sys.executable, "-m", "tests.storage.child", command, str(target)]


def _master_key() -> MasterKey:
    return parse_master_key(os.environ["FAME_STORAGE_MASTER_KEY"])


def _open(path: Path) -> database.Connection:
    return database.open_database(path, data_key(path, _master_key()))


def crash(path: Path) -> None:
    conn = _open(path)
    for i in range(CRASH_ROWS):
        conn.execute(_UPSERT, (f"crash-{i}", '{"text":"crash"}'))
    print("written", flush=True)
    sys.stdin.readline()


def write(path: Path) -> None:
    conn = _open(path)
    for i in itertools.count():
        conn.execute(_UPSERT, (f"live-{i % 200}", '{"text":"' + "x" * 200 + '"}'))
        if i == 0:
            print("writing", flush=True)
        if select.select([sys.stdin], [], [], 0)[0]:
            name = sys.stdin.readline().strip()
            if not name:
                return
            conn.execute(_UPSERT, (name, '{"text":"after"}'))
            print(f"wrote {name}", flush=True)


def lock(path: Path, journal_mode: str = "WAL") -> None:
    conn = _open(path)
    conn.execute(f"PRAGMA journal_mode = {journal_mode}")
    conn.execute("BEGIN EXCLUSIVE")
    conn.execute(_UPSERT, ("locked", '{"text":"uncommitted"}'))
    print("locked", flush=True)
    sys.stdin.readline()


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def _outcome(case: str, directory: Path, action: Callable[[], object]) -> None:
    try:
        outcome = {"result": repr(action())}
    except Exception as exc:  # the test asserts on which one and its message
        outcome = {"error": type(exc).__name__, "message": str(exc)}
    files = sorted(p.name for p in directory.iterdir())
    print(json.dumps({"case": case, **outcome, "files": files}), flush=True)


def _fill(path: Path) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
    try:
        for size in (65536, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)


def full(directory: Path) -> None:
    """Write through the provider until a 256 KiB tmpfs is full, then create a database."""
    _mount("-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(directory))
    loop = asyncio.new_event_loop()
    provider = SQLCipherStorageProvider(directory, _master_key())

    async def fill_store() -> None:
        store = await provider.get_kv_store(Item, "agent_state")
        for i in itertools.count():
            await store.set(f"k{i}", Item(text="x" * 1000))

    _outcome("write", directory, lambda: loop.run_until_complete(fill_store()))
    # Whatever room the WAL left over goes too, so that nothing fits.
    _fill(directory / "filler")
    fresh = provider.get_kv_store(Item, "fresh")
    _outcome("create", directory, lambda: loop.run_until_complete(fresh))
    provider.close()
    loop.close()


def read_only(directory: Path) -> None:
    """Use the databases in *directory* after bind-mounting it read-only over itself."""
    _mount("--bind", str(directory), str(directory))
    _mount("-o", "remount,bind,ro", str(directory))
    master = _master_key()
    db = directory / layout.file_name("agent_state")
    key = data_key(db, master)
    fresh = directory / layout.file_name("fresh")
    _outcome("provider", directory, lambda: SQLCipherStorageProvider(directory, master))
    _outcome("open", directory, lambda: database.open_database(db, key))
    _outcome("create", directory, lambda: database.open_database(fresh, key))
    _outcome("read", directory, lambda: database.checked_rows(db, key))


COMMANDS: dict[str, Callable[[Path], None]] = {
    "crash": crash,
    "write": write,
    "lock": lock,
    "lock-rollback": lambda path: lock(path, "DELETE"),
    "full": full,
    "read-only": read_only,
}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](Path(sys.argv[2]))
