"""The storage-events hook (``storage.events``) on every path a running node's storage takes.

Three real stores: the ``encrypted-sqlite`` provider's own key-value store
(SQLCipher files), the SQLCipher backend served as a storage provider, and
the PostgreSQL backend behind the ``encrypted-postgres`` provider. Each must
give observations for every operation and one change record per commit, in
order, and hold a call's acknowledgement back while a listener holds its record.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from naylence.fame.storage.key_value_store import KeyValueStore
from pydantic import BaseModel

from persistent_agent.demo.postgres_server import PostgresServer
from persistent_agent.errors import SharedRowError
from persistent_agent.keys.custody import KeySource
from persistent_agent.keys.master_key import MasterKey
from persistent_agent.node.state import TransactionalAgent, VersionedAgentState
from persistent_agent.storage import events
from persistent_agent.storage.backend import BackendStorageProvider
from persistent_agent.storage.provider import SQLCipherStorageProvider
from persistent_agent.storage.shared_provider import SharedStateStorageProvider
from persistent_agent.storage.shared_state import SharedState
from persistent_agent.storage.sqlcipher_backend import SQLCipherBackend

STORES = ["sqlcipher-files", "sqlcipher-backend", "postgres"]
NS = "events_ns"


class Doc(BaseModel):
    n: int


class Recorder(events.StorageListener):
    """Keeps what it hears; may hold change records back until released."""

    def __init__(self) -> None:
        self.observations: list[events.Observation] = []
        self.batches: list[events.ChangeBatch] = []
        self.hold = False
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    def observed(self, event: events.Observation) -> None:
        self.observations.append(event)

    async def committed(self, batch: events.ChangeBatch) -> None:
        self.batches.append(batch)
        if self.hold:
            self.holding.set()
            await self.release.wait()


@pytest.fixture(params=STORES)
async def provider(
    request: pytest.FixtureRequest, tmp_path: Path, master_key: MasterKey
) -> AsyncIterator[SQLCipherStorageProvider | BackendStorageProvider | SharedStateStorageProvider]:
    if request.param == "sqlcipher-files":
        files = SQLCipherStorageProvider(tmp_path / "db", master_key)
        yield files
        files.close()
    elif request.param == "sqlcipher-backend":
        backend = BackendStorageProvider(SQLCipherBackend.open(tmp_path / "db", master_key))
        yield backend
        await backend.close()
    else:
        postgres: PostgresServer = request.getfixturevalue("postgres")
        shared = await SharedState.open(
            request.getfixturevalue("shared_dsn"),
            postgres.password(),
            KeySource.local(master_key),
            hold_replica_lock=False,
        )
        both = SharedStateStorageProvider(
            SQLCipherStorageProvider(tmp_path / "db", master_key), shared
        )
        yield both
        await both.close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    heard = Recorder()
    stop = events.listen(heard)
    yield heard
    stop()


async def _store(provider: object) -> KeyValueStore[Doc]:
    assert isinstance(
        provider, SQLCipherStorageProvider | BackendStorageProvider | SharedStateStorageProvider
    )
    return await provider.get_kv_store(Doc, NS)


def _changes(recorder: Recorder) -> list[tuple[str, str | None]]:
    return [(c.key, c.value) for batch in recorder.batches for c in batch.changes]


async def test_every_operation_is_observed_in_order(provider: object, recorder: Recorder) -> None:
    store = await _store(provider)
    await store.set("a", Doc(n=1))
    await store.update("a", Doc(n=2))
    assert await store.get("a") == Doc(n=2)
    assert await store.list() == {"a": Doc(n=2)}
    await store.delete("a")
    assert [(o.operation, o.namespace, o.outcome) for o in recorder.observations] == [
        ("set", NS, "ok"),
        ("update", NS, "ok"),
        ("get", NS, "ok"),
        ("list", NS, "ok"),
        ("delete", NS, "ok"),
    ]
    assert all(o.duration >= 0 and o.error_kind is None for o in recorder.observations)


async def test_each_commit_is_one_change_record_in_commit_order(
    provider: object, recorder: Recorder
) -> None:
    store = await _store(provider)
    await store.set("a", Doc(n=1))
    await store.set("b", Doc(n=2))
    await store.update("a", Doc(n=3))
    await store.get("a")  # reads commit nothing
    await store.delete("b")
    assert _changes(recorder) == [("a", '{"n":1}'), ("b", '{"n":2}'), ("a", '{"n":3}'), ("b", None)]
    sequences = [batch.sequence for batch in recorder.batches]
    assert sequences == list(range(sequences[0], sequences[0] + 4))
    assert all(len(batch.changes) == 1 for batch in recorder.batches)
    assert {c.namespace for batch in recorder.batches for c in batch.changes} == {NS}


async def test_a_held_back_change_record_holds_the_acknowledgement_back(
    provider: object, recorder: Recorder
) -> None:
    """While a listener holds the first commit's record, its call is not acknowledged,
    and a second commit's record waits behind it: both are delivered in commit order."""
    store = await _store(provider)
    recorder.hold = True
    first = asyncio.create_task(store.set("a", Doc(n=1)))
    await recorder.holding.wait()
    assert not first.done()
    # The change is committed already; only its acknowledgement waits.
    second = asyncio.create_task(store.set("b", Doc(n=2)))
    deadline = asyncio.get_running_loop().time() + 30
    while await store.get("b") is None:  # the second commit happened...
        assert asyncio.get_running_loop().time() < deadline, "the second write never committed"
        await asyncio.sleep(0)
    assert not first.done() and not second.done()  # ...and waits behind the first's record
    assert _changes(recorder) == [("a", '{"n":1}')]
    recorder.hold = False
    recorder.release.set()
    await asyncio.gather(first, second)
    assert _changes(recorder) == [("a", '{"n":1}'), ("b", '{"n":2}')]
    assert recorder.batches[1].sequence == recorder.batches[0].sequence + 1


