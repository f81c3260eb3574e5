"""One SQLCipher file: naming, key checks, whole-file encryption, permissions."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest

from persistent_agent.errors import DatabaseDamagedError, StorageDirectoryError, WrongKeyError
from persistent_agent.keys.keyring import new_data_key
from persistent_agent.keys.master_key import MasterKey
from persistent_agent.storage import database, layout
from persistent_agent.storage.provider import SQLCipherStorageProvider

from ..conftest import checksums, plaintext_hits


def _key() -> bytes:
    return new_data_key()


def test_file_name_follows_the_seed_listing() -> None:
    """Namespaces map to `<namespace>_encrypted_value.db`, underscores kept."""
    assert layout.file_name("__node_meta") == "__node_meta_encrypted_value.db"
    assert layout.file_name("agent_state") == "agent_state_encrypted_value.db"


def test_unsafe_namespaces_cannot_escape_or_collide() -> None:
    """Path separators are replaced, and two namespaces never share a file."""
    a, b = layout.file_name("../x/y"), layout.file_name("___x_y")
    assert "/" not in a
    assert a != b
    assert layout.file_name("a/b") != layout.file_name("a_b")


def test_wrong_key_raises_and_leaves_files_unchanged(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A wrong key names the file, changes no byte, and SQLCipher prints nothing itself."""
    path = tmp_path / layout.file_name("ns")
    with database.opened(path, _key()) as conn:
        conn.execute("INSERT INTO kv (key, value) VALUES ('k', '{}')")
    before = checksums(tmp_path)
    capfd.readouterr()
    with pytest.raises(WrongKeyError, match=str(path)):
        database.open_database(path, _key())
    assert checksums(tmp_path) == before
    assert capfd.readouterr().err == ""  # no "hmac check failed" lines from SQLCipher


def test_whole_file_encryption_hides_header_schema_keys_and_values(tmp_path: Path) -> None:
    """No header, schema, key or value is readable in the .db, -wal or -shm files."""
    path = tmp_path / layout.file_name("storage@fame.fabric")
    conn = database.open_database(path, _key())
    for i in range(200):
        conn.execute(
            "INSERT INTO kv (key, value) VALUES (?, ?)",
            (f"storage@fame.fabric/{i}", f'{{"value":"PLAINTEXT-MARKER-{i}"}}'),
        )
    needles = [b"SQLite format 3", b"CREATE TABLE", b"storage@fame.fabric", b"PLAINTEXT-MARKER"]
    assert (tmp_path / (path.name + "-wal")).stat().st_size > 0
    assert plaintext_hits(tmp_path, needles) == []  # with a live WAL
    conn.close()
    assert plaintext_hits(tmp_path, needles) == []  # after the checkpoint


def test_files_are_owner_only(tmp_path: Path) -> None:
    """The database and its WAL sidecars are created 0600."""
    path = tmp_path / layout.file_name("ns")
    with database.opened(path, _key()) as conn:
        conn.execute("INSERT INTO kv (key, value) VALUES ('k', '{}')")
        for p in [path, *layout.sidecars(path)]:
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


def test_unwritable_directory_is_one_clear_error(tmp_path: Path) -> None:
    """A directory that cannot be created is reported with its path."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageDirectoryError, match="FAME_STORAGE_DB_DIRECTORY"):
        database.ensure_directory(blocker / "db")


@pytest.mark.parametrize(
    "size",
    [0, 1000, database.PAGE_SIZE + 100],
    ids=["empty", "shorter-than-a-page", "cut-mid-page"],
)
@pytest.mark.parametrize("options", [{}, {"read_only": True}], ids=["read-write", "read-only"])
def test_empty_or_cut_short_file_is_damaged_and_left_as_is(
    tmp_path: Path, size: int, options: dict[str, Any]
) -> None:
    """A file that is empty or not whole pages is reported as damaged, never made a new database."""
    path = tmp_path / layout.file_name("ns")
    key = _key()
    with database.opened(path, key) as conn:
        conn.execute("INSERT INTO kv (key, value) VALUES ('k', '{}')")
    os.truncate(path, size)
    before = checksums(tmp_path)
    with pytest.raises(DatabaseDamagedError, match=re.escape(f"{path} is damaged")):
        database.open_database(path, key, **options)
    assert checksums(tmp_path) == before


def test_empty_database_file_stops_the_provider_and_is_kept(
    db_dir: Path, master_key: MasterKey
) -> None:
    """A 0-byte database file stops a node at startup as damaged, and stays empty and alone."""
    db_dir.mkdir(mode=0o700)
    path = db_dir / layout.file_name("agent_state")
    path.touch(mode=0o600)
    before = checksums(db_dir)
    with pytest.raises(DatabaseDamagedError, match=re.escape(f"{path} is damaged")):
        SQLCipherStorageProvider(db_dir, master_key)
    assert checksums(db_dir) == before
