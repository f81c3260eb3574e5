"""A full disk ends the agent with exit code 75, and it serves again once space returns."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import REPO

pytestmark = pytest.mark.e2e


def test_a_full_disk_ends_the_agent_with_75_and_loses_nothing_acknowledged(
    initialised: Path,
) -> None:
    """With its data on a full 1 MB tmpfs, the agent exits 75 with one line, not a zombie;
    after space is freed it starts again and serves the last acknowledged value."""
    if (
        shutil.which("unshare") is None
        or subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False).returncode
    ):
        pytest.skip("needs unshare -m (root): the tmpfs must not outlive the test")
    result = subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            sys.executable,
            "-m",
            "tests.e2e.full_disk",
            str(initialised),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["before"]["ok"]["value"] == "before the disk filled"
    assert all("ok" not in r for r in report["while_full"]), report["while_full"]
    assert report["exit_code"] == 75
    assert report["log"].startswith("persistent-agent: error: cannot write ")
    assert "its file system is full" in report["log"]
    assert report["after"]["value"] == "before the disk filled"
    mounts = Path("/proc/self/mounts").read_text()
    assert str(initialised) not in mounts
