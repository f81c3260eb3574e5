"""rotate-key: every database moves to a new key, and a kill at any moment loses nothing."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest

from persistent_agent.errors import ServicesRunningError, WrongKeyError
from persistent_agent.keys.master_key import generate_master_key, parse_master_key
from persistent_agent.ops import config_files, inspection, rotation
from persistent_agent.ops.config_files import NEXT_VAR
from persistent_agent.storage import database
from persistent_agent.storage.layout import NODE_ROLES, all_databases, namespace_of

from ..conftest import REPO, checksums, node_writing, wait_until


def _contents(tree: Path) -> list[str]:
    lines = inspection.inspect(tree / "config", tree / "data")
    return [line.replace(str(tree), "<root>") for line in lines]


def _opens_with(path: Path, key_text: str | None) -> bool:
    if not key_text:
        return False
    key = parse_master_key(key_text).database_key(namespace_of(path))
    try:
        with database.opened(path, key, read_only=True) as conn:
            return not database.integrity_problems(conn)
    except WrongKeyError:
        return False


def test_rotate_key_rekeys_every_database_and_updates_config(tree: Path) -> None:
    """After rotate-key the new key opens everything, the old key nothing; data is equal."""
    before = _contents(tree)
    old = config_files.read_key(tree / "config" / ".env.agent")
    result = rotation.rotate(tree / "config", tree / "data")
    assert len(result.rekeyed) == 6
    new = config_files.read_key(tree / "config" / ".env.agent")
    assert new != old
    assert config_files.read_key(tree / "config" / ".env.sentinel") == new
    assert config_files.read_var(tree / "config" / ".env.agent", NEXT_VAR) is None
    for path in all_databases(tree / "data"):
        assert _opens_with(path, new)
        assert not _opens_with(path, old)
    assert _contents(tree) == before
    assert not list((tree / "data").rglob("*.rekey"))


def test_rotate_key_refuses_while_a_node_runs(tree: Path) -> None:
    """A running node (holding its data directory's lock) blocks rotation; no key changes."""
    old = config_files.read_key(tree / "config" / ".env.agent")
    with node_writing(tree), pytest.raises(ServicesRunningError, match="persistent-agent node"):
        rotation.rotate(tree / "config", tree / "data")
    assert config_files.read_key(tree / "config" / ".env.agent") == old
    assert config_files.read_var(tree / "config" / ".env.agent", NEXT_VAR) is None


def test_rotate_key_with_a_wrong_key_writes_nothing(tree: Path) -> None:
    """A wrong key in the config: rotate-key refuses before writing a config line or a file."""
    agent_env = tree / "config" / ".env.agent"
    config_files.set_key(agent_env, generate_master_key())
    config_before = agent_env.read_text()
    data_before = checksums(tree / "data")
    with pytest.raises(WrongKeyError):
        rotation.rotate(tree / "config", tree / "data")
    assert agent_env.read_text() == config_before
    assert checksums(tree / "data") == data_before


def _done_or_swapped(proc: subprocess.Popen[bytes], inodes: dict[Path, int], n: int) -> bool:
    """*proc* has ended, or at least *n* of the files were replaced (new inodes)."""
    swapped = sum(p.stat().st_ino != ino for p, ino in inodes.items())
    return proc.poll() is not None or swapped >= n


def _big_tree(tree: Path) -> None:
    """More, larger databases, so a rotation lasts long enough to be interrupted."""
    subprocess.run([sys.executable, "-m", "tests.writers", "bulk", str(tree)], cwd=REPO, check=True)


def test_rotate_key_survives_being_killed_at_any_point(
    tree: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """SIGKILL at spread-out moments: every file opens with the old or the new key,
    and running rotate-key again finishes with all data intact."""
    _big_tree(tree)
    expected = _contents(tree)
    admin = [sys.executable, "-m", "persistent_agent.ops.admin"]

    def fresh() -> Path:
        copy = tmp_path_factory.mktemp("rot") / "t"
        shutil.copytree(tree, copy)
        return copy

    def rotate_cmd(root: Path) -> list[str]:
        return [
            *admin,
            "--config-dir",
            str(root / "config"),
            "--data-dir",
            str(root / "data"),
            "rotate-key",
        ]

    timing = fresh()
    started = time.monotonic()
    subprocess.run(rotate_cmd(timing), check=True, capture_output=True)
    full = time.monotonic() - started

    trials, interrupted, mixed = 16, 0, 0
    for k in range(trials):
        root = fresh()
        inodes = {p: p.stat().st_ino for p in all_databases(root / "data")}
        # Kill after the k-th of `trials` fractions of the files was swapped
        # in (a rename gives the file a new inode): spread over the whole
        # rotation by what it did, not by the clock, so load cannot skew it.
        target = len(inodes) * k // trials

        proc = subprocess.Popen(rotate_cmd(root), stdout=subprocess.DEVNULL)
        wait_until(
            partial(_done_or_swapped, proc, inodes, target), f"rotate-key to swap {target} files"
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        files = all_databases(root / "data")
        states = set()
        for role in NODE_ROLES:
            env = root / "config" / f".env.{role}"
            current = config_files.read_key(env)
            pending = config_files.read_var(env, NEXT_VAR)
            interrupted += pending is not None
            for path in (p for p in files if p.parent.name == role):
                if _opens_with(path, current):
                    states.add("old")
                elif _opens_with(path, pending):
                    states.add("new")
                else:
                    pytest.fail(f"trial {k}: {path} opens with neither key")
        mixed += states == {"old", "new"}
        subprocess.run(rotate_cmd(root), check=True, capture_output=True)
        final = config_files.read_key(root / "config" / ".env.agent")
        assert all(_opens_with(p, final) for p in all_databases(root / "data"))
        assert _contents(root) == expected, f"trial {k}: contents differ"
    print(
        f"\nrotate-key interruption: {trials} kills over a {full:.2f}s rotation of "
        f"{len(all_databases(tree / 'data'))} databases; {interrupted} node configs caught "
        f"mid-rotation, {mixed} trials with old- and new-key files side by side; "
        "all readable, all finished by re-running, 0 entries lost"
    )
    assert interrupted > 0
