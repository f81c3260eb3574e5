"""backup and restore: consistent encrypted snapshots, verified before restoring."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import stat
import sys
from pathlib import Path

import pytest

from persistent_agent.errors import BackupError, PersistentAgentError, ServicesRunningError
from persistent_agent.ops import access_backup, admin, backup, rotation
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


# ---------------------------------------------------------------- config/access, sealed


def _access_files(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of config/access: its bytes and its mode."""
    access = root / "config" / "access"
    return {p.name: (p.read_bytes(), stat.S_IMODE(p.stat().st_mode)) for p in access.iterdir()}


def _secrets_of(root: Path) -> list[bytes]:
    """What must never appear in plaintext under backups/: each credential's secret, each
    private key's PEM body line, and each secret file whole in base64 (a sealing that
    forgot to encrypt would still hold that)."""
    needles = []
    for path in sorted((root / "config" / "access").iterdir()):
        raw = path.read_bytes()
        if path.suffix == ".secret":
            needles.append(raw.strip())
        elif path.suffix == ".key":
            body = [line for line in raw.splitlines() if line and not line.startswith(b"-----")]
            needles += body
        else:
            continue
        needles.append(base64.b64encode(raw))
    return needles


def test_backup_seals_config_access_and_no_secret_is_in_plaintext(tree: Path) -> None:
    """access.sealed holds config/access (owner-only, in the manifest); no credential secret
    and no private key's PEM body is in any file under backups/."""
    dest = _backup(tree)
    sealed = dest / access_backup.SEALED_FILE
    assert stat.S_IMODE(sealed.stat().st_mode) == 0o600
    manifest = json.loads((dest / backup.MANIFEST).read_text())
    assert manifest["access"]["files"] == len(_access_files(tree))
    assert manifest["access"]["sha256"] == hashlib.sha256(sealed.read_bytes()).hexdigest()
    needles = _secrets_of(tree)
    assert len(needles) > 10  # the secrets and keys `make access` made are all looked for
    assert plaintext_hits(tree / "backups", needles) == []
    assert backup.verify_backup(dest, tree / "config")


def test_restore_puts_a_missing_config_access_back_with_its_modes(tree: Path) -> None:
    """A fresh machine (data/ and config/access gone): restore brings back the same files,
    certificates 0644, the rest 0600, the directory 0700."""
    expected = _access_files(tree)
    assert {mode for _, mode in expected.values()} == {0o600, 0o644}
    dest = _backup(tree)
    shutil.rmtree(tree / "config" / "access")
    shutil.rmtree(tree / "data")
    result = backup.restore(dest, tree / "config", tree / "data", tree / "backups")
    assert result.restored == 6
    access = tree / "config" / "access"
    assert result.access == f"{access} restored from the backup ({len(expected)} files)"
    assert _access_files(tree) == expected
    assert stat.S_IMODE((tree / "config" / "access").stat().st_mode) == 0o700
    assert not (tree / "config" / ".access.restoring").exists()


def test_restore_never_overwrites_an_existing_config_access(tree: Path) -> None:
    """An existing config/access is left as it is: no line when it matches the backup's,
    one line saying it differs (not an error) when it does not."""
    dest = _backup(tree)
    result = backup.restore(dest, tree / "config", tree / "data", tree / "backups", force=True)
    assert result.access is None
    newer = tree / "config" / "access" / "client.secret"
    newer.write_text("rotated since the backup\n")
    before = _access_files(tree)
    result = backup.restore(dest, tree / "config", tree / "data", tree / "backups", force=True)
    assert _access_files(tree) == before
    assert result.access is not None
    assert result.access.startswith(f"{tree / 'config' / 'access'} exists and differs")
    assert "\n" not in result.access
    assert "rotated since" not in result.access


