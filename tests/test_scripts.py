"""The helper scripts behind `make`: interpreter discovery and `make init`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from persistent_agent.errors import MasterKeyError, PersistentAgentError, find_error
from persistent_agent.ops import config_files

from .conftest import REPO


def test_find_python_names_one_that_is_new_enough() -> None:
    """find_python.sh prints an interpreter of version 3.12 or later."""
    out = subprocess.run(
        ["sh", str(REPO / "scripts" / "find_python.sh")], capture_output=True, text=True, check=True
    ).stdout.strip()
    version = subprocess.run(
        [out, "-c", "import sys; print(sys.version_info >= (3, 12))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert version == "True"


def test_find_python_without_one_is_a_single_clear_line(tmp_path: Path) -> None:
    """With no suitable Python anywhere, one line on stderr and exit 1."""
    result = subprocess.run(
        ["/bin/sh", str(REPO / "scripts" / "find_python.sh")],
        env={"PATH": str(tmp_path), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "no Python >= 3.12 found" in result.stderr


def _find_python(python: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PYTHON": python, "PATH": path or os.environ["PATH"], "HOME": os.environ["HOME"]}
    return subprocess.run(
        ["/bin/sh", str(REPO / "scripts" / "find_python.sh")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def _older_python() -> str | None:
    """A real interpreter older than 3.12 on this machine (Debian 12's 3.11), if any."""
    for name in ("python3.11", "python3.10", "python3.9", "/usr/bin/python3"):
        found = shutil.which(name)
        if found is None:
            continue
        old = subprocess.run(
            [found, "-c", "import sys; print(sys.version_info < (3, 12))"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        if old == "True":
            return found
    return None


def test_find_python_refuses_an_old_python_asked_for_and_says_why() -> None:
    """PYTHON=<3.11>: refused in one line naming its version and one that would do."""
    older = _older_python()
    if older is None:
        pytest.skip("no Python older than 3.12 on this machine to ask for")
    result = _find_python(older)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert f"error: PYTHON={older} is Python 3." in result.stderr
    assert "needs Python >= 3.12" in result.stderr
    assert "would do (make PYTHON=" in result.stderr


def test_find_python_refuses_a_python_it_cannot_find() -> None:
    result = _find_python("python3.99-nowhere")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(
        "error: PYTHON=python3.99-nowhere is not a command found on PATH; "
    )
    assert result.stderr.count("\n") == 1


def test_find_python_uses_the_one_asked_for() -> None:
    """A suitable PYTHON is used as given (resolved on PATH), not another one."""
    result = _find_python(sys.executable)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == sys.executable


def test_gen_master_key_runs_without_the_project_installed(tmp_path: Path) -> None:
    """The script needs only the standard library and the repository's src/."""
    config = tmp_path / "config"
    shutil.copytree(
        REPO / "config",
        config,
        ignore=shutil.ignore_patterns(
            ".env.sentinel", ".env.agent", ".env.client", "master.key*", ".master.key*"
        ),
    )
    result = subprocess.run(
        [
            sys.executable,
            "-S",
            str(REPO / "scripts" / "gen_master_key.py"),
            "--config-dir",
            str(config),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "master key generated" in result.stdout
    assert config_files.node_keys(config)["agent"] not in result.stdout


def test_find_error_digs_through_wrapping() -> None:
    """Our error is found behind a runtime wrapper and inside an exception group."""
    ours = MasterKeyError("bad key")
    try:
        try:
            raise ours
        except MasterKeyError as exc:
            raise RuntimeError("factory failed") from exc
    except RuntimeError as wrapped:
        group = ExceptionGroup("tasks", [ValueError("other"), wrapped])
    found = find_error(group)
    assert found is ours
    assert isinstance(found, PersistentAgentError)
    assert find_error(RuntimeError("unrelated")) is None
