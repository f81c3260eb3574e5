"""The SQLCipher provider: KeyValueStore semantics, persistence, and how the
runtime finds it (entry point + the re-registered encrypted-sqlite profile)."""

from __future__ import annotations

from pathlib import Path

import pytest
from naylence.fame.factory import create_resource
from naylence.fame.storage.storage_provider_factory import StorageProviderFactory
from pydantic import BaseModel, ValidationError

from persistent_agent.errors import KeyringError, MasterKeyError
from persistent_agent.keys.master_key import MasterKey, generate_master_key, parse_master_key
from persistent_agent.storage.provider import SQLCipherStorageProvider

from ..conftest import checksums


class Record(BaseModel):
    name: str
    count: int = 0


class Other(BaseModel):
    name: str
    count: int = 0
    extra: str = "x"


def _provider(db_dir: Path, key: MasterKey) -> SQLCipherStorageProvider:
    return SQLCipherStorageProvider(db_dir, key)


async def test_round_trip_and_missing_key(db_dir: Path, master_key: MasterKey) -> None:
    """set then get returns an equal model; an absent key reads as None."""
    store = await _provider(db_dir, master_key).get_kv_store(Record, "ns")
    await store.set("a", Record(name="alpha", count=1))
    assert await store.get("a") == Record(name="alpha", count=1)
    assert await store.get("missing") is None


async def test_values_survive_reopening(db_dir: Path, master_key: MasterKey) -> None:
    """A new provider on the same directory and key reads what the old one wrote."""
    first = _provider(db_dir, master_key)
    await (await first.get_kv_store(Record, "ns")).set("a", Record(name="kept"))
    first.close()
    reopened = await _provider(db_dir, master_key).get_kv_store(Record, "ns")
    assert await reopened.get("a") == Record(name="kept")


async def test_update_requires_an_existing_key(db_dir: Path, master_key: MasterKey) -> None:
    """update() on a missing key raises KeyError and creates nothing."""
    store = await _provider(db_dir, master_key).get_kv_store(Record, "ns")
    with pytest.raises(KeyError):
        await store.update("nope", Record(name="x"))
    assert await store.get("nope") is None
    await store.set("k", Record(name="v1"))
    await store.update("k", Record(name="v2"))
    assert await store.get("k") == Record(name="v2")


async def test_delete_and_list(db_dir: Path, master_key: MasterKey) -> None:
    """list() returns every entry; delete() removes one and tolerates absence."""
    store = await _provider(db_dir, master_key).get_kv_store(Record, "ns")
    for i in range(3):
        await store.set(f"k{i}", Record(name=f"n{i}", count=i))
    await store.delete("k1")
    await store.delete("never-there")
    assert await store.list() == {"k0": Record(name="n0"), "k2": Record(name="n2", count=2)}


async def test_values_are_validated_against_the_model(db_dir: Path, master_key: MasterKey) -> None:
    """A value of another shape is validated through the store's model first."""
    store = await _provider(db_dir, master_key).get_kv_store(Record, "ns")
    await store.set("ok", Other(name="fits", count=2))
    assert await store.get("ok") == Record(name="fits", count=2)
    with pytest.raises(ValidationError):
        await store.set("bad", {"count": "many"})
    assert await store.get("bad") is None


async def test_set_none_clears_the_entry(db_dir: Path, master_key: MasterKey) -> None:
    """BaseAgent.clear_state() stores None: that removes the entry."""
    store = await _provider(db_dir, master_key).get_kv_store(Record, "ns")
    await store.set("state", Record(name="x"))
    await store.set("state", None)
    assert await store.get("state") is None


async def test_each_namespace_gets_its_own_file(db_dir: Path, master_key: MasterKey) -> None:
    """Namespaces are separate databases named like the seed's listing."""
    provider = _provider(db_dir, master_key)
    for ns in ("__node_meta", "agent_state"):
        await (await provider.get_kv_store(Record, ns)).set("k", Record(name=ns))
    names = sorted(p.name for p in db_dir.glob("*.db"))
    assert names == ["__node_meta_encrypted_value.db", "agent_state_encrypted_value.db"]
    assert await (await provider.get_kv_store(Record, "agent_state")).get("k") == Record(
        name="agent_state"
    )


async def test_wrong_master_key_refuses_at_startup_and_changes_nothing(
    db_dir: Path, master_key: MasterKey
) -> None:
    """A provider with another key fails on construction, at the keyring, naming it; files
    stay byte-identical."""
    provider = _provider(db_dir, master_key)
    await (await provider.get_kv_store(Record, "agent_state")).set("k", Record(name="v"))
    provider.close()
    before = checksums(db_dir)
    with pytest.raises(KeyringError, match=r"keyring\.json was made under master key"):
        _provider(db_dir, parse_master_key(generate_master_key()))
    assert checksums(db_dir) == before
    again = await _provider(db_dir, master_key).get_kv_store(Record, "agent_state")
    assert await again.get("k") == Record(name="v")


async def test_encrypted_sqlite_profile_selects_sqlcipher(
    db_dir: Path, master_key_hex: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FAME_STORAGE_PROFILE=encrypted-sqlite builds our provider through the runtime."""
    monkeypatch.setenv("FAME_STORAGE_MASTER_KEY", master_key_hex)
    monkeypatch.setenv("FAME_STORAGE_DB_DIRECTORY", str(db_dir))
    provider = await create_resource(
        StorageProviderFactory, {"type": "StorageProfile", "profile": "encrypted-sqlite"}
    )
    assert isinstance(provider, SQLCipherStorageProvider)
    assert provider.db_directory == db_dir


# The runtime's own sqlite profile always passes master_key (empty) and so
# always warns that it is ignored; that is its behaviour, not ours.
@pytest.mark.filterwarnings("ignore:master_key is provided:UserWarning")
@pytest.mark.parametrize(
    ("profile", "class_name"),
    [("sqlite", "SQLiteStorageProvider"), ("memory", "InMemoryStorageProvider")],
)
async def test_other_profiles_keep_working(
    profile: str, class_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sqlite and memory profiles still give the runtime's own providers."""
    monkeypatch.setenv("FAME_STORAGE_DB_DIRECTORY", str(tmp_path))
    provider = await create_resource(
        StorageProviderFactory, {"type": "StorageProfile", "profile": profile}
    )
    assert type(provider).__name__ == class_name
    store = await provider.get_kv_store(Record, "ns")
    await store.set("k", Record(name="v"))
    assert await store.get("k") == Record(name="v")


async def test_profile_without_key_is_a_clear_error(
    db_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """encrypted-sqlite with no key says FAME_STORAGE_MASTER_KEY is not set."""
    monkeypatch.delenv("FAME_STORAGE_MASTER_KEY", raising=False)
    monkeypatch.setenv("FAME_STORAGE_DB_DIRECTORY", str(db_dir))
    with pytest.raises(MasterKeyError, match="not set"):
        await create_resource(
            StorageProviderFactory, {"type": "StorageProfile", "profile": "encrypted-sqlite"}
        )
