"""The generated config files (config/.env.*), the key file, and the keys in them.

``make init`` writes ``config/master.key`` (the master key, owner-only) and
renders each committed ``config/.env.<role>.example`` into ``config/.env.<role>``,
whose ``FAME_STORAGE_MASTER_KEY_FILE`` points at the key file. It is
idempotent: an existing key is kept, because a new key would open no existing
data (the trap the original example documents), and a key that an older
config carries inline (``FAME_STORAGE_MASTER_KEY=``) moves into the key file,
which is written and synced before the line goes. Replacing the key is
explicit and refused while encrypted data exists.

Standard library only (python-dotenv where installed): ``make init`` runs on
a bare host Python.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path

from persistent_agent.errors import ConfigError, MasterKeyError
from persistent_agent.keys.master_key import (
    ENV_VAR,
    FILE_ENV_VAR,
    KEY_SERVICE_VAR,
    NEXT_ENV_VAR,
    generate_master_key,
    load_master_key,
    parse_master_key,
    write_key_file,
)
from persistent_agent.keys.secret_files import write_private
from persistent_agent.storage.layout import NODE_ROLES, all_databases, env_file, node_data_dirs

ROLES = ("sentinel", "agent", "client")
KEY_FILE = "master.key"
# Where rotate-key keeps the key it is moving to until it is done.
PENDING_KEY_FILE = KEY_FILE + ".next"
NEXT_VAR = NEXT_ENV_VAR


def _defines(name: str) -> re.Pattern[str]:
    """A line that sets *name*, as python-dotenv reads it (``export``, spaces)."""
    return re.compile(rf"^\s*(?:export\s+)?{re.escape(name)}\s*=")


_ASSIGNMENT = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.]*)\s*=\s*(.*)$")


def _value(raw: str) -> str:
    """One value as python-dotenv reads it: quoted, or unquoted up to a `` #`` comment."""
    if raw[:1] in ("'", '"'):
        quote, end = raw[0], raw.find(raw[0], 1)
        while quote == '"' and end > 0 and raw[end - 1] == "\\":
            end = raw.find(quote, end + 1)
        text = raw[1:end] if end > 0 else raw[1:]
        return text.replace('\\"', '"').replace("\\\\", "\\") if quote == '"' else text
    return re.split(r"\s+#", raw, maxsplit=1)[0].strip()


def parse_env(text: str) -> dict[str, str]:
    """Read an env file the way python-dotenv does, for the cases config files have:
    ``export``, quotes, comments, and the last of duplicate lines winning.

    ``make init`` runs before anything is installed, so it cannot use
    python-dotenv; everything else does (:func:`read_env`), and
    tests/ops/test_config_files.py proves the two agree.
    """
    values: dict[str, str] = {}
    for line in text.splitlines():
        if match := _ASSIGNMENT.match(line):
            values[match.group(1)] = _value(match.group(2).strip())
    return values


@dataclass(frozen=True)
class InitResult:
    """What `init` did, for the one-line report (never the key itself)."""

    key_source: str  # "generated", "kept", "replaced", "not used" (key service)
    written: tuple[Path, ...]
    made_private: tuple[Path, ...] = ()  # key-bearing files that others could read
    moved_from: tuple[Path, ...] = ()  # env files whose inline key moved to the key file


def template(config_dir: Path, role: str) -> Path:
    return config_dir / f".env.{role}.example"


def key_file(config_dir: Path) -> Path:
    """config/master.key: the one key file both nodes use."""
    return config_dir / KEY_FILE


def pending_key_file(config_dir: Path) -> Path:
    return config_dir / PENDING_KEY_FILE


def read_env(path: Path) -> dict[str, str]:
    """Every variable of env file *path* ({} when it is absent).

    Read with python-dotenv, as the nodes read it, where it is installed; on a
    bare Python (``make init``) with :func:`parse_env`, which agrees with it.
    """
    if not path.is_file():
        return {}
    try:
        from dotenv import dotenv_values
    except ImportError:
        return parse_env(path.read_text())
    return {k: v for k, v in dotenv_values(path, interpolate=False).items() if v is not None}


