"""Proof under faults and load, with real sentinel and agent processes.

Crashes (kill -9 during writes), tampering, concurrent clients, bad input,
bad settings, and the master key's absence from every log.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from persistent_agent.demo.local_nodes import LocalNodes
from persistent_agent.errors import LocalNodeError
from persistent_agent.node.agent import STATE_NAMESPACE
from persistent_agent.ops import config_files, inspection
from persistent_agent.ops.node_keys import source_of
from persistent_agent.storage import database, layout

from ..conftest import REPO, checksums, wait_until
from ..data_keys import data_key, node_key_text
from .conftest import attach_socket, read_lines

pytestmark = pytest.mark.e2e


def driver(nodes: LocalNodes, *args: str, timeout: float = 60) -> Any:
    """Run one driver command and return its (last) JSON line."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.e2e.driver", *args],
        cwd=REPO,
        env=nodes.env("client"),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _admin(nodes: LocalNodes, backups: Path) -> list[str]:
    """The admin CLI's command line for *nodes*' config and data."""
    return [
        *(sys.executable, "-m", "persistent_agent.ops.admin"),
        *("--config-dir", str(nodes.config_dir), "--data-dir", str(nodes.data_dir)),
        *("--backups-dir", str(backups)),
    ]


def verify_ok(nodes: LocalNodes) -> None:
    reports = inspection.verify(nodes.config_dir, nodes.data_dir)
    assert reports
    assert [r.line() for r in reports if r.problem] == []


def crash_rounds() -> int:
    """How many kill -9 rounds: PERSISTENT_AGENT_CRASH_ROUNDS (default 20), so a
    quick run can take fewer and a soak many more, with the same crash points."""
    text = os.environ.get("PERSISTENT_AGENT_CRASH_ROUNDS", "").strip() or "20"
    if not text.isdigit() or int(text) < 1:
        pytest.fail(f"PERSISTENT_AGENT_CRASH_ROUNDS must be a whole number >= 1, not {text!r}")
    return int(text)


def test_kill_9_during_writes_loses_no_acknowledged_value(nodes: LocalNodes) -> None:
    """20 times (PERSISTENT_AGENT_CRASH_ROUNDS): kill -9 the agent mid-stream; the
    last acknowledged value survives."""
    rounds = crash_rounds()
    nodes.start_all()
    rng = random.Random(7)  # noqa: S311 - reproducible crash points, not crypto
    next_value, crashes, acked_total, lost = 0, 0, 0, 0
    for _ in range(rounds):
        with subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.driver", "stream", str(next_value)],
            cwd=REPO,
            env=nodes.env("client"),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        ) as stream:
            assert stream.stdout is not None
            # Crash after a varying number of acknowledged writes, however
            # long the machine takes to get there.
            acked = [int(v) for v in read_lines(stream.stdout, rng.randint(1, 40), "acks")]
            assert nodes.kill("agent")
            crashes += 1
            stream.send_signal(signal.SIGKILL)
            rest, _ = stream.communicate()
        acked += [int(line) for line in rest.split()]
        acked_total += len(acked)
        verify_ok(nodes)  # straight after the crash, WAL and all
        nodes.start("agent")
        stored = int(driver(nodes, "retrieve")["value"])
        lost += stored < acked[-1]
        assert stored >= acked[-1], f"acknowledged {acked[-1]} but read back {stored}"
        assert stored <= acked[-1] + 1  # at most the one write in flight
        next_value = stored + 1
    verify_ok(nodes)
    print(
        f"\ncrash test: {crashes} kill -9 survived, {acked_total} acknowledged writes, {lost} lost"
    )


def test_tampered_database_stops_the_agent_and_is_left_as_it_was(nodes: LocalNodes) -> None:
    """One flipped byte in the agent's state file: startup fails naming it; file untouched."""
    nodes.start_all()
    driver(nodes, "store", '"before tamper"')
    nodes.stop("agent")
    target = nodes.data_dir / "agent" / layout.file_name(STATE_NAMESPACE)
    raw = bytearray(target.read_bytes())
    raw[len(raw) - 100] ^= 0x40
    target.write_bytes(bytes(raw))
    before = checksums(nodes.data_dir / "agent")
    with pytest.raises(LocalNodeError, match=str(target)):
        nodes.start("agent")
    reports = inspection.verify(nodes.config_dir, nodes.data_dir)
    assert [r.path for r in reports if r.problem] == [target]
    assert checksums(nodes.data_dir / "agent") == before


