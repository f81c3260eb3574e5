"""persistent-agent-admin as a user types it: options before or after the command,
--version, the debug chain behind a one-line error, and the processes it starts."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from persistent_agent import __version__
from persistent_agent.demo.local_nodes import free_port
from persistent_agent.errors import REDACTED, ConfigError, debug_chain, report
from persistent_agent.ops import admin

ADMIN = [sys.executable, "-m", "persistent_agent.ops.admin"]
# The console script `make` runs: its own directory, not the working one, is on its path.
ADMIN_SCRIPT = str(Path(sys.executable).parent / "persistent-agent-admin")
# The upstream example's agent file: on the import path, it would be the package.
UPSTREAM_AGENT = 'raise SystemExit("the upstream example agent ran instead of the package")\n'


def _run(
    *argv: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    admin_argv: tuple[str, ...] = tuple(ADMIN),
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*admin_argv, *argv],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _dirs(root: Path) -> list[str]:
    return ["--config-dir", str(root / "config"), "--data-dir", str(root / "data")]


def test_shared_options_work_after_the_command_too(initialised: Path, tmp_path: Path) -> None:
    """`verify --data-dir X` works as `--data-dir X verify` does; after the command wins."""
    elsewhere = tmp_path / "elsewhere"
    after = _run("verify", *_dirs(initialised)[:2], "--data-dir", str(elsewhere))
    assert after.returncode == 0, after.stderr
    assert f"no encrypted databases under {elsewhere}" in after.stdout
    before = _run(*_dirs(initialised), "verify")
    assert before.returncode == 0, before.stderr
    assert f"no encrypted databases under {initialised / 'data'}" in before.stdout
    both = _run(*_dirs(initialised), "verify", "--data-dir", str(elsewhere))
    assert f"no encrypted databases under {elsewhere}" in both.stdout
    # An option given only before the command keeps its value after the command's parser ran.
    only_before = admin.build_parser().parse_args(["--run-dir", "R", "local-status"])
    assert only_before.run_dir == Path("R")


def test_version_names_the_package_version() -> None:
    result = _run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"persistent-agent-admin {__version__}"


@pytest.fixture
def extra_command() -> Iterator[str]:
    """A command registered the way every command is, removed afterwards."""
    name = "test-echo"

    @admin.command(
        name,
        "persistent-agent-admin test-echo --times 2 word",
        None,
        admin.arg("word", help="what to echo"),
        admin.arg("--times", type=int, default=1, help="how often"),
    )
    def _echo(args: argparse.Namespace) -> int:
        """Echo a word (a test's command)."""
        print(" ".join([args.word] * args.times))
        return 0

    yield name
    del admin._COMMANDS[name]


def test_a_command_declares_its_arguments_beside_its_handler(
    extra_command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The registration alone gives the command its parser, help and arguments."""
    assert admin.main([extra_command, "--times", "2", "hi", "--data-dir", "d"]) == 0
    assert capsys.readouterr().out == "hi hi\n"
    registered = admin._COMMANDS[extra_command]
    assert registered.doc == "Echo a word (a test's command)."
    parsed = admin.build_parser().parse_args(["restore", "b", "--force"])
    assert (parsed.backup, parsed.force) == (Path("b"), True)


def test_local_status_with_nothing_running_is_not_an_error(initialised: Path) -> None:
    """One line saying nothing runs, and exit 0: an answer, not a failure."""
    result = _run(*_dirs(initialised), "--run-dir", str(initialised / "run"), "local-status")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "local: nothing running (issuer, sentinel, agent stopped); start with `make local-start`"
    ]


def test_a_bad_port_setting_is_one_line(initialised: Path) -> None:
    result = _run(*_dirs(initialised), "local-status", env={"SENTINEL_PORT": "80x"})
    assert result.returncode == 2
    assert result.stderr == (
        "persistent-agent-admin: error: SENTINEL_PORT='80x' is not a port number (1-65535)\n"
    )


def _broken_registry(root: Path) -> Path:
    """The fabric's client registry made invalid JSON: a ConfigError raised `from None`."""
    registry = root / "config" / "access" / "clients.json"
    registry.write_text("{not json")
    return registry


def test_debug_prints_the_chain_the_one_line_hides(initialised: Path) -> None:
    """PERSISTENT_AGENT_DEBUG=1: the JSON error behind the one line, then the line itself."""
    _broken_registry(initialised)
    argv = [*_dirs(initialised), "rotate-credentials", "--client", "client", "--port", "1"]
    quiet = _run(*argv)
    assert quiet.returncode == 2
    assert quiet.stderr.count("\n") == 1
    assert "JSONDecodeError" not in quiet.stderr
    loud = _run(*argv, env={"PERSISTENT_AGENT_DEBUG": "1"})
    assert loud.returncode == 2
    assert "json.decoder.JSONDecodeError: Expecting property name" in loud.stderr
    assert "During handling of the above exception, another exception occurred" in loud.stderr
    assert "Traceback (most recent call last)" in loud.stderr
    assert loud.stderr.endswith(quiet.stderr)  # the one line still comes last


def _hidden(inner: str, line: str) -> ConfigError:
    """A one-line error raised `from None` over an exception saying *inner*."""
    try:
        try:
            raise ValueError(inner)
        except ValueError:
            raise ConfigError(line) from None
    except ConfigError as error:
        return error


def test_debug_chain_blanks_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Secrets a library quotes (a DSN's password, a hex key, a secret variable, the
    input pydantic failed to validate) are blanked."""
    key = "ab" * 32
    monkeypatch.setenv("SOME_SERVICE_TOKEN", "tok-4f1a9c2e77")
    error = _hidden(
        "host=db password=hunter2hunter port=5 postgresql://agent:pw-in-url@db/x "
        f"key {key} token tok-4f1a9c2e77 [input_value='stored-value-9c1f', input_type=str]",
        "FAME_STORAGE_POSTGRES_DSN is not valid",
    )
    monkeypatch.setenv("PERSISTENT_AGENT_DEBUG", "1")
    assert report("x", error) == 2
    text = capsys.readouterr().err
    assert "ValueError: host=db password=" in text
    assert "ConfigError: FAME_STORAGE_POSTGRES_DSN is not valid" in text
    for secret in ("hunter2hunter", "pw-in-url", key, "tok-4f1a9c2e77", "stored-value-9c1f"):
        assert secret not in text
    assert text.count(REDACTED) == 5
    assert text.endswith("x: error: FAME_STORAGE_POSTGRES_DSN is not valid\n")
    assert debug_chain(error) in text


def test_debug_off_prints_only_the_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert report("tool", _hidden("inner detail", "one line")) == 2
    assert capsys.readouterr().err == "tool: error: one line\n"


@pytest.mark.e2e
def test_a_persistent_agent_py_in_the_working_directory_does_not_shadow_the_package(
    initialised: Path,
) -> None:
    """The upstream example's `persistent_agent.py` beside the user: the demo still runs.

    `python -m` puts the working directory first on the import path; the nodes
    and the client the admin starts run without it (PYTHONSAFEPATH).
    """
    (initialised / "persistent_agent.py").write_text(UPSTREAM_AGENT)
    result = _run(
        "--config-dir", "config", "--data-dir", "data", "--run-dir", "run",
        "--port", str(free_port()), "--issuer-port", str(free_port()), "demo",
        cwd=initialised, admin_argv=(ADMIN_SCRIPT,),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo: the value stored before the restart" in result.stdout
    assert "upstream example" not in result.stdout + result.stderr


def test_a_persistent_agent_py_in_the_working_directory_does_not_shadow_local_runs_client(
    initialised: Path,
) -> None:
    """The client `local-run` becomes runs without the working directory on its path too:
    with nothing running, it is the client's own one line, not the upstream agent."""
    (initialised / "persistent_agent.py").write_text(UPSTREAM_AGENT)
    result = _run(
        "--config-dir", "config", "--data-dir", "data", "--run-dir", "run",
        "--port", str(free_port()), "--issuer-port", str(free_port()), "local-run",
        cwd=initialised, admin_argv=(ADMIN_SCRIPT,),
    )  # fmt: skip
    assert "upstream example" not in result.stdout + result.stderr
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith("client: error: nothing is running at ")


@pytest.mark.e2e
def test_demo_replicas_honours_sentinel_port_and_issuer_port(initialised: Path) -> None:
    """SENTINEL_PORT and ISSUER_PORT set: the demo's sentinel and issuer serve on them."""
    port, issuer_port = free_port(), free_port()
    result = _run(
        *_dirs(initialised), "--run-dir", str(initialised / "run"),
        "demo-replicas", "--replicas", "2", "--clients", "2", "--calls", "40",
        env={"SENTINEL_PORT": str(port), "ISSUER_PORT": str(issuer_port)},
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        f"== starting the token issuer (127.0.0.1:{issuer_port}), the sentinel (127.0.0.1:{port})"
        in result.stdout
    )
    assert "demo-replicas: 40 increments over 2 replicas, final count 40" in result.stdout


def test_debug_reaches_the_client_local_run_starts(initialised: Path) -> None:
    """The launcher drops inherited PERSISTENT_AGENT_*; PERSISTENT_AGENT_DEBUG is handed on."""
    argv = [*_dirs(initialised), "--port", str(free_port()), "--issuer-port", str(free_port())]
    result = _run(*argv, "local-run", env={"PERSISTENT_AGENT_DEBUG": "1"})
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("client: error: nothing is running at ")
