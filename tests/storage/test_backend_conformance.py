"""What every ``StateBackend`` must do, run against each backend on real storage.

The SQLCipher backend runs on real files under tmp_path, the PostgreSQL one on
the session's real server (a fresh database per test). A new backend adds one
entry to ``BACKENDS`` and one branch to ``harness`` (docs/extending.md), and
must pass everything here unchanged: the ``StoredTables`` part too (what
backup, restore and rotate-key need), for which its harness says how to open
its storage as the tools do.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from persistent_agent.demo.postgres_server import PostgresServer
from persistent_agent.errors import (
    PersistentAgentError,
    ServicesRunningError,
    SharedStateConflictError,
)
from persistent_agent.keys.custody import KeySource
from persistent_agent.keys.master_key import MasterKey, generate_master_key, parse_master_key
from persistent_agent.node.state import TransactionalAgent, VersionedAgentState
from persistent_agent.ops import shared_tools
from persistent_agent.storage import database, layout
from persistent_agent.storage.backend import (
    BackendKeyValueStore,
    BackendStorageProvider,
    RecordedRequest,
    Request,
    Row,
    StateBackend,
    StoredTables,
    VersionedStore,
)
from persistent_agent.storage.shared_state import SharedState
from persistent_agent.storage.sqlcipher_backend import SQLCipherBackend

from ..conftest import pg_dump

BACKENDS = ["sqlcipher", "postgres"]
# All but these are StoredTables too, as backup, restore and rotate-key need: the
# SQLCipher backend is the node's own files, which those tools handle as files.
NOT_STORED_TABLES = {"sqlcipher"}
STORED_TABLES = [name for name in BACKENDS if name not in NOT_STORED_TABLES]
NS = "alpha"
OTHER = "beta"
SECRET = "conformance-secret-6b1d"  # noqa: S105 - a value to look for


@dataclass
class Harness:
    """One backend under test: how to open it, damage its storage, and read it raw."""

    name: str
    opener: Callable[[], Awaitable[StateBackend]]
    tamper: Callable[[], None]  # alter stored rows behind the backend's back
    raw: Callable[[], bytes]  # everything the storage holds, as it holds it
    backend: StateBackend | None = None
    # A StoredTables backend's harness says, for that part of the suite, how to open
    # as the operator tools do (no replica's lock): this storage with a key of the
    # test's choosing; another storage of the same kind, empty at first (the same
    # one on every call), with the test's key; and a node writing to this storage,
    # which writers_stopped must see (None if the backend cannot tell).
    with_key: Callable[[KeySource], Awaitable[StateBackend]] | None = None
    elsewhere: Callable[[], Awaitable[StateBackend]] | None = None
    writer: Callable[[], Awaitable[StateBackend]] | None = None

    async def open(self) -> StateBackend:
        await self.close()
        self.backend = await self.opener()
        return self.backend

    async def close(self) -> None:
        if self.backend is not None:
            backend, self.backend = self.backend, None
            await backend.close()


def _sqlcipher(db_dir: Path, master_key: MasterKey) -> Harness:
    async def opener() -> StateBackend:
        return SQLCipherBackend.open(db_dir, master_key)

    def tamper() -> None:
        # One byte in the middle of every page after the schema page: the kv rows.
        for path in layout.database_files(db_dir):
            data = bytearray(path.read_bytes())
            for page in range(1, len(data) // database.PAGE_SIZE):
                data[page * database.PAGE_SIZE + database.PAGE_SIZE // 2] ^= 0x01
            path.write_bytes(bytes(data))

    def raw() -> bytes:
        return b"".join(p.read_bytes() for p in sorted(db_dir.rglob("*")) if p.is_file())

    return Harness("sqlcipher", opener, tamper, raw)


def _postgres(postgres: PostgresServer, dsn: str, other: str, master_key: MasterKey) -> Harness:
    """*other*: the name of the database ``elsewhere`` opens (made on first use)."""

    async def opener() -> StateBackend:
        return await SharedState.open(
            dsn, postgres.password(), KeySource.local(master_key), hold_replica_lock=False
        )

    async def with_key(source: KeySource) -> StateBackend:
        return await SharedState.open(dsn, postgres.password(), source, hold_replica_lock=False)

    made: list[str] = []

    async def elsewhere() -> StateBackend:
        if not made:
            made.append(postgres.create_database(other, fresh=True))
        return await SharedState.open(
            made[0], postgres.password(), KeySource.local(master_key), hold_replica_lock=False
        )

    async def writer() -> StateBackend:
        return await SharedState.open(dsn, postgres.password(), KeySource.local(master_key))

    def tamper() -> None:
        with psycopg.connect(dsn, password=postgres.password(), autocommit=True) as conn:
            conn.execute("UPDATE pa_state SET version = version + 1")

    def raw() -> bytes:
        return pg_dump(postgres, dsn).encode()

    return Harness("postgres", opener, tamper, raw, None, with_key, elsewhere, writer)


@pytest.fixture(params=BACKENDS)
async def harness(
    request: pytest.FixtureRequest, tmp_path: Path, master_key: MasterKey
) -> AsyncIterator[Harness]:
    if request.param == "sqlcipher":
        made = _sqlcipher(tmp_path / "db", master_key)
    else:
        other = "t_" + hashlib.sha256(f"{request.node.nodeid}/b".encode()).hexdigest()[:16]
        made = _postgres(
            request.getfixturevalue("postgres"),
            request.getfixturevalue("shared_dsn"),
            other,
            master_key,
        )
    await made.open()
    yield made
    await made.close()


@pytest.fixture
def backend(harness: Harness) -> StateBackend:
    assert harness.backend is not None
    return harness.backend


# ---------------------------------------------------------------- the key-value contract


async def test_it_is_a_state_backend(backend: StateBackend) -> None:
    assert isinstance(backend, StateBackend)
    assert backend.where and SECRET not in backend.where


async def test_a_missing_row_reads_as_none(backend: StateBackend) -> None:
    assert await backend.read(NS, "absent") is None


async def test_a_write_reads_back_at_version_1_then_2(backend: StateBackend) -> None:
    assert await backend.write(NS, "k", '{"n":1}', 0)
    assert await backend.read(NS, "k") == Row(NS, "k", '{"n":1}', 1)
    assert await backend.write(NS, "k", '{"n":2}', 1)
    assert await backend.read(NS, "k") == Row(NS, "k", '{"n":2}', 2)


async def test_namespaces_keep_their_own_rows(backend: StateBackend) -> None:
    assert await backend.write(NS, "k", '"a"', 0)
    assert await backend.write(OTHER, "k", '"b"', 0)
    assert (await backend.read(NS, "k"), await backend.read(OTHER, "k")) == (
        Row(NS, "k", '"a"', 1),
        Row(OTHER, "k", '"b"', 1),
    )


async def test_rows_outlive_the_backend(harness: Harness, backend: StateBackend) -> None:
    assert await backend.write(NS, "k", '{"kept":true}', 0)
    reopened = await harness.open()
    row = await reopened.read(NS, "k")
    assert row is not None and row.value == '{"kept":true}' and row.version >= 1
    assert await reopened.write(NS, "k", '{"kept":"again"}', row.version)


async def test_values_and_names_are_not_stored_in_plaintext(
    harness: Harness, backend: StateBackend
) -> None:
    assert await backend.write(NS, "key-name-5d0e", f'"{SECRET}"', 0)
    await harness.close()  # everything on disk, nothing only in a cache
    stored = harness.raw()
    assert stored  # the storage holds something
    assert SECRET.encode() not in stored and b"key-name-5d0e" not in stored


# ---------------------------------------------------------------- versions, compare-and-set


async def test_a_stale_version_is_refused_and_changes_nothing(backend: StateBackend) -> None:
    assert await backend.write(NS, "k", '"first"', 0)
    assert not await backend.write(NS, "k", '"again as new"', 0)  # it exists now
    assert await backend.write(NS, "k", '"second"', 1)
    assert not await backend.write(NS, "k", '"stale"', 1)
    assert not await backend.write(NS, "k", '"ahead"', 7)
    assert await backend.read(NS, "k") == Row(NS, "k", '"second"', 2)


async def test_concurrent_compare_and_set_loses_no_update(backend: StateBackend) -> None:
    """40 tasks read-modify-write one counter, retrying lost races: all 40 land."""

    async def increment() -> None:
        while True:
            row = await backend.read(NS, "counter")
            current, version = (0, 0) if row is None else (int(row.value), row.version)
            await asyncio.sleep(0)  # let the others read the same version
            if await backend.write(NS, "counter", str(current + 1), version):
                return

    await asyncio.gather(*(increment() for _ in range(40)))
    row = await backend.read(NS, "counter")
    assert row is not None and (row.value, row.version) == ("40", 40)


class Counter(VersionedAgentState):
    count: int = 0


class CounterAgent(TransactionalAgent[Counter]):
    def __init__(self) -> None:
        super().__init__(state_model=Counter, state_namespace=NS)


async def test_an_agent_transaction_on_a_stale_read_is_the_conflict_error(
    backend: StateBackend,
) -> None:
    """Two agents on one backend: the one whose read went stale gets SharedStateConflictError
    (the project's conflict error) and writes nothing."""
    provider = BackendStorageProvider(backend)
    first, second = CounterAgent(), CounterAgent()
    for agent in (first, second):
        agent._storage_provider = provider
    with pytest.raises(SharedStateConflictError, match="another replica changed"):
        async with first.state as draft:
            draft.count = 1
            await second.update_state(lambda state: setattr(state, "count", 5))
    assert (await first.get_state()).count == 5
    store = await provider.get_kv_store(Counter, NS)
    assert isinstance(store, VersionedStore)


# ---------------------------------------------------------------- request records


async def test_a_request_id_is_recorded_with_its_write_and_applies_once(
    backend: StateBackend,
) -> None:
    assert await backend.write(NS, "n", "1", 0, Request("req-1", '{"count":1}', "digest-1"))
    recorded = RecordedRequest('{"count":1}', "digest-1")
    assert await backend.request_record("req-1", NS) == recorded
    assert await backend.request_record("req-1") == recorded  # without the namespace too
    assert await backend.request_record("req-2", NS) is None
    # The same id again, even at the right version, is refused as a whole.
    assert not await backend.write(NS, "n", "2", 1, Request("req-1", '{"count":2}', "d2"))
    assert await backend.read(NS, "n") == Row(NS, "n", "1", 1)
    assert await backend.request_record("req-1", NS) == recorded


async def test_a_lost_race_records_no_request(backend: StateBackend) -> None:
    assert await backend.write(NS, "n", "1", 0)
    assert not await backend.write(NS, "n", "2", 0, Request("req-lost", '"r"', "d"))
    assert await backend.request_record("req-lost", NS) is None
    assert await backend.write(NS, "n", "2", 1, Request("req-lost", '"r"', "d"))


async def test_the_store_view_answers_request_records(backend: StateBackend) -> None:
    store = BackendKeyValueStore(backend, Counter, NS)
    assert await store.write_versioned("s", '{"count":3}', 0, Request("req-s", "3", "d"))
    assert await store.request_record("req-s") == RecordedRequest("3", "d")
    assert await store.read_versioned("s") == ('{"count":3}', 1)


# ---------------------------------------------------------------- delete


async def test_delete_removes_the_row_and_its_version(backend: StateBackend) -> None:
    assert await backend.write(NS, "k", '"v"', 0)
    assert await backend.write(NS, "k", '"w"', 1)
    await backend.delete(NS, "k")
    assert await backend.read(NS, "k") is None
    assert not await backend.write(NS, "k", '"x"', 2)  # the version went with the row
    assert await backend.write(NS, "k", '"x"', 0)
    await backend.delete(NS, "never-there")  # no error


# ---------------------------------------------------------------- streaming rows


async def _fill(backend: StateBackend) -> None:
    for key in ("c", "a", "b"):
        assert await backend.write(NS, key, f'"{key}"', 0)
    assert await backend.write(NS, "a", '"a2"', 1)
    assert await backend.write(OTHER, "z", '"z"', 0)


async def test_rows_stream_one_namespace(backend: StateBackend) -> None:
    await _fill(backend)
    expected = [Row(NS, "a", '"a2"', 2), Row(NS, "b", '"b"', 1), Row(NS, "c", '"c"', 1)]
    # In the backend's order (sealed names do not sort by key), the same each time.
    streamed = [row async for row in backend.rows(NS)]
    assert sorted(streamed, key=lambda row: row.key) == expected
    assert await backend.rows(NS) == streamed
    assert await backend.rows("empty") == []


async def test_a_stream_closed_half_read_gives_its_connection_back(
    backend: StateBackend,
) -> None:
    await _fill(backend)
    kept = []  # referenced, so only aclose() can end them (not the garbage collector)
    for _ in range(10):  # more than a PostgreSQL pool holds connections
        stream = backend.rows(NS)
        kept.append(stream)
        async with contextlib.aclosing(stream):
            first = await anext(stream)
            assert first.namespace == NS
    assert await backend.read(NS, "b") == Row(NS, "b", '"b"', 1)


async def test_the_store_view_is_the_runtimes_key_value_store(backend: StateBackend) -> None:
    store = BackendKeyValueStore(backend, Counter, OTHER)
    await store.set("y", Counter(count=2))
    await store.set("x", Counter(count=1))
    await store.update("x", Counter(count=3))
    with pytest.raises(KeyError):
        await store.update("absent", Counter())
    assert await store.list() == {"x": Counter(count=3), "y": Counter(count=2)}
    assert await store.get("x") == Counter(count=3)
    await store.set("y", None)
    assert await store.get("y") is None


# ---------------------------------------------------------------- what the tools need


async def test_all_rows_and_row_count_cover_every_namespace(backend: StateBackend) -> None:
    await _fill(backend)
    assert await backend.row_count() == 4
    assert await backend.all_rows() == [
        Row(NS, "a", '"a2"', 2),
        Row(NS, "b", '"b"', 1),
        Row(NS, "c", '"c"', 1),
        Row(OTHER, "z", '"z"', 1),
    ]


# ---------------------------------------------------------------- backup, restore, rotate-key
#
# What the operator tools need of a StoredTables backend (ops/shared_tools.py),
# each against its storage opened as the tools open it.


def _stored_tables(harness: Harness, backend: StateBackend) -> StoredTables:
    assert isinstance(backend, StoredTables), f"{harness.name}: backup would refuse it"
    assert harness.with_key is not None and harness.elsewhere is not None
    return backend


stored_tables = pytest.mark.parametrize("harness", STORED_TABLES, indirect=True)


def _tables(backend: StateBackend) -> StoredTables:
    assert isinstance(backend, StoredTables)
    return backend


async def _opens(opener: Awaitable[StateBackend]) -> None:
    await (await opener).close()


async def _until_writers(tables: StoredTables, *, running: bool) -> ServicesRunningError | None:
    """Wait until writers_stopped() refuses (*running*) or is held (not *running*): a
    node may take or drop its hold in the background (PostgreSQL: a task and a
    connection of its own). The refusal, if one."""
    deadline = time.monotonic() + 10.0
    while True:
        try:
            async with tables.writers_stopped():
                pass
        except ServicesRunningError as refused:
            if running:
                return refused
        else:
            if not running:
                return None
        assert time.monotonic() < deadline, f"running={running} never seen by writers_stopped"
        await asyncio.sleep(0.05)


@stored_tables
async def test_stored_records_load_into_an_empty_backend(
    harness: Harness, backend: StateBackend, master_key: MasterKey
) -> None:
    """A backup's round trip: stored() as backup writes it (JSON; bytes as hex,
    datetimes as text), load()ed into an empty backend of the kind, replacing the
    keyring that opening it made; reopened with the key, it reads every row back."""
    _stored_tables(harness, backend)
    assert harness.with_key is not None and harness.elsewhere is not None
    await _fill(backend)
    assert await backend.write(NS, "n", "1", 0, Request("req-b", '"r"', "digest-b"))
    expected = await backend.all_rows()
    await harness.close()
    tool = await harness.with_key(KeySource.local(master_key))
    try:
        source = _tables(tool)
        async with contextlib.aclosing(source.stored()) as records:
            stored = [(table, values) async for table, values in records]
        tables, rows_table = list(source.tables), source.rows_table
    finally:
        await tool.close()
    assert {table for table, _ in stored} <= set(tables) and stored[0][0] == tables[0]
    assert sum(table == rows_table for table, _ in stored) == len(expected)
    kept = json.loads(
        json.dumps([[t, [shared_tools._encode(v) for v in values]] for t, values in stored])
    )
    target = await harness.elsewhere()
    try:
        assert await target.row_count() == 0  # empty, with a keyring of its own
        await _tables(target).load(
            (table, [shared_tools._decode(v) for v in values]) for table, values in kept
        )
    finally:
        await target.close()
    restored = await harness.elsewhere()
    try:
        assert await restored.all_rows() == expected
        assert await restored.read(NS, "a") == Row(NS, "a", '"a2"', 2)
        assert await restored.request_record("req-b", NS) == RecordedRequest('"r"', "digest-b")
        assert await restored.write(NS, "a", '"a3"', 2)
    finally:
        await restored.close()


@stored_tables
async def test_rewrap_moves_the_keys_to_the_new_master_key(
    harness: Harness, backend: StateBackend, master_key: MasterKey
) -> None:
    """After rewrap(old, new) the backend opens with the new key and reads its rows;
    the old key is refused, in one line."""
    _stored_tables(harness, backend)
    assert harness.with_key is not None
    assert await backend.write(NS, "k", f'"{SECRET}"', 0)
    await harness.close()
    old = KeySource.local(master_key)
    new = KeySource.local(parse_master_key(generate_master_key()))
    with pytest.raises(PersistentAgentError):  # not yet
        await _opens(harness.with_key(new))
    tool = await harness.with_key(old)
    try:
        assert await _tables(tool).rewrap(old.wrapper, new.wrapper) >= 1
    finally:
        await tool.close()
    moved = await harness.with_key(new)
    try:
        assert await moved.read(NS, "k") == Row(NS, "k", f'"{SECRET}"', 1)
        assert await _tables(moved).rewrap(old.wrapper, new.wrapper) >= 1  # again: a no-op
    finally:
        await moved.close()
    with pytest.raises(PersistentAgentError) as refused:
        await _opens(harness.with_key(old))
    assert "\n" not in str(refused.value) and SECRET not in str(refused.value)
    await _opens(harness.with_key(new))


@stored_tables
async def test_writers_stopped_refuses_while_a_node_writes(
    harness: Harness, backend: StateBackend, master_key: MasterKey
) -> None:
    """writers_stopped() is held when no node runs against the backend; while one
    does it refuses in one line, and so do rewrap and load, changing nothing."""
    _stored_tables(harness, backend)
    assert harness.with_key is not None
    if harness.writer is None:
        pytest.skip(f"{harness.name} cannot tell whether a node writes to it")
    assert await backend.write(NS, "k", '"v"', 0)
    await harness.close()
    source = KeySource.local(master_key)
    new = KeySource.local(parse_master_key(generate_master_key()))
    tool = await harness.with_key(source)
    try:
        async with _tables(tool).writers_stopped():
            pass  # nobody writes
        node = await harness.writer()
        try:
            running = await _until_writers(_tables(tool), running=True)
            assert running is not None and str(running) and "\n" not in str(running)
            with pytest.raises(ServicesRunningError):
                await _tables(tool).rewrap(source.wrapper, new.wrapper)
            with pytest.raises(ServicesRunningError):
                await _tables(tool).load([])
            assert await node.read(NS, "k") == Row(NS, "k", '"v"', 1)
        finally:
            await node.close()
        await _until_writers(_tables(tool), running=False)  # its hold went with it
    finally:
        await tool.close()
    unchanged = await harness.with_key(source)  # the refused rewrap moved nothing
    try:
        assert await unchanged.read(NS, "k") == Row(NS, "k", '"v"', 1)
    finally:
        await unchanged.close()


# ---------------------------------------------------------------- errors


async def test_a_row_altered_in_storage_is_reported_never_served(
    harness: Harness, backend: StateBackend
) -> None:
    """Damage behind the backend's back: opening it, or reading the row, fails naming it,
    and verify's view lists the failure; the value never comes back."""
    assert await backend.write(NS, "k", f'"{SECRET}"', 0)
    assert await backend.write(NS, "other", '"fine"', 0)
    await harness.close()
    harness.tamper()
    try:
        reopened = await harness.open()
    except PersistentAgentError as at_open:  # checked as it opens (SQLCipher)
        assert SECRET not in str(at_open) and "\n" not in str(at_open)
        return
    with pytest.raises(PersistentAgentError) as at_read:
        await reopened.read(NS, "k")
    assert SECRET not in str(at_read.value) and f"{NS}/k" in str(at_read.value)
    listed = await reopened.all_rows()
    failures = [entry for entry in listed if not isinstance(entry, Row)]
    assert failures and all(SECRET not in str(f) for f in failures)
    assert not any(isinstance(entry, Row) and SECRET in entry.value for entry in listed)


def test_the_protocol_the_sealing_and_the_agent_state_load_no_database_driver() -> None:
    """node.state, storage.backend and storage.sealing import neither psycopg nor, for
    the last two, sqlcipher3: a profile that does not use a driver never loads it."""
    code = (
        "import sys, persistent_agent.storage.backend, persistent_agent.storage.sealing\n"
        "print('sqlcipher3' in sys.modules, 'psycopg' in sys.modules)\n"
        "import persistent_agent.node.state\n"
        "print('psycopg' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "False", "False"]
