"""`make init`: generated config, the key's lifecycle, and owner-only files."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from persistent_agent.errors import ConfigError
from persistent_agent.keys.master_key import parse_master_key
from persistent_agent.ops import admin, config_files


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_all_files_with_one_valid_key(config_dir: Path, tmp_path: Path) -> None:
    """Sentinel and agent get the same valid key; the client needs none; all 0600."""
    result = config_files.init(config_dir, tmp_path / "data")
    assert result.key_source == "generated"
    sentinel = config_files.read_key(config_dir / ".env.sentinel")
    assert sentinel == config_files.read_key(config_dir / ".env.agent")
    parse_master_key(sentinel)
    assert config_files.read_key(config_dir / ".env.client") is None
    for role in config_files.ROLES:
        assert _mode(config_dir / f".env.{role}") == 0o600
    for d in ("data", "data/agent", "data/sentinel"):
        assert _mode(tmp_path / d) == 0o700


def test_init_is_idempotent_and_keeps_the_key(config_dir: Path, tmp_path: Path) -> None:
    """Running init again keeps the existing key and rewrites nothing."""
    config_files.init(config_dir, tmp_path / "data")
    keys = config_files.node_keys(config_dir)
    again = config_files.init(config_dir, tmp_path / "data")
    assert again.key_source == "kept"
    assert again.written == ()
    assert config_files.node_keys(config_dir) == keys


def test_init_restores_a_deleted_file_with_the_same_key(config_dir: Path, tmp_path: Path) -> None:
    """A missing env file is regenerated with the key the others hold."""
    config_files.init(config_dir, tmp_path / "data")
    key = config_files.read_key(config_dir / ".env.agent")
    (config_dir / ".env.sentinel").unlink()
    config_files.init(config_dir, tmp_path / "data")
    assert config_files.read_key(config_dir / ".env.sentinel") == key


def test_new_key_is_refused_while_encrypted_data_exists(config_dir: Path, tmp_path: Path) -> None:
    """--new-key would orphan existing databases, so it is refused; nothing changes."""
    data = tmp_path / "data"
    config_files.init(config_dir, data)
    keys = config_files.node_keys(config_dir)
    (data / "agent" / "agent_state_encrypted_value.db").write_bytes(b"\0" * 4096)
    with pytest.raises(ConfigError, match="rotate-key"):
        config_files.init(config_dir, data, new_key=True)
    assert config_files.node_keys(config_dir) == keys


def test_new_key_without_data_replaces_it_everywhere(config_dir: Path, tmp_path: Path) -> None:
    """With no data yet, --new-key writes a different key to both node files."""
    config_files.init(config_dir, tmp_path / "data")
    old = config_files.node_keys(config_dir)
    assert config_files.init(config_dir, tmp_path / "data", new_key=True).key_source == "replaced"
    new = config_files.node_keys(config_dir)
    assert new["agent"] == new["sentinel"]
    assert new["agent"] != old["agent"]


def test_each_node_may_keep_its_own_key(config_dir: Path, tmp_path: Path) -> None:
    """A per-node key set by hand survives init; neither file is overwritten."""
    config_files.init(config_dir, tmp_path / "data")
    config_files.set_key(config_dir / ".env.agent", "ab" * 32)
    sentinel = config_files.read_key(config_dir / ".env.sentinel")
    assert config_files.init(config_dir, tmp_path / "data").written == ()
    assert config_files.read_key(config_dir / ".env.agent") == "ab" * 32
    assert config_files.read_key(config_dir / ".env.sentinel") == sentinel


def test_malformed_key_in_a_file_names_the_file(config_dir: Path, tmp_path: Path) -> None:
    """A broken key in a config file is reported with that file's path."""
    config_files.init(config_dir, tmp_path / "data")
    config_files.set_key(config_dir / ".env.agent", "short")
    with pytest.raises(ConfigError, match=r"\.env\.agent: .*64 hex"):
        config_files.init(config_dir, tmp_path / "data")


