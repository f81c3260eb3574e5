"""The agent's link to the sentinel, and the client's first contact with it (real processes).

Health means attached and serving; a restarted sentinel gets its agent back
at once, every time, in the same process; an agent that cannot attach to a
sentinel that is ready restarts; a client tells a sentinel that is still
starting (retry) from one that refuses it (fail at once, saying so).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from persistent_agent.demo.local_nodes import LocalNodes
from persistent_agent.node.backlog import MAX_WAIT_VAR
from persistent_agent.node.serving import DETACHED_EXIT_VAR, RESTART_VAR

from ..conftest import REPO, wait_until
from .conftest import run_client
from .gap_sentinel import gap_sentinel

pytestmark = pytest.mark.e2e

FLOOD = 5000  # concurrent calls; 2,000 were fine before, 5,000 cut the agent off
RESTARTS = 5
# The runtime's own reconnect waits 1-2 s after the first drop, then doubles
# (2-4, 4-8, 8-16, 16-32 s): by the fifth restart it cannot be back within this.
BACK_WITHIN = 12.0


def serving(nodes: LocalNodes, role: str = "agent") -> bool:
    return nodes.ready_file(role).exists()


def local_status(nodes: LocalNodes) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "persistent_agent.ops.admin"]
    for option, value in (
        ("--config-dir", nodes.config_dir),
        ("--data-dir", nodes.data_dir),
        ("--run-dir", nodes.run_dir),
    ):
        argv += [option, str(value)]
    return subprocess.run([*argv, "local-status"], capture_output=True, text=True, check=False)


def test_health_follows_the_link_and_each_sentinel_restart_gets_the_agent_back(
    nodes: LocalNodes,
) -> None:
    """Detached, the agent stops reporting ready; after each of 5 sentinel restarts it is
    attached again (same process) within a deadline the runtime's back-off cannot meet."""
    nodes.start_all()
    pid = nodes.pid("agent")
    for restart in range(1, RESTARTS + 1):
        nodes.stop("sentinel")
        wait_until(lambda: not serving(nodes), "the agent to stop reporting ready", timeout=30)
        if restart == 1:
            status = local_status(nodes)
            assert status.returncode == 1
            assert f"agent: running, pid {pid}, NOT serving" in status.stdout
        nodes.start("sentinel")
        wait_until(
            lambda: serving(nodes), f"the agent back after restart {restart}", timeout=BACK_WITHIN
        )
    assert nodes.pid("agent") == pid
    status = local_status(nodes)
    assert (status.returncode, status.stdout.splitlines()[-1]) == (
        0,
        f"agent: running, pid {pid}, serving",
    )
    result = run_client(nodes)
    assert result.returncode == 0, result.stderr
    log = nodes.log_file("agent").read_text()
    assert log.count("attached to the sentinel again") == RESTARTS


def test_an_agent_refused_by_a_ready_sentinel_restarts_in_place(nodes: LocalNodes) -> None:
    """Detached from a sentinel that answers ready but refuses the attach, the agent gives
    up after PERSISTENT_AGENT_DETACHED_EXIT_SECONDS and, locally, restarts in place."""
    nodes.extra_env[DETACHED_EXIT_VAR] = "1"
    nodes.start_all()
    pid = nodes.pid("agent")
    nodes.stop("sentinel")
    with gap_sentinel(nodes, ready=True):
        wait_until(
            lambda: "restarting in place" in nodes.log_file("agent").read_text(),
            "the agent to restart",
        )
    nodes.start("sentinel")
    wait_until(lambda: serving(nodes), "the restarted agent to attach")
    assert nodes.pid("agent") == pid
    assert "although it is ready (last failure: InvalidStatus)" in (
        nodes.log_file("agent").read_text()
    )
    assert run_client(nodes).returncode == 0


def test_under_a_supervisor_the_agent_exits_69_for_it_to_restart(nodes: LocalNodes) -> None:
    """Without the local launcher's in-place restart (compose), the agent exits with 69."""
    nodes.extra_env.update({DETACHED_EXIT_VAR: "1", RESTART_VAR: ""})
    nodes.start_all()
    nodes.stop("sentinel")
    with gap_sentinel(nodes, ready=True):
        assert nodes.wait("agent", timeout=120) == 69
    assert "persistent-agent: error: not attached to wss://" in nodes.last_line("agent")


def test_a_client_waits_for_a_sentinel_that_is_still_starting(nodes: LocalNodes) -> None:
    """A handshake answered 403 while the sentinel's health check is not there yet is
    retried, and the call is served once the sentinel and agent are up."""
    argv, env = nodes.client_command()
    env["CLIENT_TIMEOUT_SECONDS"] = "120"
    nodes.start("issuer")  # the client's token comes first
    with gap_sentinel(nodes) as gap:
        client = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_until(lambda: gap.handshakes >= 2 or client.poll() is not None, "a second try")
    nodes.start_all()
    out, err = client.communicate(timeout=180)
    assert client.returncode == 0, err.decode()
    assert out.decode().splitlines()[0] == "Previous state: null"
    assert "not reachable yet" in err.decode()


def test_a_client_refused_by_a_ready_sentinel_fails_at_once_saying_so(nodes: LocalNodes) -> None:
    """A 403 from a sentinel whose health check says ready is a refusal: one line, no retry,
    and not labelled as the agent's answer."""
    nodes.start("issuer")  # the client's token comes first
    with gap_sentinel(nodes, ready=True) as refusing:
        result = run_client(nodes, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"client: error: the sentinel at {nodes.admission_url()} refused the connection "
        "(HTTP 403); it is up and ready for attaches, so check the client's credentials "
        "and address"
    )
    assert refusing.handshakes == 1
    assert "answered" not in result.stderr


def flood(nodes: LocalNodes, calls: int) -> dict[str, int]:
    """How *calls* concurrent store_value calls over one session ended (30 s each at most)."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.e2e.driver", "flood", f"{calls} 30"],
        cwd=REPO,
        env=nodes.env("client"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    ends: dict[str, int] = json.loads(result.stdout.strip().splitlines()[-1])["ends"]
    return ends


def test_a_flood_of_calls_each_ends_in_time_and_the_agent_stays_attached(
    nodes: LocalNodes,
) -> None:
    """5,000 concurrent calls over one session (a client with the runtime's default flow
    control): each is served or refused as overloaded within the client's 30 s, the agent's
    link never drops, and the next call is served."""
    nodes.start_all()
    pid = nodes.pid("agent")
    ends = flood(nodes, FLOOD)
    assert ends["served"] + ends["overloaded"] == FLOOD, ends
    assert ends["served"] > 0, ends
    assert nodes.pid("agent") == pid
    assert serving(nodes)
    assert "link to the sentinel is down" not in nodes.log_file("agent").read_text()
    after = run_client(nodes)
    assert after.returncode == 0, after.stderr


def test_calls_that_waited_too_long_in_line_are_refused_as_overloaded(nodes: LocalNodes) -> None:
    """With PERSISTENT_AGENT_MAX_WAIT_SECONDS tiny, a burst is part served, part refused
    with the overload error (nothing else), and the agent goes on serving."""
    nodes.extra_env[MAX_WAIT_VAR] = "0.05"
    nodes.start_all()
    ends = flood(nodes, 1000)
    assert set(ends) == {"served", "overloaded"}, ends
    assert ends["served"] > 0 and ends["overloaded"] > 0, ends
    assert serving(nodes)
    assert run_client(nodes).returncode == 0
