"""persistent-agent-client's command line: --help never connects; bad settings are one line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from persistent_agent.client.cli import build_parser


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A real TCP socket where a sentinel would be: it notes whether anyone knocked."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        yield server


def _client(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FAME_", "PERSISTENT_"))}
    return subprocess.run(
        [sys.executable, "-m", "persistent_agent.client", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _knocked(server: socket.socket) -> bool:
    try:
        server.accept()[0].close()
    except BlockingIOError:
        return False
    return True


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["increment", "--help"]])
def test_help_prints_usage_and_never_connects(listener: socket.socket, args: list[str]) -> None:
    port = listener.getsockname()[1]
    result = _client(*args, FAME_DIRECT_ADMISSION_URL=f"wss://127.0.0.1:{port}/x")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: persistent-agent-client")
    assert result.stderr == ""
    assert not _knocked(listener)


def test_a_missing_sentinel_address_is_local_configuration() -> None:
    """No FAME_DIRECT_ADMISSION_URL: one line, labelled as this machine's setting."""
    result = _client()
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "client: error: local configuration: FAME_DIRECT_ADMISSION_URL is not set; it names "
        "the sentinel to call (config/.env.client sets it: run `make init`)"
    ]


def test_a_missing_runtime_setting_is_local_configuration(listener: socket.socket) -> None:
    """The issue's case: a setting the runtime needs is missing. It is not the agent's answer."""
    port = listener.getsockname()[1]
    result = _client("increment", FAME_DIRECT_ADMISSION_URL=f"wss://127.0.0.1:{port}/x")
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("client: error: local configuration: "), line
    assert "is not set" in line
    assert not _knocked(listener)


def test_no_subcommand_is_the_seed_flow_and_increment_keeps_its_options() -> None:
    parser = build_parser()
    assert parser.parse_args([]).command is parser.parse_args(["run"]).command
    args = parser.parse_args(["increment", "--calls", "5", "--concurrency", "2", "--by", "3"])
    assert (args.calls, args.concurrency, args.by) == (5, 2, 3)
    assert parser.parse_args(["increments"]).command is args.command


def test_an_out_of_range_by_is_refused_before_connecting(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    url = f"wss://127.0.0.1:{port}/x"
    result = _client("increment", "--by", "-1", FAME_DIRECT_ADMISSION_URL=url)
    assert result.returncode == 2
    assert "--by must be from 0 to 2147483647" in result.stderr
    assert not _knocked(listener)
