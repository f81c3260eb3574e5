"""The shared state on a real PostgreSQL server: what the server sees, and what it cannot fake."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from pydantic import BaseModel

from persistent_agent.demo.postgres_server import PostgresServer
from persistent_agent.errors import SharedRowError, SharedStateError
from persistent_agent.keys.custody import KeySource
from persistent_agent.keys.master_key import MasterKey, generate_master_key, parse_master_key
from persistent_agent.storage.provider import RecordedRequest, Request
from persistent_agent.storage.shared_state import SharedKeyValueStore, SharedState

from ..conftest import pg_dump

SECRET = "the-secret-value-7f3a"  # noqa: S105 - a value to look for
NAMESPACE = "agent_state"


class Doc(BaseModel):
    value: str


@pytest.fixture
async def state(
    shared_dsn: str, postgres: PostgresServer, master_key: MasterKey
) -> AsyncIterator[SharedState]:
    opened = await SharedState.open(shared_dsn, postgres.password(), KeySource.local(master_key))
    yield opened
    await opened.close()


def store(state: SharedState) -> SharedKeyValueStore[Doc]:
    return SharedKeyValueStore(state, Doc, NAMESPACE)


def sql(postgres: PostgresServer, dsn: str, query: str) -> None:
    with psycopg.connect(dsn, password=postgres.password(), autocommit=True) as conn:
        conn.execute(query.encode())


async def test_values_and_names_never_reach_the_server_in_plaintext(
    state: SharedState, postgres: PostgresServer, shared_dsn: str
) -> None:
    """Neither pg_dump nor the server's data files hold a value, a namespace or a key name."""
    kv = store(state)
    await kv.set("secret-key-name", Doc(value=SECRET))
    assert await state.write(
        NAMESPACE, "tally-key-31c9", '{"value":"1"}', 0, Request("request-id-4242", '{"n":1}')
    )
    dump = pg_dump(postgres, shared_dsn)
    assert "pa_state" in dump and "COPY public.pa_state" in dump  # the rows are in it
    sql(postgres, shared_dsn, "CHECKPOINT")
    files = b"".join(p.read_bytes() for p in postgres.cluster.rglob("*") if p.is_file())
    for plaintext in (SECRET, NAMESPACE, "secret-key-name", "tally-key-31c9", "request-id-4242"):
        assert plaintext not in dump, plaintext
        assert plaintext.encode() not in files, plaintext
    assert (await kv.get("secret-key-name")) == Doc(value=SECRET)
    assert sorted(await kv.list()) == ["secret-key-name", "tally-key-31c9"]


async def test_a_ciphertext_moved_to_another_row_is_refused_naming_the_row(
    state: SharedState, postgres: PostgresServer, shared_dsn: str
) -> None:
    kv = store(state)
    await kv.set("a", Doc(value="A"))
    await kv.set("b", Doc(value="B"))
    _, key_b = state._names(NAMESPACE, "b")
    _, key_a = state._names(NAMESPACE, "a")
    sql(
        postgres,
        shared_dsn,
        f"UPDATE pa_state SET sealed = (SELECT sealed FROM pa_state WHERE key = "  # noqa: S608
        f"'\\x{key_a.hex()}') WHERE key = '\\x{key_b.hex()}'",
    )
    with pytest.raises(SharedRowError, match=r"row agent_state/b \(version 1\).*does not decrypt"):
        await kv.get("b")
    assert (await kv.get("a")) == Doc(value="A")


async def test_a_version_changed_by_hand_is_refused(
    state: SharedState, postgres: PostgresServer, shared_dsn: str
) -> None:
    kv = store(state)
    await kv.set("a", Doc(value="A"))
    sql(postgres, shared_dsn, "UPDATE pa_state SET version = version + 1")
    with pytest.raises(SharedRowError, match=r"row agent_state/a \(version 2\)"):
        await kv.get("a")


async def test_a_wrong_master_key_fails_before_writing_anything(
    state: SharedState, postgres: PostgresServer, shared_dsn: str
) -> None:
    await store(state).set("a", Doc(value="A"))
    before = pg_dump(postgres, shared_dsn)
    other = generate_master_key()
    with pytest.raises(SharedStateError, match="was made under master key") as refused:
        await SharedState.open(
            shared_dsn, postgres.password(), KeySource.local(parse_master_key(other))
        )
    assert "\n" not in str(refused.value) and other not in str(refused.value)
    assert pg_dump(postgres, shared_dsn) == before


