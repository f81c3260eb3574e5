"""A full disk, a read-only mount and a lock held too long: each is its own
one-line error naming the file, never "damaged", never a traceback.

Full disks and read-only mounts are real: a child process mounts a small
tmpfs, or bind-mounts a directory read-only, inside its own mount namespace
(``unshare -m``), so nothing stays mounted once it exits. Locks are held by a
second real process.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from persistent_agent.errors import DatabaseBusyError
from persistent_agent.keys.master_key import MasterKey
from persistent_agent.storage import database, layout
from persistent_agent.storage.provider import SQLCipherStorageProvider

from ..conftest import REPO, checksums, running
from ..data_keys import data_key
from . import child


class Item(BaseModel):
    text: str


def _in_own_mount_namespace(command: str, directory: Path) -> dict[str, dict[str, Any]]:
    """Run child *command* on *directory* under ``unshare -m``; its outcomes by case."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed; it is needed to mount without side effects")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"unshare -m is not permitted here (needs root): {probe.stderr!r}")
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", *child.argv(command, directory)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,  # a deadline for a broken run, not a wait
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert f" {directory} " not in Path("/proc/self/mounts").read_text()
    return {o["case"]: o for o in map(json.loads, result.stdout.splitlines())}


def test_full_disk_is_one_clear_error_and_leaves_no_empty_database(
    tmp_path: Path, master_key_hex: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a full disk, writes and new databases fail as StorageFullError; no empty file stays."""
    directory = tmp_path / "small"
    directory.mkdir()
    monkeypatch.setenv("FAME_STORAGE_MASTER_KEY", master_key_hex)
    cases = _in_own_mount_namespace("full", directory)
    write, create = cases["write"], cases["create"]
    assert write["error"] == "StorageFullError", write
    assert write["message"].startswith(
        f"cannot write {directory / layout.file_name('agent_state')}"
    )
    assert create["error"] == "StorageFullError", create
    fresh = layout.file_name("fresh")
    # A new database's key goes into the keyring first: that is the write that fails.
    assert create["message"].startswith(f"cannot write {directory / layout.KEYRING_FILE}: ")
    assert fresh not in create["files"]
    assert not any(name.startswith(fresh) for name in create["files"])


def test_read_only_mount_is_one_clear_error_and_reading_still_works(
    tmp_path: Path, master_key: MasterKey, master_key_hex: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a read-only mount a node and a new database fail as StorageReadOnlyError; reads work."""
    directory = tmp_path / "db"
    directory.mkdir()
    db = directory / layout.file_name("agent_state")
    with database.opened(db, data_key(db, master_key)) as conn:
        for i in range(3):
            conn.execute("INSERT INTO kv (key, value) VALUES (?, '{}')", (f"k{i}",))
    before = checksums(directory)
    monkeypatch.setenv("FAME_STORAGE_MASTER_KEY", master_key_hex)
    cases = _in_own_mount_namespace("read-only", directory)
    for case, named in [
        ("provider", directory),
        ("open", db),
        ("create", directory / layout.file_name("fresh")),
    ]:
        assert cases[case]["error"] == "StorageReadOnlyError", cases[case]
        assert cases[case]["message"].startswith(f"cannot write {named}: "), cases[case]
    assert cases["read"] == {"case": "read", "result": "3", "files": [db.name]}
    assert checksums(directory) == before


async def test_write_blocked_by_another_process_is_busy_not_damaged(
    db_dir: Path, master_key: MasterKey, master_key_hex: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write kept out by another process's exclusive transaction fails as DatabaseBusyError."""
    provider = SQLCipherStorageProvider(db_dir, master_key, busy_timeout=0.2)
    store = await provider.get_kv_store(Item, "agent_state")
    await store.set("before", Item(text="v"))
    path = db_dir / layout.file_name("agent_state")
    monkeypatch.setenv("FAME_STORAGE_MASTER_KEY", master_key_hex)
    try:
        with running(child.argv("lock", path)):  # returns once "locked" is printed
            with pytest.raises(DatabaseBusyError, match=re.escape(str(path))):
                await store.set("blocked", Item(text="v"))
            assert await store.get("before") == Item(text="v")
        await store.set("after", Item(text="v"))
    finally:
        provider.close()


def test_open_kept_out_by_another_process_is_busy_and_reading_changes_nothing(
    tmp_path: Path, master_key: MasterKey, master_key_hex: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening a file another process holds exclusively is DatabaseBusyError; read-only tools
    still read its committed rows, touching nothing."""
    path = tmp_path / layout.file_name("agent_state")
    key = data_key(path, master_key)
    with database.opened(path, key) as conn:
        conn.execute("INSERT INTO kv (key, value) VALUES ('committed', '{}')")
    monkeypatch.setenv("FAME_STORAGE_MASTER_KEY", master_key_hex)
    with running(child.argv("lock-rollback", path)):
        before = checksums(tmp_path)
        with pytest.raises(DatabaseBusyError, match=re.escape(str(path))):
            database.open_database(path, key, busy_timeout=0.2)
        assert database.checked_rows(path, key) == 1
        assert checksums(tmp_path) == before
