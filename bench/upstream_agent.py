"""The agent a user would write from the upstream Python example, for `make bench`.

Stock ``BaseAgent`` with the SDK's own state API and its default (streaming)
replies, on the runtime's built-in value-encrypted SQLite provider, which is
configured here by its type, since this project takes over the
``encrypted-sqlite`` profile name. It attaches as our agent does (over
``wss://`` with a token, the CA pinned; access/fabric.py ``node_config``), so
that the bench's ours/upstream ratio compares the agents, not the security.
Started like our agent, by ``python bench/upstream_agent.py`` with the agent's
environment (LocalNodes.env("agent")), FAME_STORAGE_DB_DIRECTORY and
FAME_STORAGE_MASTER_KEY set.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from naylence.agent import BaseAgent, BaseAgentState
from naylence.fame.service import operation

from persistent_agent.access.fabric import node_config


class CustomAgentState(BaseAgentState):
    value: str | None = None


class PersistentAgent(BaseAgent[CustomAgentState]):
    def __init__(self) -> None:
        super().__init__(state_model=CustomAgentState)

    @operation
    async def store_value(self, value: str) -> CustomAgentState:
        async with self.state as state:
            state.value = value
            return state

    @operation
    async def retrieve_value(self) -> CustomAgentState:
        return await self.get_state()


def root_config() -> dict[str, Any]:
    """The SDK's node config, admitted as our agent is, on the runtime's own storage."""
    config = node_config()
    config["node"]["storage"] = {
        "type": "SQLiteStorageProvider",
        "db_directory": os.environ["FAME_STORAGE_DB_DIRECTORY"],
        "is_encrypted": "true",
        "master_key": os.environ["FAME_STORAGE_MASTER_KEY"],
        "is_cached": True,
    }
    return config


if __name__ == "__main__":
    asyncio.run(PersistentAgent().aserve("storage@fame.fabric", root_config=root_config()))
