"""The storage listener on a real SQLCipher provider: counts, outcomes, failure kinds,
bounded labels, and a scrape that never shows a key, a value or key material."""

from __future__ import annotations

import binascii
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from persistent_agent.access.authorizer import REASONS, Refused
from persistent_agent.demo.local_nodes import free_port
from persistent_agent.errors import DatabaseDamagedError, WrongKeyError
from persistent_agent.keys.custody import KeySource
from persistent_agent.keys.master_key import MasterKey
from persistent_agent.metrics import endpoint, refusals
from persistent_agent.metrics.instruments import Instruments
from persistent_agent.metrics.listener import (
    INTERNAL,
    MAX_NAMESPACES,
    OTHER,
    StorageMetrics,
    failure_kind,
)
from persistent_agent.storage import events, layout
from persistent_agent.storage.data_keys import NodeKeys
from persistent_agent.storage.provider import SQLCipherStorageProvider

from .conftest import samples, scrape, total


class Doc(BaseModel):
    text: str


@pytest.fixture
def instruments() -> Iterator[Instruments]:
    """Fresh instruments in a registry of their own, fed by a listener while the test runs."""
    registry = CollectorRegistry()
    found = Instruments(registry)
    stop = events.listen(StorageMetrics(found))
    yield found
    stop()


def value(instruments: Instruments, name: str, **labels: str) -> float:
    return instruments.registry.get_sample_value(name, labels) or 0.0


async def test_each_operation_is_counted_and_timed_by_namespace_and_outcome(
    instruments: Instruments, db_dir: Path, master_key: MasterKey
) -> None:
    provider = SQLCipherStorageProvider(db_dir, master_key)
    try:
        store = await provider.get_kv_store(Doc, "notes")
        internal = await provider.get_kv_store(Doc, "__node_meta")
        for n in range(3):
            await store.set(f"k{n}", Doc(text="x"))
        assert await store.get("k0") == Doc(text="x")
        await store.get("absent")
        await store.delete("k1")
        with pytest.raises(KeyError):
            await store.update("never-set", Doc(text="y"))
        await store.list()
        await internal.set("meta", Doc(text="z"))
    finally:
        provider.close()
    ops = "persistent_agent_storage_operations_total"
    ok = {"namespace": "notes", "outcome": "ok"}
    assert value(instruments, ops, operation="set", **ok) == 3
    assert value(instruments, ops, operation="get", **ok) == 2
    assert value(instruments, ops, operation="delete", **ok) == 1
    assert value(instruments, ops, operation="list", **ok) == 1
    assert value(instruments, ops, namespace="notes", operation="update", outcome="error") == 1
    failures = "persistent_agent_storage_failures_total"
    assert (
        value(instruments, failures, namespace="notes", operation="update", kind="not_found") == 1
    )
    assert value(instruments, ops, namespace=INTERNAL, operation="set", outcome="ok") == 1
    assert value(instruments, ops, namespace="__node_meta", operation="set", outcome="ok") == 0
    seconds = "persistent_agent_storage_operation_duration_seconds_count"
    assert value(instruments, seconds, namespace="notes", operation="set", outcome="ok") == 3


def test_failure_kinds_come_from_the_error() -> None:
    assert failure_kind(WrongKeyError(Path("a.db"))) == "decrypt"
    assert failure_kind(DatabaseDamagedError(Path("a.db"), "bad page")) == "integrity"
    assert failure_kind(KeyError("k")) == "not_found"
    assert failure_kind(RuntimeError("x")) == "other"


