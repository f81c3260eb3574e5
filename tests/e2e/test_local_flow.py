"""The seed's user flow with real processes: store, restart, read back."""

from __future__ import annotations

import re
import shutil
import subprocess
import time

import pytest

from persistent_agent.demo.local_nodes import LocalNodes
from persistent_agent.errors import LocalNodeError
from persistent_agent.keys.master_key import generate_master_key
from persistent_agent.storage.layout import env_file

from ..conftest import checksums, plaintext_hits
from ..data_keys import set_node_key
from .conftest import read_lines, run_client, stored_value

pytestmark = pytest.mark.e2e

SEED_LISTING = {
    "agent/__binding_store_encrypted_value.db",
    "agent/__keystore_encrypted_value.db",
    "agent/__node_meta_encrypted_value.db",
    "agent/agent_state_encrypted_value.db",
    "sentinel/__binding_store_encrypted_value.db",
    "sentinel/__keystore_encrypted_value.db",
    "sentinel/__node_meta_encrypted_value.db",
    "sentinel/__route_store_encrypted_value.db",
}
# The Python runtime's delivery tracker keeps three more stores per node.
PYTHON_RUNTIME_EXTRAS = {
    f"{node}/__delivery_{box}_encrypted_value.db"
    for node in ("agent", "sentinel")
    for box in ("inbox", "inbox_dlq", "outbox")
}


def test_first_run_prints_null_then_the_stored_value(nodes: LocalNodes) -> None:
    """First ever run: `Previous state: null`, then `Updated state: {"value":"<ms>"}`."""
    nodes.start_all()
    result = run_client(nodes)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Previous state: null"
    assert re.fullmatch(r'Updated state: \{"value":"\d{13}"\}', lines[1])


def test_value_survives_agent_and_sentinel_restarts(nodes: LocalNodes) -> None:
    """After restarting the agent, and then the sentinel, the last value is read back."""
    nodes.start_all()
    first = stored_value(run_client(nodes).stdout)
    nodes.stop("agent")
    nodes.start("agent")
    second = run_client(nodes).stdout
    assert second.splitlines()[0] == f"Previous state: {first}"
    nodes.stop_all()
    nodes.start_all()
    third = run_client(nodes).stdout
    assert third.splitlines()[0] == f"Previous state: {stored_value(second)}"


def test_data_layout_matches_the_seed_and_holds_no_plaintext(nodes: LocalNodes) -> None:
    """`find data` shows the seed's files (plus the runtime's delivery stores), all opaque."""
    nodes.start_all()
    value = stored_value(run_client(nodes).stdout)
    nodes.stop_all()
    files = {str(p.relative_to(nodes.data_dir)) for p in nodes.data_dir.rglob("*.db")}
    assert files == SEED_LISTING | PYTHON_RUNTIME_EXTRAS
    needles = [
        b"SQLite format 3",
        b"storage@fame.fabric",
        b"CREATE TABLE",
        value.encode(),
        value.split('"')[3].encode(),
    ]
    assert plaintext_hits(nodes.data_dir, needles) == []


def test_wrong_key_fails_cleanly_and_the_right_key_still_reads(nodes: LocalNodes) -> None:
    """A wrong key stops the agent with one line naming file and variable; no byte changes."""
    nodes.start_all()
    value = stored_value(run_client(nodes).stdout)
    nodes.stop("agent")
    agent_env = env_file(nodes.config_dir, "agent")
    good = agent_env.read_text()
    set_node_key(nodes.config_dir, "agent", generate_master_key())
    before = checksums(nodes.data_dir / "agent")

    with pytest.raises(LocalNodeError) as info:
        nodes.start("agent")
    message = str(info.value)
    assert "exited with code 2" in message
    assert "FAME_STORAGE_MASTER_KEY" in message
    assert "keyring.json was made under master key" in message
    log = nodes.log_file("agent").read_text()
    assert "Traceback" not in log
    assert checksums(nodes.data_dir / "agent") == before
    assert not list((nodes.data_dir / "agent").glob("*corrupt*"))

    agent_env.write_text(good)
    nodes.start("agent")
    assert run_client(nodes).stdout.splitlines()[0] == f"Previous state: {value}"


def test_client_with_nothing_running_fails_at_once_naming_the_target(
    nodes: LocalNodes,
) -> None:
    """No sentinel: one line saying nothing runs and what starts it, long before the deadline."""
    started = time.monotonic()
    result = run_client(nodes, timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"client: error: nothing is running at {nodes.issuer_url()}")
    assert "(connection refused); start it with `make local-start`" in lines[0]
    # It did not retry: the 120 s budget is far from used up.
    assert elapsed < 60


