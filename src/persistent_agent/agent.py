"""``PersistentAgent``: a value kept in the agent's state across restarts.

State goes through the SDK's own state API (``async with self.state``) into
the node's storage provider, in the ``agent_state`` namespace, which the
SQLCipher provider keeps in ``agent_state_encrypted_value.db``.
"""

from __future__ import annotations

from typing import cast

from naylence.agent import BaseAgent, BaseAgentState
from naylence.fame.service import operation

STATE_NAMESPACE = "agent_state"


class CustomAgentState(BaseAgentState):
    """The agent's persisted state."""

    value: str | None = None


class PersistentAgent(BaseAgent[CustomAgentState]):
    """Stores one value and returns it, across restarts of either node."""

    def __init__(self) -> None:
        super().__init__(state_model=CustomAgentState, state_namespace=STATE_NAMESPACE)

    @operation
    async def store_value(self, value: str) -> CustomAgentState:
        async with self.state as state:
            state.value = value
            return cast(CustomAgentState, state)

    @operation
    async def retrieve_value(self) -> CustomAgentState:
        async with self.state as state:
            return cast(CustomAgentState, state)
