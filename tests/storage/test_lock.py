"""One writer per data directory: the lock a node holds for its lifetime."""

from __future__ import annotations

import os
import signal
import socket
import stat
from pathlib import Path

import pytest

from persistent_agent.errors import ServicesRunningError
from persistent_agent.keys.master_key import MasterKey
from persistent_agent.storage import lock
from persistent_agent.storage.layout import LOCK_FILE
from persistent_agent.storage.provider import SQLCipherStorageProvider

from ..conftest import node_writing


def test_a_second_holder_is_refused_naming_the_directory_and_the_holder(
    initialised: Path,
) -> None:
    """While another process holds data/agent, acquiring it fails with one line naming both."""
    agent_dir = initialised / "data" / "agent"
    with node_writing(initialised) as holder, pytest.raises(ServicesRunningError) as info:
        lock.acquire(agent_dir, "test")
    message = str(info.value)
    assert message.startswith(f"{agent_dir} is in use by pid {holder.pid} on ")
    assert socket.gethostname() in message
    assert "(a persistent-agent node)" in message
    assert "\n" not in message


def test_a_killed_holder_leaves_no_stale_lock(initialised: Path) -> None:
    """After kill -9 of the holder, the directory can be locked again at once."""
    agent_dir = initialised / "data" / "agent"
    with node_writing(initialised) as holder:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        key = lock.acquire(agent_dir, "after the crash")
    try:
        assert f"pid {os.getpid()} " in (agent_dir / LOCK_FILE).read_text()
    finally:
        lock.release(key)


def test_the_lock_file_is_owner_only_and_never_removed(db_dir: Path) -> None:
    """The lock file is 0600, names this process, and stays after release (no lock race)."""
    db_dir.mkdir()
    key = lock.acquire(db_dir, "test")
    path = db_dir / LOCK_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == f"pid {os.getpid()} on {socket.gethostname()} (test)\n"
    lock.release(key)
    assert path.exists()


def test_one_process_may_open_a_directory_twice(db_dir: Path, master_key: MasterKey) -> None:
    """Two providers of one process share the lock; it is released with the last one."""
    first = SQLCipherStorageProvider(db_dir, master_key)
    second = SQLCipherStorageProvider(db_dir, master_key)
    first.close()
    assert db_dir.resolve() in lock._held  # the second one still holds it
    second.close()
    assert db_dir.resolve() not in lock._held