def test_admin_init_never_prints_the_key(
    config_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The init command reports what it did without showing the key."""
    argv = ["--config-dir", str(config_dir), "--data-dir", str(tmp_path / "data"), "init"]
    assert admin.main(argv) == 0
    assert admin.main(argv) == 0
    out = capsys.readouterr()
    key = config_files.node_keys(config_dir)["agent"]
    assert "generated" in out.out
    assert "kept" in out.out
    assert key not in out.out + out.err


def test_init_refuses_a_new_key_when_config_is_gone_but_data_is_not(tree: Path) -> None:
    """Config files deleted, databases kept: init refuses, naming the databases, writes nothing."""
    for role in config_files.ROLES:
        config_files.env_file(tree / "config", role).unlink()
    with pytest.raises(ConfigError, match=r"no master key in .* 6 encrypted databases exist"):
        config_files.init(tree / "config", tree / "data")
    assert not config_files.env_file(tree / "config", "agent").exists()


ENV_CASES = {
    "plain": "A=1\nFAME_STORAGE_MASTER_KEY=abc\n",
    "double quotes": 'FAME_STORAGE_MASTER_KEY="abc"\n',
    "single quotes": "FAME_STORAGE_MASTER_KEY='abc'\n",
    "comment after": "FAME_STORAGE_MASTER_KEY=abc # the key\n",
    "quoted with comment": 'FAME_STORAGE_MASTER_KEY="abc" # the key\n',
    "hash inside quotes": "FAME_STORAGE_MASTER_KEY='a#b'\n",
    "export": "export FAME_STORAGE_MASTER_KEY=abc\n",
    "spaces around =": "FAME_STORAGE_MASTER_KEY = abc\n",
    "duplicates, last wins": "FAME_STORAGE_MASTER_KEY=first\nFAME_STORAGE_MASTER_KEY=last\n",
    "commented out": "# FAME_STORAGE_MASTER_KEY=old\nFAME_STORAGE_MASTER_KEY=new\n",
    "empty": "FAME_STORAGE_MASTER_KEY=\n",
}


@pytest.mark.parametrize("text", ENV_CASES.values(), ids=ENV_CASES.keys())
def test_the_stdlib_reader_agrees_with_python_dotenv(tmp_path: Path, text: str) -> None:
    """make init's reader and python-dotenv (what nodes and tools use) read the same values."""
    from dotenv import dotenv_values

    path = tmp_path / ".env"
    path.write_text(text)
    assert config_files.parse_env(text) == dotenv_values(path, interpolate=False)


def test_setting_a_key_replaces_every_line_that_sets_it(tmp_path: Path) -> None:
    """edit_vars leaves one line for the variable, where the first was; others untouched."""
    path = tmp_path / ".env"
    path.write_text("# note\nexport FAME_STORAGE_MASTER_KEY=a\nB=2\nFAME_STORAGE_MASTER_KEY = b\n")
    config_files.edit_vars(path, {"FAME_STORAGE_MASTER_KEY": "c"})
    assert path.read_text() == "# note\nFAME_STORAGE_MASTER_KEY=c\nB=2\n"
    assert config_files.read_key(path) == "c"


def test_init_makes_a_readable_key_file_owner_only_and_says_so(
    initialised: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key-bearing config file left 0644: init makes it 0600 and names it in its line."""
    agent_env = config_files.env_file(initialised / "config", "agent")
    agent_env.chmod(0o644)
    assert (
        admin.main(
            [
                "--config-dir",
                str(initialised / "config"),
                "--data-dir",
                str(initialised / "data"),
                "init",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"made {agent_env} owner-only (0600)" in out
    assert _mode(agent_env) == 0o600


def test_tools_refuse_a_key_file_others_can_read(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """verify with a group-readable key file: one line naming it, exit 2."""
    agent_env = config_files.env_file(tree / "config", "agent")
    agent_env.chmod(0o640)
    code = admin.main(
        ["--config-dir", str(tree / "config"), "--data-dir", str(tree / "data"), "verify"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [
        f"verify: error: {agent_env} holds the master key but is readable by group or others "
        "(mode 640); refusing to use it. `make init` makes it owner-only (0600)"
    ]