async def test_an_error_is_an_outcome_error_event(provider: object, recorder: Recorder) -> None:
    store = await _store(provider)
    with pytest.raises(KeyError):
        await store.update("absent", Doc(n=1))
    (event,) = recorder.observations
    assert (event.operation, event.outcome, event.error_kind) == ("update", "error", "KeyError")
    assert recorder.batches == []  # nothing was committed


async def test_a_damaged_shared_row_is_an_outcome_error_event(
    postgres: PostgresServer, shared_dsn: str, master_key: MasterKey, recorder: Recorder
) -> None:
    state = await SharedState.open(
        shared_dsn, postgres.password(), KeySource.local(master_key), hold_replica_lock=False
    )
    try:
        store = await BackendStorageProvider(state).get_kv_store(Doc, NS)
        await store.set("a", Doc(n=1))
        with psycopg.connect(shared_dsn, password=postgres.password(), autocommit=True) as conn:
            conn.execute("UPDATE pa_state SET version = version + 1")
        with pytest.raises(SharedRowError):
            await store.get("a")
    finally:
        await state.close()
    assert [(o.operation, o.outcome, o.error_kind) for o in recorder.observations] == [
        ("set", "ok", None),
        ("get", "error", "SharedRowError"),
    ]


class Counter(VersionedAgentState):
    count: int = 0


class CounterAgent(TransactionalAgent[Counter]):
    def __init__(self) -> None:
        super().__init__(state_model=Counter, state_namespace=NS)


async def test_the_agents_transactions_are_change_records_with_their_request_id(
    provider: object, recorder: Recorder
) -> None:
    agent = CounterAgent()
    agent._storage_provider = provider
    await agent.update_state(lambda s: setattr(s, "count", 1), request_id="req-1")
    async with agent.state as draft:
        draft.count = 2
    # The SDK's own path stores the initial state first (a commit of its own).
    *_, recorded, plain = [c for batch in recorder.batches for c in batch.changes]
    assert (recorded.request_id, plain.request_id) == ("req-1", None)
    assert recorded.value is not None and '"count":1' in recorded.value
    if recorded.version is not None:  # backends keep versions; the node's own files do not
        assert (recorded.version, plain.version) == (1, 2)


async def test_a_listener_that_raises_does_not_fail_the_operation(
    provider: object, recorder: Recorder
) -> None:
    class Broken(events.StorageListener):
        def observed(self, event: events.Observation) -> None:
            raise RuntimeError("listener bug")

    stop = events.listen(Broken())
    try:
        store = await _store(provider)
        await store.set("a", Doc(n=1))
    finally:
        stop()
    assert [o.outcome for o in recorder.observations] == ["ok"]


async def test_with_no_listener_a_store_runs_its_methods_as_written(
    tmp_path: Path, master_key: MasterKey
) -> None:
    """No listener, no wrapper: the store classes hold their own methods, which is
    what makes the hook free when nobody listens (``bench/events.py`` measures it)."""
    from persistent_agent.storage.backend import BackendKeyValueStore
    from persistent_agent.storage.provider import SQLCipherKeyValueStore

    assert events.HOOK.observers == () and events.HOOK.recorders == ()
    classes = (SQLCipherKeyValueStore, BackendKeyValueStore)
    for cls in classes:
        assert all(not hasattr(getattr(cls, op), "__wrapped__") for op in ("get", "set", "list"))
    heard = Recorder()
    stop = events.listen(heard)
    try:
        for cls in classes:
            assert all(hasattr(getattr(cls, op), "__wrapped__") for op in ("get", "set", "list"))
        files = SQLCipherStorageProvider(tmp_path / "db", master_key)
        try:
            store = await files.get_kv_store(Doc, NS)
            await store.set("a", Doc(n=1))
        finally:
            files.close()
    finally:
        stop()
    assert [o.operation for o in heard.observations] == ["set"]
    for cls in classes:
        assert all(not hasattr(getattr(cls, op), "__wrapped__") for op in ("get", "set", "list"))