def test_a_logged_refusal_is_counted_by_its_reason_code(instruments: Instruments) -> None:
    """The authorizer logs each refusal once; the counter takes its code, never its text."""
    detach = refusals.count_refusals(instruments)
    logger = logging.getLogger(refusals.LOGGER)
    try:
        for reason in REASONS:
            logger.warning("refused: %s", Refused(f"credential 'client-x' {reason}", reason))
        logger.warning("refused: %s", Refused("credential 'client-x' was revoked", "revoked"))
        logger.warning("a line with no refusal in it")
    finally:
        detach()
    counted = {
        sample.labels["reason"]: sample.value
        for metric in instruments.registry.collect()
        for sample in metric.samples
        if sample.name == "persistent_agent_access_refusals_total"
    }
    assert counted == {reason: 2.0 if reason == "revoked" else 1.0 for reason in REASONS}


async def test_series_stay_flat_while_ten_thousand_keys_are_written(
    instruments: Instruments, db_dir: Path, master_key: MasterKey
) -> None:
    provider = SQLCipherStorageProvider(db_dir, master_key)

    def series() -> int:
        return len(samples(scrape_registry(instruments.registry)))

    try:
        store = await provider.get_kv_store(Doc, "notes")
        await store.set("first", Doc(text="x"))
        await store.get("first")
        before = series()
        for n in range(10_000):
            await store.set(f"key-{uuid.uuid4().hex}-{n}", Doc(text=f"value {n}"))
            if n % 100 == 0:
                await store.get(f"missing-{n}")
        assert series() == before
        # Namespaces too: past MAX_NAMESPACES, every further one is one label value.
        for n in range(MAX_NAMESPACES + 8):
            await (await provider.get_kv_store(Doc, f"ns{n}")).set("k", Doc(text="x"))
        names = {
            dict(labels)["namespace"]
            for name, labels in samples(scrape_registry(instruments.registry))
            if name == "persistent_agent_storage_operations_total"
        }
        assert len(names) == MAX_NAMESPACES + 1  # notes and ns0..ns30, then "other"
        assert OTHER in names
    finally:
        provider.close()


def scrape_registry(registry: CollectorRegistry) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


async def test_a_scrape_shows_no_key_value_or_key_material(
    monkeypatch: pytest.MonkeyPatch, db_dir: Path, master_key: MasterKey, master_key_hex: str
) -> None:
    """The real endpoint, as a node starts it, over a store holding marked keys and values."""
    monkeypatch.setenv("PERSISTENT_AGENT_METRICS_PORT", str(free_port()))
    monkeypatch.setenv("FAME_STORAGE_DB_DIRECTORY", str(db_dir))
    monkeypatch.setenv("FAME_STORAGE_MASTER_KEY_FILE", "config/master.key")
    served = endpoint.start()
    assert served is not None
    secret_key = f"key-name-{uuid.uuid4().hex}"
    secret_value = f"stored-value-{uuid.uuid4().hex}"
    provider = SQLCipherStorageProvider(db_dir, master_key)
    try:
        for namespace in ("notes", "__node_meta"):
            store = await provider.get_kv_store(Doc, namespace)
            await store.set(secret_key, Doc(text=secret_value))
            await store.get(secret_key)
            with pytest.raises(KeyError):  # an error whose text names the key
                await store.update(f"{secret_key}-absent", Doc(text=secret_value))
        text = scrape(served.url)
        data_keys = [
            NodeKeys(db_dir, KeySource.local(master_key)).key_for(path)
            for path in layout.database_files(db_dir)
        ]
    finally:
        provider.close()
        served.close()
    assert total(samples(text), "persistent_agent_storage_operations_total") == 6
    assert total(samples(text), "persistent_agent_storage_failures_total", kind="not_found") == 2
    assert total(samples(text), "persistent_agent_keyring_data_keys") == 2
    assert len(data_keys) == 2
    wrapped = json.loads((db_dir / layout.KEYRING_FILE).read_text())["keys"].values()
    forbidden = [secret_key, secret_value, master_key_hex, master_key_hex.upper(), *wrapped]
    for key in data_keys:
        forbidden += [key.hex(), key.hex().upper(), binascii.b2a_base64(key).decode().strip()]
    assert [each for each in forbidden if each in text] == []