def test_eight_clients_with_fifty_concurrent_writes_each(nodes: LocalNodes) -> None:
    """8 processes x 50 concurrent store_value: no errors, the final value is an acked one."""
    nodes.start_all()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.driver", "burst", "50"],
            cwd=REPO,
            env=nodes.env("client"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    acked: list[str] = []
    errors: list[str] = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        doc = json.loads(out.strip().splitlines()[-1])
        acked += doc["acked"]
        errors += doc["errors"]
    assert errors == []
    assert len(acked) == 400
    final = driver(nodes, "retrieve")["value"]
    assert final in acked
    verify_ok(nodes)
    print(
        f"\nconcurrency: 8 clients x 50 concurrent calls, {len(acked)} acknowledged, "
        f"{len(errors)} errors, final value {final} is one of them"
    )


def test_bad_input_is_stored_faithfully_or_refused_cleanly(
    nodes: LocalNodes, tmp_path: Path
) -> None:
    """Non-string, empty, non-ASCII and 5 MB values; the previous state survives refusals."""
    nodes.start_all()
    assert driver(nodes, "store", '"first"')["ok"]["value"] == "first"

    refused = driver(nodes, "store", "123")
    assert refused["error"] == "store_value expects a string, got int"
    assert driver(nodes, "retrieve")["value"] == "first"

    text = 'héllo ☃ 日本語 \U0001f600 "quoted" \\ back'
    assert driver(nodes, "store", json.dumps(text))["ok"]["value"] == text
    assert driver(nodes, "retrieve")["value"] == text

    big = tmp_path / "big.json"
    big.write_text(json.dumps("x" * 5_000_000))
    too_big = driver(nodes, "store", f"@{big}")
    assert "exceeds maximum" in too_big["error"]
    assert driver(nodes, "retrieve")["value"] == text

    assert driver(nodes, "store", '""')["ok"]["value"] == ""
    assert driver(nodes, "retrieve")["value"] == ""


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FAME_STORAGE_PROFILE": "bogus"}, "'bogus' is not a storage profile"),
        (
            {"FAME_STORAGE_MASTER_KEY": "tooshort", "FAME_STORAGE_MASTER_KEY_FILE": ""},
            "must be 64 hex characters",
        ),
        ({"FAME_STORAGE_MASTER_KEY_FILE": ""}, "FAME_STORAGE_MASTER_KEY is not set"),
        ({"FAME_STORAGE_MASTER_KEY_FILE": "/nonexistent/master.key"}, "no such file"),
        (
            {"FAME_STORAGE_MASTER_KEY": "ab" * 32},
            "both FAME_STORAGE_MASTER_KEY and FAME_STORAGE_MASTER_KEY_FILE are set",
        ),
        ({"FAME_STORAGE_DB_DIRECTORY": "/proc/version/db"}, "FAME_STORAGE_DB_DIRECTORY"),
        ({"FAME_STORAGE_MASTER_KEY_NEXT": "ab" * 32}, "key rotation was interrupted"),
    ],
)
def test_bad_settings_are_one_clear_line(
    nodes: LocalNodes, env: dict[str, str], message: str
) -> None:
    """Bad storage settings: the agent exits non-zero with one line, no traceback."""
    nodes.extra_env.update(env)
    with pytest.raises(LocalNodeError, match=message):
        nodes.start("agent")
    log = nodes.log_file("agent").read_text().strip().splitlines()
    assert len(log) == 1
    assert log[0].startswith("persistent-agent: error: ")


def test_newer_state_version_stops_the_agent_untouched(nodes: LocalNodes) -> None:
    """State from an unknown newer schema: the agent refuses to start and keeps it."""
    path = nodes.data_dir / "agent" / layout.file_name(STATE_NAMESPACE)
    key = data_key(path, source_of(nodes.config_dir, "agent"))
    with database.opened(path, key) as conn:
        conn.execute(
            "INSERT INTO kv (key, value) VALUES ('state', ?)",
            ('{"schema_version": 9, "value": "from the future"}',),
        )
    before = checksums(nodes.data_dir / "agent")[path.name]
    nodes.start("sentinel")
    with pytest.raises(LocalNodeError, match="schema_version 9"):
        nodes.start("agent")
    assert checksums(nodes.data_dir / "agent")[path.name] == before


def test_master_key_never_appears_in_logs_or_tool_output(nodes: LocalNodes) -> None:
    """Logs, client output (verbose too) and every admin command are free of the key."""
    key = node_key_text(nodes.config_dir, "agent")
    assert key is not None
    nodes.extra_env["FAME_LOG_LEVEL"] = "debug"
    nodes.start_all()
    argv, env = nodes.client_command(verbose=True)
    outputs = [subprocess.run(argv, env=env, capture_output=True, text=True, check=True)]
    admin = _admin(nodes, nodes.run_dir / "backups")
    for command in (["verify"], ["inspect"], ["backup"], ["init"]):
        outputs.append(
            subprocess.run([*admin, *command], capture_output=True, text=True, check=True)
        )
    nodes.stop_all()
    outputs.append(
        subprocess.run([*admin, "rotate-key"], capture_output=True, text=True, check=True)
    )
    texts = [o.stdout + o.stderr for o in outputs]
    texts += [p.read_text() for p in nodes.run_dir.glob("*.log")]
    assert "Updated state" in texts[0]
    assert len(texts[-1]) > 0
    assert all(key not in text for text in texts)
    assert all(key.upper() not in text for text in texts)


