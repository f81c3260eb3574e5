"""What the Docker tests share: a bare copy of the repository with the image
built from it (once per session), a cold project per test, and `make`,
`docker` and compose run against it.

Every test runs in that copy (so a developer's own data/ and config/ are never
touched) with its own compose project, image tag and sentinel port. Without an
engine the tests fail, never skip.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import bare_copy
from ..e2e.conftest import free_port

PROJECT_NAME = "pa-docker-test"
IMAGE = "persistent-agent-test:latest"
_PORT = free_port()


def env() -> dict[str, str]:
    """The environment of every make and compose command the tests run."""
    values = dict(os.environ)
    # PYTHON_IMAGE passes through as set (CI: the registry-free base image);
    # unset, the Makefile's default applies.
    values.update(
        IMAGE=IMAGE,
        COMPOSE_PROJECT_NAME=PROJECT_NAME,
        SENTINEL_PORT=os.environ.get("TEST_SENTINEL_PORT", str(_PORT)),
    )
    return values


def run(
    command: list[str],
    root: Path,
    *,
    env_vars: dict[str, str] | None = None,
    timeout: float = 900,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run *command* in *root*, print it with its output (shown when a test fails)."""
    result = subprocess.run(
        command,
        cwd=root,
        env=env_vars or env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    print(f"$ {' '.join(command)}\n{result.stdout}{result.stderr}")
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def compose_env() -> dict[str, str]:
    """What the Makefile exports to compose, on top of the tests' environment."""
    values = env()
    values.update(PERSISTENT_AGENT_IMAGE=values["IMAGE"], UID_GID=f"{os.getuid()}:{os.getgid()}")
    return values


def make(root: Path, *targets: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(["make", "--no-print-directory", *targets], root, check=check)


def compose_command(root: Path) -> list[str]:
    """The compose the Makefile uses: $COMPOSE, else what scripts/compose.sh finds."""
    found = (
        os.environ.get("COMPOSE")
        or subprocess.run(
            ["scripts/compose.sh"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    return found.split()


def docker(*argv: str) -> str:
    return subprocess.run(
        ["docker", *argv], capture_output=True, text=True, check=True
    ).stdout.strip()


def container(service: str) -> str:
    """The id of the test project's running container of *service* ("" if none)."""
    return docker(
        "ps",
        "-q",
        "--filter",
        f"label=com.docker.compose.project={PROJECT_NAME}",
        "--filter",
        f"label=com.docker.compose.service={service}",
    )


def project_containers() -> list[str]:
    """The ids of every container of the test project, running or not."""
    label = f"label=com.docker.compose.project={PROJECT_NAME}"
    return docker("ps", "-aq", "--filter", label).split()


def secret_values(root: Path) -> dict[str, str]:
    """Every secret the compose demo holds, by file: the master key, the PostgreSQL
    password, each credential's secret and the body of each private key."""
    config = root / "config"
    files = [config / "master.key", config / "postgres.password"]
    files += sorted((config / "access").glob("*.secret"))
    values = {p.name: p.read_text().strip() for p in files if p.is_file()}
    for key in sorted((config / "access").glob("*.key")):
        body = [line for line in key.read_text().splitlines() if not line.startswith("-----")]
        values[key.name] = "".join(body)
        # A PEM's lines, in case one leaked as it is written.
        values.update({f"{key.name}:{n}": line for n, line in enumerate(body)})
    return values


def leaked(text: str, secrets: dict[str, str]) -> list[str]:
    """The names of the *secrets* whose value appears in *text* (never the values)."""
    return sorted(name for name, value in secrets.items() if value and value in text)


def client_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.endswith(("}", "null"))]


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A bare copy of the repository with the image built from it."""
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        pytest.fail("no Docker engine answers `docker info`; the Docker tests need one")
    root = bare_copy(tmp_path_factory.mktemp("compose") / PROJECT_NAME)
    make(root, "build")
    print(f"compose command: {' '.join(compose_command(root))}")
    yield root
    make(root, "clean", check=False)


@pytest.fixture
def project(built: Path) -> Iterator[Path]:
    """The built copy, with no containers, config or data: each test starts cold."""
    make(built, "clean")
    yield built
    make(built, "clean", check=False)
