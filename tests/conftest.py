"""Shared fixtures: real SQLCipher files under tmp_path, and plaintext scanning."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from persistent_agent.keys import MasterKey, generate_master_key, parse_master_key

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def master_key_hex() -> str:
    return generate_master_key()


@pytest.fixture
def master_key(master_key_hex: str) -> MasterKey:
    return parse_master_key(master_key_hex)


@pytest.fixture
def db_dir(tmp_path: Path) -> Path:
    return tmp_path / "db"


def checksums(directory: Path) -> dict[str, str]:
    """sha256 of every file under *directory*, by relative path."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def plaintext_hits(directory: Path, needles: list[bytes]) -> list[str]:
    """Which needles appear in the raw bytes of which files under *directory*."""
    hits = []
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            raw = path.read_bytes()
            hits += [f"{path.name}: {n!r}" for n in needles if n in raw]
    return hits
