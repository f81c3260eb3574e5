"""restore is all or nothing: killed at any step, the nodes and verify refuse the data
directory with one line saying how to finish, and running it again finishes it."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from persistent_agent.demo.local_nodes import MODULES, LocalNodes
from persistent_agent.errors import RestoreInterruptedError
from persistent_agent.ops import admin, backup, inspection
from persistent_agent.storage import layout
from persistent_agent.storage.layout import NODE_ROLES, RESTORE_JOURNAL, RESTORE_STAGING_PREFIX

from .. import writers
from ..conftest import REPO, checksums


def _admin(root: Path, *argv: str, kill_at: int = 0) -> subprocess.CompletedProcess[str]:
    """persistent-agent-admin on *root*, killing itself before its *kill_at*-th rename."""
    dirs = ["--config-dir", str(root / "config"), "--data-dir", str(root / "data")]
    return subprocess.run(
        [sys.executable, "-m", "tests.ops.kill_at", str(kill_at), *dirs,
         "--backups-dir", str(root / "backups"), *argv],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip


def _node(root: Path, role: str) -> subprocess.CompletedProcess[str]:
    """A real node process on *root*'s data, as local-start runs it (no sentinel needed:
    a node that passes its preflight is killed by the deadline, failing the test)."""
    nodes = LocalNodes(root / "config", root / "data", root / "run")
    return subprocess.run(
        [sys.executable, "-m", MODULES[role]],
        env=nodes.env(role), cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def _contents(root: Path) -> list[str]:
    lines = inspection.inspect(root / "config", root / "data")
    return [line.replace(str(root), "<root>") for line in lines]


def _node_dirs(root: Path) -> dict[str, str]:
    return {
        f"{role}/{k}": v for role in NODE_ROLES for k, v in checksums(root / "data" / role).items()
    }


def test_restore_killed_at_every_step_refuses_until_a_rerun_finishes_it(
    tree: Path, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL before each rename restore makes (copies, journal, directory swaps, setting
    aside): until it is run again, verify and both nodes refuse with the one line naming the
    command that finishes it; the rerun leaves every database of both nodes the backup's and
    the replaced data, keyrings included, intact in backups/replaced-*."""
    taken = backup.backup(tree / "config", tree / "data", tree / "backups")
    expected = _contents(tree)
    # The data diverges from the backup: other values, and a namespace it does not have.
    asyncio.run(writers.fill(tree, ["agent_state", "later"], 7, "-after"))
    replaced = _node_dirs(tree)
    step, finished, refused = 1, False, []
    while not finished:
        root = tmp_path_factory.mktemp("kill") / "t"
        shutil.copytree(tree, root)
        theirs = root / "backups" / taken.name
        run = _admin(root, "restore", "--force", str(theirs), kill_at=step)
        finished = run.returncode == 0
        assert finished or run.returncode == -9, run.stderr
        if not finished and (root / "data" / RESTORE_JOURNAL).exists():
            refused.append(root)
            line = (
                f"a restore of {theirs} was interrupted; run "
                f"`make restore BACKUP={theirs} FORCE=1` again to finish it"
            )
            assert admin.main(_dirs(root, "verify")) == 2, f"step {step}"
            assert capsys.readouterr() == ("", f"verify: error: {line}\n"), f"step {step}"
            for role in NODE_ROLES:  # what a node's preflight (serving.check_storage) calls
                with pytest.raises(RestoreInterruptedError, match=re.escape(line)):
                    layout.refuse_unfinished_restore(root / "data" / role)
            if len(refused) in (1, 5):  # and a real node process, before and after swaps
                for role in NODE_ROLES:
                    node = _node(root, role)
                    assert node.returncode == 2, f"step {step}: {node.stderr}"
                    (said,) = node.stderr.strip().splitlines()
                    assert said.endswith(f": error: {line}"), f"step {step}: {said}"
        elif not finished:  # killed before its journal: nothing was replaced yet
            assert _node_dirs(root) == replaced, f"step {step}"
        # The same command finishes it; before its journal it had not begun, and a new
        # restore needs --force.
        force = [] if (root / "data" / RESTORE_JOURNAL).exists() else ["--force"]
        if not finished:
            rerun = admin.main(_dirs(root, "restore", *force, str(theirs)))
            assert rerun == 0, capsys.readouterr()
        assert _contents(root) == expected, f"step {step}: contents differ"
        (aside,) = (root / "backups").glob("replaced-*")
        assert checksums(aside) == replaced, f"step {step}: replaced data differs"
        assert not list((root / "data").glob(RESTORE_STAGING_PREFIX + "*"))
        assert not list((root / "data").rglob("*restore-journal*"))
        assert admin.main(_dirs(root, "verify")) == 0, capsys.readouterr()
        capsys.readouterr()
        step += 1
    assert len(refused) > 5  # it was interrupted at several steps after its journal


def _dirs(root: Path, *argv: str) -> list[str]:
    return [
        "--config-dir", str(root / "config"), "--data-dir", str(root / "data"),
        "--backups-dir", str(root / "backups"), *argv,
    ]  # fmt: skip


def test_an_unfinished_restore_comes_first_and_finishes_without_an_exchange(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a restore is unfinished, restoring another backup is refused with the line that
    names the first; where the system cannot exchange two directories in one step (no
    renameat2, simulated here), the rerun finishes it with two renames per node."""
    first = backup.backup(tree / "config", tree / "data", tree / "backups")
    other = backup.backup(tree / "config", tree / "data", tree / "backups")
    expected, before = _contents(tree), _node_dirs(tree)
    # Killed just after its journal: the copies (databases and keyrings), the copy of the
    # journal in each new directory, then the journal.
    commit = len(list(first.rglob("*.db"))) + 2 * len(NODE_ROLES) + 1
    assert _admin(tree, "restore", "--force", str(first), kill_at=commit + 1).returncode == -9
    assert (tree / "data" / RESTORE_JOURNAL).exists()
    with pytest.raises(RestoreInterruptedError, match=rf"{first.name} was interrupted.*{other}$"):
        backup.restore(other, tree / "config", tree / "data", tree / "backups", force=True)
    monkeypatch.setattr(backup, "_exchange", lambda _a, _b: False)
    result = backup.restore(first, tree / "config", tree / "data", tree / "backups")
    assert result.set_aside is not None
    assert checksums(result.set_aside) == before
    assert _contents(tree) == expected
    assert not list((tree / "data").rglob("*restore-journal*"))
