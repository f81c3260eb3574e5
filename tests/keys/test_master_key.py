"""The master key: parsing, redaction, and reading it from a key file."""

from __future__ import annotations

from pathlib import Path

import pytest

from persistent_agent.errors import KeyFileExposedError, MasterKeyError
from persistent_agent.keys.master_key import (
    generate_master_key,
    load_master_key,
    parse_master_key,
    write_key_file,
)


def test_generated_key_is_256_bits_of_hex() -> None:
    """A generated key is 64 hex characters and parses back to 32 bytes."""
    key = generate_master_key()
    assert len(key) == 64
    assert len(parse_master_key(key).material) == 32


@pytest.mark.parametrize("text", [None, "", "   "])
def test_missing_key_says_not_set(text: str | None) -> None:
    """An absent key names the variable and `make init`."""
    with pytest.raises(MasterKeyError, match=r"FAME_STORAGE_MASTER_KEY is not set.*make init"):
        parse_master_key(text)


@pytest.mark.parametrize(
    "text", ["abc123", "0" * 63, "0" * 65, "g" * 64, "correct horse battery staple" * 3]
)
def test_short_or_malformed_key_is_refused_without_echoing_it(text: str) -> None:
    """A malformed key is refused, and the message never contains the key."""
    with pytest.raises(MasterKeyError) as info:
        parse_master_key(text)
    assert "64 hex characters" in str(info.value)
    assert text not in str(info.value)


def test_repr_hides_key_material() -> None:
    """repr() of a key (as a log line might show it) reveals nothing."""
    text = generate_master_key()
    assert text not in repr(parse_master_key(text))
    assert "redacted" in repr(parse_master_key(text))


def test_a_key_file_is_read_and_a_relative_one_from_its_base(tmp_path: Path) -> None:
    """FAME_STORAGE_MASTER_KEY_FILE gives the key; a relative path is taken from *base*."""
    text = generate_master_key()
    write_key_file(tmp_path / "master.key", text)
    assert (tmp_path / "master.key").stat().st_mode & 0o777 == 0o600
    assert load_master_key(None, "master.key", base=tmp_path) == parse_master_key(text)
    assert load_master_key("", str(tmp_path / "master.key")) == parse_master_key(text)


def test_both_the_key_and_its_file_is_an_error_naming_both(tmp_path: Path) -> None:
    """Setting FAME_STORAGE_MASTER_KEY and …_FILE is refused, naming both, echoing neither."""
    text = generate_master_key()
    write_key_file(tmp_path / "master.key", text)
    with pytest.raises(MasterKeyError) as info:
        load_master_key(text, str(tmp_path / "master.key"))
    assert "FAME_STORAGE_MASTER_KEY and FAME_STORAGE_MASTER_KEY_FILE" in str(info.value)
    assert text not in str(info.value)


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    """A key file readable by group or others is refused with one line (mode shown)."""
    path = tmp_path / "master.key"
    write_key_file(path, generate_master_key())
    path.chmod(0o640)
    with pytest.raises(KeyFileExposedError, match="readable by group or others"):
        load_master_key(None, str(path))


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "no such file"),
        ("", "is not set"),
        ("abc\n", "64 hex characters"),
        ("{k}\n{k}\n", "one line"),
    ],
    ids=["missing", "empty", "short", "two lines"],
)
def test_a_bad_key_file_says_why_without_the_key(
    tmp_path: Path, content: str | None, says: str
) -> None:
    """Missing, empty, malformed or extra lines: one line saying which, never the key."""
    key = generate_master_key()
    path = tmp_path / "master.key"
    if content is not None:
        path.write_text(content.format(k=key))
        path.chmod(0o600)
    with pytest.raises(MasterKeyError, match=says) as info:
        load_master_key(None, str(path))
    assert key not in str(info.value)