async def test_compare_and_set_refuses_a_write_from_a_stale_read(state: SharedState) -> None:
    kv = store(state)
    await kv.set("a", Doc(value="first"))
    _, version = await kv.read_versioned("a")
    assert version == 1
    assert await kv.write_versioned("a", Doc(value="second").model_dump_json(), version)
    assert not await kv.write_versioned("a", Doc(value="stale").model_dump_json(), version)
    assert (await kv.get("a")) == Doc(value="second")
    assert (await kv.read_versioned("a"))[1] == 2


async def test_a_request_id_is_applied_once(state: SharedState) -> None:
    assert await state.write(NAMESPACE, "n", "1", 0, Request("req-1", '{"count":1}', "digest-1"))
    # The same id again, even at the right version, is refused as a whole.
    assert not await state.write(NAMESPACE, "n", "2", 1, Request("req-1", '{"count":2}', "d2"))
    assert await state.request_record("req-1") == RecordedRequest('{"count":1}', "digest-1")
    assert await state.request_record("req-2") is None
    row = await state.read(NAMESPACE, "n")
    assert row is not None and (row.value, row.version) == ("1", 1)


async def test_a_request_recorded_before_argument_digests_is_still_answered(
    state: SharedState, postgres: PostgresServer, shared_dsn: str
) -> None:
    """A pa_requests row in the earlier format (the result alone) reads back with no digest."""
    id_mac = state._keys.mac("request", "req-old")
    sealed = state._keys.seal(b'{"count":7}', b"pa-request\x00" + id_mac)
    sql(
        postgres,
        shared_dsn,
        f"INSERT INTO pa_requests (id, sealed) VALUES ('\\x{id_mac.hex()}', "  # noqa: S608
        f"'\\x{sealed.hex()}')",
    )
    assert await state.request_record("req-old") == RecordedRequest('{"count":7}', None)


async def test_concurrent_first_replicas_agree_on_the_keys(
    shared_dsn: str, postgres: PostgresServer, master_key: MasterKey
) -> None:
    """Four replicas starting at once on an empty database make one keyring, and share it."""
    source = KeySource.local(master_key)
    opened = await asyncio.gather(
        *(SharedState.open(shared_dsn, postgres.password(), source) for _ in range(4))
    )
    try:
        await store(opened[0]).set("x", Doc(value="from the first"))
        for other in opened[1:]:
            assert (await store(other).get("x")) == Doc(value="from the first")
    finally:
        for each in opened:
            await each.close()


async def test_an_unreachable_server_is_one_clear_line(
    tmp_path: Path, master_key: MasterKey
) -> None:
    from persistent_agent.demo.local_nodes import free_port
    from persistent_agent.errors import SharedStateUnavailableError

    dsn = f"host=127.0.0.1 port={free_port()} user=postgres dbname=x"
    with pytest.raises(
        SharedStateUnavailableError, match=r"cannot connect to PostgreSQL at .* within 0\.5s"
    ):
        # A short timeout, rather than waiting out the default OPEN_TIMEOUT.
        await SharedState.open(dsn, "pw", KeySource.local(master_key), timeout=0.5)


@pytest.mark.parametrize(
    ("damage", "refusal"),
    [
        (
            "DELETE FROM pa_keyring",
            r"holds rows \(1 in pa_state, 1 in pa_requests\) but no keyring",
        ),
        ("DROP TABLE pa_keyring", r"holds rows \(1 in pa_state, 1 in pa_requests\) but no keyring"),
        ("DELETE FROM pa_keyring WHERE name = 'hmac'", r"has no 'hmac' key; it is damaged"),
    ],
    ids=["keyring-emptied", "keyring-dropped", "keyring-partial"],
)
async def test_rows_without_their_keyring_are_refused_and_nothing_is_written(
    state: SharedState,
    postgres: PostgresServer,
    shared_dsn: str,
    master_key: MasterKey,
    damage: str,
    refusal: str,
) -> None:
    """Rows whose keys are gone stop a replica with one line; no new keys hide them."""
    assert await state.write(NAMESPACE, "n", '{"count":1}', 0, Request("req-1", '{"count":1}'))
    sql(postgres, shared_dsn, damage)
    before = pg_dump(postgres, shared_dsn)
    with pytest.raises(SharedStateError, match=refusal) as refused:
        await SharedState.open(shared_dsn, postgres.password(), KeySource.local(master_key))
    assert "restore pa_keyring from a backup" in str(refused.value)
    assert "nothing was written" in str(refused.value) and "\n" not in str(refused.value)
    assert pg_dump(postgres, shared_dsn) == before
