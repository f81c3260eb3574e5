"""backup and restore: consistent encrypted snapshots, verified before restoring."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from persistent_agent.errors import BackupError, PersistentAgentError, ServicesRunningError
from persistent_agent.ops import admin, backup
from persistent_agent.storage.layout import DB_SUFFIX, all_databases

from ..conftest import checksums, node_writing, plaintext_hits, running
from ..data_keys import set_node_key


def _backup(tree: Path) -> Path:
    return backup.backup(tree / "config", tree / "data", tree / "backups")


def test_backup_is_encrypted_owner_only_and_described(tree: Path) -> None:
    """Every database is copied encrypted (0600) with a manifest of rows and checksums."""
    dest = _backup(tree)
    manifest = json.loads((dest / "manifest.json").read_text())
    files = sorted(p.name for p in dest.rglob("*.db"))
    assert len(files) == 6
    assert {d["rows"] for n in manifest["nodes"].values() for d in n["databases"]} == {25}
    assert plaintext_hits(dest, [b"SQLite format 3", b"SECRET-", b"agent_state-0"]) == []
    for path in [tree / "backups", dest, *dest.rglob("*")]:
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path
    assert backup.verify_backup(dest, tree / "config")


def test_a_failed_backup_leaves_nothing_that_looks_like_one(tree: Path) -> None:
    """A backup that fails half-way (a damaged database) leaves no directory behind."""
    target = sorted((tree / "data" / "agent").glob("*.db"))[-1]
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    target.write_bytes(bytes(raw))
    with pytest.raises(PersistentAgentError, match=str(target)):
        _backup(tree)
    assert list((tree / "backups").iterdir()) == []


def test_a_malformed_manifest_is_one_line_not_a_traceback(tree: Path) -> None:
    """A manifest with a wrong shape is refused as a BackupError naming the file."""
    dest = _backup(tree)
    (dest / "manifest.json").write_text(json.dumps({"format": 1, "nodes": {"agent": {}}}))
    with pytest.raises(BackupError, match=r"manifest\.json is malformed"):
        backup.verify_backup(dest, tree / "config")


def test_backup_while_a_writer_runs_is_consistent(tree: Path) -> None:
    """A backup taken while another process keeps writing still verifies in full."""
    with running(
        [sys.executable, "-m", "tests.writers", "live", str(tree / "config"), str(tree / "data")]
    ):
        dest = _backup(tree)
    assert len(backup.verify_backup(dest, tree / "config")) == 6


def test_restore_refuses_to_overwrite_without_force(tree: Path) -> None:
    """Existing data is not replaced unless asked; with --force it is set aside, not lost."""
    dest = _backup(tree)
    with pytest.raises(BackupError, match="--force"):
        backup.restore(dest, tree / "config", tree / "data", tree / "backups")
    before = checksums(tree / "data")
    result = backup.restore(dest, tree / "config", tree / "data", tree / "backups", force=True)
    assert result.restored == 6
    assert result.set_aside is not None
    assert checksums(result.set_aside) == before


def test_restore_into_empty_data_brings_everything_back(tree: Path) -> None:
    """After losing data/, a restore gives back databases that verify."""
    dest = _backup(tree)
    for path in all_databases(tree / "data"):
        path.unlink()
    assert backup.restore(dest, tree / "config", tree / "data", tree / "backups").restored == 6
    assert len(backup.verify_backup(dest, tree / "config")) == 6
    assert len(all_databases(tree / "data")) == 6


def test_restore_checks_the_backup_first(tree: Path) -> None:
    """A corrupted backup file or another master key is refused before anything moves."""
    dest = _backup(tree)
    victim = next(dest.rglob("*.db"))
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
    before = checksums(tree / "data")
    with pytest.raises(BackupError, match="checksum"):
        backup.restore(dest, tree / "config", tree / "data", tree / "backups", force=True)
    assert checksums(tree / "data") == before

    good = _backup(tree)
    set_node_key(tree / "config", "agent", "ef" * 32)
    with pytest.raises(BackupError, match="needs the master key with fingerprint"):
        backup.restore(good, tree / "config", tree / "data", tree / "backups", force=True)


def test_restore_refuses_while_a_node_runs(tree: Path) -> None:
    """A running node (holding its data directory's lock) blocks restore; nothing moves."""
    dest = _backup(tree)
    before = checksums(tree / "data" / "sentinel")
    with (
        node_writing(tree) as holder,
        pytest.raises(ServicesRunningError, match=f"pid {holder.pid} on "),
    ):
        backup.restore(dest, tree / "config", tree / "data", tree / "backups", force=True)
    # Nothing was set aside or replaced (the agent's files are live, the sentinel's are not).
    assert not list((tree / "backups").glob("replaced-*"))
    assert checksums(tree / "data" / "sentinel") == before


def test_restore_never_follows_a_link_at_its_temporary_path(tree: Path) -> None:
    """A symlink planted where restore writes its temporary copy is replaced, not followed."""
    dest = _backup(tree)
    victim = tree / "victim.txt"
    victim.write_text("untouched")
    planted = tree / "data" / "agent" / ("agent_state" + DB_SUFFIX + ".restore")
    planted.symlink_to(victim)
    backup.restore(dest, tree / "config", tree / "data", tree / "backups", force=True)
    assert victim.read_text() == "untouched"
    assert not planted.exists()
    assert len(backup.verify_backup(dest, tree / "config")) == 6


def test_a_backups_dir_that_is_a_file_is_one_line(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--backups-dir naming a regular file: one line naming it, exit 2, the file untouched."""
    blocker = tree / "not-a-dir"
    blocker.write_text("mine")
    argv = ["--config-dir", str(tree / "config"), "--data-dir", str(tree / "data")]
    assert admin.main([*argv, "--backups-dir", str(blocker), "backup"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"backup: error: {blocker} is a file, not a directory; move it away, or give "
        "--backups-dir another path\n"
    )
    assert blocker.read_text() == "mine"


def test_a_symlinked_backups_dir_keeps_its_targets_mode(tree: Path) -> None:
    """A backups directory that is a link is used as it is: its target (someone else's
    directory) keeps its mode, and what backup and restore put there is owner-only."""
    target = tree / "elsewhere"
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    link = tree / "linked-backups"
    link.symlink_to(target)
    dest = backup.backup(tree / "config", tree / "data", link)
    result = backup.restore(dest, tree / "config", tree / "data", link, force=True)
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert result.set_aside is not None
    for made in (dest, result.set_aside):
        for path in [made, *made.rglob("*")]:
            assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600)
