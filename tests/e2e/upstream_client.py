"""The upstream Python example's client, as its README runs it: the SDK's CLIENT_CONFIG,
configured by environment variables only (``python -m tests.e2e.upstream_client``)."""

from __future__ import annotations

import asyncio
import time

from naylence.agent import Agent, configs
from naylence.fame.core import FameFabric


async def main() -> None:
    async with FameFabric.create(root_config=configs.CLIENT_CONFIG):
        agent = Agent.remote_by_address("storage@fame.fabric")
        print(f"Previous state: {await agent.retrieve_value()}")
        print(f"Updated state: {await agent.store_value(str(int(time.time() * 1000)))}")


if __name__ == "__main__":
    asyncio.run(main())