def test_key_bearing_files_and_databases_are_owner_only(nodes: LocalNodes) -> None:
    """Generated config, databases, their sidecars and backups are all 0600."""
    nodes.start_all()
    subprocess.run(
        [*_admin(nodes, nodes.run_dir / "bk"), "backup"],
        check=True,
        capture_output=True,
    )
    files = [layout.env_file(nodes.config_dir, r) for r in config_files.ROLES]
    files += [p for p in nodes.data_dir.rglob("*") if p.is_file()]
    files += [p for p in (nodes.run_dir / "bk").rglob("*") if p.is_file()]
    assert any(p.name.endswith("-wal") for p in files)
    loose = [
        f"{p} {oct(stat.S_IMODE(p.stat().st_mode))}"
        for p in files
        if stat.S_IMODE(p.stat().st_mode) != 0o600
    ]
    assert loose == []
    assert os.stat(nodes.data_dir).st_mode & 0o777 == 0o700


def test_a_second_agent_on_the_same_data_directory_stops_at_startup(nodes: LocalNodes) -> None:
    """A second agent on data/agent exits with one line naming the directory and the holder;
    the first one keeps serving its value, and its files are not touched."""
    nodes.start_all()
    driver(nodes, "store", '"kept"')
    second = LocalNodes(
        nodes.config_dir,
        nodes.data_dir,
        nodes.run_dir / "second",
        port=nodes.port,
        issuer_port=nodes.issuer_port,
    )
    with pytest.raises(LocalNodeError) as info:
        second.start("agent")
    agent_dir = (nodes.data_dir / "agent").resolve()
    assert f"{agent_dir} is in use by pid {nodes.pid('agent')} on " in str(info.value)
    log = second.log_file("agent").read_text().strip().splitlines()
    assert len(log) == 1
    assert log[0].startswith("persistent-agent: error: ")
    assert driver(nodes, "retrieve")["value"] == "kept"


def test_a_port_in_use_is_one_line(nodes: LocalNodes) -> None:
    """Another program on the sentinel's port: one line naming the address, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", nodes.port))
        taken.listen()
        with pytest.raises(LocalNodeError, match=f"cannot listen on 127.0.0.1:{nodes.port}"):
            nodes.start("sentinel")
    log = nodes.log_file("sentinel").read_text().strip().splitlines()
    assert log == [
        f"sentinel: error: cannot listen on 127.0.0.1:{nodes.port}: already in use; stop what "
        "uses it, or choose another port with SENTINEL_PORT=<port>"
    ]


def test_a_failed_agent_start_leaves_no_sentinel_behind(nodes: LocalNodes) -> None:
    """local-start whose agent cannot start (bad key) stops the sentinel it started."""
    nodes.extra_env["FAME_STORAGE_MASTER_KEY_FILE"] = "/nonexistent/master.key"
    with pytest.raises(LocalNodeError, match="no such file"):
        nodes.start_all()
    assert nodes.pid("sentinel") is None
    assert nodes.pid("agent") is None


def test_exported_node_settings_do_not_leak_into_the_nodes(
    nodes: LocalNodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exported FAME_SHOW_ENVELOPES or FAME_STORAGE_PROFILE=sqlite in the shell reaches
    no node: no stored value in the logs, no plaintext database; run/ is owner-only."""
    monkeypatch.setenv("FAME_SHOW_ENVELOPES", "true")
    monkeypatch.setenv("FAME_STORAGE_PROFILE", "sqlite")
    monkeypatch.setenv("FAME_LOG_LEVEL", "debug")
    nodes.start_all()
    assert driver(nodes, "store", '"LEAK-CANARY-4242"')["ok"]["value"] == "LEAK-CANARY-4242"
    nodes.stop_all()
    logs = "".join(p.read_text() for p in nodes.run_dir.glob("*.log"))
    assert "LEAK-CANARY-4242" not in logs
    files = [p for p in nodes.data_dir.rglob("*") if p.is_file()]
    assert all(layout.is_ours(p.name) for p in files)
    assert stat.S_IMODE(nodes.run_dir.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in nodes.run_dir.glob("*.log")} == {0o600}


