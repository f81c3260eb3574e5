"""Writing files that hold secrets: atomically, owner-only, durably.

The key file, the keyrings, the env files and the backup manifests are all
written this way: a new owner-only temp file beside the target, fsynced,
renamed over it, and the directory fsynced, so that a crash or power loss
leaves the old file or the new one, never half of either.

Standard library only: ``make init`` runs this on a bare host Python.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from persistent_agent.errors import ConfigError


def write_private(path: Path, text: str) -> None:
    """Replace *path* with *text*, atomically, mode 0600, synced to disk."""
    write_file(path, text.encode(), 0o600)


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Replace *path* with *data*, atomically, with *mode*, synced to disk.

    The temp file is owner-only from its creation; *mode* is set before it
    takes the name (0644 for a certificate anyone may read).
    """
    with replacing(path, mode) as handle:
        handle.write(data)


@contextlib.contextmanager
def replacing(path: Path, mode: int = 0o600) -> Iterator[BinaryIO]:
    """A new file, written through the handle given, that takes *path*'s name with
    *mode* only once written whole and synced (a backup streamed row by row, say).

    mkstemp creates the temp file exclusively, owner-only, under a fresh name;
    on any error it is removed and *path* is left as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def sync_directory(directory: Path) -> None:
    """fsync *directory*, so that a rename in it survives a power loss."""
    sync_file(directory)


def sync_file(path: Path) -> None:
    """fsync *path* (a file, or a directory's entries) by name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_private(path: Path, setting: str) -> str:
    """The one-line secret in *path* (named by *setting*), refused if others can read it."""
    secret = read_private_bytes(path, setting).decode(errors="replace").strip()
    if not secret or "\n" in secret:
        raise ConfigError(f"{setting}={path} must hold one line, the secret, and nothing else")
    return secret


def read_private_bytes(path: Path, setting: str) -> bytes:
    """What *path* (named by *setting*) holds, a key or a secret, refused if others can read it."""
    try:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(
                f"{setting}={path} is readable by group or others (mode {mode:o}); "
                "refusing to use it: make it owner-only (chmod 600)"
            )
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{setting}={path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{setting}={path}: cannot read it ({exc.strerror})") from None
