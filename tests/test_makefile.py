"""The Makefile as a newcomer meets it: from a bare clone, every target brings
what it needs, `make help` lists every target, and `make init` needs no venv."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from persistent_agent.demo.local_nodes import free_port

from .conftest import REPO, bare_copy

# What each documented target must bring along when run in a bare clone:
# the venv (`install`), the config with its key (`init`), or neither.
NEEDS: dict[str, set[str]] = {
    "help": set(),
    "install": {"install"},
    "init": {"init"},
    "access": {"install"},
    "rotate-credentials": set(),
    "reissue-certs": {"install"},
    "demo": {"install", "init"},
    "demo-replicas": {"install", "init"},
    "start-replicas": {"init"},
    "run-increments": {"init"},
    "local-start": {"install", "init"},
    "local-run": {"install", "init"},
    "local-run-verbose": {"install", "init"},
    "local-stop": {"install"},
    "local-status": {"install"},
    "metrics": {"install"},
    "prometheus": set(),
    "base-image": set(),
    "build": set(),
    "start": {"init"},
    "stop": set(),
    "run": {"init"},
    "run-verbose": {"init"},
    "logs": set(),
    "status": set(),
    "verify": {"install"},
    "inspect": {"install"},
    "backup": {"install"},
    "restore": {"install"},
    "rotate-key": {"install"},
    "migrate-state": {"install"},
    "test": {"install"},
    "test-unit": {"install"},
    "test-e2e": {"install"},
    "test-docker": {"install"},
    "lint": {"install"},
    "bench": {"install"},
    "runtime-tests": {"install"},
    "docs": {"install"},
    "clean": set(),
}
# Operator tools read keys, they never create one as a side effect.
NO_INIT = {
    "verify", "inspect", "backup", "restore", "rotate-key", "migrate-state", "local-stop",
    "local-status", "metrics",
}  # fmt: skip
STEPS = {
    "install": re.compile(r"-m venv .*\n(.*\n)*.*pip install"),
    "init": re.compile(r"gen_master_key\.py"),
}


def documented_targets() -> list[str]:
    return re.findall(r"^([a-zA-Z0-9_-]+):.*## ", (REPO / "Makefile").read_text(), re.MULTILINE)


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bare_copy(tmp_path_factory.mktemp("bare") / "clone")


def _make(root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_every_target_is_classified() -> None:
    """Each `## `-documented target has an entry in NEEDS (a new target must say what it needs)."""
    assert sorted(documented_targets()) == sorted(NEEDS)


@pytest.mark.parametrize("target", sorted(NEEDS))
def test_target_in_a_bare_clone_brings_what_it_needs(clone: Path, target: str) -> None:
    """`make -n <target>` in a bare clone runs the install/init steps the target needs."""
    assert not (clone / ".venv").exists()
    planned = _make(clone, "-n", target, "BACKUP=backups/x")
    steps = {step for step, pattern in STEPS.items() if pattern.search(planned)}
    assert NEEDS[target] <= steps, planned
    if target in NO_INIT:
        assert "init" not in steps, planned


def test_help_lists_every_target_without_colour_in_a_pipe() -> None:
    """`make help` names every documented target; piped, it prints no escape codes."""
    out = _make(REPO, "help")
    listed = [line.split()[0] for line in out.splitlines()]
    assert listed == documented_targets()
    assert "test-e2e" in listed
    assert "\x1b" not in out


def _help_on_a_terminal(env: dict[str, str]) -> str:
    primary, secondary = pty.openpty()
    try:
        subprocess.run(
            ["make", "--no-print-directory", "help"],
            cwd=REPO,
            env=env,
            stdout=secondary,
            stderr=subprocess.DEVNULL,
            check=True,
        )
        os.close(secondary)
        chunks = []
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(primary)
    return b"".join(chunks).decode()


def test_help_is_coloured_on_a_terminal_unless_no_color() -> None:
    """On a terminal the target names are coloured; NO_COLOR turns that off."""
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    assert "\x1b[36m" in _help_on_a_terminal(env)
    assert "\x1b" not in _help_on_a_terminal({**env, "NO_COLOR": "1"})


def _oldest_python() -> str:
    """The host's system Python when it has one (3.11 on Debian 12), else ours."""
    return "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable


def test_init_runs_without_a_venv_on_a_host_python(tmp_path: Path) -> None:
    """`make init` in a bare clone, on a host Python with no site-packages at all (-I -S)."""
    root = bare_copy(tmp_path / "clone")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path)}
    out = _make(root, "init", f"HOST_PYTHON={_oldest_python()} -I -S", env=env)
    assert out.startswith("init: master key generated; wrote ")
    assert sorted(p.name for p in (root / "config").glob(".env.*[!e]")) == [
        ".env.agent",
        ".env.client",
        ".env.sentinel",
    ]
    assert not (root / ".venv").exists()


