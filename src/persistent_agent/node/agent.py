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

from persistent_agent import settings
from persistent_agent.errors import IncrementRangeError
from persistent_agent.metrics.rpcs import MeteredCalls
from persistent_agent.node import backlog
from persistent_agent.node.backlog import Line
from persistent_agent.node.replies import UnaryReplyMixin
from persistent_agent.node.state import Migration, TransactionalAgent, VersionedAgentState

STATE_NAMESPACE = "agent_state"

# What increment(n) accepts: a count of events, so never negative (0 adds
# nothing and reads the total), and at most a signed 32-bit integer, which
# every client language holds exactly. docs/replicas.md says the same.
INCREMENT_MIN = 0
INCREMENT_MAX = 2**31 - 1


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Version 2 records when the value was last stored; for older state, unknown."""
    return {**data, "updated_at": None}


def _v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    """Version 3 adds the counter of ``increment``, starting at zero."""
    return {**data, "count": 0}


class CustomAgentState(VersionedAgentState):
    """The agent's persisted state (version 3: ``value``, ``updated_at``, ``count``)."""

    SCHEMA_VERSION: ClassVar[int] = 3
    MIGRATIONS: ClassVar[dict[int, Migration]] = {1: _v1_to_v2, 2: _v2_to_v3}

    value: str | None = None
    updated_at: float | None = None  # Unix time of the last store_value
    count: int = 0  # the sum of every increment applied


class Increment(TypedDict):
    """What ``increment`` returns: the new total, the replica that applied it, and how
    many times this call's change lost a race to another replica and was retried."""

    count: int
    replica: str
    retries: int


class PublicState(TypedDict, total=False):
    """What the operations return: the seed's ``{"value": "…"}``."""

    value: str


def _node_id() -> str:
    """The replica's name: its configured FAME_NODE_ID (the fabric prefixes the node
    id it attaches with by its credential's fingerprint), else the node id."""
    from naylence.fame.node.node import get_node

    return settings.FAME_NODE_ID.value() or str(get_node().id)


def public(state: CustomAgentState) -> PublicState:
    """The reply for *state*: ``{"value": …}``, or ``{}`` before any store, as the
    TypeScript agent answers (its state serialises without the unset field)."""
    return {} if state.value is None else {"value": state.value}


class PersistentAgent(MeteredCalls, UnaryReplyMixin, TransactionalAgent[CustomAgentState]):
    """Stores one value and returns it, across restarts of either node."""

    def __init__(self, line: Line | None = None) -> None:
        super().__init__(state_model=CustomAgentState, state_namespace=STATE_NAMESPACE)
        self._line = line

    async def handle_message(self, envelope: Any, context: Any = None) -> Any:
        if self._line is None:
            return await super().handle_message(envelope, context)
        token = self._line.arrived(envelope)
        try:
            return await super().handle_message(envelope, context)
        finally:
            backlog.done(token)

    def _admit(self) -> None:
        """Refuse, before touching the state, a call that waited too long in line."""
        if self._line is not None:
            self._line.admit()

    async def _store(self, value: str) -> PublicState:
        self._admit()
        if not isinstance(value, str):
            raise TypeError(f"store_value expects a string, got {type(value).__name__}")

        def store(state: CustomAgentState) -> PublicState:
            state.value = value
            state.updated_at = time.time()
            return public(state)

        result, _ = await self.update_state(store)
        return result

    async def _retrieve(self) -> PublicState:
        self._admit()
        return public(await self.get_state())

    @operation
    async def store_value(self, value: str) -> PublicState:
        return await self._store(value)

    @operation
    async def retrieve_value(self) -> PublicState:
        return await self._retrieve()

    @operation
    async def increment(self, n: int = 1, request_id: str | None = None) -> Increment:
        """Add *n* (0 to 2**31-1) to the counter; returns the new total.

        A read-modify-write, so that a lost update between replicas would
        show in the total. Idempotent per *request_id*: a call repeated with
        the same id (a client retrying after a timeout) returns the first
        call's result, unapplied; the same id with another *n* is refused.
        Both storage profiles record the id with the change.
        """
        self._admit()
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"increment expects an integer, got {type(n).__name__}")
        if not INCREMENT_MIN <= n <= INCREMENT_MAX:
            # The value itself stays out of the message: replies can reach logs.
            raise IncrementRangeError(
                f"increment takes an integer n from {INCREMENT_MIN} to {INCREMENT_MAX} "
                "(2**31-1); this n is out of that range; nothing was applied"
            )
        replica = _node_id()

        def add(state: CustomAgentState) -> Increment:
            state.count += n
            return {"count": state.count, "replica": replica, "retries": 0}

        result, retries = await self.update_state(
            add, request_id=request_id, arguments=["increment", n]
        )
        # A repeated request returns the recorded result (its replica, not ours).
        return {**result, "retries": retries}

    # The TypeScript original's names: one registration gives one name, so
    # each is an operation of its own, calling the same code.

    @operation(name="storeValue")
    async def store_value_camel(self, value: str) -> PublicState:
        return await self._store(value)

    @operation(name="retrieveValue")
    async def retrieve_value_camel(self) -> PublicState:
        return await self._retrieve()