def test_a_node_refuses_a_key_file_others_can_read(nodes: LocalNodes) -> None:
    """The key file made group-readable: the agent stops with one line naming it."""
    key_file = config_files.key_file(nodes.config_dir)
    key_file.chmod(0o644)
    with pytest.raises(LocalNodeError, match="readable by group or others"):
        nodes.start("agent")
    log = nodes.log_file("agent").read_text().strip().splitlines()
    assert len(log) == 1
    assert str(key_file.resolve()) in log[0]


def test_a_key_inline_in_an_env_file_others_can_read_is_refused(nodes: LocalNodes) -> None:
    """The seed's way (the key inline in the env file): that file group-readable is refused."""
    agent_env = layout.env_file(nodes.config_dir, "agent")
    key = config_files.node_keys(nodes.config_dir)["agent"]
    config_files.edit_vars(
        agent_env, {"FAME_STORAGE_MASTER_KEY_FILE": None, "FAME_STORAGE_MASTER_KEY": key}
    )
    agent_env.chmod(0o644)
    with pytest.raises(LocalNodeError, match="readable by group or others"):
        nodes.start("agent")
    assert str(agent_env.resolve()) in nodes.log_file("agent").read_text()


def _closed_by_sentinel(nodes: LocalNodes, frame: bytes) -> int | None:
    """Send *frame* as it is to the attach endpoint; the code the sentinel closed with."""
    with attach_socket(nodes, max_size=None) as ws:
        ws.send(frame)
        with pytest.raises(ConnectionClosed) as closed:
            while True:  # what a stranger may be sent first (nothing, today)
                ws.recv(timeout=60)  # a deadline for a broken run, not a measurement
    return closed.value.rcvd.code if closed.value.rcvd else None


@pytest.mark.parametrize("level", ["warning", "trace"])
def test_stored_values_never_reach_the_logs_under_faults(nodes: LocalNodes, level: str) -> None:
    """At the default level and at the most verbose (trace, which logs everything the
    levels between log too): a stored marker value, sent through an agent killed with -9
    mid-call, a dead agent, a sentinel restart and a malformed frame, is in no log; the
    malformed frame's length is, and at trace the envelopes' identifiers are."""
    marker = f"TOPSECRET-{os.getpid()}-{level}"
    nodes.extra_env["FAME_LOG_LEVEL"] = level
    nodes.start_all()
    with subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.session_client"],
        cwd=REPO,
        env=nodes.env("client"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as session:
        assert session.stdin is not None and session.stdout is not None

        def send(value: str) -> None:
            assert session.stdin is not None
            session.stdin.write(f"{value}\n")
            session.stdin.flush()

        def reply_to(value: str) -> Any:
            """The reply to *value*, skipping those to earlier calls (a lost one never comes)."""
            assert session.stdout is not None
            while (doc := json.loads(read_lines(session.stdout, 1, value)[0]))["value"] != value:
                pass
            return doc

        read_lines(session.stdout, 1, "the session")
        send(f"{marker}-1")
        assert reply_to(f"{marker}-1")["ok"] == {"value": f"{marker}-1"}
        send(f"{marker}-2")
        nodes.kill("agent")  # mid-call
        send(f"{marker}-3")
        assert "error" in reply_to(f"{marker}-3")  # forwarded to a dead agent, or refused
        nodes.start("agent")
        session.stdin.close()
    nodes.stop("sentinel")
    nodes.start("sentinel")
    driver(nodes, "store", json.dumps(f"{marker}-4"))
    malformed = f'{{"frame": {{"type": "Data", "payload": "{marker}-5'.encode()
    with attach_socket(nodes) as ws:
        ws.send(malformed)
        sentinel_log = nodes.log_file("sentinel")
        wait_until(lambda: "Invalid envelope" in sentinel_log.read_text(), "the malformed frame")
    nodes.stop_all()

    logs = {p.name: p.read_text(errors="replace") for p in nodes.run_dir.glob("*.log")}
    assert [name for name, text in logs.items() if marker in text] == []
    assert f"Invalid envelope: <{len(malformed)} bytes>" in logs["sentinel.log"]
    if level == "trace":  # the envelopes the runtime dumps at trace: identifiers kept
        assert "connector_received_envelope" in logs["agent.log"]
        assert '"to": "storage@fame.fabric"' in logs["agent.log"]


def test_the_sentinel_closes_a_frame_over_the_envelope_limit(nodes: LocalNodes) -> None:
    """A 1 MiB websocket frame is refused (closed, 1009 message too big) before the
    sentinel reads it, and not logged; calls go on being served."""
    nodes.start_all()
    frame = b"OVERSIZED-" * (2**20 // 10)
    assert _closed_by_sentinel(nodes, frame) == 1009
    assert driver(nodes, "store", '"still served"')["ok"]["value"] == "still served"
    nodes.stop_all()
    assert "OVERSIZED" not in nodes.log_file("sentinel").read_text(errors="replace")
