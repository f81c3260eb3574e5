"""The ``encrypted-postgres`` profile's provider: a replica's own files plus the shared state.

A replica keeps what is its own (the runtime's ``__*`` namespaces: node id,
keystore, bindings, delivery inbox and outbox) in local SQLCipher files in a
directory of its own, exactly as the ``encrypted-sqlite`` profile does; every
other namespace (the agent's state) lives in PostgreSQL, shared by all
replicas (``shared_state``).

The shared side is any :class:`~persistent_agent.storage.backend.StateBackend`:
nothing here knows PostgreSQL (nor imports its driver), so another backend
serves the same way.
"""

from __future__ import annotations

from typing import TypeVar

from naylence.fame.storage.key_value_store import KeyValueStore
from naylence.fame.storage.storage_provider import StorageProvider
from pydantic import BaseModel

from persistent_agent.storage.backend import BackendKeyValueStore, StateBackend
from persistent_agent.storage.provider import SQLCipherStorageProvider

V = TypeVar("V", bound=BaseModel)

OWN_PREFIX = "__"


def is_own(namespace: str) -> bool:
    """Whether *namespace* belongs to one replica (the runtime's) rather than to all."""
    return namespace.startswith(OWN_PREFIX)


class SharedStateStorageProvider(StorageProvider):
    """Own namespaces in local SQLCipher files, the rest in the shared backend."""

    def __init__(self, local: SQLCipherStorageProvider, shared: StateBackend) -> None:
        self.local = local
        self.shared = shared

    async def get_kv_store(self, model_cls: type[V], namespace: str) -> KeyValueStore[V]:
        if is_own(namespace):
            return await self.local.get_kv_store(model_cls, namespace)
        return BackendKeyValueStore(self.shared, model_cls, namespace)

    async def close(self) -> None:
        await self.shared.close()
        self.local.close()