def read_var(path: Path, name: str) -> str | None:
    """The value of ``name=`` in env file *path*, or None when file or line is absent."""
    return read_env(path).get(name)


def edit_vars(path: Path, values: dict[str, str | None]) -> None:
    """Set (or, with None, remove) variables of env file *path* in one atomic write.

    A variable that is set replaces its line in place, or is appended.
    """
    lines = path.read_text().splitlines()
    for name, value in values.items():
        sets = _defines(name)
        first = next((i for i, line in enumerate(lines) if sets.match(line)), None)
        new = None if value is None else f"{name}={value}"
        # Every line that sets it goes (a later duplicate would win over ours);
        # the new one takes the place of the first, or is appended.
        lines = [
            new if i == first and new is not None else line
            for i, line in enumerate(lines)
            if not sets.match(line) or (i == first and new is not None)
        ]
        if first is None and new is not None:
            lines.append(new)
    write_private(path, "\n".join(lines) + "\n")


def node_keys(config_dir: Path) -> dict[str, str]:
    """The master key each node's env file gives (inline, or in the file it names), validated.

    Nodes that use a key service have none and are left out. The sentinel and
    the agent share one key after `init`, like the original.
    """
    keys: dict[str, str] = {}
    for role in NODE_ROLES:
        path = env_file(config_dir, role)
        values = read_env(path)
        named = values.get(FILE_ENV_VAR)
        if named and not (config_dir / named).exists():
            continue  # a key file that is gone: no key (init says what that means)
        if values.get(KEY_SERVICE_VAR) or not (values.get(ENV_VAR) or named):
            continue
        try:
            key = load_master_key(values.get(ENV_VAR), values.get(FILE_ENV_VAR), base=config_dir)
        except MasterKeyError as error:
            raise ConfigError(f"{path}: {error}") from None
        keys[role] = key.material.hex()
    return keys


def _key_file_text(config_dir: Path) -> str | None:
    """The key in config/master.key, validated, or None when there is no such file."""
    path = key_file(config_dir)
    if not path.exists():
        return None
    try:
        return parse_master_key(path.read_text(), source=f"the key in {path}").material.hex()
    except MasterKeyError as error:
        raise ConfigError(str(error)) from None


def _make_key_holders_private(config_dir: Path) -> list[Path]:
    """Files that hold a key and that others can read, made owner-only.

    Nodes and tools refuse to use them as they are; init fixes and says so.
    """
    made_private = []
    for target in [key_file(config_dir), *(env_file(config_dir, role) for role in ROLES)]:
        if not target.is_file() or not target.stat().st_mode & 0o077:
            continue
        if target.name == KEY_FILE or read_var(target, ENV_VAR) is not None:
            os.chmod(target, 0o600)
            made_private.append(target)
    return made_private


