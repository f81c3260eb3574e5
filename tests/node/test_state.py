"""Agent state: all-or-nothing transactions and schema versions, on real SQLCipher."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TypeVar

import pytest
from naylence.agent import BaseAgent, BaseAgentState

from persistent_agent.errors import StateVersionError
from persistent_agent.keys.master_key import MasterKey
from persistent_agent.node.agent import STATE_NAMESPACE, CustomAgentState, PersistentAgent
from persistent_agent.node.state import TransactionalAgent, VersionedAgentState
from persistent_agent.storage import database, layout
from persistent_agent.storage.provider import SQLCipherStorageProvider

from ..data_keys import data_key


class Counter(VersionedAgentState):
    count: int = 0
    note: str | None = None


class PlainState(BaseAgentState):
    count: int = 0
    note: str | None = None


class SdkAgent(BaseAgent[PlainState]):
    def __init__(self) -> None:
        super().__init__(state_model=PlainState, state_namespace="plain")


class OurAgent(TransactionalAgent[Counter]):
    def __init__(self) -> None:
        super().__init__(state_model=Counter, state_namespace="counter")


AgentT = TypeVar("AgentT", bound=BaseAgent)


def _attach(agent: AgentT, provider: SQLCipherStorageProvider) -> AgentT:
    # Outside a node the SDK finds no storage provider; hand it ours directly.
    agent._storage_provider = provider
    return agent


def _stored(db_dir: Path, key: MasterKey, namespace: str) -> dict[str, object]:
    path = db_dir / layout.file_name(namespace)
    with database.opened(path, data_key(path, key), read_only=True) as conn:
        return dict((k, json.loads(v)) for k, v in database.rows(conn))


class Boom(Exception):
    pass


async def test_sdk_state_keeps_half_made_changes_after_an_exception(
    db_dir: Path, master_key: MasterKey
) -> None:
    """Upstream behaviour we guard against: the SDK leaves unsaved changes in memory."""
    agent = _attach(SdkAgent(), SQLCipherStorageProvider(db_dir, master_key))
    with pytest.raises(Boom):
        async with agent.state as s:
            s.note = "never saved"
            raise Boom
    assert (await agent.get_state()).note == "never saved"  # in memory
    assert _stored(db_dir, master_key, "plain")["state"] == {"count": 0, "note": None}  # on disk


async def test_our_state_transactions_are_all_or_nothing(
    db_dir: Path, master_key: MasterKey
) -> None:
    """An exception inside `async with self.state` changes neither memory nor disk."""
    agent = _attach(OurAgent(), SQLCipherStorageProvider(db_dir, master_key))
    async with agent.state as s:
        s.count = 1
    with pytest.raises(Boom):
        async with agent.state as s:
            s.count = 99
            s.note = "never saved"
            raise Boom
    state = await agent.get_state()
    assert (state.count, state.note) == (1, None)
    assert _stored(db_dir, master_key, "counter")["state"]["count"] == 1  # type: ignore[index]


async def test_invalid_state_is_refused_and_nothing_changes(
    db_dir: Path, master_key: MasterKey
) -> None:
    """A draft that no longer fits the model (assignments are unchecked) is not saved."""
    agent = _attach(OurAgent(), SQLCipherStorageProvider(db_dir, master_key))
    with pytest.raises(ValueError, match="count"):
        async with agent.state as s:
            s.count = "many"  # type: ignore[assignment]
    assert (await agent.get_state()).count == 0


async def test_get_state_returns_a_copy(db_dir: Path, master_key: MasterKey) -> None:
    """Mutating what get_state() returned does not leak into the agent's state."""
    agent = _attach(OurAgent(), SQLCipherStorageProvider(db_dir, master_key))
    snapshot = await agent.get_state()
    snapshot.count = 42
    assert (await agent.get_state()).count == 0


async def test_concurrent_read_modify_write_loses_no_update(
    db_dir: Path, master_key: MasterKey
) -> None:
    """500 concurrent increments through `async with self.state` all land, in memory and on disk."""
    provider = SQLCipherStorageProvider(db_dir, master_key)
    agent = _attach(OurAgent(), provider)

    async def increment() -> None:
        async with agent.state as s:
            current = s.count
            await asyncio.sleep(0)  # let every other transaction try to interleave here
            s.count = current + 1

    await asyncio.gather(*(increment() for _ in range(500)))
    assert (await agent.get_state()).count == 500
    provider.close()
    assert _stored(db_dir, master_key, "counter")["state"]["count"] == 500  # type: ignore[index]


