"""`make init`: generated config, the key's lifecycle, and owner-only files."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from persistent_agent.errors import ConfigError
from persistent_agent.keys.master_key import generate_master_key, parse_master_key, write_key_file
from persistent_agent.keys.secret_files import write_private
from persistent_agent.ops import admin, config_files
from persistent_agent.storage.layout import env_file


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _file_key(config_dir: Path) -> str:
    return (config_dir / config_files.KEY_FILE).read_text().strip()


def test_init_writes_one_key_file_that_both_nodes_name(config_dir: Path, tmp_path: Path) -> None:
    """config/master.key holds a valid key (0600); both node files point at it and hold
    no key themselves; the client needs none; all 0600."""
    result = config_files.init(config_dir, tmp_path / "data")
    assert result.key_source == "generated"
    parse_master_key(_file_key(config_dir))
    assert _mode(config_dir / config_files.KEY_FILE) == 0o600
    for role in ("sentinel", "agent"):
        env = config_files.read_env(config_dir / f".env.{role}")
        assert env["FAME_STORAGE_MASTER_KEY_FILE"] == "master.key"
        assert "FAME_STORAGE_MASTER_KEY" not in env
    assert config_files.node_keys(config_dir) == dict.fromkeys(
        ("sentinel", "agent"), _file_key(config_dir)
    )
    assert "FAME_STORAGE_MASTER_KEY" not in (config_dir / ".env.client").read_text()
    for role in config_files.ROLES:
        assert _file_key(config_dir) not in (config_dir / f".env.{role}").read_text()
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
    """A missing env file is regenerated, naming the same key file."""
    config_files.init(config_dir, tmp_path / "data")
    keys = config_files.node_keys(config_dir)
    (config_dir / ".env.sentinel").unlink()
    config_files.init(config_dir, tmp_path / "data")
    assert config_files.node_keys(config_dir) == keys


def _configs_with_the_key_inline(config_dir: Path) -> str:
    """Node env files as 0.1 wrote them, the key inline; returns the key."""
    key = generate_master_key()
    for role in ("sentinel", "agent"):
        text = config_files.template(config_dir, role).read_text()
        text = text.replace(
            "FAME_STORAGE_MASTER_KEY_FILE=master.key", f"FAME_STORAGE_MASTER_KEY={key}"
        )
        write_private(config_dir / f".env.{role}", text)
    return key


def test_an_inline_key_moves_to_the_key_file(config_dir: Path, tmp_path: Path) -> None:
    """A config of 0.1 (the key inline in both env files) is moved to master.key by init:
    the same key, no longer in any env file, and said so."""
    key = _configs_with_the_key_inline(config_dir)
    result = config_files.init(config_dir, tmp_path / "data")
    assert result.key_source == "kept"
    assert [p.name for p in result.moved_from] == [".env.sentinel", ".env.agent"]
    assert _file_key(config_dir) == key
    for role in config_files.ROLES:
        assert key not in (config_dir / f".env.{role}").read_text()
    assert config_files.node_keys(config_dir) == {"sentinel": key, "agent": key}


def test_moving_an_inline_key_is_crash_safe(config_dir: Path, tmp_path: Path) -> None:
    """Killed after the key file is written and before the env files change, a rerun finds
    the same key in both places and finishes: the key is never in neither place."""
    key = _configs_with_the_key_inline(config_dir)
    write_key_file(config_dir / config_files.KEY_FILE, key)  # where a kill would leave it
    config_files.init(config_dir, tmp_path / "data")
    assert config_files.node_keys(config_dir) == {"sentinel": key, "agent": key}
    assert all(key not in (config_dir / f".env.{r}").read_text() for r in config_files.ROLES)


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
    """With no data yet, --new-key writes a different key for both nodes."""
    config_files.init(config_dir, tmp_path / "data")
    old = config_files.node_keys(config_dir)
    assert config_files.init(config_dir, tmp_path / "data", new_key=True).key_source == "replaced"
    new = config_files.node_keys(config_dir)
    assert new["agent"] == new["sentinel"]
    assert new["agent"] != old["agent"]


def test_different_keys_per_node_are_refused_and_kept(config_dir: Path, tmp_path: Path) -> None:
    """Node files that name different keys: init says so and changes neither."""
    config_files.init(config_dir, tmp_path / "data")
    write_key_file(config_dir / "other.key", generate_master_key())
    config_files.edit_vars(config_dir / ".env.agent", {"FAME_STORAGE_MASTER_KEY_FILE": "other.key"})
    before = config_files.node_keys(config_dir)
    with pytest.raises(ConfigError, match="different master keys"):
        config_files.init(config_dir, tmp_path / "data")
    assert config_files.node_keys(config_dir) == before


def test_malformed_key_in_a_file_names_the_file(config_dir: Path, tmp_path: Path) -> None:
    """A broken key in a config file is reported with that file's path."""
    config_files.init(config_dir, tmp_path / "data")
    config_files.edit_vars(config_dir / ".env.agent", {"FAME_STORAGE_MASTER_KEY_FILE": None})
    config_files.edit_vars(config_dir / ".env.agent", {"FAME_STORAGE_MASTER_KEY": "short"})
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
    """Key and config files deleted, databases kept: init refuses, naming the databases,
    and writes nothing."""
    (tree / "config" / config_files.KEY_FILE).unlink()
    for role in config_files.ROLES:
        env_file(tree / "config", role).unlink()
    with pytest.raises(ConfigError, match=r"no master key in .* 6 encrypted databases exist"):
        config_files.init(tree / "config", tree / "data")
    assert not env_file(tree / "config", "agent").exists()


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
    assert config_files.read_var(path, "FAME_STORAGE_MASTER_KEY") == "c"


def test_init_makes_a_readable_key_file_owner_only_and_says_so(
    initialised: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The key file left 0644: init makes it 0600 and names it in its line."""
    agent_env = initialised / "config" / config_files.KEY_FILE
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
    agent_env = tree / "config" / config_files.KEY_FILE
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


def test_init_leaves_nodes_on_a_key_service_alone(config_dir: Path, tmp_path: Path) -> None:
    """Nodes configured for Vault/OpenBao get no key file and no key line from init."""
    config_files.init(config_dir, tmp_path / "data")
    (config_dir / config_files.KEY_FILE).unlink()
    for role in ("sentinel", "agent"):
        config_files.edit_vars(
            config_dir / f".env.{role}",
            {"FAME_STORAGE_MASTER_KEY_FILE": None, "FAME_STORAGE_KEY_SERVICE": "vault"},
        )
    before = {role: (config_dir / f".env.{role}").read_text() for role in ("sentinel", "agent")}
    result = config_files.init(config_dir, tmp_path / "data")
    assert result.key_source == "not used (key service)"
    assert not (config_dir / config_files.KEY_FILE).exists()
    assert {r: (config_dir / f".env.{r}").read_text() for r in ("sentinel", "agent")} == before