def init(config_dir: Path, data_dir: Path, *, new_key: bool = False) -> InitResult:
    """Create the key file, missing config files and data directories; keep existing keys.

    With *new_key*, replace the key everywhere, but only while no encrypted
    database exists: those would become unreadable (use rotate-key instead).
    """
    made_private = _make_key_holders_private(config_dir)
    keys = node_keys(config_dir)
    in_file = _key_file_text(config_dir)
    known = set(keys.values()) | ({in_file} if in_file else set())
    uses_service = {
        role for role in NODE_ROLES if read_var(env_file(config_dir, role), KEY_SERVICE_VAR)
    }
    found = all_databases(data_dir)
    if not known and found and len(uses_service) < len(NODE_ROLES):
        # The key is gone, the data is not: a new key would open none of it,
        # and the old key could no longer be put back.
        names = ", ".join(str(p) for p in found[:3]) + (", …" if len(found) > 3 else "")
        raise ConfigError(
            f"no master key in {config_dir}, but {len(found)} encrypted databases exist "
            f"({names}); a new key would open none of them. Put the old "
            f"{key_file(config_dir)} (or {config_dir}/.env.*) back, or run `make clean` to "
            "discard the data"
        )
    if new_key and known and found:
        raise ConfigError(
            f"refusing a new key: {len(found)} encrypted databases under {data_dir} "
            "would become unreadable; use `make rotate-key` to re-key them, "
            "or `make clean` to discard them"
        )
    if len(known) > 1 and not new_key:
        raise ConfigError(
            f"the node configs in {config_dir} (and {key_file(config_dir)}) name different "
            "master keys; init keeps one key file for both nodes, so put back the files that "
            "held one key, then run it again"
        )
    shared = generate_master_key() if new_key or not known else next(iter(known))
    if uses_service == set(NODE_ROLES):
        source = "not used (key service)"
    else:
        source = "replaced" if new_key and known else "kept" if known else "generated"

    written: list[Path] = []
    # 1. The key file first: a key moving out of an env file is in the file,
    # synced, before its line goes, so it is never in neither place.
    if len(uses_service) < len(NODE_ROLES) and in_file != shared:
        write_key_file(key_file(config_dir), shared)
        written.append(key_file(config_dir))

    # 2. The env files, pointing at the key file.
    moved: list[Path] = []
    for role in ROLES:
        target = env_file(config_dir, role)
        if not target.exists():
            source_template = template(config_dir, role)
            if not source_template.is_file():
                raise ConfigError(f"{source_template} is missing; restore it from git")
            write_private(target, source_template.read_text())
            written.append(target)
            continue
        if role not in NODE_ROLES or role in uses_service:
            continue
        values = read_env(target)
        if values.get(ENV_VAR) is not None:
            edit_vars(target, {ENV_VAR: None, FILE_ENV_VAR: KEY_FILE})
            moved.append(target)
        elif new_key or not values.get(FILE_ENV_VAR):
            edit_vars(target, {FILE_ENV_VAR: KEY_FILE})
            written.append(target)

    for directory in [data_dir, *node_data_dirs(data_dir)]:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
    return InitResult(source, tuple(written), tuple(made_private), tuple(moved))


def describe(result: InitResult) -> str:
    """The one line `init` prints: what happened to the key, never the key."""
    files = ", ".join(str(p) for p in result.written)
    line = f"init: master key {result.key_source}; " + (
        f"wrote {files}" if files else "config files already in place"
    )
    if result.moved_from:
        moved = ", ".join(str(p) for p in result.moved_from)
        line += f"; moved the key out of {moved} into the key file"
    if result.made_private:
        fixed = ", ".join(str(p) for p in result.made_private)
        line += f"; made {fixed} owner-only (0600): it holds the key and others could read it"
    return line


# `make init` runs scripts/gen_master_key.py on a bare host Python, and the
# admin CLI has an `init` subcommand: both take their options from here.
INIT_HELP = (
    "Write config/master.key (a 256-bit master key) and config/.env.*; keep an existing key."
)


def add_directory_options(parser: argparse.ArgumentParser) -> None:
    """--config-dir and --data-dir, as every tool that reads config and data takes them."""
    parser.add_argument(
        "--config-dir",
        type=Path,
        default=Path("config"),
        help="where config/.env.* live (default: config)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data"),
        help="the nodes' data directories (default: data)",
    )


def add_init_options(parser: argparse.ArgumentParser) -> None:
    """The options of `init` itself."""
    parser.add_argument(
        "--new-key",
        action="store_true",
        help="replace the key (refused while encrypted databases exist)",
    )


def run_init(args: argparse.Namespace) -> int:
    """`init` with parsed options: do it and print the one line (never the key)."""
    print(describe(init(args.config_dir, args.data_dir, new_key=args.new_key)))
    return 0