def _write_raw(db_dir: Path, key: MasterKey, document: dict[str, object]) -> Path:
    path = db_dir / layout.file_name(STATE_NAMESPACE)
    db_dir.mkdir(parents=True, exist_ok=True)
    with database.opened(path, data_key(path, key)) as conn:
        conn.execute("INSERT INTO kv (key, value) VALUES ('state', ?)", (json.dumps(document),))
    return path


async def test_version_1_state_is_migrated(db_dir: Path, master_key: MasterKey) -> None:
    """State written by the seed-shaped v1 model loads as v3 (count 0) and is saved as v3."""
    _write_raw(db_dir, master_key, {"value": "from-v1"})
    provider = SQLCipherStorageProvider(db_dir, master_key)
    agent = _attach(PersistentAgent(), provider)
    state = await agent.get_state()
    assert (state.value, state.updated_at, state.count, state.schema_version) == (
        "from-v1",
        None,
        0,
        3,
    )
    await agent.store_value("now-v2")
    provider.close()
    stored = _stored(db_dir, master_key, STATE_NAMESPACE)["state"]
    assert stored["schema_version"] == 3  # type: ignore[index]
    assert stored["value"] == "now-v2"  # type: ignore[index]
    assert isinstance(stored["updated_at"], float)  # type: ignore[index]


async def test_newer_state_version_is_refused_and_left_untouched(
    db_dir: Path, master_key: MasterKey
) -> None:
    """A document from schema version 4 is refused with one line; its bytes stay."""
    path = _write_raw(db_dir, master_key, {"schema_version": 4, "value": "future", "x": 1})
    before = _stored(db_dir, master_key, STATE_NAMESPACE)
    agent = _attach(PersistentAgent(), SQLCipherStorageProvider(db_dir, master_key))
    with pytest.raises(StateVersionError, match="schema_version 4, newer than this agent's 3"):
        await agent.get_state()
    with pytest.raises(StateVersionError):
        await agent.store_value("would overwrite")
    assert _stored(db_dir, master_key, STATE_NAMESPACE) == before
    assert path.exists()


def test_migrations_cover_every_step() -> None:
    """Each version below the current one has a migration to the next."""
    model = CustomAgentState
    assert set(model.MIGRATIONS) == set(range(1, model.SCHEMA_VERSION))


@pytest.fixture(params=["encrypted-sqlite", "encrypted-postgres"])
def storage_config(
    request: pytest.FixtureRequest, db_dir: Path, master_key_hex: str
) -> dict[str, str]:
    """The storage of an in-process node, in each of the two profiles."""
    config = {
        "type": "SQLCipherStorageProvider",
        "db_directory": str(db_dir),
        "master_key": master_key_hex,
    }
    if request.param == "encrypted-postgres":
        server = request.getfixturevalue("postgres")
        config |= {
            "type": "SharedStateStorageProvider",
            "postgres_dsn": request.getfixturevalue("shared_dsn"),
            "postgres_password_file": str(server.password_file),
        }
    return config


async def test_a_request_id_reused_with_other_arguments_and_out_of_range_n_are_refused(
    storage_config: dict[str, str],
) -> None:
    """increment(5, id) then increment(100, id) is an error naming the id, not a silent
    acknowledgement; increment(-1) and increment(10**30) are refused; nothing is applied."""
    from naylence.agent import Agent
    from naylence.fame.core import FameFabric

    config = {"node": {"type": "Node", "id": "state-test", "storage": storage_config}}
    async with FameFabric.create(root_config=config) as fabric:
        address = await fabric.serve(PersistentAgent(), "counter")
        agent = Agent.remote_by_address(address, fabric=fabric)
        first = await agent.increment(n=5, request_id="req-5f1c")
        assert first["count"] == 5
        assert await agent.increment(n=5, request_id="req-5f1c") == first  # a retry: unapplied
        with pytest.raises(Exception, match="request id req-5f1c was already used by a call "):
            await agent.increment(n=100, request_id="req-5f1c")
        for n in (-1, 10**30):
            with pytest.raises(Exception, match=r"from 0 to 2147483647 \(2\*\*31-1\)"):
                await agent.increment(n=n, request_id=f"req-{n}")
        assert (await agent.increment(n=0))["count"] == 5
