"""The backend registry: one entry per backend, from which the runtime's profile,
the node's provider and the operator tools find it by profile name."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from naylence.fame.profile import get_profile

from persistent_agent.errors import ConfigError, StorageProfileError
from persistent_agent.keys.custody import POSTGRES_DSN_VAR
from persistent_agent.ops import shared_tools
from persistent_agent.storage import provider_factory, registry


def test_every_registered_backend_is_a_runtime_storage_profile() -> None:
    for name, entry in registry.BACKENDS.items():
        profile = get_profile(provider_factory.PROFILE_BASE_TYPE, name)
        assert profile is not None, name
        assert profile["type"] == provider_factory.SHARED_PROVIDER_TYPE
        assert profile["backend"] == name
        assert all(provider_factory._field(s) in profile for s in entry.names())


def test_a_backends_module_provides_what_the_registry_names() -> None:
    for name in registry.profiles():
        module = registry.backend_module(name)
        for function in ("check_settings", "describe_settings", "open_backend"):
            assert callable(getattr(module, function)), (name, function)


def test_an_unknown_backend_is_one_line_naming_the_registered_ones() -> None:
    with pytest.raises(StorageProfileError, match="'nope' is not a storage backend; registered"):
        registry.backend_module("nope")


def test_the_registry_loads_no_driver_until_a_backend_is_chosen() -> None:
    code = (
        "import sys, persistent_agent.storage.registry, persistent_agent.storage.provider_factory\n"
        "print('psycopg' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False"]


def test_a_backends_settings_are_checked_before_connecting() -> None:
    module = registry.backend_module("encrypted-postgres")
    with pytest.raises(ConfigError, match=f"{POSTGRES_DSN_VAR} is not set"):
        module.check_settings({})
    assert module.describe_settings({POSTGRES_DSN_VAR: "host=db port=5433 password=x"}) == (
        "PostgreSQL at db:5433"
    )


@pytest.mark.parametrize(
    "records",
    [
        [],
        [("b", (1, b"\x00\xff")), ("b", ("x", 2))],
        [("a", ("k", "w", "fp")), ("c", ("id", b"s", "2026-01-01T00:00:00+00:00"))],
    ],
    ids=["empty", "one-table", "first-and-last"],
)
def test_a_streamed_backup_is_the_document_the_format_defines(
    records: list[tuple[str, tuple[object, ...]]],
) -> None:
    """Written record by record, the backup is byte for byte the compact JSON of
    ``{"format", "wrapped_by", "tables"}`` with every table present, empty or not."""
    handle = io.StringIO()
    writer = shared_tools._BackupWriter(handle, ["a", "b", "c"])
    writer.start("fp-1")
    for table, values in records:
        writer.record(table, values)
    writer.finish()
    tables: dict[str, list[list[object]]] = {"a": [], "b": [], "c": []}
    for table, values in records:
        tables[table].append([shared_tools._encode(v) for v in values])
    expected = {"format": shared_tools.BACKUP_FORMAT, "wrapped_by": "fp-1", "tables": tables}
    assert handle.getvalue() == json.dumps(expected, separators=(",", ":"))


def test_the_tools_find_the_backend_by_the_agents_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(POSTGRES_DSN_VAR, raising=False)
    config = tmp_path / "config"
    config.mkdir()
    (config / ".env.agent").write_text("FAME_STORAGE_PROFILE=encrypted-sqlite\n")
    assert shared_tools.shared_config(config) is None
