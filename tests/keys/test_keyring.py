"""Envelope encryption: HKDF from `cryptography`, data keys wrapped with AES-256-GCM."""

from __future__ import annotations

from pathlib import Path

import pytest

from persistent_agent.errors import KeyringError
from persistent_agent.keys.keyring import (
    Keyring,
    LocalWrapper,
    derived_key,
    hkdf_sha256,
    new_data_key,
)
from persistent_agent.keys.master_key import MasterKey, generate_master_key, parse_master_key

# RFC 5869, appendix A: test cases 1-3 (SHA-256).
RFC5869 = [
    (
        "0b" * 22,
        "000102030405060708090a0b0c",
        "f0f1f2f3f4f5f6f7f8f9",
        42,
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
    ),
    (
        bytes(range(0x00, 0x50)).hex(),
        bytes(range(0x60, 0xB0)).hex(),
        bytes(range(0xB0, 0x100)).hex(),
        82,
        "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
        "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
        "cc30c58179ec3e87c14c01d5c1f3434f1d87",
    ),
    (
        "0b" * 22,
        "",
        "",
        42,
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
    ),
]


@pytest.mark.parametrize(("ikm", "salt", "info", "length", "okm"), RFC5869, ids=["1", "2", "3"])
def test_hkdf_is_rfc5869(ikm: str, salt: str, info: str, length: int, okm: str) -> None:
    """HKDF-SHA256 gives the RFC 5869 test vectors."""
    out = hkdf_sha256(
        bytes.fromhex(ikm), salt=bytes.fromhex(salt), info=bytes.fromhex(info), length=length
    )
    assert out.hex() == okm


def test_derived_keys_are_those_of_the_scheme_before_keyrings() -> None:
    """The keys of data written by version 0.1 (hand-written HKDF then) come out unchanged."""
    master = parse_master_key("00112233445566778899aabbccddeeff" * 2)
    # Computed with 0.1's own hkdf_sha256 (commit 844ca8e) for this master key.
    assert derived_key(master, "agent_state").hex() == (
        "b624b4261ffd4df8046be68e6689486fb3358fa04ff79da7c0754c2731ac114f"
    )
    assert derived_key(master, "__node_meta").hex() == (
        "e2f969ebb49d6517634ca273b352b0aff6ea5748664b91db7fe0950cd43fbf05"
    )


def _master() -> MasterKey:
    return parse_master_key(generate_master_key())


def test_a_wrapped_key_unwraps_only_in_its_own_place(tmp_path: Path) -> None:
    """A data key unwraps for its namespace, node and master key; moved anywhere else it
    does not, and the error names the keyring and namespace."""
    master = _master()
    wrapper = LocalWrapper(master)
    key = new_data_key()
    ring = Keyring("agent", wrapper.fingerprint).with_key(wrapper, "agent_state", key)
    where = tmp_path / "keyring.json"
    assert ring.unwrap(wrapper, "agent_state", where=where) == key
    assert ring.unwrap(wrapper, "other", where=where) is None

    moved = Keyring("agent", wrapper.fingerprint, {"other": ring.keys["agent_state"]})
    with pytest.raises(KeyringError, match=r"entry for other that does not unwrap"):
        moved.unwrap(wrapper, "other", where=where)
    other_node = Keyring("sentinel", wrapper.fingerprint, dict(ring.keys))
    with pytest.raises(KeyringError, match="does not unwrap"):
        other_node.unwrap(wrapper, "agent_state", where=where)
    with pytest.raises(KeyringError, match="made under master key"):
        ring.unwrap(LocalWrapper(_master()), "agent_state", where=where)


def test_each_wrap_uses_a_fresh_nonce() -> None:
    """Wrapping one key twice gives two different ciphertexts (random 96-bit nonce)."""
    wrapper = LocalWrapper(_master())
    key = new_data_key()
    assert wrapper.wrap(key, b"ad") != wrapper.wrap(key, b"ad")


def test_rewrapping_keeps_the_data_keys_and_changes_the_master_key(tmp_path: Path) -> None:
    """rewrapped() moves every entry to the new master key; the old one opens it no more."""
    old, new = LocalWrapper(_master()), LocalWrapper(_master())
    keys = {"a": new_data_key(), "b": new_data_key()}
    ring = Keyring("agent", old.fingerprint)
    for namespace, key in keys.items():
        ring = ring.with_key(old, namespace, key)
    moved = ring.rewrapped(old, new, where=tmp_path)
    assert moved.wrapped_by == new.fingerprint
    assert {ns: moved.unwrap(new, ns, where=tmp_path) for ns in keys} == keys
    with pytest.raises(KeyringError):
        moved.unwrap(old, "a", where=tmp_path)


def test_the_keyring_file_is_owner_only_and_round_trips(tmp_path: Path) -> None:
    """save() writes 0600 and load() reads back the same keyring; no temp file is left."""
    wrapper = LocalWrapper(_master())
    ring = Keyring("agent", wrapper.fingerprint).with_key(wrapper, "ns", new_data_key())
    path = tmp_path / "keyring.json"
    ring.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert Keyring.load(path) == ring
    assert [p.name for p in tmp_path.iterdir()] == ["keyring.json"]


@pytest.mark.parametrize("text", ["", "{", "[]", '{"format": 1}', '{"format": 1, "node": 3}'])
def test_a_damaged_keyring_is_reported_clearly(tmp_path: Path, text: str) -> None:
    """A keyring that is not what we write says it is damaged and how to get it back."""
    path = tmp_path / "keyring.json"
    path.write_text(text)
    with pytest.raises(KeyringError, match=r"keyring .* is damaged.*restore it from a backup"):
        Keyring.load(path)
