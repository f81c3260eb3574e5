"""The operator tools on a shared state in a real PostgreSQL server (encrypted-postgres)."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import psycopg
import pytest

from persistent_agent.demo.postgres_server import PostgresServer
from persistent_agent.errors import SharedStateError
from persistent_agent.keys.custody import KeySource
from persistent_agent.keys.master_key import read_key_file, write_key_file
from persistent_agent.keys.secret_files import write_private
from persistent_agent.ops import admin, config_files
from persistent_agent.ops.shared_tools import BACKUP_FILE
from persistent_agent.storage.layout import env_file
from persistent_agent.storage.shared_state import REPLICAS_LOCK, SharedState

from ..conftest import checksums

NAMESPACE = "agent_state"


def configure(root: Path, server: PostgresServer, dsn: str) -> None:
    """config/.env.agent on the encrypted-postgres profile, password in a 0600 file."""
    config = root / "config"
    write_private(config / "postgres.password", server.password() + "\n")
    env = env_file(config, "agent")
    lines = [
        line for line in env.read_text().splitlines() if not line.startswith("FAME_STORAGE_PROF")
    ]
    lines += [
        "FAME_STORAGE_PROFILE=encrypted-postgres",
        f"FAME_STORAGE_POSTGRES_DSN={dsn}",
        "FAME_STORAGE_POSTGRES_PASSWORD_FILE=postgres.password",
    ]
    env.write_text("\n".join(lines) + "\n")


def key_of(root: Path) -> KeySource:
    return KeySource.local(read_key_file(config_files.key_file(root / "config")))


async def _write(dsn: str, server: PostgresServer, source: KeySource, rows: dict[str, str]) -> None:
    state = await SharedState.open(dsn, server.password(), source, hold_replica_lock=False)
    try:
        for key, value in rows.items():
            row = await state.read(NAMESPACE, key)
            assert await state.write(NAMESPACE, key, value, row.version if row else 0)
    finally:
        await state.close()


async def _read(dsn: str, server: PostgresServer, source: KeySource) -> dict[str, str]:
    state = await SharedState.open(dsn, server.password(), source, hold_replica_lock=False)
    try:
        return {row.key: row.value for row in await state.rows(NAMESPACE)}
    finally:
        await state.close()


def admin_run(root: Path, *args: str) -> int:
    return admin.main(
        [
            "--config-dir", str(root / "config"), "--data-dir", str(root / "data"),
            "--backups-dir", str(root / "backups"), *args,
        ]
    )  # fmt: skip


@pytest.fixture
def shared(tree: Path, postgres: PostgresServer, shared_dsn: str) -> Path:
    """Both nodes with local databases; the agent's state in PostgreSQL."""
    configure(tree, postgres, shared_dsn)
    asyncio.run(_write(shared_dsn, postgres, key_of(tree), {"state": '{"count":7}'}))
    return tree


def test_verify_and_inspect_read_the_shared_state(
    shared: Path, postgres: PostgresServer, shared_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert admin_run(shared, "verify") == 0
    out = capsys.readouterr().out
    assert "shared agent_state/state (version 1): ok" in out
    assert "1 rows ok, 0 failed" in out
    assert admin_run(shared, "inspect") == 0
    assert 'agent_state/state (version 1): {"count":7}' in capsys.readouterr().out
    with psycopg.connect(shared_dsn, password=postgres.password(), autocommit=True) as conn:
        conn.execute("UPDATE pa_state SET version = 5")
    assert admin_run(shared, "verify") == 1
    assert "shared FAIL: row <key" in capsys.readouterr().out


def test_rotate_key_rewraps_the_shared_keys_and_refuses_while_a_replica_runs(
    shared: Path, postgres: PostgresServer, shared_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = checksums(shared / "config")
    with psycopg.connect(shared_dsn, password=postgres.password(), autocommit=True) as replica:
        replica.execute("SELECT pg_advisory_lock_shared(%s)", (REPLICAS_LOCK,))
        assert admin_run(shared, "rotate-key") != 0
        assert "agent replicas are running" in capsys.readouterr().err
    assert checksums(shared / "config") == before
    old = key_of(shared)
    assert admin_run(shared, "rotate-key") == 0
    assert "the shared state's 2 keys re-wrapped" in capsys.readouterr().out
    new = key_of(shared)
    assert asyncio.run(_read(shared_dsn, postgres, new)) == {"state": '{"count":7}'}
    with pytest.raises(SharedStateError, match="was made under master key"):
        asyncio.run(_read(shared_dsn, postgres, old))


def test_backup_survives_a_rotation_and_restores_into_an_empty_database(
    shared: Path, postgres: PostgresServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert admin_run(shared, "backup") == 0
    (taken,) = list((shared / "backups").iterdir())
    stored = json.loads((taken / BACKUP_FILE).read_text())
    assert "count" not in json.dumps(stored)  # as stored: sealed
    assert admin_run(shared, "rotate-key") == 0
    # Restoring into the same, non-empty database is refused before anything moves.
    assert admin_run(shared, "restore", str(taken), "--force") != 0
    assert "is not empty" in capsys.readouterr().err
    empty = postgres.create_database("restored", fresh=True)
    configure(shared, postgres, empty)
    assert admin_run(shared, "restore", str(taken), "--force") == 0
    assert "1 rows restored" in capsys.readouterr().out
    assert asyncio.run(_read(empty, postgres, key_of(shared))) == {"state": '{"count":7}'}


def test_migrate_state_copies_the_local_state_once(
    tree: Path, postgres: PostgresServer, shared_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    configure(tree, postgres, shared_dsn)
    local = checksums(tree / "data")
    assert admin_run(tree, "migrate-state") == 0
    assert "25 rows of agent_state copied" in capsys.readouterr().out
    rows = asyncio.run(_read(shared_dsn, postgres, key_of(tree)))
    assert len(rows) == 25 and "SECRET-agent-0" in rows["agent-agent_state-0"]
    assert checksums(tree / "data") == local  # the local file is left as it was
    assert admin_run(tree, "migrate-state") != 0
    assert "migrate-state runs once" in capsys.readouterr().err


def test_tools_say_when_the_key_is_not_the_shared_states(
    shared: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from persistent_agent.keys.master_key import generate_master_key

    shutil.copy(config_files.key_file(shared / "config"), shared / "kept.key")
    write_key_file(config_files.key_file(shared / "config"), generate_master_key())
    assert admin_run(shared, "inspect") != 0
    err = capsys.readouterr().err
    assert "was made under master key" in err and len(err.strip().splitlines()) == 1
