"""Interop with the original TypeScript example, both ways, with real processes.

A client, agent and sentinel written the way the original's are
(tests/e2e/typescript, on the published TS SDK, versions pinned by its
package-lock.json and installed with `npm ci` into a directory of the test's
own) against ours: the TS client through our sentinel to our agent, and our
client through a TS sentinel to a TS agent (memory profile). Without Node >= 20
the tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from persistent_agent.demo.local_nodes import ATTACH_PATH, LocalNodes

from ..conftest import REPO, wait_until
from .conftest import free_port, run_client, settings_only_client_env, stored_value

pytestmark = pytest.mark.e2e

PACKAGE = REPO / "tests" / "e2e" / "typescript"


def _node_major() -> int | None:
    node = shutil.which("node")
    if node is None:
        return None
    out = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    try:
        return int(out.stdout.strip().lstrip("v").split(".")[0])
    except ValueError:
        return None


@pytest.fixture(scope="module")
def ts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The TS package, installed from its lockfile with `npm ci` (no optional native deps)."""
    major = _node_major()
    if major is None or major < 20 or shutil.which("npm") is None:
        message = f"Node >= 20 and npm are needed (found node {major})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    root = tmp_path_factory.mktemp("ts") / "interop"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("node_modules"))
    subprocess.run(
        ["npm", "ci", "--omit=optional", "--no-audit", "--no-fund"],
        cwd=root,
        check=True,
        capture_output=True,
        timeout=600,
    )
    return root


def _url(port: int) -> str:
    return f"ws://127.0.0.1:{port}{ATTACH_PATH}"


def _ts_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAME_")}
    env.update(settings)
    return env


def ts_client_env(nodes: LocalNodes) -> dict[str, str]:
    """How the TS SDK's client authenticates to our sentinel, with settings only: the
    runtime's `direct` admission profile (client credentials; the TS SDK reads the secret
    from FAME_ADMISSION_CLIENT_SECRET only), the token-subject node id the sentinel
    requires, and the project CA pinned (Node's --use-openssl-ca makes it read
    SSL_CERT_FILE / SSL_CERT_DIR, in place of its bundled roots)."""
    return settings_only_client_env(nodes, NODE_OPTIONS="--use-openssl-ca")


def _ts_client(ts: Path, nodes: LocalNodes) -> list[str]:
    run = subprocess.run(
        ["node", "client.mjs"],
        cwd=ts,
        env=ts_client_env(nodes),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["Previous state", "Updated state"], lines
    return lines


def test_the_typescript_client_talks_to_our_sentinel_and_agent(ts: Path, nodes: LocalNodes) -> None:
    """The TS client (storeValue/retrieveValue) twice through our secured nodes, with its
    own credential over TLS: each run's Previous state is the run before's Updated state,
    in the seed's {"value": …} shape; then our client reads the value the TS client wrote."""
    nodes.start_all()
    first = _ts_client(ts, nodes)
    second = _ts_client(ts, nodes)
    admitted = nodes.log_file("sentinel").read_text()
    assert "refused" not in admitted
    print("\n".join(["TS client -> our nodes:", *first, *second]))
    assert first[0] == "Previous state: {}"
    assert first[1].startswith('Updated state: {"value":"')
    assert second[0] == f"Previous state: {first[1].removeprefix('Updated state: ')}"
    ours = run_client(nodes)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout.splitlines()[0] == second[1].replace("Updated", "Previous")


@pytest.fixture
def ts_nodes(ts: Path, tmp_path: Path) -> Iterator[int]:
    """A TS sentinel and a TS agent (memory profile) on a free port; stopped afterwards."""
    port = free_port()
    logs = {name: (tmp_path / f"{name}.log").open("wb") for name in ("sentinel", "agent")}
    started: list[subprocess.Popen[bytes]] = []

    def start(script: str, **settings: str) -> subprocess.Popen[bytes]:
        log = logs[script.removesuffix(".mjs")]
        process = subprocess.Popen(
            ["node", script], cwd=ts, env=_ts_env(**settings), stdout=log, stderr=subprocess.STDOUT
        )
        started.append(process)
        return process

    try:
        sentinel = start(
            "sentinel.mjs", FAME_LISTENER_PORT=str(port), FAME_STORAGE_PROFILE="memory"
        )
        wait_until(lambda: _listening(port, sentinel), "the TS sentinel to listen")
        listening = psutil.Process(sentinel.pid).net_connections(kind="tcp")
        assert {c.laddr.ip for c in listening if c.status == psutil.CONN_LISTEN} == {"127.0.0.1"}
        start("agent.mjs", FAME_DIRECT_ADMISSION_URL=_url(port), FAME_STORAGE_PROFILE="memory")
        yield port
    finally:
        for process in started:
            process.terminate()
            process.wait(timeout=60)
        for log in logs.values():
            log.close()


def _listening(port: int, process: subprocess.Popen[bytes]) -> bool:
    import socket

    if process.poll() is not None:
        pytest.fail(f"the TS sentinel exited with {process.returncode}")
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_our_client_talks_to_a_typescript_sentinel_and_agent(
    ts_nodes: int, nodes: LocalNodes
) -> None:
    """Our client against the original's (unauthenticated) nodes, through the documented
    opt-out on loopback: "Method not found" for the Python names makes it use
    storeValue/retrieveValue, and the chain holds over two runs (it waits for the TS agent
    to attach the way it waits for ours)."""
    nodes.port = ts_nodes
    nodes.secure = False
    first, second = run_client(nodes), run_client(nodes)
    print("\n".join(["our client -> TS nodes:", first.stdout, second.stdout]))
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert first.stdout.splitlines()[0] == "Previous state: null"
    assert second.stdout.splitlines()[0] == f"Previous state: {stored_value(first.stdout)}"
