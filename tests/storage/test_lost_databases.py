"""A database its keyring knows but the disk lacks: damage, reported and never recreated;
and the one legitimate way a keyring entry is ahead of its file, a creation cut short."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from pydantic import BaseModel

from persistent_agent.errors import DatabaseDamagedError
from persistent_agent.keys.custody import KeySource
from persistent_agent.keys.master_key import MasterKey
from persistent_agent.ops.inspection import verify
from persistent_agent.storage import layout
from persistent_agent.storage.data_keys import NodeKeys
from persistent_agent.storage.provider import SQLCipherStorageProvider

from ..conftest import checksums
from ..data_keys import data_key

NAMESPACE = "agent_state"


class Item(BaseModel):
    text: str


async def _written(db_dir: Path, master_key: MasterKey) -> Path:
    """A node directory whose agent_state database holds one value."""
    provider = SQLCipherStorageProvider(db_dir, master_key)
    store = await provider.get_kv_store(Item, NAMESPACE)
    await store.set("state", Item(text="kept"))
    provider.close()
    return db_dir / layout.file_name(NAMESPACE)


async def test_a_moved_database_stops_the_node_and_nothing_is_written(
    db_dir: Path, master_key: MasterKey, tmp_path: Path
) -> None:
    """A file moved away while its keyring entry stays is refused at startup, never recreated."""
    path = await _written(db_dir, master_key)
    for f in (path, *layout.sidecars(path)):
        if f.exists():
            shutil.move(f, tmp_path / f.name)
    before = checksums(db_dir)
    with pytest.raises(DatabaseDamagedError) as refused:
        SQLCipherStorageProvider(db_dir, master_key)
    message = str(refused.value)
    assert re.match(rf"{re.escape(str(path))} is damaged \(the file is missing, but ", message)
    assert "keyring.json holds its data key" in message and "\n" not in message
    assert checksums(db_dir) == before
    assert not path.exists()
    # Put back, it opens as it was.
    shutil.move(tmp_path / path.name, path)
    provider = SQLCipherStorageProvider(db_dir, master_key)
    store = await provider.get_kv_store(Item, NAMESPACE)
    assert await store.get("state") == Item(text="kept")
    provider.close()


async def test_a_creation_cut_short_after_its_key_was_saved_completes(
    db_dir: Path, master_key: MasterKey
) -> None:
    """A reserved entry without its file (a crash between the two) is created with that key."""
    db_dir.mkdir(mode=0o700)
    path = db_dir / layout.file_name(NAMESPACE)
    keys = NodeKeys(db_dir, KeySource.local(master_key))
    reserved = keys.key_for_new(path)  # what the node does first; then it was killed
    assert json.loads((db_dir / layout.KEYRING_FILE).read_text())["reserved"] == [NAMESPACE]
    provider = SQLCipherStorageProvider(db_dir, master_key)
    store = await provider.get_kv_store(Item, NAMESPACE)
    await store.set("state", Item(text="new"))
    provider.close()
    assert data_key(path, master_key) == reserved
    assert "reserved" not in json.loads((db_dir / layout.KEYRING_FILE).read_text())
    # Once created, the entry proves the file: losing it now is damage.
    path.unlink()
    with pytest.raises(DatabaseDamagedError, match="the file is missing"):
        SQLCipherStorageProvider(db_dir, master_key)


def test_verify_reports_a_database_missing_from_its_keyring(tree: Path) -> None:
    """verify fails the file its node's keyring knows but the disk lacks, naming it."""
    path = tree / "data" / "agent" / layout.file_name(NAMESPACE)
    path.unlink()
    before = checksums(tree / "data")
    failed = [r for r in verify(tree / "config", tree / "data") if r.problem]
    assert [r.path for r in failed] == [path]
    assert failed[0].line().startswith(f"FAIL  {path}: {path} is damaged (the file is missing")
    assert checksums(tree / "data") == before
