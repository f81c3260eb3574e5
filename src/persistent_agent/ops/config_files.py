"""The generated config files (config/.env.*) and the master key inside them.

``make init`` renders each committed ``config/.env.<role>.example`` into
``config/.env.<role>`` with the master key in place of the placeholder. It is
idempotent: an existing key is kept, because a new key would make every
existing database unreadable (the trap the original example documents).
Replacing the key is explicit and refused while encrypted data exists.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from persistent_agent.errors import ConfigError, KeyFileExposedError, MasterKeyError
from persistent_agent.keys.master_key import (
    ENV_VAR,
    NEXT_ENV_VAR,
    MasterKey,
    generate_master_key,
    parse_master_key,
)
from persistent_agent.storage.layout import NODE_ROLES, all_databases, node_data_dirs

ROLES = ("sentinel", "agent", "client")
PLACEHOLDER = "${" + ENV_VAR + "}"
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
    python-dotenv; everything else does (:func:`read_var`), and
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

    key_source: str  # "generated", "kept", "replaced"
    written: tuple[Path, ...]
    made_private: tuple[Path, ...] = ()  # key-bearing files that others could read


def env_file(config_dir: Path, role: str) -> Path:
    return config_dir / f".env.{role}"


def template(config_dir: Path, role: str) -> Path:
    return config_dir / f".env.{role}.example"


def read_var(path: Path, name: str) -> str | None:
    """The value of ``name=`` in env file *path*, or None when file or line is absent.

    Read with python-dotenv, as the nodes read it, where it is installed; on a
    bare Python (``make init``) with :func:`parse_env`, which agrees with it.
    """
    if not path.is_file():
        return None
    try:
        from dotenv import dotenv_values
    except ImportError:
        return parse_env(path.read_text()).get(name)
    return dotenv_values(path, interpolate=False).get(name)


def read_key(path: Path) -> str | None:
    """The master key written in *path*, or None when the file or line is absent."""
    return read_var(path, ENV_VAR)


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
    """The master key of each node whose env file has one, validated.

    The sentinel and the agent share one key after `init`, like the original;
    a user may give each node its own key by hand, and that is kept too.
    """
    keys: dict[str, str] = {}
    for role in NODE_ROLES:
        path = env_file(config_dir, role)
        key = read_key(path)
        if key is None or key == PLACEHOLDER:
            continue
        try:
            parse_master_key(key)
        except MasterKeyError as error:
            raise ConfigError(f"{path}: {error}") from None
        keys[role] = key
    return keys


def node_key(config_dir: Path, role: str) -> MasterKey:
    """The parsed master key of *role*'s env file, or one line saying what is wrong."""
    path = env_file(config_dir, role)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; run `make init`")
    KeyFileExposedError.check(path)
    try:
        return parse_master_key(read_key(path))
    except MasterKeyError as error:
        raise ConfigError(f"{path}: {error}") from None


def write_private(path: Path, text: str) -> None:
    """Write *path* atomically with mode 0600 (it may hold the master key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def set_key(path: Path, key: str) -> None:
    """Replace the master key line of an existing env file, keeping every other line."""
    if read_key(path) is None:
        raise ConfigError(f"{path} has no {ENV_VAR}= line to update")
    edit_vars(path, {ENV_VAR: key})


def init(config_dir: Path, data_dir: Path, *, new_key: bool = False) -> InitResult:
    """Create missing config files and data directories; keep existing keys.

    With *new_key*, replace the key everywhere, but only while no encrypted
    database exists: those would become unreadable (use rotate-key instead).
    """
    keys = node_keys(config_dir)
    if not keys and (found := all_databases(data_dir)):
        # The config (and the key in it) is gone, the data is not: a new key
        # would open none of it, and the old key could no longer be put back.
        names = ", ".join(str(p) for p in found[:3]) + (", …" if len(found) > 3 else "")
        raise ConfigError(
            f"no master key in {config_dir}, but {len(found)} encrypted databases exist "
            f"({names}); a new key would open none of them. Put the old "
            f"{config_dir}/.env.* back, or run `make clean` to discard the data"
        )
    if new_key and keys:
        found = all_databases(data_dir)
        if found:
            raise ConfigError(
                f"refusing a new key: {len(found)} encrypted databases under {data_dir} "
                "would become unreadable; use `make rotate-key` to re-key them, "
                "or `make clean` to discard them"
            )
    # The key for files that have none yet: the one already in use, if any.
    shared = generate_master_key() if new_key or not keys else next(iter(keys.values()))
    source = "replaced" if new_key and keys else "kept" if keys else "generated"

    written: list[Path] = []
    for role in ROLES:
        target = env_file(config_dir, role)
        if not target.exists():
            source_template = template(config_dir, role)
            if not source_template.is_file():
                raise ConfigError(f"{source_template} is missing; restore it from git")
            key = shared if new_key else keys.get(role, shared)
            write_private(target, source_template.read_text().replace(PLACEHOLDER, key))
        elif read_key(target) is not None and (new_key or role not in keys):
            set_key(target, shared)
        else:
            continue
        written.append(target)

    # Files that hold a key and that others can read: made owner-only (and
    # said so), since nodes and tools refuse to use them as they are.
    made_private = []
    for role in ROLES:
        target = env_file(config_dir, role)
        if target.is_file() and target.stat().st_mode & 0o077 and read_key(target) is not None:
            os.chmod(target, 0o600)
            made_private.append(target)

    for directory in [data_dir, *node_data_dirs(data_dir)]:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
    return InitResult(source, tuple(written), tuple(made_private))


def describe(result: InitResult) -> str:
    """The one line `init` prints: what happened to the key, never the key."""
    files = ", ".join(str(p) for p in result.written)
    line = f"init: master key {result.key_source}; " + (
        f"wrote {files}" if files else "config files already in place"
    )
    if result.made_private:
        fixed = ", ".join(str(p) for p in result.made_private)
        line += f"; made {fixed} owner-only (0600): it holds the key and others could read it"
    return line


# `make init` runs scripts/gen_master_key.py on a bare host Python, and the
# admin CLI has an `init` subcommand: both take their options from here.
INIT_HELP = "Write config/.env.* with a 256-bit master key; keep an existing key."


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
