"""rotate-key: keyrings re-wrapped under a new master key (no database rewritten), or with
REENCRYPT every file under new data keys; a kill at any step loses nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from persistent_agent.errors import (
    BackupError,
    ConfigError,
    DatabaseDamagedError,
    KeyringError,
    PersistentAgentError,
    ServicesRunningError,
    WrongKeyError,
)
from persistent_agent.keys.keyring import Keyring, LocalWrapper, derived_key
from persistent_agent.keys.master_key import (
    MasterKey,
    generate_master_key,
    parse_master_key,
    write_key_file,
)
from persistent_agent.ops import admin, backup, config_files, inspection, rotation
from persistent_agent.ops.node_keys import source_of
from persistent_agent.storage import database, layout
from persistent_agent.storage.layout import KEYRING_FILE, all_databases, node_data_dirs
from persistent_agent.storage.provider import SQLCipherStorageProvider

from ..conftest import REPO, checksums, node_writing
from ..data_keys import data_key, node_key_text


def _contents(tree: Path) -> list[str]:
    lines = inspection.inspect(tree / "config", tree / "data")
    return [line.replace(str(tree), "<root>") for line in lines]


def _master(tree: Path) -> MasterKey:
    return parse_master_key(node_key_text(tree / "config", "agent"))


def _databases(tree: Path) -> dict[str, str]:
    return {k: v for k, v in checksums(tree / "data").items() if k.endswith(".db")}


def _opens(path: Path, key: bytes) -> bool:
    try:
        with database.opened(path, key, read_only=True) as conn:
            return not database.integrity_problems(conn)
    except WrongKeyError:
        return False


def test_rotate_key_rewraps_the_keyrings_and_rewrites_no_database(tree: Path) -> None:
    """The new key opens everything, the old one no keyring; every database file keeps its
    bytes and its inode; the data reads the same."""
    before, databases = _contents(tree), _databases(tree)
    inodes = {p: p.stat().st_ino for p in all_databases(tree / "data")}
    old = _master(tree)
    result = rotation.rotate(tree / "config", tree / "data", tree / "backups")
    assert len(result.rewrapped) == 2
    assert result.rekeyed == []
    new = _master(tree)
    assert new != old
    assert node_key_text(tree / "config", "sentinel") == new.material.hex()
    assert not config_files.pending_key_file(tree / "config").exists()
    assert _databases(tree) == databases
    assert {p: p.stat().st_ino for p in all_databases(tree / "data")} == inodes
    for directory in node_data_dirs(tree / "data"):
        assert Keyring.load(directory / KEYRING_FILE).wrapped_by == new.fingerprint()  # type: ignore[union-attr]
        with pytest.raises(KeyringError, match="made under master key"):
            data_key(next(directory.glob("*.db")), old)
    assert _contents(tree) == before


def test_reencrypt_replaces_every_data_key_and_rewrites_every_file(tree: Path) -> None:
    """REENCRYPT=1: every file is rewritten under a new data key; the old keyring with the old
    master key (what a leak exposed) opens none of them; the data reads the same."""
    before, databases = _contents(tree), _databases(tree)
    old_master = _master(tree)
    old_keys = {p: data_key(p, old_master) for p in all_databases(tree / "data")}
    result = rotation.rotate(tree / "config", tree / "data", tree / "backups", reencrypt=True)
    assert len(result.rekeyed) == 6
    after = _databases(tree)
    assert all(after[name] != databases[name] for name in databases)
    for path, key in old_keys.items():
        assert not _opens(path, key)
        assert _opens(path, data_key(path, _master(tree)))
    assert _contents(tree) == before
    assert not list((tree / "data").rglob("*.rekey"))


def test_rotate_key_refuses_while_a_node_runs(tree: Path) -> None:
    """A running node (holding its data directory's lock) blocks rotation; no key changes."""
    config_before = checksums(tree / "config")
    with node_writing(tree), pytest.raises(ServicesRunningError, match="persistent-agent node"):
        rotation.rotate(tree / "config", tree / "data", tree / "backups")
    assert checksums(tree / "config") == config_before


def test_rotate_key_with_a_wrong_key_writes_nothing(tree: Path) -> None:
    """A wrong key in the config: rotate-key refuses before writing a key, keyring or file."""
    write_key_file(config_files.key_file(tree / "config"), generate_master_key())
    config_before, data_before = checksums(tree / "config"), checksums(tree / "data")
    with pytest.raises(KeyringError, match="made under master key"):
        rotation.rotate(tree / "config", tree / "data", tree / "backups")
    assert checksums(tree / "config") == config_before
    assert checksums(tree / "data") == data_before


@pytest.mark.parametrize("reencrypt", [False, True], ids=["rewrap", "reencrypt"])
def test_rotate_key_refuses_a_database_lost_from_its_keyring(
    tree: Path, tmp_path: Path, reencrypt: bool
) -> None:
    """A database the keyring knows but the disk lacks stops rotation before any write: a new
    keyring would drop its entry, and with it the proof that the file existed."""
    lost = tree / "data" / "agent" / layout.file_name("extra")
    shutil.move(lost, tmp_path / lost.name)
    config_before, data_before = checksums(tree / "config"), checksums(tree / "data")
    with pytest.raises(DatabaseDamagedError, match=r"the file is missing, but .*keyring\.json"):
        rotation.rotate(tree / "config", tree / "data", tree / "backups", reencrypt=reencrypt)
    assert checksums(tree / "config") == config_before
    assert checksums(tree / "data") == data_before


def test_rotate_key_refuses_while_agent_replicas_keep_data(tree: Path) -> None:
    """A replica's keyring (encrypted-postgres) would stay under the old key: refused, unchanged.
    The demo's own scratch replicas (data/demo-replicas) do not count."""
    shutil.copytree(tree / "data" / "agent", tree / "data" / "demo-replicas" / "replica-1")
    shutil.copytree(tree / "data" / "agent", tree / "data" / "replicas" / "replica-2")
    config_before, data_before = checksums(tree / "config"), checksums(tree / "data")
    with pytest.raises(ConfigError, match=r"replica-2 holds an agent replica's keyring"):
        rotation.rotate(tree / "config", tree / "data", tree / "backups")
    assert checksums(tree / "config") == config_before
    assert checksums(tree / "data") == data_before
    shutil.rmtree(tree / "data" / "replicas")
    rotation.rotate(tree / "config", tree / "data", tree / "backups")


def test_rotation_rewraps_backups_it_can_and_names_the_others(tree: Path) -> None:
    """A backup under backups/ follows the key through two rotations and restores with the
    current key; one made under another key is left alone and named."""
    kept = backup.backup(tree / "config", tree / "data", tree / "backups")
    foreign = tree / "backups" / "foreign"
    shutil.copytree(kept, foreign)
    manifest = json.loads((foreign / backup.MANIFEST).read_text())
    for node in manifest["nodes"].values():
        node["key_fingerprint"] = "0123456789ab"
    (foreign / backup.MANIFEST).write_text(json.dumps(manifest))
    expected = _contents(tree)

    for _ in range(2):
        result = rotation.rotate(tree / "config", tree / "data", tree / "backups")
        assert result.backups_rewrapped == [kept]
        assert [d for d, _ in result.backups_skipped] == [foreign]
    assert "another master key" in result.backups_skipped[0][1]

    shutil.rmtree(tree / "data")
    backup.restore(kept, tree / "config", tree / "data", tree / "backups")
    assert _contents(tree) == expected


def _kill_at(step: int, root: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """rotate-key in a process that kills itself just before its *step*-th rename."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.ops.kill_at",
            str(step),
            "--config-dir",
            str(root / "config"),
            "--data-dir",
            str(root / "data"),
            "--backups-dir",
            str(root / "backups"),
            "rotate-key",
            *options,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("options", [(), ("--reencrypt",)], ids=["rewrap", "reencrypt"])
def test_rotate_key_killed_at_every_step_finishes_on_a_rerun(
    tree: Path,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
    options: tuple[str, ...],
) -> None:
    """SIGKILL just before each rename rotate-key makes (key files, keyrings, manifest,
    database swaps): every node still opens with the configured key or the pending one;
    where a node refuses, verify says the same one line; a rerun finishes with all data
    intact; the backup follows a re-wrap and restores, and after a re-encryption asks for
    the key that made it."""
    backup.backup(tree / "config", tree / "data", tree / "backups")
    expected = _contents(tree)
    step, finished, refused = 1, False, 0
    while not finished:
        root = tmp_path_factory.mktemp("kill") / "t"
        shutil.copytree(tree, root)
        run = _kill_at(step, root, *options)
        finished = run.returncode == 0
        assert finished or run.returncode == -9, run.stderr
        keys = [_master(root)]
        pending = config_files.pending_key_file(root / "config")
        if pending.exists():
            keys.append(parse_master_key(pending.read_text()))
        for path in all_databases(root / "data"):
            assert _opens_with_either(path, keys), f"step {step}: {path}"
        refused += _verify_says_what_a_node_says(root, capsys)
        rerun = _kill_at(0, root, *options)
        assert rerun.returncode == 0, rerun.stderr
        assert _contents(root) == expected, f"step {step}: contents differ"
        taken = next((root / "backups").glob("2*"))
        if options:  # re-encrypted: the backup holds the old data keys, under the old key
            with pytest.raises(BackupError, match="needs the master key with fingerprint"):
                backup.restore(taken, root / "config", root / "restored", root / "backups")
        else:
            backup.restore(taken, root / "config", root / "restored", root / "backups")
        step += 1
    assert step > 4  # it was interrupted at several steps before it got through
    assert refused > 2  # and at several of them the nodes refused


def _opens_with_either(path: Path, masters: list[MasterKey]) -> bool:
    """*path* opens with a data key its keyring holds (current or pending) under one of
    *masters*, or (no keyring entry) with a key derived from one of them."""
    keyring = Keyring.load(path.parent / KEYRING_FILE)
    namespace = path.name.removesuffix("_encrypted_value.db")
    candidates: list[bytes | None] = []
    for master in masters:
        wrapper = LocalWrapper(master)
        if keyring is None or namespace not in keyring.keys:
            candidates.append(derived_key(master, namespace))
        elif keyring.wrapped_by == wrapper.fingerprint:
            candidates.append(keyring.unwrap(wrapper, namespace, where=path))
        if keyring is not None:
            candidates.append(keyring.unwrap_pending(wrapper, namespace, where=path))
    return any(key is not None and _opens(path, key) for key in candidates)


def _verify_says_what_a_node_says(root: Path, capsys: pytest.CaptureFixture[str]) -> bool:
    """Where a node refuses its directory after an interrupted rotation, verify fails with
    one line, the one that node gives (naming `make rotate-key`); False if none refuses."""
    lines = []
    for role in ("sentinel", "agent"):  # what each node says, opening its storage
        try:
            SQLCipherStorageProvider(root / "data" / role, source_of(root / "config", role)).close()
        except PersistentAgentError as error:
            lines.append(str(error))
    if not lines:
        return False
    dirs = ["--config-dir", str(root / "config"), "--data-dir", str(root / "data")]
    assert admin.main([*dirs, "verify"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    (said,) = err.splitlines()
    assert said.removeprefix("verify: error: ") in lines
    assert "`make rotate-key" in said
    return True