def test_the_image_tag_is_written_once_and_agrees_everywhere() -> None:
    """compose's default image is the tag `make build` writes for the package's version."""
    from persistent_agent import __version__

    image = re.search(
        r"\$\{PERSISTENT_AGENT_IMAGE:-([^}]+)\}", (REPO / "docker-compose.yml").read_text()
    )
    assert image is not None
    assert image.group(1) == f"persistent-agent:{__version__}"
    out = subprocess.run(
        ["make", "-s", "-f", "Makefile", "-f", "-", "print-image"],
        input="print-image:\n\t@echo $(IMAGE)\n",
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == image.group(1)


def test_restore_force_means_what_it_says() -> None:
    """FORCE=1 (or yes/true) passes --force; FORCE=0 or no FORCE does not."""

    def planned(*args: str) -> str:
        return _make(REPO, "-n", "restore", "BACKUP=backups/x", *args).splitlines()[-1]

    assert planned("FORCE=1").endswith("--force")
    assert planned("FORCE=yes").endswith("--force")
    assert not planned("FORCE=0").endswith("--force")
    assert not planned().endswith("--force")


Result = subprocess.CompletedProcess[str]


def _make_result(root: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )


# The checkout's own venv: what `make install` would build, without building it again.
HERE_VENV = f"VENV={REPO / '.venv'}"


def test_clean_says_in_one_line_what_it_removed(tmp_path: Path) -> None:
    """No raw `rm -rf` line: one summary naming what existed, and nothing when run again."""
    root = bare_copy(tmp_path / "clone")
    for made in ("data/agent", "run"):
        (root / made).mkdir(parents=True)
    (root / "config" / "master.key").write_text("not a real key\n")
    first = _make_result(root, "clean", "COMPOSE=")
    assert first.returncode == 0, first.stderr
    assert first.stdout == "clean: removed data run config/master.key; backups/ and .venv kept\n"
    assert first.stderr == ""
    assert not (root / "data").exists()
    again = _make_result(root, "clean", "COMPOSE=")
    assert again.stdout == "clean: nothing to remove; backups/ and .venv kept\n"


def test_local_status_with_nothing_running_ends_without_makes_error(tmp_path: Path) -> None:
    """Nothing running is an answer: our one line, exit 0, no `make: *** … Error` line."""
    root = bare_copy(tmp_path / "clone")
    result = _make_result(root, "local-status", HERE_VENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith("local: nothing running")
    assert "Error" not in result.stderr


def test_local_run_with_nothing_running_names_the_target_that_starts_it(tmp_path: Path) -> None:
    """Our line says what to do, with `make local-start` quoted whole; make's marker follows.

    A failing recipe always gets GNU make's `make: *** [...] Error N`; the exit
    status must stay non-zero for scripts, so our line is the one before it.
    """
    root = bare_copy(tmp_path / "clone")
    ports = {"SENTINEL_PORT": str(free_port()), "ISSUER_PORT": str(free_port())}
    result = _make_result(root, "local-run", HERE_VENV, env=ports)
    assert result.returncode == 2
    ours, marker = result.stderr.strip().splitlines()[-2:]
    assert ours.startswith("client: error: nothing is running at "), result.stderr
    assert ours.endswith("start it with `make local-start`")
    # (make[1]: when these tests themselves run under `make test`)
    assert re.fullmatch(r"make(\[\d+\])?: \*\*\* \[.*local-run\] Error 2", marker), marker


def test_an_unsuitable_python_asked_for_stops_install_in_one_line(tmp_path: Path) -> None:
    """PYTHON that cannot be used: no venv, one line from find_python.sh, not another Python."""
    root = bare_copy(tmp_path / "clone")
    result = _make_result(root, "install", "PYTHON=python3.99-nowhere")
    assert result.returncode != 0
    assert not (root / ".venv").exists()
    assert "Using" not in result.stdout
    assert result.stderr.splitlines()[0].startswith(
        "error: PYTHON=python3.99-nowhere is not a command found on PATH; "
    )


def test_an_unset_sentinel_port_is_left_to_the_tools(tmp_path: Path) -> None:
    """The Makefile sets no port itself: unset, demo-replicas may pick a free one."""
    root = bare_copy(tmp_path / "clone")
    env = {k: v for k, v in os.environ.items() if k not in ("SENTINEL_PORT", "ISSUER_PORT")}
    out = subprocess.run(
        ["make", "-s", "-f", "Makefile", "-f", "-", "print-ports"],
        input='print-ports:\n\t@echo "[$$SENTINEL_PORT][$$ISSUER_PORT]"\n',
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == "[][]"
