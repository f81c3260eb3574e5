"""``PersistentAgent``: a value kept in the agent's state across restarts.

State goes through the SDK's state API (``async with self.state``) into the
node's storage provider, in the ``agent_state`` namespace, which the SQLCipher
provider keeps in ``agent_state_encrypted_value.db``. Transactions are
all-or-nothing and the state carries a schema version (see ``state``); replies
skip the SDK's per-reply pause (see ``replies``).

The operations answer under the upstream Python example's names
(``store_value``/``retrieve_value``) and the TypeScript original's
(``storeValue``/``retrieveValue``), so either example's client can call this
agent. Both reply with the seed's public shape, ``{"value": "…"}`` (``{}``
before anything was stored, as the TypeScript agent answers); the schema
version and timestamp stay in the stored state.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, TypedDict

from naylence.fame.service import operation

from persistent_agent.node.replies import UnaryReplyMixin
from persistent_agent.node.state import Migration, TransactionalAgent, VersionedAgentState

STATE_NAMESPACE = "agent_state"


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Version 2 records when the value was last stored; for older state, unknown."""
    return {**data, "updated_at": None}


class CustomAgentState(VersionedAgentState):
    """The agent's persisted state (version 2: ``value`` and ``updated_at``)."""

    SCHEMA_VERSION: ClassVar[int] = 2
    MIGRATIONS: ClassVar[dict[int, Migration]] = {1: _v1_to_v2}

    value: str | None = None
    updated_at: float | None = None  # Unix time of the last store_value


class PublicState(TypedDict, total=False):
    """What the operations return: the seed's ``{"value": "…"}``."""

    value: str


def public(state: CustomAgentState) -> PublicState:
    """The reply for *state*: ``{"value": …}``, or ``{}`` before any store, as the
    TypeScript agent answers (its state serialises without the unset field)."""
    return {} if state.value is None else {"value": state.value}


class PersistentAgent(UnaryReplyMixin, TransactionalAgent[CustomAgentState]):
    """Stores one value and returns it, across restarts of either node."""

    def __init__(self) -> None:
        super().__init__(state_model=CustomAgentState, state_namespace=STATE_NAMESPACE)

    async def _store(self, value: str) -> PublicState:
        if not isinstance(value, str):
            raise TypeError(f"store_value expects a string, got {type(value).__name__}")
        async with self.state as state:
            state.value = value
            state.updated_at = time.time()
            return public(state)

    async def _retrieve(self) -> PublicState:
        return public(await self.get_state())

    @operation
    async def store_value(self, value: str) -> PublicState:
        return await self._store(value)

    @operation
    async def retrieve_value(self) -> PublicState:
        return await self._retrieve()

    # The TypeScript original's names: one registration gives one name, so
    # each is an operation of its own, calling the same code.

    @operation(name="storeValue")
    async def store_value_camel(self, value: str) -> PublicState:
        return await self._store(value)

    @operation(name="retrieveValue")
    async def retrieve_value_camel(self) -> PublicState:
        return await self._retrieve()
