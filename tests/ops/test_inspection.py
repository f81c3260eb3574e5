"""verify and inspect: every database read with its node's key, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from persistent_agent.ops import admin
from persistent_agent.storage.layout import all_databases

from ..conftest import ROWS, checksums


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
    """With another key in the agent's config, the agent's files fail, the sentinel's pass."""
    from persistent_agent.ops import config_files

    config_files.set_key(tree / "config" / ".env.agent", "cd" * 32)
    assert _admin(tree, "verify") == 1
    out = capsys.readouterr().out
    assert "verify: 3 ok, 3 failed" in out
    assert "cannot decrypt" in out


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
