"""The docker-compose demo, driven through the Makefile against a real engine.

Runs in a copy of the repository (so a developer's own data/ and config/ are
never touched) with its own compose project, image tag and sentinel port.
`make test-docker` runs it; without a Docker engine it fails, never skips.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from persistent_agent import config_files
from persistent_agent.keys import generate_master_key

from ..conftest import REPO, checksums, plaintext_hits
from ..e2e.conftest import free_port
from ..e2e.test_local_flow import PYTHON_RUNTIME_EXTRAS, SEED_LISTING

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of the tracked (and new, unignored) files of this repository."""
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        pytest.fail("no Docker engine answers `docker info`; the Docker tests need one")
    root = tmp_path_factory.mktemp("compose") / "pa-docker-test"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    yield root
    _make(root, "clean", check=False)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        IMAGE="persistent-agent-test:latest",
        COMPOSE_PROJECT_NAME="pa-docker-test",
        SENTINEL_PORT=os.environ.get("TEST_SENTINEL_PORT", str(_PORT)),
        PYTHON_IMAGE=os.environ.get("PYTHON_IMAGE", "python:3.12-slim"),
    )
    return env


_PORT = free_port()


def _make(root: Path, *targets: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["make", "--no-print-directory", *targets], cwd=root, env=_env(),
        capture_output=True, text=True, timeout=900, check=False,
    )
    print(f"$ make {' '.join(targets)}\n{result.stdout}{result.stderr}")
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def _client_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.endswith(("}", "null"))]


def test_the_seed_flow_persists_across_stop_and_start(project: Path) -> None:
    """init, start, run, stop, start, run: the second run reads the first value."""
    _make(project, "init")
    _make(project, "build")
    started = time.monotonic()
    _make(project, "start")
    print(f"make start (image built) to healthy: {time.monotonic() - started:.1f}s")
    first = _client_lines(_make(project, "run"))
    assert first[0] == "Previous state: null"
    assert re.fullmatch(r'Updated state: \{"value":"\d{13}"\}', first[1])
    _make(project, "stop")
    _make(project, "start")
    second = _client_lines(_make(project, "run"))
    assert second[0] == "Previous state: " + first[1].removeprefix("Updated state: ")


def test_data_on_the_host_is_the_users_and_opaque(project: Path) -> None:
    """After stop: the seed's listing, owned by the user, 0600/0700, no plaintext."""
    _make(project, "stop")
    data = project / "data"
    assert {str(p.relative_to(data)) for p in data.rglob("*.db")} == (
        SEED_LISTING | PYTHON_RUNTIME_EXTRAS
    )
    for path in [data, *data.rglob("*")]:
        assert path.stat().st_uid == os.getuid(), path
        expected = 0o700 if path.is_dir() else 0o600
        assert path.stat().st_mode & 0o777 == expected, path
    needles = [b"SQLite format 3", b"storage@fame.fabric", b"CREATE TABLE"]
    assert plaintext_hits(data, needles) == []


def test_wrong_key_stops_the_agent_and_changes_nothing(project: Path) -> None:
    """A wrong key: start fails, logs hold the one-line error, no data file changes."""
    _make(project, "stop")
    agent_env = project / "config" / ".env.agent"
    good_key = config_files.read_key(agent_env)
    assert good_key is not None
    before = checksums(project / "data" / "agent")
    config_files.set_key(agent_env, generate_master_key())

    failed = _make(project, "start", check=False)
    assert failed.returncode != 0
    assert "persistent-agent exited" in failed.stderr
    logs = _make(project, "logs").stdout
    assert "persistent-agent: error: cannot decrypt" in logs
    assert "FAME_STORAGE_MASTER_KEY" in logs
    assert "Traceback" not in logs
    assert checksums(project / "data" / "agent") == before

    _make(project, "stop")
    config_files.set_key(agent_env, good_key)
    _make(project, "start")
    assert _client_lines(_make(project, "run"))[0].startswith('Previous state: {"value":"')


def test_master_key_never_reaches_make_output_or_logs(project: Path) -> None:
    """Neither make's output nor any container log shows the master key."""
    key = config_files.read_key(project / "config" / ".env.agent")
    assert key is not None
    outputs = [_make(project, t) for t in ("start", "run", "status", "logs")]
    for result in outputs:
        assert key not in result.stdout + result.stderr


def test_clean_removes_data_config_and_keys_without_root(project: Path) -> None:
    """clean: containers down; data/, generated config and keys gone; nothing foreign left."""
    _make(project, "clean")
    assert not (project / "data").exists()
    assert not list((project / "config").glob(".env.sentinel")) + list(
        (project / "config").glob(".env.agent")
    )
    assert not (project / "config" / ".env.client").exists()
    foreign = [p for p in project.rglob("*") if p.stat().st_uid != os.getuid()]
    assert foreign == []
    ps = subprocess.run(
        ["docker", "ps", "-aq", "--filter", "label=com.docker.compose.project=pa-docker-test"],
        capture_output=True, text=True, check=True,
    )
    assert ps.stdout.strip() == ""
