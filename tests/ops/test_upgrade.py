"""Upgrading from 0.1 (keys derived from the master key, no keyring; the key inline in the
env files): data, config and a backup written by 0.1 itself (tests/fixtures/v0_1)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from pydantic import BaseModel

from persistent_agent.keys.keyring import Keyring
from persistent_agent.ops import backup, config_files, inspection, rotation
from persistent_agent.ops.node_keys import source_of
from persistent_agent.storage.layout import KEYRING_FILE, all_databases, node_data_dirs
from persistent_agent.storage.provider import SQLCipherStorageProvider

from ..conftest import REPO, checksums

FIXTURE = REPO / "tests" / "fixtures" / "v0_1"
OLD_KEY = "7c040c642b0ff871930fad5ad548fc354707eb76d623c150a5a2fa75e28fa590"


class Item(BaseModel):
    text: str


def _private(root: Path) -> None:
    """Files as 0.1 left them: 0600 files, 0700 directories (git keeps neither)."""
    for path in [root, *root.rglob("*")]:
        path.chmod(0o700 if path.is_dir() else 0o600)


@pytest.fixture
def old(tmp_path: Path) -> Path:
    """A project root as 0.1 left it: config with the key inline, data, one backup."""
    root = tmp_path / "project"
    (root / "config").mkdir(parents=True)
    for example in (REPO / "config").glob(".env.*.example"):
        shutil.copy(example, root / "config")
    for role in ("sentinel", "agent"):
        shutil.copy(FIXTURE / "config" / f".env.{role}", root / "config")
    shutil.copytree(FIXTURE / "node-data", root / "data")
    shutil.copytree(FIXTURE / "backup", root / "backups" / "20261126T173416298936Z")
    _private(root / "config")
    _private(root / "data")
    _private(root / "backups")
    return root


def _values(root: Path, data: str = "data") -> list[str]:
    return [
        line
        for line in inspection.inspect(root / "config", root / data)
        if not line.startswith("==")
    ]


EXPECTED = [
    'sentinel-__node_meta\t{"text":"written by 0.1 into sentinel/__node_meta"}',
    'agent-__node_meta\t{"text":"written by 0.1 into agent/__node_meta"}',
    'agent-agent_state\t{"text":"written by 0.1 into agent/agent_state"}',
]


def test_init_moves_the_inline_key_and_the_first_start_adopts_the_data(old: Path) -> None:
    """init moves 0.1's inline key to config/master.key; each node's first start writes a
    keyring holding its databases' derived keys; no database file changes."""
    databases = {k: v for k, v in checksums(old / "data").items() if k.endswith(".db")}
    result = config_files.init(old / "config", old / "data")
    assert result.key_source == "kept"
    assert (old / "config" / "master.key").read_text().strip() == OLD_KEY
    assert all(OLD_KEY not in p.read_text() for p in (old / "config").glob(".env.*[!e]"))
    assert _values(old) == EXPECTED  # read through the derived keys, nothing written yet
    for directory in node_data_dirs(old / "data"):
        assert not (directory / KEYRING_FILE).exists()
        provider = SQLCipherStorageProvider(directory, source_of(old / "config", directory.name))
        store = asyncio.run(provider.get_kv_store(Item, "__node_meta"))
        assert asyncio.run(store.get(f"{directory.name}-__node_meta")) is not None
        provider.close()
        keyring = Keyring.load(directory / KEYRING_FILE)
        assert keyring is not None
        assert sorted(keyring.keys) == sorted(
            p.name.removesuffix("_encrypted_value.db") for p in directory.glob("*.db")
        )
    after = {k: v for k, v in checksums(old / "data").items() if k.endswith(".db")}
    assert after == databases
    assert _values(old) == EXPECTED


def test_rotate_key_upgrades_0_1_data_and_its_backup_without_rewriting_them(old: Path) -> None:
    """rotate-key straight on 0.1's config and data: the key moves to its file, keyrings are
    made and re-wrapped, no database is rewritten, and 0.1's backup gains a keyring and
    restores with the new key."""
    databases = {k: v for k, v in checksums(old / "data").items() if k.endswith(".db")}
    taken = old / "backups" / "20261126T173416298936Z"
    result = rotation.rotate(old / "config", old / "data", old / "backups")
    assert result.backups_rewrapped == [taken]
    new_key = (old / "config" / "master.key").read_text().strip()
    assert new_key != OLD_KEY
    after = {k: v for k, v in checksums(old / "data").items() if k.endswith(".db")}
    assert after == databases
    assert _values(old) == EXPECTED
    assert all((taken / role / KEYRING_FILE).is_file() for role in ("sentinel", "agent"))
    backup.restore(taken, old / "config", old / "restored", old / "backups")
    assert _values(old, "restored") == EXPECTED


def test_a_0_1_backup_restores_with_the_key_that_made_it(old: Path) -> None:
    """0.1's backup (format 1, no keyring) restores as it is; the nodes adopt it on start."""
    config_files.init(old / "config", old / "data")
    shutil.rmtree(old / "data")
    restored = backup.restore(
        old / "backups" / "20261126T173416298936Z", old / "config", old / "data", old / "backups"
    )
    assert restored.restored == 3
    assert len(all_databases(old / "data")) == 3
    assert _values(old) == EXPECTED
