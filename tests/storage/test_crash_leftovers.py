"""What a node killed with SIGKILL leaves behind (-wal and -shm beside the file):
a wrong key changes none of it, and read-only opens change nothing, yet see
every committed write."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest

from persistent_agent.errors import KeyringError, WrongKeyError
from persistent_agent.keys.keyring import new_data_key
from persistent_agent.keys.master_key import MasterKey, generate_master_key, parse_master_key
from persistent_agent.storage import database, layout
from persistent_agent.storage.provider import SQLCipherStorageProvider

from ..conftest import checksums, running
from ..data_keys import data_key
from . import child

NAMESPACE = "agent_state"


@pytest.fixture
def crashed(db_dir: Path, master_key_hex: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A database whose writer was killed with SIGKILL after writing CRASH_ROWS rows."""
    db_dir.mkdir(mode=0o700)
    path = db_dir / layout.file_name(NAMESPACE)
    monkeypatch.setenv("FAME_STORAGE_MASTER_KEY", master_key_hex)
    with running(child.argv("crash", path)) as proc:  # returns once "written" is printed
        proc.kill()
        proc.wait()
    assert all(p.stat().st_size > 0 for p in layout.sidecars(path))
    return path


def _other_key() -> bytes:
    return new_data_key()


def test_wrong_key_at_provider_startup_after_a_crash_changes_no_file(
    crashed: Path, db_dir: Path
) -> None:
    """A node started with another key after a crash refuses, and every file stays as it was.
    (The file was written with its derived key, as before keyrings: the error names it.)"""
    before = checksums(db_dir)
    with pytest.raises(KeyringError, match=rf"cannot decrypt {crashed}: .* no keyring"):
        SQLCipherStorageProvider(db_dir, parse_master_key(generate_master_key()))
    assert checksums(db_dir) == before


@pytest.mark.parametrize(
    "options",
    [{}, {"create": False}, {"read_only": True}],
    ids=["read-write", "existing-only", "read-only"],
)
def test_wrong_key_after_a_crash_changes_no_file(
    crashed: Path, db_dir: Path, options: dict[str, Any]
) -> None:
    """Every way of opening with a wrong key leaves the file, its -wal and its -shm unchanged."""
    before = checksums(db_dir)
    with pytest.raises(WrongKeyError, match=str(crashed)):
        database.open_database(crashed, _other_key(), **options)
    assert checksums(db_dir) == before


def test_read_only_open_after_a_crash_sees_the_wal_and_changes_no_file(
    crashed: Path, db_dir: Path, master_key: MasterKey
) -> None:
    """A read-only open sees rows that exist only in the WAL, and changes no byte of any file."""
    before = checksums(db_dir)
    assert database.checked_rows(crashed, data_key(crashed, master_key)) == child.CRASH_ROWS
    assert checksums(db_dir) == before


def test_read_only_open_of_a_wal_without_its_shm_reads_a_private_copy(
    crashed: Path, db_dir: Path, master_key: MasterKey
) -> None:
    """With the -shm gone, the WAL is replayed in a private copy that is removed afterwards."""
    crashed.with_name(crashed.name + "-shm").unlink()
    before = checksums(db_dir)
    copies = set(Path(tempfile.gettempdir()).glob("persistent-agent-*"))
    with database.opened(crashed, data_key(crashed, master_key), read_only=True) as conn:
        assert database.row_count(conn) == child.CRASH_ROWS
    assert checksums(db_dir) == before
    assert set(Path(tempfile.gettempdir()).glob("persistent-agent-*")) == copies


def test_right_key_after_a_crash_recovers_every_committed_row(
    crashed: Path, db_dir: Path, master_key: MasterKey
) -> None:
    """The node itself (right key, read-write) still replays the WAL and keeps every row."""
    provider = SQLCipherStorageProvider(db_dir, master_key)
    provider.close()
    assert not any(p.exists() for p in layout.sidecars(crashed))
    assert database.checked_rows(crashed, data_key(crashed, master_key)) == child.CRASH_ROWS


def test_read_only_open_of_a_clean_file_creates_no_sidecar(
    db_dir: Path, master_key: MasterKey
) -> None:
    """A read-only open of a cleanly closed database creates no -wal or -shm, even for a moment."""
    path = db_dir / layout.file_name(NAMESPACE)
    key = data_key(path, master_key)
    db_dir.mkdir()
    with database.opened(path, key) as conn:
        conn.execute("INSERT INTO kv (key, value) VALUES ('k', '{}')")
    before = checksums(db_dir)
    with database.opened(path, key, read_only=True) as conn:
        assert not any(p.exists() for p in layout.sidecars(path))
        assert database.row_count(conn) == 1
    assert checksums(db_dir) == before
