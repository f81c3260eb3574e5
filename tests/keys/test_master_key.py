"""The master key: parsing, redaction and per-database derivation."""

from __future__ import annotations

import pytest

from persistent_agent.errors import MasterKeyError
from persistent_agent.keys.master_key import generate_master_key, hkdf_sha256, parse_master_key


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


def test_database_keys_differ_per_namespace_and_are_stable() -> None:
    """Each namespace gets its own key; the same namespace always the same one."""
    key = parse_master_key(generate_master_key())
    assert key.database_key("__node_meta") != key.database_key("agent_state")
    assert key.database_key("agent_state") == key.database_key("agent_state")
    assert key.database_key("agent_state") != key.material


def test_hkdf_matches_rfc5869_test_case_1() -> None:
    """Our HKDF is RFC 5869's (test case 1 vector)."""
    okm = hkdf_sha256(
        bytes.fromhex("0b" * 22),
        salt=bytes.fromhex("000102030405060708090a0b0c"),
        info=bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"),
        length=42,
    )
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )
