"""verify and inspect: every database read with its node's key, nothing written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from persistent_agent.ops import admin
from persistent_agent.ops.node_keys import source_of
from persistent_agent.storage import database, layout
from persistent_agent.storage.layout import all_databases

from ..conftest import ROWS, checksums, running
from ..data_keys import data_key, node_key_text, set_node_key
from ..storage import child


def _admin(tree: Path, *argv: str) -> int:
    return admin.main(
        ["--config-dir", str(tree / "config"), "--data-dir", str(tree / "data"), *argv]
    )


def test_verify_reports_one_ok_line_per_file(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A sound tree: one `ok` line per database with its entry count, exit 0."""
    assert _admin(tree, "verify") == 0
    out = capsys.readouterr().out
    assert out.count("ok    ") == 6
    assert f"({ROWS} entries)" in out
    assert "verify: 6 ok, 0 failed" in out


def test_tampered_byte_fails_verify_naming_the_file_and_leaves_it(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One flipped byte inside a page: verify names the file, exits 1, changes nothing."""
    target = tree / "data" / "agent" / "agent_state_encrypted_value.db"
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    target.write_bytes(bytes(raw))
    before = checksums(tree / "data")
    assert _admin(tree, "verify") == 1
    out = capsys.readouterr().out
    assert f"FAIL  {target}" in out
    assert "verify: 5 ok, 1 failed" in out
    assert checksums(tree / "data") == before


def test_wrong_key_fails_verify(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With another key in the agent's config, the agent's files fail (its keyring was made
    under the other key, and each line says so), the sentinel's pass."""
    set_node_key(tree / "config", "agent", "cd" * 32)
    assert _admin(tree, "verify") == 1
    out = capsys.readouterr().out
    assert "verify: 3 ok, 3 failed" in out
    assert out.count("keyring.json was made under master key") == 3


def test_inspect_prints_values_and_writes_nothing(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """inspect shows namespaces, keys and values; the data directory is byte-identical."""
    before = checksums(tree / "data")
    assert _admin(tree, "inspect") == 0
    out = capsys.readouterr().out
    assert "namespace agent_state" in out
    assert 'agent-agent_state-0\t{"text":"SECRET-agent-0"}' in out
    assert out.count("\n== ") + 1 == len(all_databases(tree / "data"))
    assert checksums(tree / "data") == before


def _agent_db(tree: Path, namespace: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The agent's database of *namespace*, with its key where tests.storage.child looks."""
    key = node_key_text(tree / "config", "agent")
    assert key is not None
    monkeypatch.setenv("FAME_STORAGE_MASTER_KEY", key)
    return tree / "data" / "agent" / layout.file_name(namespace)


@pytest.mark.parametrize("right_key", [True, False], ids=["right-key", "wrong-key"])
def test_verify_and_inspect_after_a_crash_change_no_file(
    tree: Path, right_key: bool, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a node was killed mid-write, verify and inspect change no byte of any file."""
    target = _agent_db(tree, "agent_state", monkeypatch)
    with running(child.argv("crash", target)) as proc:  # returns once "written" is printed
        proc.kill()
        proc.wait()
    assert all(p.exists() for p in layout.sidecars(target))
    if not right_key:
        set_node_key(tree / "config", "agent", "cd" * 32)
    before = checksums(tree / "data")
    if right_key:
        assert _admin(tree, "verify") == 0
        assert f"ok    {target} ({ROWS + child.CRASH_ROWS} entries)" in capsys.readouterr().out
        assert _admin(tree, "inspect") == 0
        assert 'crash-0\t{"text":"crash"}' in capsys.readouterr().out
    else:
        assert _admin(tree, "verify") == 1
        assert f"FAIL  {target}: the keyring" in capsys.readouterr().out
        assert _admin(tree, "inspect") == 2
        assert "was made under master key" in capsys.readouterr().err
    assert checksums(tree / "data") == before


def test_verify_beside_a_live_writer_is_ok_and_the_writer_keeps_working(
    tree: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify and inspect beside a process that keeps writing pass; its later writes are read."""
    target = _agent_db(tree, "extra", monkeypatch)
    with running(child.argv("write", target)) as writer:  # returns once "writing" is printed
        assert writer.stdin is not None and writer.stdout is not None
        assert _admin(tree, "verify") == 0
        assert "verify: 6 ok, 0 failed" in capsys.readouterr().out
        assert _admin(tree, "inspect") == 0
        assert all(p.exists() for p in layout.sidecars(target))
        writer.stdin.write("after-verify\n")
        writer.stdin.flush()
        assert writer.stdout.readline() == "wrote after-verify\n"
        key = data_key(target, source_of(tree / "config", "agent"))
        with database.opened(target, key, read_only=True) as conn:
            assert ("after-verify", '{"text":"after"}') in database.rows(conn)


@pytest.mark.parametrize("size", [0, 1000], ids=["empty", "cut-short"])
def test_empty_or_cut_short_file_fails_verify_and_inspect_and_is_left(
    tree: Path, size: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty or cut-short database fails verify (exit 1) and inspect as damaged, untouched."""
    target = tree / "data" / "agent" / layout.file_name("agent_state")
    os.truncate(target, size)
    before = checksums(tree / "data")
    assert _admin(tree, "verify") == 1
    out = capsys.readouterr().out
    assert f"FAIL  {target}: {target} is damaged" in out
    assert "verify: 5 ok, 1 failed" in out
    assert _admin(tree, "inspect") == 2
    assert f"{target} is damaged" in capsys.readouterr().err
    assert checksums(tree / "data") == before


def test_verify_flags_files_that_are_not_ours_and_leaves_them(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plaintext database from another profile and a leftover temp file fail verify
    by name; the encrypted databases still pass, and nothing is touched."""
    import sqlite3

    plain = tree / "data" / "agent" / "agent_state.db"
    with sqlite3.connect(plain) as conn:
        conn.execute("CREATE TABLE kv (key TEXT, value TEXT)")
    conn.close()
    leftover = tree / "data" / "sentinel" / ("x" + layout.DB_SUFFIX + ".rekey")
    leftover.write_bytes(b"half a file")
    before = checksums(tree / "data")
    assert _admin(tree, "verify") == 1
    out = capsys.readouterr().out
    assert f"FAIL  {plain}: not a file of persistent-agent (left as it is)" in out
    assert f"FAIL  {leftover}: not a file of persistent-agent" in out
    assert out.count("ok    ") == 6
    assert "verify: 6 ok, 2 failed" in out
    assert checksums(tree / "data") == before


@pytest.mark.parametrize(
    ("name", "ours"),
    [
        ("agent_state_encrypted_value.db", True),
        ("agent_state_encrypted_value.db-wal", True),
        ("agent_state_encrypted_value.db-shm", True),
        ("agent_state_encrypted_value.db-journal", True),
        (layout.LOCK_FILE, True),
        ("agent_state.db", False),
        ("agent_state_encrypted_value.db.rekey", False),
        ("agent_state_encrypted_value.db.restore", False),
        ("notes.txt", False),
    ],
)
def test_what_counts_as_ours(name: str, ours: bool) -> None:
    """The list of our files is one rule in storage.layout: databases, sidecars, the lock."""
    assert layout.is_ours(name) is ours