def test_restore_after_rotate_key_opens_config_access_with_the_new_key(tree: Path) -> None:
    """rotate-key re-wraps access.sealed's data key (its content is not rewritten), and the
    backup restores config/access with the new key."""
    expected = _access_files(tree)
    dest = _backup(tree)
    before = json.loads((dest / access_backup.SEALED_FILE).read_text())
    rotation.rotate(tree / "config", tree / "data", tree / "backups")
    after = json.loads((dest / access_backup.SEALED_FILE).read_text())
    assert after["sealed"] == before["sealed"]
    assert after["wrapped_by"] != before["wrapped_by"]
    manifest = json.loads((dest / backup.MANIFEST).read_text())
    assert manifest["access"]["key_fingerprint"] == after["wrapped_by"]
    shutil.rmtree(tree / "config" / "access")
    shutil.rmtree(tree / "data")
    result = backup.restore(dest, tree / "config", tree / "data", tree / "backups")
    assert result.access is not None and "restored from the backup" in result.access
    assert _access_files(tree) == expected


def test_a_damaged_access_sealed_fails_verify_with_one_line_naming_it(tree: Path) -> None:
    """A flipped byte fails the checksum; one that also matches the manifest's checksum
    (edited with care) fails to open: either way one line naming access.sealed, and a
    restore moves nothing."""
    dest = _backup(tree)
    sealed = dest / access_backup.SEALED_FILE
    document = json.loads(sealed.read_text())
    blob = bytearray(base64.b64decode(document["sealed"]))
    blob[len(blob) // 2] ^= 0x01
    document["sealed"] = base64.b64encode(bytes(blob)).decode()
    sealed.write_text(json.dumps(document))
    with pytest.raises(BackupError) as checksum:
        backup.verify_backup(dest, tree / "config")
    assert str(checksum.value) == f"{sealed} is missing or does not match its checksum"

    manifest = json.loads((dest / backup.MANIFEST).read_text())
    manifest["access"]["sha256"] = hashlib.sha256(sealed.read_bytes()).hexdigest()
    (dest / backup.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BackupError) as opened:
        backup.verify_backup(dest, tree / "config")
    (line,) = str(opened.value).splitlines()
    assert line.startswith(f"{sealed} does not open")
    shutil.rmtree(tree / "config" / "access")
    with pytest.raises(BackupError, match="does not open"):
        backup.restore(dest, tree / "config", tree / "data", tree / "backups", force=True)
    assert not (tree / "config" / "access").exists()


def test_a_backup_without_access_sealed_still_verifies_and_restores(tree: Path) -> None:
    """A backup from before the fabric was secured (no config/access) is valid, and its
    restore leaves config/access alone."""
    shutil.move(tree / "config" / "access", tree / "access-elsewhere")
    dest = _backup(tree)
    shutil.move(tree / "access-elsewhere", tree / "config" / "access")
    assert not (dest / access_backup.SEALED_FILE).exists()
    assert "access" not in json.loads((dest / backup.MANIFEST).read_text())
    assert len(backup.verify_backup(dest, tree / "config")) == 6
    result = backup.restore(dest, tree / "config", tree / "data", tree / "backups", force=True)
    assert result.access is None


def test_rotate_key_skips_a_backup_whose_access_sealed_is_damaged_and_moves_nothing(
    tree: Path,
) -> None:
    """A backup whose access.sealed no longer opens is named as skipped by rotate-key, and
    none of its files is changed (its keyrings still open with the key that made it)."""
    dest = _backup(tree)
    sealed = dest / access_backup.SEALED_FILE
    document = json.loads(sealed.read_text())
    document["data_key"] = document["data_key"][:-8] + "AAAAAAA="
    sealed.write_text(json.dumps(document))
    before = checksums(dest)
    result = rotation.rotate(tree / "config", tree / "data", tree / "backups")
    assert result.backups_rewrapped == []
    ((skipped, why),) = result.backups_skipped
    assert skipped == dest
    assert why.startswith(f"{sealed} does not open")
    assert checksums(dest) == before