def test_client_with_an_unknown_sentinel_host_fails_at_once(nodes: LocalNodes) -> None:
    """`sentinel` does not resolve outside compose: said at once, with the target to run."""
    argv, env = nodes.client_command()
    env["FAME_DIRECT_ADMISSION_URL"] = "wss://sentinel.invalid:8000/fame/v1/attach/ws/downstream"
    # The client asks the token issuer first: outside compose it is unknown too.
    env["FAME_ADMISSION_TOKEN_URL"] = "https://issuer.invalid:8443/oauth/token"  # noqa: S105
    env["CLIENT_TIMEOUT_SECONDS"] = "120"
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 2
    assert "nothing is running at https://issuer.invalid:8443 (unknown host)" in result.stderr


def _start_client_and_wait_until_it_retries(
    nodes: LocalNodes,
) -> subprocess.Popen[str]:
    """A client whose first call found no agent: it said so and keeps retrying."""
    argv, env = nodes.client_command()
    env["CLIENT_TIMEOUT_SECONDS"] = "300"
    client = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert client.stderr is not None
    [note] = read_lines(client.stderr, 1, "the client's retry note")
    assert note.startswith("client: storage@fame.fabric is not reachable yet"), note
    assert client.poll() is None
    return client


def test_client_waits_for_a_late_agent(nodes: LocalNodes) -> None:
    """Sentinel up, agent not yet attached: the client retries and succeeds once it is."""
    nodes.start("sentinel")
    with _start_client_and_wait_until_it_retries(nodes) as client:
        nodes.start("agent")
        out, err = client.communicate(timeout=300)
    assert client.returncode == 0, err
    assert out.splitlines()[0] == "Previous state: null"


def test_client_without_agent_fails_in_bounded_time(nodes: LocalNodes) -> None:
    """Sentinel up but no agent attached: it retries, then one clear line at the deadline."""
    nodes.start("sentinel")
    result = run_client(nodes, timeout=20)
    assert result.returncode == 2
    note, *_, last = result.stderr.strip().splitlines()
    assert note.startswith("client: storage@fame.fabric is not reachable yet")
    assert last.startswith("client: error: no answer from storage@fame.fabric via ")
    assert "within 20s" in last
    assert "`make local-start` starts it" in last
    # What it retried: the sentinel's nack (reported in the note or the last line;
    # on a loaded machine an attach can also time out in between).
    assert "Unroutable" in result.stderr


def test_client_reports_an_error_reply_at_once(nodes: LocalNodes) -> None:
    """An agent without the demo's operations: "Method not found" at once, no retries."""
    nodes.start("sentinel")
    nodes.start("agent", module="tests.e2e.bare_agent")
    result = run_client(nodes, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "client: error: storage@fame.fabric answered: Method not found"
    ]


def test_client_uses_the_typescript_names_when_the_python_ones_are_not_found(
    nodes: LocalNodes,
) -> None:
    """An agent that knows only storeValue/retrieveValue (as the original's does): our
    client falls back to those names and prints the seed's chain, run after run."""
    nodes.start("sentinel")
    nodes.start("agent", module="tests.e2e.camel_agent")
    first, second = run_client(nodes), run_client(nodes)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert first.stdout.splitlines()[0] == "Previous state: null"
    assert second.stdout.splitlines()[0] == f"Previous state: {stored_value(first.stdout)}"
    assert first.stderr == second.stderr == ""


def test_missing_config_is_one_line(nodes: LocalNodes) -> None:
    """An agent without its env file exits with one line pointing at make init."""
    shutil.move(env_file(nodes.config_dir, "agent"), nodes.config_dir / "moved")
    with pytest.raises(LocalNodeError, match="make init"):
        nodes.start("agent")


def test_clients_started_together_all_succeed(nodes: LocalNodes) -> None:
    """Several clients at once from one host each get their own node id and answer."""
    nodes.start_all()
    argv, env = nodes.client_command()
    procs = [
        subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    results = [(*p.communicate(timeout=60), p.returncode) for p in procs]
    assert [code for _out, _err, code in results] == [0, 0, 0, 0], [r[1] for r in results]
    assert all("Updated state: " in out for out, _err, _code in results)


def test_client_rides_out_an_agent_restart(nodes: LocalNodes) -> None:
    """A client started while the agent is down succeeds once it is back."""
    nodes.start_all()
    first = stored_value(run_client(nodes).stdout)
    nodes.stop("agent")
    with _start_client_and_wait_until_it_retries(nodes) as client:
        nodes.start("agent")
        out, err = client.communicate(timeout=300)
    assert client.returncode == 0, err
    assert out.splitlines()[0] == f"Previous state: {first}"
